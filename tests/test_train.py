import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import tiny_config
from dlm_jax import errors
from dlm_jax.core import model as model_lib
from dlm_jax.run import checkpoint
from dlm_jax.run import loop
from dlm_jax.run import step as step_lib


def rows(wd):
  return [json.loads(l) for l in open(os.path.join(wd, 'metrics.jsonl'))]


def final_params(wd, step):
  mngr = ocp.CheckpointManager(os.path.join(os.path.abspath(wd), 'checkpoints'))
  r = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  return r['state']['params']


def test_run_directory_contract(tmp_path):
  wd = str(tmp_path / 'run')
  s = loop.train_and_evaluate(tiny_config('dual'), wd)
  for f in ('config.json', 'metrics.jsonl', 'samples.jsonl', 'summary.json',
            'eval/validation.json'):
    assert os.path.exists(os.path.join(wd, f)), f
  summary = json.load(open(os.path.join(wd, 'summary.json')))
  assert summary['status'] == 'done' and summary['steps'] == 20
  assert summary['D'] == summary['D_slots'] == 20 * 8 * 32  # wrap packing: no PAD
  assert summary['C'] == summary['D_slots'] * summary['flops_per_token']
  assert {'ar_nll', 'mdm_nelbo'} <= set(summary['final'])
  assert [r['step'] for r in rows(wd)] == list(range(1, 21))
  samples = [json.loads(l) for l in open(os.path.join(wd, 'samples.jsonl'))]
  assert {r['mode'] for r in samples} == {'ar', 'mdm'}
  assert all(3 not in r['tokens'] for r in samples)  # no [MASK] left
  assert s['final'] == summary['final']
  # rerunning a finished run does no work and appends nothing
  n_samples = len(samples)
  again = loop.train_and_evaluate(tiny_config('dual'), wd)
  assert again == summary
  assert len(open(os.path.join(wd, 'samples.jsonl')).readlines()) == n_samples


class Crash(Exception):
  pass


@pytest.mark.parametrize('objective', ['ar', 'mdm', 'dual',
                                       pytest.param('dual+hybrid', marks=pytest.mark.slow)])
def test_resume_after_crash_equals_uninterrupted(tmp_path, monkeypatch, objective):
  objective, _, noise = objective.partition('+')
  cfg = tiny_config(objective, num_steps=20, checkpoint_every=5, eval_every=5)
  cfg.diffusion.noise = noise or 'masked'
  ref = str(tmp_path / 'ref')
  loop.train_and_evaluate(cfg, ref)

  real_save = checkpoint.save

  def crashing_save(mngr, step, state, data_iter):
    if step == 15:  # the process dies between checkpoints 10 and 15
      raise Crash('simulated crash at step 15')
    real_save(mngr, step, state, data_iter)
  wd = str(tmp_path / 'resumed')
  monkeypatch.setattr(checkpoint, 'save', crashing_save)
  with pytest.raises(Crash):
    loop.train_and_evaluate(cfg, wd)
  monkeypatch.setattr(checkpoint, 'save', real_save)
  assert max(r['step'] for r in rows(wd)) == 15
  loop.train_and_evaluate(cfg, wd)  # the same command resumes from step 10
  a = {r['step']: r['loss'] for r in rows(ref)}
  assert [r['step'] for r in rows(wd)] == list(range(1, 21))  # rows 11-15 rewritten, not doubled
  b = {r['step']: r['loss'] for r in rows(wd)}
  for step in range(1, 21):
    assert a[step] == b[step], (step, a[step], b[step])
  jax.tree_util.tree_map(np.testing.assert_array_equal, final_params(ref, 20),
                         final_params(wd, 20))


def test_workdir_of_another_run_is_refused(tmp_path):
  wd = str(tmp_path / 'run')
  loop.train_and_evaluate(tiny_config('ar', num_steps=2), wd)
  before = open(os.path.join(wd, 'metrics.jsonl')).read()
  other = tiny_config('ar', num_steps=2)
  other.model.d_model = 64
  with pytest.raises(errors.TrainingError, match='model.d_model'):
    loop.train_and_evaluate(other, wd)
  assert open(os.path.join(wd, 'metrics.jsonl')).read() == before


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path):
  cfg = tiny_config('ar', num_steps=40, checkpoint_every=1, eval_every=1000, warmup_steps=0,
                    lr=1e30, grad_clip=0.0)
  cfg.train.b1 = 0.0
  wd = str(tmp_path / 'run')
  with pytest.raises(errors.TrainingError, match=r'non-finite loss or gradient at step \d+'):
    loop.train_and_evaluate(cfg, wd)
  mngr = ocp.CheckpointManager(os.path.join(os.path.abspath(wd), 'checkpoints'))
  assert mngr.latest_step() is not None
  summary = json.load(open(os.path.join(wd, 'summary.json')))
  assert summary['status'].startswith('failed: non-finite loss')
  for step in mngr.all_steps():
    p = final_params(wd, step)
    assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(p)), step


