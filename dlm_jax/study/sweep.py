"""Sweeps: named sets of runs, their launchers and the collector.

A sweep file (configs/sweeps/*.py) defines `get_sweep()` returning a `Sweep`: a base config file
and {run name: {dotted config key: value}}. Names are deterministic, so a run's workdir is
<root>/<name> and relaunching a sweep finds its earlier runs: finished runs (summary.json with
status done) are skipped, partial ones resume from their checkpoints, failed ones are retried.

  python -m dlm_jax.sweep list    configs/sweeps/isoflop_micro.py
  python -m dlm_jax.sweep local   configs/sweeps/isoflop_micro.py --workers 2 [--dry-run]
  python -m dlm_jax.sweep slurm   configs/sweeps/isoflop_micro.py [--submit] [--partition P]
      [--backend submitit] [--signal-seconds 120]
  python -m dlm_jax.sweep tpu     configs/sweeps/isoflop_micro.py --zone Z --type v4-8 --bucket B
  python -m dlm_jax.sweep collect configs/sweeps/isoflop_micro.py [--csv runs.csv]

The local launcher runs up to --workers runs at once, each in a fresh `python -m dlm_jax.main`
process sharing a persistent XLA compilation cache (<root>/.xla_cache); a failing run is recorded
(<root>/<name>/launcher.log and the table's error column) and never stops the others. A SIGTERM
or Ctrl-C is forwarded to the running children, which checkpoint and stop; the launcher waits.

Sweep files, and the config files they name, are Python executed as code (the ml_collections
convention): run only files you trust.
"""
import argparse
import concurrent.futures
import csv
import dataclasses
import importlib.util
import os
import shlex
import signal
import subprocess
import sys
import threading
import time

from dlm_jax import config as config_lib
from dlm_jax import errors
from dlm_jax.core import objectives
from dlm_jax.errors import ConfigError, DataError, Preempted, SweepError
from dlm_jax.run import rundir
from dlm_jax.study import clusters

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))


@dataclasses.dataclass
class Sweep:
  name: str
  base_config: str        # a config file, relative to the repository root
  runs: dict              # {run name: {dotted key: value}}
  description: str = ''



def load_sweep(path) -> Sweep:
  if not os.path.exists(path):
    raise SweepError(f'sweep file not found: {path}')
  spec = importlib.util.spec_from_file_location('sweep_file', path)
  mod = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(mod)
    if not hasattr(mod, 'get_sweep'):
      raise SweepError(f'{path}: defines no get_sweep()')
    sw = mod.get_sweep()
  except SweepError:
    raise
  except Exception as e:  # pylint: disable=broad-except  # a broken sweep file: name it
    where = f' (line {e.lineno})' if isinstance(e, SyntaxError) else ''
    raise SweepError(f'{path}{where}: {type(e).__name__}: {e}') from None
  if not isinstance(sw, Sweep):
    raise SweepError(f'{path}: get_sweep() returned {type(sw).__name__!r}, not a '
                     'dlm_jax.sweep.Sweep')
  for name in sw.runs:
    if not name or '/' in name or name.startswith('.'):
      raise SweepError(f'{path}: run name {name!r} is not a plain directory name')
  try:  # found here, not when each run starts
    cfg = config_lib.load_file(base_config_path(sw))
  except ConfigError as e:
    raise SweepError(f'{path}: base config: {e}') from None
  for name, setting in sw.runs.items():
    for key in setting:
      try:
        config_lib.check_override(cfg, key)
      except ConfigError as e:
        raise SweepError(f'{path}: run {name!r}: {e}') from None
  return sw


def base_config_path(sw):
  """The sweep's base config file: absolute, or relative to the repository root."""
  return sw.base_config if os.path.isabs(sw.base_config) else os.path.join(ROOT, sw.base_config)


def overrides(setting: dict) -> list[str]:
  return [f'--config.{k}={v}' for k, v in setting.items()]


def fmt_num(x) -> str:
  """Short deterministic number for run names: 1.5e+11 -> 1.5e11, 0.25 -> 0.25."""
  if isinstance(x, float) and (x >= 1e4 or (0 < x < 1e-3)):
    m, e = f'{x:.3g}'.split('e')
    return f'{m}e{int(e)}'
  return f'{x:g}' if isinstance(x, float) else str(x)




def command(config_path, workdir, setting, python=sys.executable):
  return [python, '-m', 'dlm_jax.main', '--config', config_path, '--workdir', workdir,
          *overrides(setting)]


