"""Faults a long sweep meets: SIGKILL, unreadable checkpoints, NaNs, a full disk, broken runs.

Each test is one row of RELIABILITY.md."""
import csv
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import ROOT, tiny_config
from dlm_jax import config as config_lib
from dlm_jax import errors
from dlm_jax.run import checkpoint
from dlm_jax.run import resume
from dlm_jax.run import loop
from dlm_jax.run import step as step_lib

ENV = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu')

CONFIG = textwrap.dedent('''
    import sys
    sys.path.insert(0, {tests!r})
    from conftest import tiny_config
    def get_config():
      c = tiny_config({objective!r}, num_steps={steps}, checkpoint_every={every},
                      eval_every=10, ema_decay=0.9, token_dropout=0.1)
      c.model.mlp_dropout = c.model.attn_dropout = 0.1
      c.sample.num_samples = 0
      c.mesh.data, c.mesh.fsdp = {data}, {fsdp}
      return c
''')


def rows(wd):
  return [json.loads(l) for l in open(os.path.join(wd, 'metrics.jsonl'))]


def state_at(wd, step):
  mngr = ocp.CheckpointManager(os.path.join(os.path.abspath(wd), 'checkpoints'))
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])  # from any mesh onto this device
  return mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(fallback_sharding=one)))['state']


def assert_same_run(ref, wd, steps):
  """Every logged metric (but wall-clock rates), every evaluation and the final state agree
  exactly, and each step is logged once."""
  a, b = rows(ref), rows(wd)
  assert [r['step'] for r in b] == list(range(1, steps + 1))
  clock = ('tokens_per_s', 'flops_per_s', 'wall_time_s')
  for x, y in zip(a, b):
    assert {k: v for k, v in x.items() if k not in clock} == {
        k: v for k, v in y.items() if k not in clock}, (x['step'], x, y)
  ev = lambda d: json.load(open(os.path.join(d, 'eval', 'validation.json')))
  assert ev(ref) == ev(wd)
  sa, sb = state_at(ref, steps), state_at(wd, steps)
  for k in ('params', 'opt_state', 'ema_params', 'rng', 'step'):
    jax.tree_util.tree_map(np.testing.assert_array_equal, sa[k], sb[k])


def _kill_at_random_step(tmp_path, objective, data=1, fsdp=1, steps=36):
  cfg = tmp_path / 'cfg.py'
  cfg.write_text(CONFIG.format(tests=os.path.join(ROOT, 'tests'), objective=objective,
                               steps=steps, every=3, data=data, fsdp=fsdp))
  env = dict(ENV)
  if data * fsdp > 1:
    env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={data * fsdp}'
  cmd = lambda wd: [sys.executable, '-m', 'dlm_jax.main', f'--config={cfg}', f'--workdir={wd}']
  ref, wd = str(tmp_path / 'ref'), str(tmp_path / 'killed')
  r = subprocess.run(cmd(ref), env=env, capture_output=True, text=True, check=False)
  assert r.returncode == 0, r.stderr[-3000:]
  kill_after = random.randint(4, steps - 6)  # a different step each time the suite runs
  p = subprocess.Popen(cmd(wd), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  metrics = os.path.join(wd, 'metrics.jsonl')
  deadline = time.time() + 300
  while time.time() < deadline and p.poll() is None and not (
      os.path.exists(metrics) and len(open(metrics).readlines()) >= kill_after):
    time.sleep(0.005)
  p.send_signal(signal.SIGKILL)  # no handler, no cleanup: possibly in the middle of a save
  p.wait()
  assert p.returncode == -signal.SIGKILL, f'the run ended before the kill (step {kill_after})'
  r = subprocess.run(cmd(wd), env=env, capture_output=True, text=True, check=False)
  assert r.returncode == 0, (kill_after, r.stderr[-3000:])
  assert_same_run(ref, wd, steps)
  assert not [n for n in os.listdir(os.path.join(wd, 'checkpoints')) if 'tmp' in n]


@pytest.mark.parametrize('objective,data,fsdp', [
    ('dual', 2, 2),
    pytest.param('ar', 1, 1, marks=pytest.mark.slow),
    pytest.param('mdm', 1, 1, marks=pytest.mark.slow),
    pytest.param('dual', 1, 1, marks=pytest.mark.slow),
])
def test_sigkill_at_a_random_step_then_resume_equals_uninterrupted(tmp_path, objective, data,
                                                                   fsdp):
  """SIGKILL through the real CLI at a random step (EMA, dropout, token dropout on; data=2 x
  fsdp=2 on 4 CPU devices for the mesh case); the same command resumes and every later metric,
  evaluation, parameter, Adam moment and rng equals the uninterrupted run's, bit for bit."""
  _kill_at_random_step(tmp_path, objective, data, fsdp)


# ------------------------------------------------------------------------ checkpoint faults

def _cfg(steps, **kw):
  c = tiny_config('ar', **dict(dict(num_steps=steps, checkpoint_every=2, eval_every=100,
                                    lr_schedule='constant'), **kw))
  c.sample.num_samples = 0
  return c


def _truncate_largest_data_file(step_dir):
  files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(step_dir, 'state'))
           for f in fs if os.sep + 'd' + os.sep in os.path.join(d, f) + os.sep]
  big = max(files, key=os.path.getsize)
  os.truncate(big, os.path.getsize(big) // 3)


def _remove_manifests(step_dir):  # what a write cut short on a non-atomic filesystem leaves
  for d, _, fs in os.walk(os.path.join(step_dir, 'state')):
    for f in fs:
      if f == 'manifest.ocdbt':
        os.remove(os.path.join(d, f))


@pytest.mark.parametrize('damage', [_truncate_largest_data_file, _remove_manifests],
                         ids=['truncated', 'partly_written'])
def test_unreadable_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, damage):
  ref, wd = str(tmp_path / 'ref'), str(tmp_path / 'run')
  loop.train_and_evaluate(_cfg(10), ref)
  loop.train_and_evaluate(_cfg(6), wd)
  ckpt = os.path.join(wd, 'checkpoints')
  damage(os.path.join(ckpt, '6'))
  os.makedirs(os.path.join(ckpt, '8.orbax-checkpoint-tmp-1234', 'state'))  # a killed write
  with pytest.warns(UserWarning, match=r'checkpoint step 6 is unreadable \(.+\); using the '
                    r'previous good checkpoint, step 4'):
    loop.train_and_evaluate(_cfg(10), wd)
  assert sorted(os.listdir(ckpt)) == ['10', '6', '6.unreadable', '8']  # kept aside, tmp gone
  assert [r['step'] for r in rows(wd)] == list(range(1, 11))
  for k in ('params', 'opt_state'):
    jax.tree_util.tree_map(np.testing.assert_array_equal, state_at(ref, 10)[k],
                           state_at(wd, 10)[k])


