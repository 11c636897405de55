"""The embedded default: a ~3.4M-parameter (1.8M non-embedding) dual (AR + MDM) model on the embedded corpus, 2 CPU cores,
under 10 minutes. Every key is listed in dlm_jax/config.py:base()."""
from dlm_jax import config


def get_config():
  c = config.base()
  c.objective = 'dual'
  c.dual.ar_weight = '1/2'
  c.model.d_model = 192
  c.model.num_layers = 4
  c.model.num_heads = 4
  c.data.seq_len = 128
  c.train.batch_size = 32
  c.train.num_steps = 300
  c.train.lr = 3e-3
  c.train.warmup_steps = 30
  c.train.eval_every = 100
  c.train.checkpoint_every = 100
  return c