def worker_env(root, workers):
  env = dict(os.environ)
  env.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(os.path.abspath(root), '.xla_cache'))
  env.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
  env.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
  if workers > 1:  # one intra-op thread per run, so concurrent runs do not oversubscribe cores
    env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') + ' --xla_cpu_multi_thread_eigen=false '
                        'intra_op_parallelism_threads=1').strip()
  env['PYTHONPATH'] = ROOT + os.pathsep + env.get('PYTHONPATH', '')
  return env


class Children:
  """The launcher's live training processes. A SIGTERM / SIGINT to the launcher is forwarded to
  each (they checkpoint and stop), no further run starts, and the launcher waits for them: a
  stopped sweep leaves no orphan writing into a run directory."""

  def __init__(self):
    self.procs, self.lock, self.signum = set(), threading.Lock(), 0

  def forward(self, signum, frame=None):
    del frame
    with self.lock:
      self.signum = self.signum or signum
      for p in self.procs:
        if p.poll() is None:
          p.send_signal(signum)

  def run(self, cmd, log, env):
    """The run's exit status, or None when the sweep was stopped before it started."""
    with self.lock:
      if self.signum:
        return None
      # its own session: a Ctrl-C at the terminal reaches the launcher only, which forwards it once
      p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                           start_new_session=True)
      self.procs.add(p)
    try:
      return p.wait()
    finally:
      with self.lock:
        self.procs.discard(p)


def _run_one(cmd, workdir, env, children):
  t = time.time()
  try:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, 'launcher.log'), 'a', encoding='utf-8') as log:
      log.write(f'$ {shlex.join(cmd)}\n')
      log.flush()
      code = children.run(cmd, log, env)
  except OSError as e:  # the run directory cannot be made or written: this run fails, not the sweep
    return f'failed: cannot write {workdir}: {e.strerror or e}', time.time() - t
  if code is None:
    return 'not started (sweep stopped)', 0.0
  if code == 0:
    return 'done', time.time() - t
  tail = open(os.path.join(workdir, 'launcher.log'), encoding='utf-8').read().strip()
  last = [l for l in tail.splitlines() if l.startswith('error:')] or tail.splitlines()[-1:]
  if code in (128 + signal.SIGTERM, 128 + signal.SIGINT) and children.signum:
    return f'stopped (checkpointed): {last[-1][:300] if last else ""}', time.time() - t
  return f'failed: exit {code}: {last[-1][:300] if last else ""}', time.time() - t


def run_local(config_path: str, root: str, settings: dict, log=print, workers=1,
              dry_run=False) -> dict:
  """Runs every setting not yet done, `workers` at a time; {name: 'done' | 'failed: ...' |
  'stopped ...'}. A SIGTERM / SIGINT stops the sweep: forwarded to the running children, waited
  for, then raised as Preempted (exit 128 + n)."""
  status, todo = {}, []
  for name, setting in settings.items():
    wd = os.path.join(root, name)
    if rundir.is_done(wd):
      status[name] = 'done'
    else:
      todo.append((name, command(config_path, wd, setting), wd))
  log(f'{len(status)} runs already done, {len(todo)} to run with {workers} worker(s)')
  if dry_run:
    for name, cmd, _ in todo:
      log(shlex.join(cmd))
      status[name] = 'pending'
    return status
  env = worker_env(root, workers)
  t0 = time.time()
  children = Children()
  main_thread = threading.current_thread() is threading.main_thread()
  previous = {s: signal.signal(s, children.forward) for s in (signal.SIGTERM, signal.SIGINT)
              } if main_thread else {}
  try:
    with concurrent.futures.ThreadPoolExecutor(max(workers, 1)) as pool:
      futs = {pool.submit(_run_one, cmd, wd, env, children): name for name, cmd, wd in todo}
      for i, fut in enumerate(concurrent.futures.as_completed(futs), 1):
        name = futs[fut]
        st, dt = fut.result()
        status[name] = st
        log(f'[{i}/{len(todo)}] {name}: {st} ({dt:.0f} s; {time.time() - t0:.0f} s elapsed)')
  finally:
    for s, h in previous.items():
      signal.signal(s, h)
  if children.signum:
    raise Preempted(None, children.signum, f'sweep stopped ({signal.Signals(children.signum).name}'
                    f'): {", ".join(f"{k}: {v}" for k, v in status.items() if v != "done")}; '
                    'rerun the same command to resume')
  return status


