#!/usr/bin/env bash
# Train on a Cloud TPU VM slice: create it, copy this checkout to every worker, install, mount the
# bucket, run the same command on all workers (JAX's multi-controller runtime: one process per
# host, jax.distributed.initialize() discovers the slice), then delete the slice.
#
#   launch/tpu_pod.sh --name dlm-owt --zone us-central2-b --type v4-32 \
#       --bucket my-bucket --config configs/owt.py --run owt_mdm [--project P] [--spot] \
#       [--keep] [--dry-run] [-- --config.objective=ar ...]
#
# The run directory is gs://<bucket>/runs/<run>, mounted with gcsfuse at /gcs/<bucket> on every
# worker so that checkpoints and metrics are shared; rerunning the same command resumes the run.
# --dry-run prints every command instead of running it.
set -euo pipefail

name="" zone="" type="" bucket="" config="" run="" project="" version="tpu-ubuntu2204-base"
spot=0 keep=0 dry=0 extra=()

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) name="$2"; shift 2 ;;
    --zone) zone="$2"; shift 2 ;;
    --type) type="$2"; shift 2 ;;
    --bucket) bucket="$2"; shift 2 ;;
    --config) config="$2"; shift 2 ;;
    --run) run="$2"; shift 2 ;;
    --project) project="$2"; shift 2 ;;
    --version) version="$2"; shift 2 ;;
    --spot) spot=1; shift ;;
    --keep) keep=1; shift ;;
    --dry-run) dry=1; shift ;;
    -h|--help) usage 0 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "tpu_pod.sh: unknown argument $1" >&2; usage 2 ;;
  esac
done

for v in name zone type bucket config run; do
  if [[ -z "${!v}" ]]; then echo "tpu_pod.sh: --$v is required" >&2; usage 2; fi
done
repo_root="$(cd "$(dirname "$0")/.." && pwd)"
if [[ ! -f "$repo_root/$config" ]]; then
  echo "tpu_pod.sh: config $config not found under $repo_root" >&2; exit 2
fi

# Print a command (dry run) or run it; arguments are quoted so the printout can be pasted.
run() {
  if [[ $dry -eq 0 ]]; then "$@"; return; fi
  local a out=()
  for a in "$@"; do
    if [[ "$a" =~ ^[A-Za-z0-9_./:=@%+,~-]+$ ]]; then out+=("$a"); else out+=("${a@Q}"); fi
  done
  printf '%s\n' "${out[*]}"
}

gc=(gcloud compute tpus tpu-vm)
where=(--zone "$zone")
if [[ -n "$project" ]]; then where+=(--project "$project"); fi
workdir="/gcs/$bucket/runs/$run"
tarball="/tmp/dlm_jax-$name.tar.gz"
extra_q=''  # printf with no arguments would still print '' once: an empty argument
if ((${#extra[@]})); then printf -v extra_q '%q ' "${extra[@]}"; fi

create=("${gc[@]}" create "$name" "${where[@]}" --accelerator-type "$type" --version "$version")
if [[ $spot -eq 1 ]]; then create+=(--spot); fi
run "${create[@]}"
run git -C "$repo_root" archive --format=tar.gz -o "$tarball" HEAD
run "${gc[@]}" scp "$tarball" "$name:~/dlm_jax.tar.gz" "${where[@]}" --worker=all
setup="set -e; mkdir -p ~/dlm_jax && tar xzf ~/dlm_jax.tar.gz -C ~/dlm_jax"
setup+=" && pip install -q -e ~/dlm_jax'[tpu]'"
setup+=" && (command -v gcsfuse || (sudo apt-get update -q && sudo apt-get install -y -q gcsfuse))"
setup+=" && sudo mkdir -p /gcs/$bucket && sudo chown \$USER /gcs/$bucket"
setup+=" && (mountpoint -q /gcs/$bucket || gcsfuse --implicit-dirs $bucket /gcs/$bucket)"
run "${gc[@]}" ssh "$name" "${where[@]}" --worker=all --command "$setup"
train="cd ~/dlm_jax && python -m dlm_jax.main --config $config --workdir $workdir --distributed"
train+=" $extra_q"
status=0
run "${gc[@]}" ssh "$name" "${where[@]}" --worker=all --command "$train" || status=$?
if [[ $keep -eq 0 ]]; then
  run "${gc[@]}" delete "$name" "${where[@]}" --quiet
fi
exit "$status"
