"""MDM time samplers (EXPERIMENTS.md section 1 as a sweep): uniform vs bell-shaped samplers
under `elbo` and `plain` weighting, 3 seeds each, 27 runs."""
from dlm_jax.study.sweep import Sweep

SAMPLERS = {
    'uniform': {'diffusion.time_sampler': 'uniform'},
    # pure logit-normal under `elbo` is refused (its float32 NELBO weights are biased): mixed
    'logitnormal1_mix0.1_elbo': {'diffusion.time_sampler': 'logit_normal',
                                 'diffusion.sampler_params.sigma': 1.0,
                                 'diffusion.sampler_params.uniform_mix': 0.1},
    'logitnormal1_plain': {'diffusion.time_sampler': 'logit_normal',
                           'diffusion.sampler_params.sigma': 1.0, 'diffusion.weighting': 'plain'},
    'logitnormal0.5_plain': {'diffusion.time_sampler': 'logit_normal',
                             'diffusion.sampler_params.sigma': 0.5,
                             'diffusion.weighting': 'plain'},
    'truncnormal_plain': {'diffusion.time_sampler': 'truncated_normal',
                          'diffusion.sampler_params.mu': 0.5,
                          'diffusion.sampler_params.sigma': 0.15, 'diffusion.weighting': 'plain'},
    'beta2_2_elbo': {'diffusion.time_sampler': 'beta', 'diffusion.sampler_params.uniform_mix': 0.1},
    'beta2_2_plain': {'diffusion.time_sampler': 'beta', 'diffusion.weighting': 'plain'},
    'loglinear_uniform': {'diffusion.schedule': 'loglinear'},
    'cosine_uniform': {'diffusion.schedule': 'cosine'},
}


def get_sweep():
  runs = {f'{n}_s{seed}': dict(s, seed=seed) for seed in (0, 1, 2) for n, s in SAMPLERS.items()}
  return Sweep('time_sampler', 'configs/experiments/time_sampler.py', runs, __doc__)
