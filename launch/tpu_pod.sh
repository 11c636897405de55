#!/usr/bin/env bash
# Train on a Cloud TPU VM slice: create it, copy this checkout to every worker, install, mount the
# bucket, run the same command on all workers (JAX's multi-controller runtime: one process per
# host, jax.distributed.initialize() discovers the slice), then delete the slice.
# The workers get this checkout as one git tree: every tracked file as it is now (uncommitted
# edits included) and the untracked files in dlm_jax/ and beside the config, nothing .gitignore
# excludes; the config (a path in the checkout, from here or from its root, or a shipped config
# name) must be part of it.
#
#   launch/tpu_pod.sh --name dlm-owt --zone us-central2-b --type v4-32 \
#       --bucket my-bucket --config configs/owt.py --run owt_mdm [--project P] [--spot] \
#       [--version RUNTIME] [--queued [--queued-timeout S]] [--keep] [--detach] [--dry-run]
#       [-- --config.objective=ar ...]
#
# The run directory is gs://<bucket>/runs/<run>, mounted with gcsfuse at /gcs/<bucket> on every
# worker so that checkpoints and metrics are shared; rerunning the same command resumes the run.
# The runtime follows the accelerator (v4, v5litepod / v5e, v5p, v6e: dlm_jax/study/tpu_types.txt,
# which `python -m dlm_jax.sweep tpu` checks too); Python 3.11 comes from a uv-managed venv (the
# images ship 3.10; jax 0.10 needs 3.11). --detach starts training in the
# background on every worker (logs in the run directory) and leaves the slice up. --queued asks
# for the slice as a queued resource (waits until it is ACTIVE, at most --queued-timeout seconds,
# default 86400; deleting it deletes the slice). --dry-run prints every command instead.
set -euo pipefail

name="" zone="" type="" bucket="" config="" run="" project="" version=""
spot=0 keep=0 detach=0 dry=0 queued=0 queued_timeout=86400 extra=()
poll="${DLM_JAX_QUEUED_POLL_S:-30}"  # seconds between state checks of a queued resource

# the comment block above, up to the first line of script
usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit "${1:-2}"; }

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
if [[ -z "$version" ]]; then  # the TPU VM runtime of each generation: the table sweep.py checks
  types="$repo_root/dlm_jax/study/tpu_types.txt"
  if [[ "$type" =~ ^([a-z0-9]+)-[0-9]+$ ]]; then
    version=$(awk -v g="${BASH_REMATCH[1]}" '!/^#/ && $1 == g { print $2 }' "$types")
  fi
  if [[ -z "$version" ]]; then
    accepted=$(awk '!/^#/ && NF { printf "%s%s-N", s, $1; s = ", " }' "$types")
    echo "tpu_pod.sh: --type $type: unknown accelerator type ($accepted; or give" \
      "--version RUNTIME)" >&2; exit 2
  fi
fi
# The config: a file (from here, or from the checkout's root) or a shipped config name
if [[ -f "$config" ]]; then cfg_file="$config"
elif [[ -f "$repo_root/$config" ]]; then cfg_file="$repo_root/$config"
else
  cfg_name="${config#configs/}"; cfg_file="$repo_root/dlm_jax/configs/${cfg_name%.py}.py"
  if [[ "$cfg_name" == *..* || ! -f "$cfg_file" ]]; then
    echo "tpu_pod.sh: config $config not found (no such file here or under $repo_root," \
      "nor a shipped config name)" >&2; exit 2
  fi
fi
cfg_dir="$(cd "$(dirname "$cfg_file")" && pwd)"
cfg_abs="$cfg_dir/$(basename "$cfg_file")"
cfg_git="$(cd "$cfg_dir" && pwd -P)/$(basename "$cfg_file")"  # symlinks resolved, as git sees it
root_git="$(cd "$repo_root" && pwd -P)"
if [[ "$cfg_git" != "$root_git"/* ]]; then
  echo "tpu_pod.sh: config $config is outside this checkout ($repo_root), the only files the" \
    "workers get: move it into the checkout" >&2; exit 2
fi
cfg_git="${cfg_git#"$root_git"/}"
config="$cfg_git"  # the path the workers find it by
if [[ "$cfg_abs" == "$repo_root"/* ]]; then config="${cfg_abs#"$repo_root"/}"; fi
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

# What the workers get, as one git tree built in a scratch index (the checkout's own index and
# files stay untouched): every file git tracks (committed or staged) as it is in the working
# tree, edits and deletions included, plus the untracked files in dlm_jax/ and in the config's
# folder; never what .gitignore excludes, nor other untracked files (data, scratch).
g=(git -C "$repo_root")
if ! "${g[@]}" rev-parse --verify -q HEAD >/dev/null; then
  echo "tpu_pod.sh: $repo_root is not a git checkout with a commit (the workers get its files" \
    "through git archive)" >&2; exit 2
fi
if "${g[@]}" check-ignore -q -- "$cfg_git"; then
  echo "tpu_pod.sh: config $config would not reach the workers: git ignores it (.gitignore);" \
    "move it, or git add -f it" >&2; exit 2
fi
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
gi=(env GIT_INDEX_FILE="$scratch/index" "${g[@]}")
cp "$("${g[@]}" rev-parse --path-format=absolute --git-path index)" "$scratch/index"
"${gi[@]}" add -u
new=(dlm_jax)  # new files of the package, and beside the config
if [[ "$cfg_git" == */* ]]; then new+=("$(dirname "$cfg_git")"); else new+=("$cfg_git"); fi
for p in "${new[@]}"; do if [[ -e "$repo_root/$p" ]]; then "${gi[@]}" add -A -- "$p"; fi; done
tree=$("${gi[@]}" write-tree)
if ! "${g[@]}" cat-file -e "$tree:$cfg_git" 2>/dev/null; then  # the check above should hold
  echo "tpu_pod.sh: config $config is not in the tree $tree the workers would get" >&2; exit 2
fi
changed=$("${g[@]}" diff --name-only HEAD "$tree" | wc -l)
behind=$("${gi[@]}" ls-files --others --exclude-standard | wc -l)
if ((changed)); then
  echo "tpu_pod.sh: shipping the working tree $tree: $changed file(s) differ from HEAD" \
    "$("${g[@]}" rev-parse --short HEAD) (git status)" >&2
fi
if ((behind)); then
  echo "tpu_pod.sh: $behind untracked file(s) outside dlm_jax/ and the config's folder stay" \
    "behind (git add them to ship them)" >&2
fi

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
run "${g[@]}" archive --format=tar.gz -o "$tarball" "$tree"
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
