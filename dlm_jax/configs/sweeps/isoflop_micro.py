"""Micro IsoFLOP sweep (the issue-6 demo): AR and MDM byte-level models of 7 sizes at 5 compute
budgets on the embedded corpus (70 runs), about half an hour on 2 CPU cores with 2 workers.
The sizes bracket the loss minimum of every budget for both objectives (a first grid of
d_model 16..128 put the minima at or past its small end).
Tokens per run D = C / FLOPs-per-token (flops.py, 6N + attention), rounded to whole batches.

  python -m dlm_jax.sweep local configs/sweeps/isoflop_micro.py --workers 2
  python -m dlm_jax.sweep collect configs/sweeps/isoflop_micro.py
"""
from dlm_jax.core import flops
from dlm_jax.study.sweep import Sweep, fmt_num

BUDGETS = (5e10, 1e11, 2e11, 4e11, 8e11)
SIZES = ((8, 2), (12, 2), (16, 2), (24, 2), (32, 2), (48, 2), (64, 2))  # (d_model, layers)
OBJECTIVES = ('ar', 'mdm')
VOCAB, L, B = 260, 128, 16


MIN_STEPS = 10


def steps_for(C, d, layers):
  fpt = flops.flops_per_token(d, layers, flops.default_mlp_dim(d), VOCAB, L)
  return int(round(C / (fpt * B * L)))


def get_sweep():
  runs = {}
  for obj in OBJECTIVES:
    for C in BUDGETS:
      for d, layers in SIZES:
        if steps_for(C, d, layers) < MIN_STEPS:  # too large for this budget: skip, not clamp
          continue
        runs[f'{obj}_C{fmt_num(C)}_d{d}_l{layers}'] = {
            'objective': obj, 'model.d_model': d, 'model.num_layers': layers,
            'model.num_heads': max(d // 16, 1), 'train.num_steps': steps_for(C, d, layers),
            'train.warmup_steps': max(steps_for(C, d, layers) // 10, 1)}
  return Sweep('isoflop_micro', 'configs/sweeps/micro_base.py', runs, __doc__)
