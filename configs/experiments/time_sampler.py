"""The time-sampler experiment (issue 3): identical MDMs on the embedded corpus (same seed, model,
data order and tokens), differing only in config.diffusion.time_sampler / sampler_params /
weighting. Driven by scripts/time_sampler_experiment.py; validation NELBO is always the unbiased
one (uniform low-discrepancy t, fixed seed), so the curves are comparable."""
from dlm_jax import config


def get_config():
  c = config.base()
  c.objective = 'mdm'
  c.model.d_model = 128
  c.model.num_layers = 4
  c.model.num_heads = 4
  c.data.seq_len = 128
  c.train.batch_size = 32
  c.train.num_steps = 250
  c.train.lr = 3e-3
  c.train.warmup_steps = 25
  c.train.eval_every = 25
  c.train.checkpoint_every = 250
  c.eval.num_batches = 8
  c.sample.num_samples = 0
  return c