def test_no_readable_checkpoint_names_every_step_and_moves_nothing(tmp_path):
  wd = str(tmp_path / 'run')
  loop.train_and_evaluate(_cfg(4), wd)
  ckpt = os.path.join(wd, 'checkpoints')
  for s in ('2', '4'):
    _remove_manifests(os.path.join(ckpt, s))
  before = open(os.path.join(wd, 'metrics.jsonl')).read()
  with pytest.raises(errors.TrainingError, match=r'no readable checkpoint \(step 4: .+; step 2: '):
    loop.train_and_evaluate(_cfg(6), wd)
  assert sorted(os.listdir(ckpt)) == ['2', '4']
  assert open(os.path.join(wd, 'metrics.jsonl')).read() == before


def test_keep_period_and_max_to_keep(tmp_path):
  wd = str(tmp_path / 'run')
  loop.train_and_evaluate(_cfg(14, max_to_keep=2, keep_period=6), wd)
  steps = sorted(int(n) for n in os.listdir(os.path.join(wd, 'checkpoints')))
  assert steps == [6, 12, 14]  # the newest two (12, 14) and every 6th


def test_params_restore_without_optimizer_state_and_past_a_damaged_step(tmp_path):
  """load_params (eval, sampling, init_from) reads only the parameters: it works on a
  checkpoint that holds no optimizer state at all, and passes over an unreadable newest step."""
  wd = str(tmp_path / 'run')
  loop.train_and_evaluate(_cfg(4), wd)
  cfg = resume.from_run(json.load(open(os.path.join(wd, 'config.json'))))
  params, step = checkpoint.load_params(wd, cfg)
  assert step == 4
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, state_at(wd, 4)['params'])
  # a params-only checkpoint (as an exporter would write it)
  mngr = ocp.CheckpointManager(os.path.join(os.path.abspath(wd), 'checkpoints'))
  mngr.save(5, args=ocp.args.Composite(state=ocp.args.StandardSave({'params': params})))
  mngr.wait_until_finished()
  got, step = checkpoint.load_params(wd, cfg)
  assert step == 5
  jax.tree_util.tree_map(np.testing.assert_array_equal, got, params)
  _remove_manifests(os.path.join(wd, 'checkpoints', '5'))
  with pytest.warns(UserWarning, match='step 5 is unreadable .+ using the previous good '
                    'checkpoint, step 4'):
    got, step = checkpoint.load_params(wd, cfg)
  assert step == 4 and os.path.isdir(os.path.join(wd, 'checkpoints', '5'))  # read-only: kept


# ---------------------------------------------------------------------------- numerical faults

def _poison(monkeypatch, bad_steps):
  """Makes the loss NaN at the given (0-based) update indices, inside the compiled step."""
  real = step_lib.make_train_step

  def poisoned(loss_fn, tx, sched, ema_decay, grad_accum=1, finalize=None):
    def train_step(state, batch, n_mdm=None):
      bad = jax.numpy.isin(state.step, jax.numpy.array(bad_steps))

      def nan_loss(*a, **k):
        loss, aux = loss_fn(*a, **k)
        return loss * jax.numpy.where(bad, jax.numpy.nan, 1.0), aux
      return real(nan_loss, tx, sched, ema_decay, grad_accum, finalize)(state, batch, n_mdm)
    return train_step
  monkeypatch.setattr(step_lib, 'make_train_step', poisoned)


