"""Base of the temporal/domain-shift probe (python -m dlm_jax.probes shift): a small byte-level
model (bytes, so no tokenizer fitted to either era) trained on one era of the embedded corpus (the
probe sets data.corpus to a file holding only that era's documents and the objective per run),
then scored on both eras' validation windows."""
from dlm_jax import config
from dlm_jax.configs import common


def get_config():
  c = config.base()
  c.objective = 'ar'
  c.data.tokenizer = 'byte'
  c.data.seq_len = 128
  common.small_model(c, 64, 4, 4)
  c.train.batch_size = 16
  c.train.num_steps = 2000
  c.train.lr = 3e-3
  c.train.warmup_steps = 100
  c.train.eval_every = 500
  c.train.checkpoint_every = 500
  c.train.log_every = 50
  c.eval.num_batches = 4
  c.eval.batch_size = 16
  c.sample.num_samples = 0
  return c
