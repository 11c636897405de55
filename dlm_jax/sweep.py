"""Sweeps: named sets of runs, their launchers and the collector.

A sweep file defines `get_sweep()` returning a `Sweep` (`from dlm_jax.sweep import Sweep`): a
base config and {run name: {dotted config key: value}}. A relative base config is found next to
the sweep file, else as a shipped config name (`sweeps/micro_base`). Names are deterministic, so
a run's workdir is <root>/<name> and relaunching a sweep finds its earlier runs: finished runs
(summary.json with status done) are skipped, partial ones resume from their checkpoints, failed
ones are retried. <root> is --root, by default runs/sweeps/<sweep name> under the current
directory (printed).

  python -m dlm_jax.sweep list    configs/sweeps/isoflop_micro.py
  python -m dlm_jax.sweep local   configs/sweeps/isoflop_micro.py --workers 2 [--dry-run]
  python -m dlm_jax.sweep slurm   configs/sweeps/isoflop_micro.py [--submit] [--partition P]
      [--backend submitit] [--signal-seconds 120]
  python -m dlm_jax.sweep tpu     configs/sweeps/isoflop_micro.py --zone Z --type v4-8 --bucket B
  python -m dlm_jax.sweep collect configs/sweeps/isoflop_micro.py [--csv runs.csv]

The local launcher runs up to --workers runs at once, each a fresh `python -m dlm_jax.main`
process in the current directory with your PYTHONPATH, sharing a persistent XLA compilation
cache (<root>/.xla_cache); a failing run is recorded (<root>/<name>/launcher.log and the
table's error column) and never stops the others. A SIGTERM or Ctrl-C is forwarded to the
running children, which checkpoint and stop; the launcher waits.

Sweep files, and the config files they name, are Python executed as code (the ml_collections
convention): run only files you trust.
"""
import argparse
import os
import subprocess
import sys

from dlm_jax import cli
from dlm_jax import errors
from dlm_jax.errors import Preempted, SweepError
from dlm_jax.run import rundir
from dlm_jax.study import clusters
from dlm_jax.study import sweep as sweep_lib
from dlm_jax.study.sweep import Sweep, fmt_num  # pylint: disable=unused-import  # for sweep files


def parser():
  ap = cli.parser('sweep', __doc__)
  ap.add_argument('action', choices=('list', 'local', 'slurm', 'tpu', 'collect'))
  ap.add_argument('sweep', help='a sweep file (e.g. configs/sweeps/*.py, or your own)')
  ap.add_argument('--root', default='',
                  help='runs directory (default: runs/sweeps/<name> under the current directory)')
  ap.add_argument('--workers', type=int, default=1)
  ap.add_argument('--dry-run', action='store_true')
  ap.add_argument('--only', default='', help='comma-separated run names')
  ap.add_argument('--csv', default='', help='collect: output (default <root>/runs.csv)')
  ap.add_argument('--submit', action='store_true', help='slurm: run sbatch')
  ap.add_argument('--backend', choices=('sbatch', 'submitit'), default='sbatch',
                  help='slurm: an sbatch job array, or one submitit job per run (requeued '
                  'automatically on preemption or time limit; study/clusters.py)')
  ap.add_argument('--partition', default='')
  ap.add_argument('--time', default='04:00:00')
  ap.add_argument('--signal-seconds', type=int, default=120,
                  help='slurm: SIGTERM / submitit signal this long before the kill')
  ap.add_argument('--gpus', type=int, default=1, help='slurm submitit: GPUs per run')
  ap.add_argument('--cluster', default=None, help=argparse.SUPPRESS)  # tests: submitit 'local'
  ap.add_argument('--python', default='python')
  ap.add_argument('--zone', default='')
  ap.add_argument('--type', default='v4-8')
  ap.add_argument('--bucket', default='')
  return ap


def write_table(root, names, out=None):
  """Collects `names` into <root>/runs.csv (or `out`); a failed write ends the command (exit 1)."""
  rows = sweep_lib.collect(root, names)
  try:
    sweep_lib.write_csv(rows, out or os.path.join(root, 'runs.csv'))
  except SweepError as e:
    raise errors.Error(str(e)) from None
  return rows


