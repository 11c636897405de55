"""Data-repetition ablations at CPU scale (issue 4): a small model trained on D = 512k tokens drawn
from U = D / R unique tokens. scripts/recipes_experiment.py changes objective, dual.*,
data.unique_tokens, train.epochs and the regularisers only."""
from dlm_jax import config


def get_config():
  c = config.base()
  c.objective = 'ar'
  c.model.d_model = 64
  c.model.num_layers = 2
  c.model.num_heads = 2
  c.data.seq_len = 128
  c.train.batch_size = 32
  c.train.num_steps = 125          # 125 * 32 * 128 = 512,000 tokens
  c.train.lr = 3e-3
  c.train.warmup_steps = 12
  c.train.eval_every = 25
  c.train.checkpoint_every = 125
  c.eval.num_batches = 8
  c.sample.num_samples = 0
  return c