def test_nan_policy_skip_skips_the_update_and_counts(tmp_path, monkeypatch):
  _poison(monkeypatch, [3, 6])
  cfg = _cfg(8, nan_policy='skip', ema_decay=0.5, checkpoint_every=1, max_to_keep=20)
  wd = str(tmp_path / 'run')
  with pytest.warns(UserWarning, match=r'non-finite loss or gradient at step 4 .+ update skipped '
                    r'\(1 of at most 10\)'):
    s = loop.train_and_evaluate(cfg, wd)
  assert s['status'] == 'done' and s['skipped_updates'] == 2
  for skipped in (4, 7):  # the update that made step N changed nothing
    a, b = state_at(wd, skipped - 1), state_at(wd, skipped)
    for k in ('params', 'opt_state', 'ema_params'):
      jax.tree_util.tree_map(np.testing.assert_array_equal, a[k], b[k])
    assert b['skipped'] == (1 if skipped == 4 else 2)
  a, b = state_at(wd, 4), state_at(wd, 5)
  assert not np.array_equal(a['params']['embed']['embedding'], b['params']['embed']['embedding'])
  r = {x['step']: x for x in rows(wd)}
  assert 'loss' not in r[4] and r[4]['skipped'] == 1 and r[8]['skipped'] == 2
  assert all(np.isfinite(x['loss']) for x in r.values() if 'loss' in x)


def test_nan_policy_skip_stops_after_max_skips(tmp_path, monkeypatch):
  _poison(monkeypatch, [2, 5])
  cfg = _cfg(8, nan_policy='skip', nan_max_skips=1)
  wd = str(tmp_path / 'run')
  with pytest.warns(UserWarning), pytest.raises(
      errors.TrainingError, match=r'at step 6 .+: 2 updates skipped, more than '
      r'train.nan_max_skips=1; the last good checkpoint is step 4'):
    loop.train_and_evaluate(cfg, wd)
  assert json.load(open(os.path.join(wd, 'summary.json')))['status'].startswith('failed')


# ---------------------------------------------------------------------------- a full disk

def _file_size_limit(nbytes):
  def limit():  # writes past it fail with EFBIG, as on a full disk (Python ignores SIGXFSZ)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))
  return limit


def test_full_disk_fails_clearly_keeps_what_was_written_and_rerun_completes(tmp_path):
  cfg = tmp_path / 'cfg.py'
  cfg.write_text(textwrap.dedent(f'''
      import sys
      sys.path.insert(0, {os.path.join(ROOT, "tests")!r})
      from conftest import tiny_config
      def get_config():
        c = tiny_config('ar', num_steps=4, checkpoint_every=4, eval_every=100,
                        lr_schedule='constant')
        c.sample.num_samples = 0
        return c
  '''))
  ref, wd = str(tmp_path / 'ref'), str(tmp_path / 'run')
  cmd = lambda w, n: [sys.executable, '-m', 'dlm_jax.main', f'--config={cfg}', f'--workdir={w}',
                      f'--config.train.num_steps={n}']
  assert subprocess.run(cmd(ref, 8), env=ENV, capture_output=True).returncode == 0
  assert subprocess.run(cmd(wd, 4), env=ENV, capture_output=True).returncode == 0
  metrics = open(os.path.join(wd, 'metrics.jsonl'), 'rb').read()
  no_cache = {k: v for k, v in ENV.items() if k != 'JAX_COMPILATION_CACHE_DIR'}  # its writes fail too
  r = subprocess.run(cmd(wd, 8), env=no_cache, capture_output=True, text=True,
                     preexec_fn=_file_size_limit(256 * 1024))
  assert r.returncode == 1
  errors = [l for l in r.stderr.splitlines() if l.startswith('error: ')]  # orbax logs its own too
  assert len(errors) == 1, r.stderr[-3000:]
  last = errors[0]
  assert last.startswith('error: writing a checkpoint under ') and 'File too large' in last
  assert 'the checkpoints already written are kept (latest: step 4)' in last
  summary = json.load(open(os.path.join(wd, 'summary.json')))
  assert summary['status'].startswith('failed: writing a checkpoint')
  assert open(os.path.join(wd, 'metrics.jsonl'), 'rb').read().startswith(metrics)
  assert state_at(wd, 4)['step'] == 4  # the checkpoint written before the disk filled reads
  r = subprocess.run(cmd(wd, 8), env=ENV, capture_output=True, text=True)  # space freed: rerun
  assert r.returncode == 0 and 'resumed' in r.stdout, r.stderr[-2000:]
  assert [x['loss'] for x in rows(wd)] == [x['loss'] for x in rows(ref)]


