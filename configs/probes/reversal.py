"""Base of the reversal-curse probe (python -m dlm_jax.probes reversal): a small model trained
for many epochs on a generated file of one-sentence facts, one fact per padded row; the probe
sets data.corpus to that file and the objective per run (ar, mdm, dual)."""
from dlm_jax import config


def get_config():
  c = config.base()
  c.objective = 'ar'
  c.data.tokenizer = 'bpe'
  c.data.packing = 'pad'
  c.data.seq_len = 32
  c.data.val_fraction = 0.05
  c.model.d_model, c.model.num_layers, c.model.num_heads = 128, 4, 4
  c.train.batch_size = 32
  c.train.num_steps = 3000
  c.train.lr = 2e-3
  c.train.warmup_steps = 100
  c.train.weight_decay = 0.0   # memorisation is the point
  c.train.eval_every = 1000
  c.train.checkpoint_every = 1000
  c.train.log_every = 100
  c.eval.num_batches = 2
  c.eval.batch_size = 16
  c.sample.num_samples = 0
  return c
