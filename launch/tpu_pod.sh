#!/usr/bin/env bash
# Train on a Cloud TPU VM slice: create it, copy this checkout to every worker, install, mount the
# bucket, run the same command on all workers (JAX's multi-controller runtime: one process per
# host, jax.distributed.initialize() discovers the slice), then delete the slice.
#
#   launch/tpu_pod.sh --name dlm-owt --zone us-central2-b --type v4-32 \
#       --bucket my-bucket --config configs/owt.py --run owt_mdm [--project P] [--spot] \
#       [--version RUNTIME] [--queued [--queued-timeout S]] [--keep] [--detach] [--dry-run]
#       [-- --config.objective=ar ...]
#
# The run directory is gs://<bucket>/runs/<run>, mounted with gcsfuse at /gcs/<bucket> on every
# worker so that checkpoints and metrics are shared; rerunning the same command resumes the run.
# The runtime follows the accelerator (v4, v5litepod / v5e, v5p, v6e); Python 3.11 comes from a
# uv-managed venv (the images ship 3.10; jax 0.10 needs 3.11). --detach starts training in the
# background on every worker (logs in the run directory) and leaves the slice up. --queued asks
# for the slice as a queued resource (waits until it is ACTIVE, at most --queued-timeout seconds,
# default 86400; deleting it deletes the slice). --dry-run prints every command instead.
set -euo pipefail

name="" zone="" type="" bucket="" config="" run="" project="" version=""
spot=0 keep=0 detach=0 dry=0 queued=0 queued_timeout=86400 extra=()
poll="${DLM_JAX_QUEUED_POLL_S:-30}"  # seconds between state checks of a queued resource

usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }

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
    --queued) queued=1; shift ;;
    --queued-timeout) queued_timeout="$2"; shift 2 ;;
    --keep) keep=1; shift ;;
    --detach) detach=1; keep=1; shift ;;
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
if [[ -z "$version" ]]; then  # the TPU VM runtime of each generation
  case "$type" in
    v4-*) version="tpu-ubuntu2204-base" ;;
    v5litepod-*|v5e-*) version="v2-alpha-tpuv5-lite" ;;
    v5p-*) version="v2-alpha-tpuv5" ;;
    v6e-*) version="v2-alpha-tpuv6e" ;;
    *) echo "tpu_pod.sh: --type $type: unknown accelerator type (v4-N, v5litepod-N, v5p-N," \
         "v6e-N; or give --version RUNTIME)" >&2; exit 2 ;;
  esac
fi
if ! [[ "$queued_timeout" =~ ^[0-9]+$ ]]; then
  echo "tpu_pod.sh: --queued-timeout $queued_timeout: not a number of seconds" >&2; exit 2
fi
if ! [[ "$bucket" =~ ^[a-z0-9][a-z0-9._-]*$ ]]; then
  echo "tpu_pod.sh: --bucket $bucket: not a bucket name (no gs://, lowercase)" >&2; exit 2
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

qr=(gcloud compute tpus queued-resources)
if [[ $queued -eq 1 ]]; then  # capacity granted when available; the slice appears when ACTIVE
  create=("${qr[@]}" create "$name" --node-id "$name" "${where[@]}" --accelerator-type "$type"
          --runtime-version "$version")
  remove=("${qr[@]}" delete "$name" "${where[@]}" --force --quiet)
else
  create=("${gc[@]}" create "$name" "${where[@]}" --accelerator-type "$type" --version "$version")
  remove=("${gc[@]}" delete "$name" "${where[@]}" --quiet)
fi
if [[ $spot -eq 1 ]]; then create+=(--spot); fi
run "${create[@]}"
if [[ $queued -eq 1 ]]; then
  describe=("${qr[@]}" describe "$name" "${where[@]}" --format='value(state.state)')
  if [[ $dry -eq 1 ]]; then
    echo "# wait until $(run "${describe[@]}") prints ACTIVE (at most ${queued_timeout} s)"
  else
    waited=0
    while state=$("${describe[@]}"); [[ "$state" != ACTIVE ]]; do
      if [[ "$state" == FAILED || "$state" == SUSPENDED ]] || ((waited >= queued_timeout)); then
        echo "tpu_pod.sh: queued resource $name is $state after ${waited} s; deleting it" >&2
        "${remove[@]}" || true
        exit 1
      fi
      sleep "$poll"; waited=$((waited + poll))
    done
  fi
fi
run git -C "$repo_root" archive --format=tar.gz -o "$tarball" HEAD
run "${gc[@]}" scp "$tarball" "$name:~/dlm_jax.tar.gz" "${where[@]}" --worker=all
setup="set -e; mkdir -p ~/dlm_jax && tar xzf ~/dlm_jax.tar.gz -C ~/dlm_jax"
# Python 3.11 in a venv (uv fetches a pinned interpreter), then this checkout with jax[tpu]
setup+=" && python3 -m pip install -q --user uv"
setup+=" && ~/.local/bin/uv venv -q --python 3.11 ~/dlm_venv"
setup+=" && ~/.local/bin/uv pip install -q --python ~/dlm_venv/bin/python -e ~/dlm_jax'[tpu]'"
# gcsfuse from Google's apt repository (not in Ubuntu's); --rename-dir-limit lets orbax rename
# its temporary checkpoint directories on a flat bucket
setup+=" && (command -v gcsfuse || (echo 'deb [signed-by=/usr/share/keyrings/cloud.google.asc]"
setup+=" https://packages.cloud.google.com/apt gcsfuse-'\$(lsb_release -cs)' main'"
setup+=" | sudo tee /etc/apt/sources.list.d/gcsfuse.list"
setup+=" && curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg"
setup+=" | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null"
setup+=" && sudo apt-get update -q && sudo apt-get install -y -q gcsfuse))"
setup+=" && sudo mkdir -p /gcs/$bucket && sudo chown \$USER /gcs/$bucket"
setup+=" && (mountpoint -q /gcs/$bucket || gcsfuse --implicit-dirs --rename-dir-limit=200000"
setup+=" $bucket /gcs/$bucket)"
run "${gc[@]}" ssh "$name" "${where[@]}" --worker=all --command "$setup"
train="cd ~/dlm_jax && ~/dlm_venv/bin/python -m dlm_jax.main --config $config --workdir $workdir"
train+=" --distributed $extra_q"
if [[ $detach -eq 1 ]]; then  # survives the ssh session; each worker logs into the run directory
  train="mkdir -p $workdir && setsid nohup bash -c '$train' > $workdir/worker-\$(hostname).log 2>&1 < /dev/null &"
fi
status=0
run "${gc[@]}" ssh "$name" "${where[@]}" --worker=all --command "$train" || status=$?
if [[ $keep -eq 0 ]]; then
  run "${remove[@]}"
fi
exit "$status"
