"""The noise axis at micro scale (issue 30): AR, masked, uniform and hybrid diffusion (and block
diffusion where the objective is registered) on the embedded corpus, byte-level, L=128, batch 16:
4 compute budgets x 4 sizes bracketing the issue-6 optima, so each method's compute frontier
(best run per budget) can be read off and fitted with bootstrap intervals.

  python -m dlm_jax.sweep local configs/sweeps/noise_micro.py --workers 2
  python -m dlm_jax.sweep collect configs/sweeps/noise_micro.py
"""
from dlm_jax.configs.sweeps import isoflop_micro
from dlm_jax.core import flops
from dlm_jax.core import objectives
from dlm_jax.study.sweep import Sweep, fmt_num

BUDGETS = (1e11, 2e11, 4e11, 8e11)
SIZES = ((12, 2), (16, 2), (24, 2), (32, 2))  # (d_model, layers): issue 6's optima were d12-d32
METHODS = {
    'ar': {'objective': 'ar'},
    'masked': {'objective': 'mdm'},
    'uniform': {'objective': 'mdm', 'diffusion.noise': 'uniform'},
    'hybrid': {'objective': 'mdm', 'diffusion.noise': 'hybrid', 'diffusion.p_uniform': 0.5},
    'block4': {'objective': 'block', 'block.size': 4},
    'block16': {'objective': 'block', 'block.size': 16},
}


def get_sweep():
  runs = {}
  for method, keys in METHODS.items():
    if keys['objective'] not in objectives.OBJECTIVES:
      continue  # block diffusion not in this build
    for C in BUDGETS:
      for d, layers in SIZES:
        # block diffusion reads 2L tokens per L targets: twice the FLOPs per target (flops.py)
        factor = 2 if keys['objective'] == 'block' else 1
        steps = int(round(C / (factor * flops.flops_per_token(
            d, layers, flops.default_mlp_dim(d), isoflop_micro.VOCAB, factor * isoflop_micro.L)
            * isoflop_micro.B * isoflop_micro.L)))
        if steps < isoflop_micro.MIN_STEPS:
          continue
        runs[f'{method}_C{fmt_num(C)}_d{d}'] = dict(
            keys, **{'model.d_model': d, 'model.num_layers': layers,
                     'model.num_heads': max(d // 16, 1), 'train.num_steps': steps,
                     'train.warmup_steps': max(steps // 10, 1)})
  return Sweep('noise_micro', 'configs/sweeps/micro_base.py', runs, __doc__)