def test_unwritable_run_file_is_one_clear_error(tmp_path):
  """An OSError other than a checkpoint write (here metrics.jsonl is a directory): one line
  naming the file, exit 1, the config.json already written kept."""
  wd = tmp_path / 'run'
  os.makedirs(wd / 'metrics.jsonl')
  cfg = tmp_path / 'cfg.py'
  cfg.write_text(textwrap.dedent(f'''
      import sys
      sys.path.insert(0, {os.path.join(ROOT, "tests")!r})
      from conftest import tiny_config
      def get_config():
        return tiny_config('ar', num_steps=2)
  '''))
  r = subprocess.run([sys.executable, '-m', 'dlm_jax.main', f'--config={cfg}',
                      f'--workdir={wd}'], env=ENV, capture_output=True, text=True, check=False)
  assert r.returncode == 1
  errors = [l for l in r.stderr.splitlines() if l.startswith('error: ')]
  assert errors == [f"error: IsADirectoryError: [Errno 21] Is a directory: '{wd}/metrics.jsonl'; "
                    'the checkpoints already written are kept'], r.stderr[-2000:]
  assert (wd / 'config.json').exists()


# ------------------------------------------------------------------ one writer per run directory

def _long_run_config(tmp_path, steps=60):
  cfg = tmp_path / 'long.py'
  cfg.write_text(textwrap.dedent(f'''
      import sys
      sys.path.insert(0, {os.path.join(ROOT, "tests")!r})
      from conftest import tiny_config
      def get_config():
        c = tiny_config('ar', num_steps={steps}, eval_every=20, checkpoint_every=10)
        c.sample.num_samples = 0
        return c
  '''))
  return cfg


def _wait_for_rows(wd, n, p, timeout=300):
  metrics, deadline = os.path.join(wd, 'metrics.jsonl'), time.time() + timeout
  while time.time() < deadline and p.poll() is None and not (
      os.path.exists(metrics) and len(open(metrics).readlines()) >= n):
    time.sleep(0.01)
  assert p.poll() is None, 'the first run ended before the second started'


def test_a_second_writer_is_refused_and_the_first_keeps_every_row(tmp_path):
  """Two trainings (and an eval) on one --workdir: the later ones are refused at once with one
  line naming the workdir and the holder's pid; the first finishes with every metrics row, its
  validation and its own summary. (Before: both ran, the second truncated metrics.jsonl.)"""
  cfg, wd = _long_run_config(tmp_path, steps=300), str(tmp_path / 'run')
  cmd = [sys.executable, '-m', 'dlm_jax.main', f'--config={cfg}', f'--workdir={wd}']
  first = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  _wait_for_rows(wd, 2, first)
  others = [subprocess.Popen(cmd + extra, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for extra in ([], ['--mode=eval'], ['--mode=sample'])]
  for p in others:
    _, err = p.communicate(timeout=300)
    assert p.returncode == 3, err[-2000:]
    assert err.strip().splitlines() == [
        f'error: {wd} is in use (train by pid {first.pid} on {os.uname().nodename} since '
        + err.split(' since ')[1].strip()], err
  assert first.poll() is None, 'the first run ended before the others were refused'
  _, err = first.communicate(timeout=600)
  assert first.returncode == 0, err[-2000:]
  assert [x['step'] for x in rows(wd)] == list(range(1, 301))
  assert json.load(open(os.path.join(wd, 'summary.json')))['steps'] == 300
  # the lock is released with its holder: the same command now resumes (finds the run done)
  r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, check=False)
  assert r.returncode == 0, r.stderr[-2000:]


def test_sweep_local_forwards_sigterm_and_leaves_no_orphan(tmp_path):
  """SIGTERM to `sweep local`: the training child checkpoints and stops, the launcher waits for
  it, writes runs.csv and exits 143 naming the stopped run; a rerun resumes and finishes."""
  cfg = _long_run_config(tmp_path, steps=400)
  (tmp_path / 'sweep.py').write_text(textwrap.dedent(f'''
      from dlm_jax.sweep import Sweep
      def get_sweep():
        return Sweep('t', {str(cfg)!r}, {{'only': {{}}, 'later': {{}}}})
  '''))
  root = tmp_path / 'runs'
  cmd = [sys.executable, '-m', 'dlm_jax.sweep', 'local', str(tmp_path / 'sweep.py'), '--root',
         str(root)]
  p = subprocess.Popen(cmd, env=ENV, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True)
  _wait_for_rows(str(root / 'only'), 3, p)
  p.send_signal(signal.SIGTERM)
  out, err = p.communicate(timeout=300)
  assert p.returncode == 128 + signal.SIGTERM, out + err
  assert err.strip().splitlines()[-1].startswith('sweep stopped (SIGTERM): only: stopped'), err
  assert 'later: not started' in err and 'Traceback' not in err
  # no orphan: the child is gone (its lock is free) and it checkpointed before stopping
  import fcntl  # pylint: disable=import-outside-toplevel
  with open(root / 'only' / '.lock') as f:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  assert os.path.isdir(root / 'only' / 'checkpoints')
  assert (root / 'runs.csv').exists()


@pytest.mark.parametrize('mode,blocker', [
    ('sample', 'samples.jsonl'),
    pytest.param('eval', 'eval/scores.json', marks=pytest.mark.slow),
    pytest.param('eval', '.lock', marks=pytest.mark.slow)])
