"""The time-sampler experiment (issue 3): identical MDMs on the embedded corpus (same seed, model,
data order and tokens), differing only in config.diffusion.time_sampler / sampler_params /
weighting. Driven by scripts/time_sampler_experiment.py; validation NELBO is always the unbiased
one (uniform low-discrepancy t, fixed seed), so the curves are comparable."""
from dlm_jax.configs import common


def get_config():
  return common.cpu_experiment('mdm', d_model=128, num_layers=4, num_steps=250, eval_every=25)