# ------------------------------------------------------------------------------------ collector

COLUMNS = ('run', 'status', 'objective', 'ratio', 'size', 'N', 'N_total', 'N_nonembed', 'D', 'U',
           'epochs', 'C', 'loss', 'loss_metric', 'steps', 'wall_time_s', 'error')


def loss_of(summary, which='final'):
  """The run's headline validation loss (the objective registry's `headline`: AR NLL where the
  run has an AR share, else the MDM NELBO; a dual run's NELBO stays in its own column)."""
  f = summary.get(which, {})
  obj = objectives.OBJECTIVES.get(summary.get('objective'))
  for k in (obj.headline if obj else ()):
    if k in f:
      return f[k], k
  return float('nan'), ''


def collect(root, names):
  """One row per expected run, in sweep order; missing, failed and unfinished runs are rows
  with their status (never dropped)."""
  rows = []
  for name in names:
    wd = os.path.join(root, name)
    st = rundir.status_of(wd)
    if st.startswith(('preempted', 'interrupted')):  # resumable: the next `local` continues it
      st = 'partial'
    row = dict(run=name, status=st if st in ('done', 'missing', 'partial') else 'failed',
               error='' if st in ('done', 'missing', 'partial') else st)
    if os.path.exists(rundir.path(wd, rundir.SUMMARY)):
      try:
        s = rundir.read_summary(wd)
      except DataError:  # reported in the row's status
        s = {}
      loss, key = loss_of(s)
      row.update({k: s.get(k) for k in ('objective', 'ratio', 'size', 'N_total', 'N_nonembed', 'D',
                                        'U', 'epochs', 'C', 'steps', 'wall_time_s')})
      row.update(N=s.get('N_nonembed'), loss=loss, loss_metric=key)
      for which in ('final', 'best'):
        for k, v in s.get(which, {}).items():
          row[f'{which}_{k}'] = v
    elif st == 'missing' and os.path.isdir(wd):
      row.update(status='failed', error=_last_error(wd) or 'no summary.json')
    rows.append(row)
  return rows


def _last_error(wd):
  p = os.path.join(wd, 'launcher.log')
  if not os.path.exists(p):
    return ''
  lines = [l for l in open(p, encoding='utf-8').read().splitlines() if l.strip()]
  errs = [l for l in lines if l.startswith('error:')]
  return (errs or lines[-1:] or [''])[-1][:300]