TASK_TARGETS = [' café', ' naïve', ' 東京', ' cat', ' über', ' déjà vu', ' ok', ' Zürich']


@pytest.mark.parametrize('data', ['wrap', 'pad', 'task'])
def test_D_and_epochs_count_the_tokens_trained_on(tmp_path, data):
  """summary D (and every metrics row's tokens_trained / epochs) is the number of non-PAD target
  tokens of the rows the run trained on, counted here from the pipeline's own batches, and
  epochs = D / U; D_slots and C count the PAD slots computed on. (D counted slots: a cloze run
  reported 2.56x its repetition.) A task run's bits per byte divide by the scored targets'
  bytes, counted here from the strings (they divided by the LM corpus's bytes per token)."""
  from dlm_jax.data import tokenizers
  from dlm_jax.data.tokenizers import PAD
  from dlm_jax.run import setup as setup_lib
  c = tiny_config('dual' if data == 'task' else 'ar', num_steps=5, eval_every=5,
                  checkpoint_every=5)
  c.model.num_layers, c.data.seq_len, c.sample.num_samples = 1, 16, 0
  if data == 'pad':  # short documents, so that rows hold PAD
    with open(tmp_path / 'short.jsonl', 'w', encoding='utf-8') as f:
      for i in range(400):
        f.write(json.dumps(dict(id=f'd{i}', text='ab cd'[:1 + i % 5] + ' ' * (i % 3))) + '\n')
    c.data.corpus, c.data.packing, c.data.tokenizer = str(tmp_path / 'short.jsonl'), 'pad', 'byte'
    c.data.cache_dir = str(tmp_path / 'cache')
  if data == 'task':
    d = tmp_path / 'task'
    d.mkdir()
    for split, n in (('train', 40), ('validation', 24)):
      with open(d / f'{split}.jsonl', 'w', encoding='utf-8') as f:
        for i in range(n):
          f.write(json.dumps(dict(prompt=f'word {i} is', target=TASK_TARGETS[i % 8])) + '\n')
    c.data.task = str(d)
  setup = setup_lib.build(c)
  it = setup_lib.train_iterator(setup)
  per_step = [int((next(it)['targets'] != PAD).sum()) for _ in range(5)]
  U = int((np.asarray(setup.train_windows) != PAD).sum())
  s = loop.train_and_evaluate(c, str(tmp_path / 'run'))
  assert s['D'] == sum(per_step) and s['U'] == U and s['epochs'] == pytest.approx(s['D'] / U)
  assert s['D_slots'] == 5 * 8 * 16 and s['C'] == s['D_slots'] * s['flops_per_token']
  assert (s['D'] < s['D_slots']) == (data != 'wrap')
  assert [r['tokens_trained'] for r in rows(str(tmp_path / 'run'))] == list(np.cumsum(per_step))
  assert rows(str(tmp_path / 'run'))[-1]['epochs'] == pytest.approx(s['epochs'])
  if data == 'task':  # 16 validation rows scored: eval.num_batches=2 x eval.batch_size=8
    tok = tokenizers.get_tokenizer(c.data.tokenizer)
    scored = [TASK_TARGETS[i % 8] for i in range(16)]
    nbytes = sum(len(t.encode('utf-8')) + 1 for t in scored)
    ntok = sum(len(ids) + 1 for ids in tok.encode_batch(scored))
    lm = setup.data_info['val_bytes'] / setup.data_info['val_tokens']
    assert abs(nbytes / ntok - lm) > 0.2  # the two ratios differ: the test can tell them apart
    for m in ('ar', 'mdm'):
      assert s['final'][f'{m}_bpb'] == pytest.approx(
          s['final'][f'{m}_nll' if m == 'ar' else 'mdm_nelbo'] * ntok / nbytes / np.log(2),
          rel=1e-6)


def test_default_config_loss_decreases(tmp_path):
  import importlib.util
  spec = importlib.util.spec_from_file_location(
      'default', os.path.join(os.path.dirname(__file__), '..', 'configs', 'default.py'))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  cfg = mod.get_config()
  cfg.train.num_steps, cfg.train.warmup_steps, cfg.train.log_every = 12, 4, 1
  cfg.train.batch_size = 16
  cfg.eval.num_batches = 1
  cfg.sample.num_samples = 0
  wd = str(tmp_path / 'default')
  loop.train_and_evaluate(cfg, wd)
  losses = [r['loss'] for r in rows(wd)]
  assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.5, losses


