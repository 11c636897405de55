import os
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
