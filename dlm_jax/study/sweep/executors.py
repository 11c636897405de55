"""The local executor: a pool of `python -m dlm_jax.main` processes, one per run.

Children run as the user's own `python -m dlm_jax.main` would: in the launcher's working
directory, with the user's PYTHONPATH (so a config importing a module next to it, or a relative
data.corpus, means what it means to main), plus the folder this dlm_jax was imported from when
that is not an installed location. They share a persistent XLA compilation cache under the
sweep's runs directory; nothing is written next to the installed package.
"""
import concurrent.futures
import os
import shlex
import signal
import site
import subprocess
import sys
import sysconfig
import threading
import time

from dlm_jax.errors import Preempted
from dlm_jax.run import rundir
from dlm_jax.study.sweep import loading


def command(config_path, workdir, setting, python=sys.executable):
  return [python, '-m', 'dlm_jax.main', '--config', config_path, '--workdir', workdir,
          *loading.overrides(setting)]


def package_parent() -> str | None:
  """The folder to put on a child's PYTHONPATH so it imports this dlm_jax: the clone it came from;
  None for an installed package (site-packages: found by the same interpreter without help, and
  never put ahead of the standard library)."""
  parent = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..', '..'))
  installed = {sysconfig.get_paths()[k] for k in ('purelib', 'platlib')}
  installed |= set(site.getsitepackages()) | {site.getusersitepackages()}
  real = {os.path.realpath(p) for p in installed}
  return None if os.path.realpath(parent) in real else parent


def worker_env(root, workers):
  env = dict(os.environ)
  env.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(os.path.abspath(root), '.xla_cache'))
  env.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
  env.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
  if workers > 1:  # one intra-op thread per run, so concurrent runs do not oversubscribe cores
    env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') + ' --xla_cpu_multi_thread_eigen=false '
                        'intra_op_parallelism_threads=1').strip()
  paths = [p for p in env.get('PYTHONPATH', '').split(os.pathsep) if p]
  parent = package_parent()
  if parent and parent not in paths:
    paths.append(parent)
  if paths:
    env['PYTHONPATH'] = os.pathsep.join(paths)
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
      # its own session: a Ctrl-C at the terminal reaches the launcher only, which forwards it
      # once; the launcher's working directory, as `python -m dlm_jax.main` run by hand
      p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
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