def write_csv(rows, path):
  """Atomically: a failed write (full disk) leaves the previous table intact."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  keys = list(COLUMNS) + sorted({k for r in rows for k in r} - set(COLUMNS))
  try:
    with open(path + '.tmp', 'w', newline='', encoding='utf-8') as f:
      w = csv.DictWriter(f, keys)
      w.writeheader()
      for r in rows:
        w.writerow({k: r.get(k, '') for k in keys})
    os.replace(path + '.tmp', path)
  except OSError as e:
    raise SweepError(f'could not write {path} ({e}); the previous table, if any, is kept') from None


RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results')


def shipped_table(name: str) -> str:
  """A runs table shipped with the package (dlm_jax/study/results/<name>.csv: the micro sweeps
  behind docs/ and the notebooks), so an analysis runs without training."""
  path = os.path.join(RESULTS, f'{name}.csv')
  if not os.path.isfile(path):
    names = sorted(f[:-4] for f in os.listdir(RESULTS) if f.endswith('.csv'))
    raise SweepError(f'no shipped runs table {name!r} (shipped: {", ".join(names)})')
  return path


def read_csv(path):
  """A runs table (runs.csv) as a list of row dicts (strings): the one reader of the file."""
  try:
    with open(path, encoding='utf-8') as f:
      return list(csv.DictReader(f))
  except FileNotFoundError:
    raise SweepError(f'{path}: no such runs table') from None


def dataframe(rows):
  """A pandas DataFrame of collected rows (dicts or CSV strings), numeric columns as numbers."""
  import pandas as pd  # pylint: disable=g-import-not-at-top
  df = pd.DataFrame(rows)
  for c in df.columns:
    conv = pd.to_numeric(df[c].replace('', float('nan')), errors='coerce')
    if conv.notna().sum() == (df[c].astype(str) != '').sum() and conv.notna().any():
      df[c] = conv
  return df




# ------------------------------------------------------------------------------------ clusters

def _submitit(a, sw, root, cfg, runs):
  """`slurm --backend submitit`: one requeueable job per run not yet done."""
  timeout = clusters.preempt_timeout(a.signal_seconds)
  todo = {n: s for n, s in runs.items() if not rundir.is_done(os.path.join(root, n))}
  env = worker_env(root, 1)
  jobs = {n: clusters.RunJob(command(cfg, os.path.join(root, n), s, a.python) +
                             [f'--config.train.preempt_timeout={timeout}'],
                             os.path.join(root, n), env, timeout + 10)
          for n, s in todo.items()}
  params = clusters.parameters(a.partition, a.time, a.signal_seconds, a.gpus)
  print(f'{len(runs) - len(todo)} runs already done; {len(todo)} to submit')
  if a.dry_run:
    print(clusters.describe(jobs, params))
  elif jobs:
    clusters.submit(jobs, clusters.executor(root, params, a.cluster), root)


@errors.cli
def main(argv=None):
  ap = argparse.ArgumentParser(prog='python -m dlm_jax.sweep', description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument('action', choices=('list', 'local', 'slurm', 'tpu', 'collect'))
  ap.add_argument('sweep', help='a sweep file (configs/sweeps/*.py)')
  ap.add_argument('--root', default='', help='runs directory (default runs/sweeps/<name>)')
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
  a = ap.parse_args(argv)
  try:
    sw = load_sweep(a.sweep)
  except SweepError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  root = os.path.abspath(a.root or os.path.join(ROOT, 'runs', 'sweeps', sw.name))
  runs = sw.runs
  if a.only:
    want = a.only.split(',')
    unknown = [w for w in want if w not in runs]
    if unknown:
      print(f'error: --only: unknown runs {", ".join(unknown)}', file=sys.stderr)
      sys.exit(2)
    runs = {k: runs[k] for k in want}
  cfg = base_config_path(sw)
  if a.action == 'list':
    for n, s in runs.items():
      print(f'{rundir.status_of(os.path.join(root, n)):8s} {n}  {" ".join(overrides(s))}')
    print(f'{len(runs)} runs in {root}')
  elif a.action == 'local':
    try:
      st = run_local(cfg, root, runs, workers=a.workers, dry_run=a.dry_run)
    except Preempted as e:  # the children were stopped and waited for; the table still written
      write_csv(collect(root, list(sw.runs)), os.path.join(root, 'runs.csv'))
      print(e, file=sys.stderr)
      sys.exit(e.exit_code)
    failed = {k: v for k, v in st.items() if v.startswith('failed')}
    rows = collect(root, list(sw.runs))
    if not a.dry_run:
      try:
        write_csv(rows, os.path.join(root, 'runs.csv'))
      except SweepError as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(1)
    print(f'{sum(v == "done" for v in st.values())} done, {len(failed)} failed'
          + (f' ({", ".join(failed)})' if failed else ''))
    sys.exit(1 if failed else 0)
  elif a.action == 'collect':
    rows = collect(root, list(runs))
    out = a.csv or os.path.join(root, 'runs.csv')
    try:
      write_csv(rows, out)
    except SweepError as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(1)
    bad = [r for r in rows if r['status'] != 'done']
    print(f'{len(rows) - len(bad)} done runs -> {out}')
    for r in bad:
      print(f'  {r["status"]:8s} {r["run"]} {r.get("error", "")}')
  elif a.action == 'slurm' and a.backend == 'submitit':
    _submitit(a, sw, root, cfg, runs)
  elif a.action == 'slurm':
    script = clusters.slurm_array(
        sw.name, {n: command(cfg, os.path.join(root, n), s, a.python) for n, s in runs.items()},
        root, ROOT, a.partition, a.time, a.signal_seconds)
    path = os.path.join(root, 'sweep.sbatch')
    if a.dry_run or not a.submit:
      print(script, end='')
      print(f'# sbatch {path}')
    if not a.dry_run:
      os.makedirs(root, exist_ok=True)
      open(path, 'w', encoding='utf-8').write(script)
      if a.submit:
        subprocess.run(['sbatch', path], check=True)
  elif a.action == 'tpu':
    if not (a.zone and a.bucket):
      print('error: tpu needs --zone and --bucket', file=sys.stderr)
      sys.exit(2)
    for c in clusters.tpu_commands(sw.name, {n: overrides(s) for n, s in runs.items()},
                                   f'sweeps/{sw.name}', a.zone, a.type, a.bucket, sw.base_config):
      print(c)


if __name__ == '__main__':
  main()
