#!/usr/bin/env bash
# Train on a SLURM GPU cluster: one task per GPU via srun, any number of nodes. Every task runs
# the same command; JAX reads the SLURM environment to form one multi-process job
# (jax.distributed.initialize(), each process owning the GPU of its local rank).
#
#   launch/slurm.sh --nodes 2 --gpus-per-node 8 --config configs/owt.py \
#       --workdir /shared/runs/owt_mdm [--partition gpu] [--account A] [--time 48:00:00] \
#       [--python /shared/venv/bin/python] [--signal-seconds 120] [--dry-run] \
#       [-- --config.objective=ar ...]
#
# The workdir must be on a filesystem every node sees; resubmitting resumes the run.
# Preemption-safe: SLURM sends SIGTERM --signal-seconds before the time limit (--signal), the
# run checkpoints its current step within train.preempt_timeout (set 20 s shorter) and exits 143,
# and the job requeues itself (--requeue; scontrol requeue) to resume from that checkpoint.
# --config: a file anywhere, or a shipped config name (default, owt, ...); a relative --config or
# --workdir is taken from the current directory. --dry-run prints the batch script and the sbatch
# command instead of submitting.
set -euo pipefail

nodes=1 gpus=8 config="" workdir="" partition="" account="" time_limit="24:00:00"
python_bin="python" cpus=8 dry=0 extra=() signal_s=120

# the comment block above, up to the first line of script
usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit "${1:-2}"; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --nodes) nodes="$2"; shift 2 ;;
    --gpus-per-node) gpus="$2"; shift 2 ;;
    --cpus-per-gpu) cpus="$2"; shift 2 ;;
    --config) config="$2"; shift 2 ;;
    --workdir) workdir="$2"; shift 2 ;;
    --partition) partition="$2"; shift 2 ;;
    --account) account="$2"; shift 2 ;;
    --time) time_limit="$2"; shift 2 ;;
    --python) python_bin="$2"; shift 2 ;;
    --signal-seconds) signal_s="$2"; shift 2 ;;
    --dry-run) dry=1; shift ;;
    -h|--help) usage 0 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "slurm.sh: unknown argument $1" >&2; usage 2 ;;
  esac
done

if [[ -z "$config" || -z "$workdir" ]]; then
  echo "slurm.sh: --config and --workdir are required" >&2; usage 2
fi
if ! [[ "$nodes" =~ ^[1-9][0-9]*$ && "$gpus" =~ ^[1-9][0-9]*$ ]]; then
  echo "slurm.sh: --nodes and --gpus-per-node must be positive integers" >&2; exit 2
fi
if ! [[ "$signal_s" =~ ^[0-9]+$ ]] || ((signal_s < 40)); then
  echo "slurm.sh: --signal-seconds must be an integer >= 40 (checkpoint time before the kill)" >&2
  exit 2
fi
repo_root="$(cd "$(dirname "$0")/.." && pwd)"
# The job runs in the clone: a config file goes to it by its path from there (absolute outside
# the clone); a shipped config name as it is (dlm_jax.main finds it). The workdir: absolute.
if [[ -f "$config" ]]; then cfg_file="$config"
elif [[ -f "$repo_root/$config" ]]; then cfg_file="$repo_root/$config"  # from the clone's root
else
  cfg_file="" cfg_name="${config#configs/}"
  if [[ "$cfg_name" == *..* || ! -f "$repo_root/dlm_jax/configs/${cfg_name%.py}.py" ]]; then
    echo "slurm.sh: config $config not found (no such file here or under $repo_root, nor a" \
      "shipped config name)" >&2; exit 2
  fi
fi
if [[ -n "$cfg_file" ]]; then
  config="$(cd "$(dirname "$cfg_file")" && pwd)/$(basename "$cfg_file")"
  if [[ "$config" == "$repo_root"/* ]]; then config="${config#"$repo_root"/}"; fi
fi
if [[ "$workdir" != /* ]]; then workdir="$PWD/${workdir#./}"; fi
if [[ "$python_bin" == */* && "$python_bin" != /* ]]; then python_bin="$PWD/${python_bin#./}"; fi
name="dlm-$(basename "$workdir")"
extra_q=''  # printf with no arguments would still print '' once: an empty argument
if ((${#extra[@]})); then printf -v extra_q '%q ' "${extra[@]}"; fi

script="#!/usr/bin/env bash
#SBATCH --job-name=$name
#SBATCH --nodes=$nodes
#SBATCH --ntasks-per-node=$gpus
#SBATCH --gpus-per-node=$gpus
#SBATCH --cpus-per-task=$cpus
#SBATCH --time=$time_limit
#SBATCH --output=$workdir/slurm-%j.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=TERM@$signal_s"
if [[ -n "$partition" ]]; then script+=$'\n'"#SBATCH --partition=$partition"; fi
if [[ -n "$account" ]]; then script+=$'\n'"#SBATCH --account=$account"; fi
script+="
set -euo pipefail
cd $(printf '%q' "$repo_root")
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
rc=0
srun --kill-on-bad-exit=1 $(printf '%q' "$python_bin") -m dlm_jax.main --config $(printf '%q' "$config") --workdir $(printf '%q' "$workdir") --distributed --config.train.preempt_timeout=$((signal_s - 20)) $extra_q|| rc=\$?
if [[ \$rc -eq 143 ]]; then scontrol requeue \"\$SLURM_JOB_ID\"; exit 0; fi  # checkpointed: resume
exit \$rc"

job="$workdir/slurm-job.sbatch"
if [[ $dry -eq 1 ]]; then
  printf '%s\n' "$script"
  printf 'mkdir -p %q\n' "$workdir"
  printf 'sbatch %q\n' "$job"
  exit 0
fi
mkdir -p "$workdir"
printf '%s\n' "$script" > "$job"
sbatch "$job"