def test_lr_schedules_and_weight_decay_mask():
  from conftest import tiny_config as tc
  t = tc('ar', num_steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1).train
  cos = step_lib.lr_schedule(t)
  assert float(cos(0)) == 0.0 and float(cos(10)) == pytest.approx(1.0)
  assert float(cos(100)) == pytest.approx(0.1, abs=1e-6)
  t.lr_schedule, t.decay_fraction = 'wsd', 0.2
  wsd = step_lib.lr_schedule(t)
  assert float(wsd(50)) == pytest.approx(1.0) and float(wsd(80)) == pytest.approx(1.0)
  assert float(wsd(90)) == pytest.approx(0.55) and float(wsd(100)) == pytest.approx(0.1)
  _, params = model_lib.init_params(_resolved_model(), jax.random.PRNGKey(0), 8)
  mask = step_lib.weight_decay_mask(params)
  assert mask['layers']['q']['kernel'] and mask['layers']['down']['kernel']
  assert not mask['layers']['attn_norm']['scale'] and not mask['final_norm']['scale']
  assert not mask['embed']['embedding']
  assert step_lib.weight_decay_mask(params, decay_embeddings=True)['embed']['embedding']


def _resolved_model():
  from dlm_jax import config
  return config.resolve(tiny_config('ar'), 260).model


def test_ema_tracks_params(tmp_path):
  cfg = tiny_config('ar', num_steps=4, ema_decay=0.5, checkpoint_every=4, eval_every=4)
  wd = str(tmp_path / 'run')
  loop.train_and_evaluate(cfg, wd)
  mngr = ocp.CheckpointManager(os.path.join(os.path.abspath(wd), 'checkpoints'))
  st = mngr.restore(4, args=ocp.args.Composite(state=ocp.args.StandardRestore()))['state']
  diff = jax.tree_util.tree_map(lambda a, b: float(np.abs(a - b).max()), st['params'],
                                st['ema_params'])
  assert max(jax.tree_util.tree_leaves(diff)) > 0


def test_sigterm_checkpoints_the_current_step_and_resume_equals_uninterrupted(tmp_path):
  """SIGTERM mid-run through the real CLI: the run checkpoints the step it is at, writes
  status 'preempted', exits 143; the same command resumes and ends with the uninterrupted run's
  metrics rows (every row averaging the same steps, also the one whose logging window the stop
  cut) and parameters."""
  import signal
  import subprocess
  import sys
  import time
  from conftest import ROOT
  steps = 300
  cfg_file = tmp_path / 'cfg.py'
  cfg_file.write_text(
      f'import sys\nsys.path.insert(0, {os.path.join(ROOT, "tests")!r})\n'
      'from conftest import tiny_config\n'
      f'def get_config():\n  c = tiny_config("dual", num_steps={steps}, checkpoint_every=1000,\n'
      '                  eval_every=1000, lr_schedule="constant", log_every=50)\n'
      '  c.sample.num_samples = 0\n  return c\n')
  ref = str(tmp_path / 'ref')
  wd = str(tmp_path / 'run')
  cmd = [sys.executable, '-m', 'dlm_jax.main', f'--config={cfg_file}']
  env = dict(os.environ, PYTHONPATH=ROOT)
  subprocess.run(cmd + [f'--workdir={ref}'], env=env, check=True, capture_output=True)
  p = subprocess.Popen(cmd + [f'--workdir={wd}'], env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
  metrics = os.path.join(wd, 'metrics.jsonl')
  deadline = time.time() + 300
  while time.time() < deadline and not (os.path.exists(metrics) and
                                        len(open(metrics).readlines()) >= 1):
    time.sleep(0.05)
  p.send_signal(signal.SIGTERM)
  _, err = p.communicate(timeout=120)
  assert p.returncode == 128 + signal.SIGTERM, err[-2000:]
  stopped = json.load(open(os.path.join(wd, 'summary.json')))['status']
  step = int(stopped.split()[-1])
  assert stopped == f'preempted at step {step}' and 50 <= step < steps
  assert f'preempted (SIGTERM) at step {step}' in err
  mngr = ocp.CheckpointManager(os.path.join(os.path.abspath(wd), 'checkpoints'))
  assert mngr.latest_step() == step  # the step it was at, not a periodic checkpoint
  r = subprocess.run(cmd + [f'--workdir={wd}'], env=env, capture_output=True, text=True)
  assert r.returncode == 0 and 'resumed' in r.stdout, r.stderr[-2000:]
  clock = ('tokens_per_s', 'flops_per_s', 'wall_time_s')
  a = {x['step']: {k: v for k, v in x.items() if k not in clock} for x in rows(ref)}
  b = {x['step']: {k: v for k, v in x.items() if k not in clock} for x in rows(wd)}
  assert sorted(b) == sorted(a) == list(range(50, steps + 1, 50))
  assert a == b  # the stop falls inside a 50-step window 49 times in 50
  jax.tree_util.tree_map(np.testing.assert_array_equal, final_params(ref, steps),
                         final_params(wd, steps))


def test_stop_on_signal_second_signal_and_watchdog_cancelled():
  import signal
  with loop.StopOnSignal(0.5) as stop:
    assert not stop.requested(1)
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop.requested(1) and stop.signum == signal.SIGTERM
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
  import time
  time.sleep(0.8)  # the watchdog was cancelled on exit: this process is still alive
  assert signal.getsignal(signal.SIGTERM) is not stop._handle  # pylint: disable=protected-access