def test_results_that_cannot_be_written_are_refused_before_any_work(finished_run, tmp_path, mode,
                                                                     blocker):
  """--mode eval / sample where a result file cannot be written (here a directory stands in its
  place; a read-only disk fails the same way): one line naming the file, before the checkpoint
  is even read, and the run's files unchanged. (Before: everything computed, then a traceback.)"""
  base, wd = _copy_run(finished_run, tmp_path)
  target = wd / blocker
  if target.exists():
    target.unlink()
  target.mkdir()
  files = lambda: {p: p.read_bytes() for p in wd.rglob('*') if p.is_file() and p.name != '.lock'}
  before = files()
  r = subprocess.run([sys.executable, '-m', 'dlm_jax.main', f'--config={base / "cfg.py"}',
                      f'--workdir={wd}', f'--mode={mode}', '--config.sample.num_samples=2',
                      '--config.sample.length=8'], env=ENV, capture_output=True, text=True,
                     check=False)
  assert r.returncode in (1, 2) and 'Traceback' not in r.stderr, r.stderr[-2000:]
  assert r.stderr.strip().splitlines() == [r.stderr.strip()] and str(target) in r.stderr, r.stderr
  assert files() == before


def _no_specials(path):
  tokenizers = pytest.importorskip('tokenizers')
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({'a': 0, 'b': 1, '[UNK]': 2},
                                                         unk_token='[UNK]'))
  tok.save(str(path))


@pytest.mark.parametrize('damage', ['truncated', pytest.param('garbage', marks=pytest.mark.slow),
                                    pytest.param('no_specials', marks=pytest.mark.slow)])
def test_a_bad_tokenizer_file_is_named_before_any_work(tmp_path, damage):
  """data.tokenizer pointing at a truncated or garbage JSON file, or one without the special
  tokens at ids 0-3: one line naming the file, exit 1, no run directory left behind."""
  from dlm_jax.data import tokenizers  # pylint: disable=import-outside-toplevel
  path = tmp_path / 'tok.json'
  if damage == 'truncated':
    text = open(tokenizers.BPE_FILE, encoding='utf-8').read()
    path.write_text(text[:len(text) // 2])
  elif damage == 'garbage':
    path.write_bytes(b'\x00\xffnot json at all')
  else:
    _no_specials(path)
  wd = tmp_path / 'run'
  r = subprocess.run([sys.executable, '-m', 'dlm_jax.main', '--config',
                      os.path.join(ROOT, 'configs', 'default.py'), f'--workdir={wd}',
                      f'--config.data.tokenizer={path}'], env=ENV, capture_output=True, text=True,
                     check=False)
  assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stderr[-2000:]
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f'error: tokenizer file {path}'), r.stderr
  assert not wd.exists()


SWEEP_FILES = {
    'not_a_sweep': ('def get_sweep():\n  return 5\n',
                    "get_sweep() returned 'int', not a dlm_jax.sweep.Sweep"),
    'missing_base': ('from dlm_jax.sweep import Sweep\ndef get_sweep():\n'
                     '  return Sweep("x", "configs/nope.py", {"a": {}})\n',
                     'base config: configs/nope.py: no such file beside the sweep file nor a '
                     'shipped config name (python -m dlm_jax.main --help lists them)'),
    'bad_key': ('from dlm_jax.sweep import Sweep\ndef get_sweep():\n'
                '  return Sweep("x", "configs/default.py", {"a": {"model.num_layer": 3}})\n',
                "run 'a': --config.model.num_layer: unknown key (did you mean "
                'config.model.num_layers?)'),
}


@pytest.mark.parametrize('name', [n if n == 'bad_key' else pytest.param(n, marks=pytest.mark.slow)
                                  for n in sorted(SWEEP_FILES)])
def test_a_bad_sweep_file_is_named_before_any_run_starts(tmp_path, name):
  """A sweep file returning something else than a Sweep, naming a missing base config or a key
  the base config does not have: `list` and `local` stop at once with one line naming the file
  (before: found only as each run started, or an AttributeError traceback)."""
  text, want = SWEEP_FILES[name]
  (tmp_path / 's.py').write_text(text)
  for action in ('list', 'local'):
    r = subprocess.run([sys.executable, '-m', 'dlm_jax.sweep', action, str(tmp_path / 's.py'),
                        '--root', str(tmp_path / 'runs')], env=ENV, cwd=ROOT, capture_output=True,
                       text=True, check=False)
    assert r.returncode == 2 and 'Traceback' not in r.stderr, r.stderr
    assert r.stderr.strip() == f'error: {tmp_path / "s.py"}: {want.format(root=ROOT)}', r.stderr
    assert not (tmp_path / 'runs').exists()


def test_other_entry_points_refuse_bad_arguments_in_one_line(tmp_path):
  """`flops abc` (before: a ValueError traceback, exit 1), and `bench step` from outside the
  repository (before: its default config path was relative to the working directory)."""
  r = subprocess.run([sys.executable, '-m', 'dlm_jax.flops', 'abc'], env=ENV, cwd=ROOT,
                     capture_output=True, text=True, check=False)
  assert r.returncode == 2 and r.stderr.strip() == (
      'error: python -m dlm_jax.flops [VOCAB] [SEQ_LEN] takes positive integers, got abc')
  r = subprocess.run([sys.executable, '-m', 'dlm_jax.bench', 'step', '--steps', '1',
                      '--config.model.d_model=32', '--config.model.num_layers=1',
                      '--config.model.num_heads=2', '--config.train.batch_size=2',
                      '--config.data.seq_len=16', '--config.data.tokenizer=byte'],
                     env=ENV, cwd=tmp_path, capture_output=True, text=True, check=False)
  assert r.returncode == 0, r.stderr[-2000:]
  assert json.loads(r.stdout.strip().splitlines()[-1])['d_model'] == 32


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory):
  """A finished 4-step run with checkpoints at steps 2 and 4, and a sweep file naming it."""
  d = tmp_path_factory.mktemp('finished')
  cfg = d / 'cfg.py'
  cfg.write_text(textwrap.dedent(f'''
      import sys
      sys.path.insert(0, {os.path.join(ROOT, "tests")!r})
      from conftest import tiny_config
      def get_config():
        c = tiny_config('ar', num_steps=4, eval_every=2, checkpoint_every=2)
        c.sample.num_samples = 0
        return c
  '''))
  r = subprocess.run([sys.executable, '-m', 'dlm_jax.main', f'--config={cfg}',
                      f'--workdir={d / "runs" / "r"}'], env=ENV, capture_output=True, text=True,
                     check=False)
  assert r.returncode == 0, r.stderr[-2000:]
  (d / 'stdout.txt').write_text(r.stdout)
  (d / 'sweep.py').write_text(f'from dlm_jax.sweep import Sweep\ndef get_sweep():\n'
                              f'  return Sweep("s", {str(cfg)!r}, {{"r": {{}}, "other": {{}}}})\n')
  return d