def local(a, sw, root, cfg, runs):
  try:
    st = sweep_lib.run_local(cfg, root, runs, workers=a.workers, dry_run=a.dry_run)
  except Preempted:  # the children were stopped and waited for; the table still written
    sweep_lib.write_csv(sweep_lib.collect(root, list(sw.runs)), os.path.join(root, 'runs.csv'))
    raise
  failed = {k: v for k, v in st.items() if v.startswith('failed')}
  if not a.dry_run:
    write_table(root, list(sw.runs))
  print(f'{sum(v == "done" for v in st.values())} done, {len(failed)} failed'
        + (f' ({", ".join(failed)})' if failed else ''))
  sys.exit(1 if failed else 0)


def collect(a, root, runs):
  out = a.csv or os.path.join(root, 'runs.csv')
  rows = write_table(root, list(runs), out)
  bad = [r for r in rows if r['status'] != 'done']
  print(f'{len(rows) - len(bad)} done runs -> {out}')
  for r in bad:
    print(f'  {r["status"]:8s} {r["run"]} {r.get("error", "")}')


def submitit(a, root, cfg, runs):
  """`slurm --backend submitit`: one requeueable job per run not yet done."""
  timeout = clusters.preempt_timeout(a.signal_seconds)
  todo = {n: s for n, s in runs.items() if not rundir.is_done(os.path.join(root, n))}
  env = sweep_lib.worker_env(root, 1)
  jobs = {n: clusters.RunJob(sweep_lib.command(cfg, os.path.join(root, n), s, a.python) +
                             [f'--config.train.preempt_timeout={timeout}'],
                             os.path.join(root, n), env, timeout + 10)
          for n, s in todo.items()}
  params = clusters.parameters(a.partition, a.time, a.signal_seconds, a.gpus)
  print(f'{len(runs) - len(todo)} runs already done; {len(todo)} to submit')
  if a.dry_run:
    print(clusters.describe(jobs, params))
  elif jobs:
    clusters.submit(jobs, clusters.executor(root, params, a.cluster), root)


def sbatch(a, sw, root, cfg, runs):
  """`slurm`: an sbatch job array whose tasks start in the current directory, as `local` does."""
  script = clusters.slurm_array(
      sw.name, {n: sweep_lib.command(cfg, os.path.join(root, n), s, a.python)
                for n, s in runs.items()},
      root, os.getcwd(), a.partition, a.time, a.signal_seconds)
  path = os.path.join(root, 'sweep.sbatch')
  if a.dry_run or not a.submit:
    print(script, end='')
    print(f'# sbatch {path}')
  if not a.dry_run:
    os.makedirs(root, exist_ok=True)
    open(path, 'w', encoding='utf-8').write(script)
    if a.submit:
      subprocess.run(['sbatch', path], check=True)


def tpu(a, sw, cfg, runs):
  if not (a.zone and a.bucket):
    raise SweepError('tpu needs --zone and --bucket')
  rel = os.path.relpath(cfg)  # launch/tpu_pod.sh runs from the clone it ships
  for c in clusters.tpu_commands(sw.name, {n: sweep_lib.overrides(s) for n, s in runs.items()},
                                 f'sweeps/{sw.name}', a.zone, a.type, a.bucket,
                                 cfg if rel.startswith('..') else rel):
    print(c)


@errors.cli
def main(argv=None):
  a = parser().parse_args(argv)
  sw = sweep_lib.load_sweep(a.sweep)
  root = os.path.abspath(a.root) if a.root else sweep_lib.default_root(sw)
  runs = sw.runs
  if a.only:
    want = a.only.split(',')
    unknown = [w for w in want if w not in runs]
    if unknown:
      raise SweepError(f'--only: unknown runs {", ".join(unknown)}')
    runs = {k: runs[k] for k in want}
  cfg = sweep_lib.base_config_path(sw)
  if not a.root and a.action in ('local', 'slurm'):  # never silently: it is the current directory
    print(f'runs directory: {root} (--root to choose another)',
          file=sys.stdout if a.action == 'local' else sys.stderr)
  if a.action == 'list':
    for n, s in runs.items():
      print(f'{rundir.status_of(os.path.join(root, n)):8s} {n}  {" ".join(sweep_lib.overrides(s))}')
    print(f'{len(runs)} runs in {root}')
  elif a.action == 'local':
    local(a, sw, root, cfg, runs)
  elif a.action == 'collect':
    collect(a, root, runs)
  elif a.action == 'slurm' and a.backend == 'submitit':
    submitit(a, root, cfg, runs)
  elif a.action == 'slurm':
    sbatch(a, sw, root, cfg, runs)
  elif a.action == 'tpu':
    tpu(a, sw, cfg, runs)


if __name__ == '__main__':
  main()
