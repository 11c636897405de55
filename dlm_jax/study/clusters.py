"""Where a sweep's runs go besides this machine: an sbatch job array (`slurm_array`), one
submitit job per run (`RunJob`, below), or one TPU slice per run (`tpu_commands`). The commands
come from sweep.py; this module only places them.

SLURM through submitit, the way FAIR-style clusters are used:

  python -m dlm_jax.sweep slurm SWEEP --backend submitit [--partition P] [--time 04:00:00]
      [--signal-seconds 120] [--gpus 1] [--dry-run]

Each run of the sweep is one submitit job (logs and pickles in <root>/submitit/). A job runs
`python -m dlm_jax.main` for its run as a child process. When SLURM preempts the job or its time
limit nears, submitit signals the job `--signal-seconds` ahead; `RunJob.checkpoint` forwards
SIGTERM to the child, which checkpoints its current step within train.preempt_timeout (set 20 s
shorter than the signal's lead) and exits, and submitit requeues the job, which resumes the run
from that checkpoint (the same command resumes any run: run/loop.py). Finished runs are skipped
on resubmission, as with every launcher.

submitit is optional (the [slurm] extra); its module is loaded only by this backend.
"""
import importlib
import json
import os
import shlex
import signal
import subprocess
import time

from dlm_jax.errors import SweepError
from dlm_jax.run import rundir

# submitit's Checkpointable, when installed (this module's classes stay importable without it)
try:
  _helpers = importlib.import_module('submitit.helpers')
  Checkpointable = _helpers.Checkpointable
except ImportError:
  _helpers, Checkpointable = None, object


def _submitit():
  try:
    return importlib.import_module('submitit')
  except ImportError:
    raise SweepError('--backend submitit needs the submitit package (pip install -e ".[slurm]")'
                     ) from None


class RunJob(Checkpointable):
  """One run as a requeueable submitit job: the training command in a child process."""

  def __init__(self, cmd, workdir, env, grace_s):
    self.cmd, self.workdir, self.env, self.grace_s = list(cmd), workdir, dict(env), grace_s
    self.proc = None

  def __getstate__(self):  # pickled at submission and at requeue: never the live child
    return {k: v for k, v in self.__dict__.items() if k != 'proc'}

  def __setstate__(self, state):
    self.__dict__.update(state, proc=None)

  def __call__(self):
    os.makedirs(self.workdir, exist_ok=True)
    with open(os.path.join(self.workdir, 'launcher.log'), 'a', encoding='utf-8') as log:
      log.write(f'--- {time.strftime("%Y-%m-%d %H:%M:%S")} submitit job '
                f'{os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID", "")}\n')
      log.flush()
      self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
      rc = self.proc.wait()
    if rc != 0:
      raise SweepError(f'{self.workdir}: python -m dlm_jax.main exited {rc} '
                       f'(see {os.path.join(self.workdir, "launcher.log")})')
    return rundir.read_summary(self.workdir)

  def checkpoint(self, *args, **kwargs):
    """Preempted or near the time limit: the child checkpoints and stops, then the job is
    requeued with a fresh copy of itself (which resumes the run)."""
    if self.proc is not None and self.proc.poll() is None:
      self.proc.send_signal(signal.SIGTERM)
      try:
        self.proc.wait(timeout=self.grace_s)
      except subprocess.TimeoutExpired:
        self.proc.kill()
    return _helpers.DelayedSubmission(RunJob(self.cmd, self.workdir, self.env, self.grace_s))


def parameters(partition='', time_limit='04:00:00', signal_s=120, gpus=1):
  """The executor's parameters for the sweep's jobs: one task per run, `gpus` GPUs, the time
  limit in minutes, the signal's lead (slurm_signal_delay_s)."""
  try:
    hours, minutes, seconds = (int(x) for x in time_limit.split(':'))
  except ValueError:
    raise SweepError(f'--time {time_limit!r}: use HH:MM:SS') from None
  params = dict(timeout_min=max(1, hours * 60 + minutes + (seconds > 0)),
                slurm_signal_delay_s=signal_s, gpus_per_node=gpus, tasks_per_node=1, nodes=1)
  if partition:
    params['slurm_partition'] = partition
  return params


def executor(root, params, cluster=None):
  """A submitit executor with `params` (its job folders under <root>/submitit/); cluster='local'
  runs the jobs on this machine (the tests), None picks SLURM where sbatch exists."""
  ex = _submitit().AutoExecutor(folder=os.path.join(root, 'submitit', '%j'), cluster=cluster)
  ex.update_parameters(**params)
  return ex