def _copy_run(finished_run, tmp_path):
  shutil.copytree(finished_run, tmp_path / 'c')
  base = tmp_path / 'c'
  for f in ('cfg.py', 'sweep.py'):  # point them at the copy
    (base / f).write_text((base / f).read_text().replace(str(finished_run), str(base)))
  return base, base / 'runs' / 'r'


@pytest.mark.parametrize('damage', [
    'summary.json', pytest.param('config.json', marks=pytest.mark.slow),
    pytest.param('eval/validation.json', marks=pytest.mark.slow)])
def test_a_damaged_run_file_is_named_and_sweeps_go_on(finished_run, tmp_path, damage):
  """A torn summary.json, config.json or eval/validation.json: rerunning the run (or plotting
  its curve) stops with one line naming the file, nothing else changed; `sweep list` and
  `collect` report it as that run's status and still write runs.csv."""
  base, wd = _copy_run(finished_run, tmp_path)
  f = wd / damage
  f.write_bytes(f.read_bytes()[:len(f.read_bytes()) // 2])
  before = {p: p.read_bytes() for p in wd.rglob('*') if p.is_file() and p.name != '.lock'}
  if damage == 'eval/validation.json':
    cmd = [sys.executable, '-m', 'dlm_jax.plot', 'curves', str(wd), '--out', str(tmp_path / 'c')]
  else:
    cmd = [sys.executable, '-m', 'dlm_jax.main', f'--config={base / "cfg.py"}', f'--workdir={wd}']
  r = subprocess.run(cmd, env=ENV, cwd=ROOT, capture_output=True, text=True, check=False)
  assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stderr[-2000:]
  assert r.stderr.strip().splitlines() == [f'error: {f}: damaged (JSONDecodeError: '
                                           + r.stderr.split('JSONDecodeError: ')[1].strip()]
  assert {p: p.read_bytes() for p in wd.rglob('*') if p.is_file() and p.name != '.lock'} == before
  if damage == 'summary.json':
    for action in ('list', 'collect'):
      r = subprocess.run([sys.executable, '-m', 'dlm_jax.sweep', action, str(base / 'sweep.py'),
                          '--root', str(base / 'runs')], env=ENV, cwd=ROOT, capture_output=True,
                         text=True, check=False)
      assert r.returncode == 0 and 'Traceback' not in r.stderr, r.stderr[-2000:]
    rows = {row['run']: row for row in csv.DictReader(open(base / 'runs' / 'runs.csv'))}
    assert rows['r']['status'] == 'failed' and f'{f}: damaged' in rows['r']['error']
    assert rows['other']['status'] == 'missing'


def test_damaged_metrics_rows_are_skipped_with_a_warning_and_the_rest_kept(finished_run,
                                                                           tmp_path):
  """metrics.jsonl with a line that is not an object and one that is not UTF-8 in the middle:
  resuming keeps every readable row, warns naming file and line, and logs each step once."""
  base, wd = _copy_run(finished_run, tmp_path)
  shutil.rmtree(wd / 'checkpoints' / '4')
  (wd / 'summary.json').unlink()
  m = wd / 'metrics.jsonl'
  lines = m.read_bytes().splitlines(keepends=True)
  m.write_bytes(lines[0] + b'[1, 2]\n' + b'\xff\xfe{"step": 9}\n' + b''.join(lines[1:]))
  r = subprocess.run([sys.executable, '-m', 'dlm_jax.main', f'--config={base / "cfg.py"}',
                      f'--workdir={wd}'], env=ENV, capture_output=True, text=True, check=False)
  assert r.returncode == 0, r.stderr[-2000:]
  warnings = [l for l in r.stderr.splitlines() if l.startswith('warning:')]
  assert [w.split(': skipped')[0] for w in warnings] == [f'warning: {m}:2', f'warning: {m}:3']
  assert [x['step'] for x in rows(str(wd))] == [1, 2, 3, 4]


def test_a_resume_keeps_the_record_straight(finished_run, tmp_path):
  """Rerunning a finished 4-step run with fewer steps is refused before config.json is touched;
  with more steps under a cosine schedule too (it would reshape the learning rate mid-run);
  a rerun after a stop between the samples and summary.json does not list the samples twice;
  wall_time_s adds up every process."""
  base, wd = _copy_run(finished_run, tmp_path)
  cfg = base / 'cfg.py'
  cfg.write_text(cfg.read_text().replace('c.sample.num_samples = 0', 'c.sample.num_samples = 2\n'
                                         '  c.sample.length = 8'))
  (wd / 'config.json').write_text((wd / 'config.json').read_text().replace(
      '"num_samples": 0', '"num_samples": 2').replace('"length": 0', '"length": 8'))
  before = {p: p.read_bytes() for p in wd.rglob('*') if p.is_file() and p.name != '.lock'}
  cmd = lambda *a: subprocess.run([sys.executable, '-m', 'dlm_jax.main', f'--config={cfg}',
                                   f'--workdir={wd}', *a], env=ENV, capture_output=True,
                                  text=True, check=False)
  r = cmd('--config.train.num_steps=6')
  assert r.returncode == 1 and 'train.num_steps: 4 -> 6 (the cosine learning rate depends' \
      in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr[-2000:]
  # under a constant learning rate more steps resume, fewer are refused: the run is past them
  (wd / 'config.json').write_text((wd / 'config.json').read_text().replace(
      '"lr_schedule": "cosine"', '"lr_schedule": "constant"'))
  r = cmd('--config.train.num_steps=2', '--config.train.lr_schedule=constant')
  assert r.returncode == 2 and r.stderr.strip() == (
      f'error: config.train.num_steps: {wd} is already trained to step 4; 2 steps would rewrite '
      'its record (use a new --workdir)'), r.stderr[-2000:]
  before[wd / 'config.json'] = (wd / 'config.json').read_bytes()
  assert {p: p.read_bytes() for p in wd.rglob('*') if p.is_file() and p.name != '.lock'} == before
  # stopped after the samples, before summary.json: the rerun rewrites its own samples
  (wd / 'summary.json').unlink()
  first_wall = json.loads(before[wd / 'summary.json'])['wall_time_s']
  r = cmd('--config.train.lr_schedule=constant')
  assert r.returncode == 0, r.stderr[-2000:]
  (wd / 'summary.json').unlink()  # stopped again between the samples and the summary
  r = cmd('--config.train.lr_schedule=constant')
  assert r.returncode == 0, r.stderr[-2000:]
  samples = [json.loads(l) for l in open(wd / 'samples.jsonl')]
  assert len(samples) == 2 and all(s['source'] == 'end of training' and s['step'] == 4
                                   for s in samples)
  assert json.load(open(wd / 'summary.json'))['wall_time_s'] > first_wall


def test_a_checkpoint_failure_reason_is_the_real_cause():
  """The reason shown for an unreadable checkpoint is the innermost real error, not a library's
  internal iterator end (before: `(StopIteration: 0)`)."""
  try:
    try:
      try:
        next(iter([]))
      except StopIteration:
        raise ValueError('array file is truncated: read 12 of 4096 bytes')  # pylint: disable=raise-missing-from
    except ValueError as inner:
      raise RuntimeError('restore failed') from inner
  except RuntimeError as e:
    assert checkpoint._root_cause(e) == (  # pylint: disable=protected-access
        'ValueError: array file is truncated: read 12 of 4096 bytes')


# A model whose parameters and Adam moments alone (~7.7 GiB) exceed a 6 GiB address space; tiny
# batches keep the compile short.
TOO_BIG = ['--config.model.size=large', '--config.train.batch_size=2', '--config.data.seq_len=32',
           '--config.eval.batch_size=2']


def _address_space_limit(nbytes):
  def limit():  # `ulimit -v`: an allocation past it fails (before the fix: a hang at 0% CPU)
    resource.setrlimit(resource.RLIMIT_AS, (nbytes, nbytes))
  return limit


def test_a_run_that_cannot_fit_is_refused_before_anything_is_allocated(tmp_path):
  wd = tmp_path / 'run'
  r = subprocess.run([sys.executable, '-m', 'dlm_jax.main', '--config=configs/default.py',
                      f'--workdir={wd}', *TOO_BIG], env=ENV, cwd=ROOT, capture_output=True,
                     text=True, timeout=600, preexec_fn=_address_space_limit(6 * 2 ** 30))
  assert r.returncode == 2, r.stderr[-2000:]
  assert 'Traceback' not in r.stderr
  (line,) = [l for l in r.stderr.splitlines() if l.strip()]
  assert line.startswith('error: the train step needs ') and ' GiB per device (parameters 2.5' \
      in line, line
  assert 'free (the address-space limit (ulimit -v 6291456))' in line
  assert 'model.size' in line and 'train.batch_size' in line and 'mesh.fsdp' in line
  assert not os.path.exists(wd / 'config.json')  # refused before anything was written


def test_an_allocation_failure_is_one_line_and_never_a_hang(tmp_path):
  """The estimate made to pass (as if XLA had under-counted): the allocation of the state fails
  under the address-space limit; one line, exit 2, no hang (the timeout fails the test)."""
  code = ('import sys\nfrom dlm_jax.run import memory\n'
          'memory.check = lambda need, devices=None: "memory: check skipped"\n'
          'from dlm_jax import main\nmain.main(["dlm_jax.main"] + sys.argv[1:])\n')
  r = subprocess.run([sys.executable, '-c', code, '--config=configs/default.py',
                      f'--workdir={tmp_path / "run"}', *TOO_BIG], env=ENV, cwd=ROOT,
                     capture_output=True, text=True, timeout=600,
                     preexec_fn=_address_space_limit(6 * 2 ** 30))
  assert r.returncode == 2, r.stderr[-2000:]
  assert 'Traceback' not in r.stderr
  (line,) = [l for l in r.stderr.splitlines() if l.strip()]
  assert line.startswith('error: out of memory (RESOURCE_EXHAUSTED: Out of memory allocating ')
  assert 'model.size' in line and 'train.batch_size' in line, line


def test_the_memory_estimate_counts_every_byte_of_the_state(tiny):
  """parameters = 4 N_total (float32), Adam moments 2 x that, EMA another copy; the report names
  what is free, and a device with less than the step needs refuses it."""
  from dlm_jax.run import memory, setup as setup_lib  # pylint: disable=g-import-not-at-top
  setup = setup_lib.build(tiny('dual', ema_decay=0.9))
  tx, _, state_sh, step_fn = step_lib.prepare(setup)
  _, need = memory.preflight(setup, tx, state_sh, step_fn)
  n = setup.counts['N_total']
  assert need['parameters'] == need['ema'] == 4 * n
  assert 8 * n <= need['optimizer'] <= 8 * n + 16  # + Adam's step count
  batch = 8 * 32 * 4  # targets int32
  assert need['batch'] == batch
  assert need['total'] >= 13 * n + batch + need['temporaries'] > 13 * n

  class Device:  # an accelerator that reports its memory
    device_kind = 'fake accelerator'

    def __init__(self, limit):
      self.limit = limit

    def memory_stats(self):
      return dict(bytes_limit=self.limit, bytes_in_use=0)

  assert 'free (fake accelerator memory)' in memory.check(need, [Device(need['total'])])
  with pytest.raises(errors.ResourceError, match=r'per device .* but only .* free \(fake'):
    memory.check(need, [Device(need['total']), Device(need['total'] - 1)])


def test_a_batch_log_shows_progress_without_a_terminal(finished_run):
  """Outside a terminal (SLURM output files, `| tee`: no progress bar) every metrics row is also
  one plain line with the step, tokens, every loss, lr, speed and ETA; each validation too."""
  out = (finished_run / 'stdout.txt').read_text().splitlines()
  steps = [l for l in out if l.startswith('step ')]
  assert [l.split()[1] for l in steps] == ['1/4', '2/4', '3/4', '4/4'], out
  rows = [json.loads(l) for l in open(finished_run / 'runs' / 'r' / 'metrics.jsonl')]
  for line, row in zip(steps, rows):
    assert f'| tokens {row["tokens"]:,} | loss {row["loss"]:.4f} ar_nll {row["ar_nll"]:.4f} |' \
        in line and f'| lr {row["lr"]:.2e} |' in line and ' tok/s | ETA ' in line, line
  assert [l.split(':')[0] for l in out if l.startswith('validation at')] == [
      'validation at step 2', 'validation at step 4']


def test_a_write_failure_names_the_os_reason_however_long_the_path():
  """The checkpoint error keeps the OS's reason even when a long path or spec pushes it into the
  middle of TensorStore's message (it was cut out when pytest's tmp path grew)."""
  long = 'x' * 200
  err = OSError(f'Error writing "{long}/a": [OS error 27] File too large [spec {long}]')
  cause = checkpoint._root_cause  # pylint: disable=protected-access
  assert 'File too large' in cause(err) and len(cause(err)) < 340
  assert cause(OSError('No space left on device')) == 'OSError: No space left on device'
