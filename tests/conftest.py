import os
import shutil
import sys

import pytest

os.environ.setdefault('DLM_JAX_CACHE', os.path.join(os.path.dirname(__file__), '..', '.cache'))
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))
sys.path.insert(0, ROOT)


def tiny_config(objective='dual', **train):
  from dlm_jax import config
  c = config.base()
  c.objective = objective
  c.model.d_model, c.model.num_layers, c.model.num_heads = 32, 2, 2
  c.data.seq_len = 32
  c.train.batch_size = 8
  c.train.num_steps = 20
  c.train.warmup_steps = 2
  c.train.lr = 3e-3
  c.train.log_every = 1
  c.train.eval_every = 10
  c.train.checkpoint_every = 10
  c.eval.num_batches = 2
  c.eval.batch_size = 8
  c.sample.num_samples = 2
  c.sample.steps = 4
  c.sample.length = 8
  for k, v in train.items():
    c.train[k] = v
  return c


@pytest.fixture
def tiny():
  return tiny_config


def train_tiny_run(tmp_dir, objective='dual', steps=4, tokenizer='byte'):
  """Trains a tiny run through the real CLI; returns (config file, run dir, main command)."""
  import subprocess  # pylint: disable=g-import-not-at-top
  cfg_path = os.path.join(str(tmp_dir), 'tiny_config.py')
  with open(cfg_path, 'w', encoding='utf-8') as f:
    f.write(f'import sys\nsys.path.insert(0, {os.path.join(ROOT, "tests")!r})\n'
            'from conftest import tiny_config\n'
            f'def get_config():\n  c = tiny_config({objective!r})\n  c.train.num_steps = {steps}\n'
            f'  c.sample.num_samples = 0\n  c.data.tokenizer = {tokenizer!r}\n  return c\n')
  run = os.path.join(str(tmp_dir), 'run')
  main = [sys.executable, '-m', 'dlm_jax.main', '--config', cfg_path, '--workdir', run]
  subprocess.run(main, check=True, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True)
  return cfg_path, run, main


@pytest.fixture(scope='session')
def _trained_tiny_runs(tmp_path_factory):
  """One tiny run per (objective, steps, tokenizer), trained once per test session."""
  done = {}
  def get(objective, steps, tokenizer):
    key = (objective, steps, tokenizer)
    if key not in done:
      done[key] = train_tiny_run(tmp_path_factory.mktemp(f'tiny_{objective}'), *key)
    return done[key]
  return get


@pytest.fixture
def tiny_run(_trained_tiny_runs, tmp_path):
  """train_tiny_run's (config file, run dir, main command) for a copy of the session's trained
  run in this test's tmp_path: the test may write into it (eval, samples, resume)."""
  def get(objective='dual', steps=4, tokenizer='byte'):
    cfg_path, run, _ = _trained_tiny_runs(objective, steps, tokenizer)
    copy = os.path.join(str(tmp_path), 'run')
    shutil.copytree(run, copy)
    return cfg_path, copy, [sys.executable, '-m', 'dlm_jax.main', '--config', cfg_path,
                            '--workdir', copy]
  return get
