"""Base of the micro sweeps (configs/sweeps/*_micro.py): byte-level models on the embedded corpus
(vocabulary 260, so parameters are almost all non-embedding), L=128, batch 16, AdamW 3e-3 with
10% warmup and cosine decay, one validation pass and one checkpoint at the end."""
from dlm_jax import config
from dlm_jax.configs import common


def get_config():
  c = config.base()
  c.objective = 'ar'
  c.data.tokenizer = 'byte'
  c.data.seq_len = 128
  common.small_model(c, 64, 2, 4)
  c.train.batch_size = 16
  c.train.num_steps = 100
  c.train.lr = 3e-3
  c.train.warmup_steps = 10
  c.train.log_every = 10
  c.train.eval_every = 1_000_000   # only the final evaluation
  c.train.checkpoint_every = 1_000_000
  c.eval.batch_size = 16
  c.eval.num_batches = 16
  c.sample.num_samples = 0
  return c
