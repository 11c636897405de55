"""Dual-objective ratio x data repetition: AR weight in {0, 1/64, 1/16, 1/4, 1/2, 3/4, 15/16,
63/64, 1} x R in {1, 4, 16, 64} epochs of U = D / R unique tokens, D = 512k tokens per run
(configs/experiments/recipes.py model), 36 runs. Every run uses the dual objective so that
validation reports both AR NLL and MDM NELBO (weight 1 = pure AR, 0 = pure MDM).
DLM_JAX_SWEEP_SCALE=micro gives the 18-run variant the notebook test reads
(R in {1, 16}, 256k tokens, d=32)."""
import os

from dlm_jax.study.sweep import Sweep

WEIGHTS = ('0', '1/64', '1/16', '1/4', '1/2', '3/4', '15/16', '63/64', '1')


def get_sweep():
  micro = os.environ.get('DLM_JAX_SWEEP_SCALE') == 'micro'
  D = 125 * 32 * 128 // (2 if micro else 1)
  repeats = (1, 16) if micro else (1, 4, 16, 64)
  runs = {}
  for R in repeats:
    for w in WEIGHTS:
      s = {'objective': 'dual', 'dual.ar_weight': w, 'data.unique_tokens': D // R,
           'train.epochs': float(R)}
      if micro:
        s.update({'model.d_model': 32, 'model.num_heads': 2})
      runs[f'ar{w.replace("/", "-")}_R{R}'] = s
  return Sweep('dual_ratio_micro' if micro else 'dual_ratio', 'configs/experiments/recipes.py',
               runs, __doc__)
