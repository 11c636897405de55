"""Regularisers for data-repeated training: AR and MDM at R in {16, 64} epochs, each with
token dropout {0.1, 0.3}, MLP dropout {0.1, 0.3}, weight decay {0.3, 1.0} or nothing
(configs/experiments/recipes.py model, D = 512k tokens), 24 runs (token dropout for AR only)."""
from dlm_jax.study.sweep import Sweep

D = 125 * 32 * 128
REGS = {'none': {}, 'tokdrop0.1': {'train.token_dropout': 0.1},
        'tokdrop0.3': {'train.token_dropout': 0.3}, 'mlpdrop0.1': {'model.mlp_dropout': 0.1},
        'mlpdrop0.3': {'model.mlp_dropout': 0.3}, 'wd0.3': {'train.weight_decay': 0.3},
        'wd1.0': {'train.weight_decay': 1.0}}


def get_sweep():
  runs = {}
  for obj in ('ar', 'mdm'):
    for R in (16, 64):
      for name, s in REGS.items():
        if obj == 'mdm' and name.startswith('tokdrop'):
          continue  # MDM inputs are already masked; token dropout applies to AR inputs
        runs[f'{obj}_R{R}_{name}'] = dict(s, objective=obj, **{'data.unique_tokens': D // R,
                                                               'train.epochs': float(R)})
  return Sweep('regularisers', 'configs/experiments/recipes.py', runs, __doc__)