def submit(jobs, ex, root, log=print):
  """Submits {name: RunJob}; writes <root>/submitit_jobs.json (run -> job id); returns jobs."""
  out = {}
  with ex.batch():
    for name, job in jobs.items():
      out[name] = ex.submit(job)
  ids = {name: j.job_id for name, j in out.items()}
  os.makedirs(root, exist_ok=True)
  rundir.atomic_json(os.path.join(root, 'submitit_jobs.json'), ids)
  for name, jid in ids.items():
    log(f'submitted {name} as job {jid}')
  return out


def describe(jobs, params):
  """What --dry-run prints: the executor's parameters and each job's command."""
  lines = [f'# submitit {json.dumps(params, sort_keys=True)}']
  lines += [f'{name}: {" ".join(job.cmd)}' for name, job in jobs.items()]
  return '\n'.join(lines)


def preempt_timeout(signal_s):
  """train.preempt_timeout for a run signalled `signal_s` seconds before its kill: 20 s less, so
  the checkpoint is written in time (a lead under 40 s leaves too little for one)."""
  if signal_s < 40:
    raise SweepError(f'--signal-seconds {signal_s}: must be >= 40 (checkpoint time before the kill)')
  return signal_s - 20


def slurm_array(name, commands, root, repo_root, partition='', time_limit='04:00:00', signal_s=120):
  """An sbatch script running run k of `commands` ({run: argv}) as array task k (one GPU per
  task). Preemption-safe as launch/slurm.sh: SLURM sends SIGTERM `signal_s` seconds ahead
  (--signal), the run checkpoints within train.preempt_timeout = signal_s - 20 and exits 143,
  and the task requeues itself (--requeue; scontrol requeue) to resume from that checkpoint."""
  timeout = preempt_timeout(signal_s)
  lines = ['#!/usr/bin/env bash', f'#SBATCH --job-name=sweep-{name}',
           f'#SBATCH --array=0-{len(commands) - 1}', '#SBATCH --ntasks=1', '#SBATCH --gpus=1',
           f'#SBATCH --time={time_limit}', f'#SBATCH --output={root}/slurm-%A_%a.out',
           '#SBATCH --requeue', f'#SBATCH --signal=TERM@{signal_s}']
  if partition:
    lines.append(f'#SBATCH --partition={partition}')
  lines += ['set -euo pipefail', f'cd {shlex.quote(repo_root)}',
            f'export JAX_COMPILATION_CACHE_DIR={shlex.quote(os.path.join(root, ".xla_cache"))}',
            'case "$SLURM_ARRAY_TASK_ID" in']
  lines += [f'  {i}) cmd=({shlex.join(cmd)}) ;;' for i, cmd in enumerate(commands.values())]
  lines += ['esac', 'rc=0',
            f'srun --kill-on-bad-exit=1 "${{cmd[@]}}" --config.train.preempt_timeout={timeout}'
            ' || rc=$?',
            '# checkpointed on SIGTERM: requeue this task, which resumes the run',
            'if [[ $rc -eq 143 ]]; then scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}";'
            ' exit 0; fi',
            'exit "$rc"']
  return '\n'.join(lines) + '\n'


TPU_TYPES = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'tpu_types.txt')


def tpu_runtimes(path=TPU_TYPES):
  """{generation: TPU VM runtime} from the table launch/tpu_pod.sh reads too (one home)."""
  with open(path, encoding='utf-8') as f:
    return dict(l.split()[:2] for l in f if l.strip() and not l.startswith('#'))


def tpu_runtime(tpu_type, path=TPU_TYPES):
  """The runtime a slice of `tpu_type` ('v4-32': v4's) is created with, as launch/tpu_pod.sh
  picks it; a type it would refuse is a SweepError naming the accepted types."""
  table = tpu_runtimes(path)
  generation, _, chips = tpu_type.partition('-')
  if generation not in table or not chips.isdigit():
    raise SweepError(f'--type {tpu_type}: unknown accelerator type (accepted: '
                     f'{", ".join(g + "-N" for g in table)}; launch/tpu_pod.sh refuses others)')
  return table[generation]


def tpu_commands(name, run_overrides, root_bucket_path, zone, tpu_type, bucket, config_path):
  """launch/tpu_pod.sh invocations, one slice per run ({run: its config overrides}); the runs
  stay resumable in the bucket. A type the launcher would refuse is refused here first."""
  tpu_runtime(tpu_type)
  out = []
  for n, ov in run_overrides.items():
    slug = ('sw-' + name + '-' + n).lower().replace('_', '-').replace('.', '-')[:60]
    out.append(shlex.join(['launch/tpu_pod.sh', '--name', slug, '--zone', zone, '--type',
                           tpu_type, '--bucket', bucket, '--config', config_path, '--run',
                           f'{root_bucket_path}/{n}', '--spot', '--', *ov]))
  return out
