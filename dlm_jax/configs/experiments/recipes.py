"""Data-repetition ablations at CPU scale (issue 4): a small model trained on D = 512k tokens drawn
from U = D / R unique tokens. scripts/recipes_experiment.py changes objective, dual.*,
data.unique_tokens, train.epochs and the regularisers only."""
from dlm_jax.configs import common


def get_config():
  # 125 steps * 32 * 128 = 512,000 tokens
  return common.cpu_experiment('ar', d_model=64, num_layers=2, num_steps=125, eval_every=25)
