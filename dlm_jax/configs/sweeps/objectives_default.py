"""The default model (configs/default.py) trained as AR, MDM and dual (1/2): the models whose
zero-shot results and likelihood estimates EXPERIMENTS.md section 5 reports.

  python -m dlm_jax.sweep local configs/sweeps/objectives_default.py --workers 2
  python -m dlm_jax.main --config configs/default.py --config.objective=ar \
      --workdir runs/sweeps/objectives_default/ar --mode eval --config.eval.tasks=...
"""
from dlm_jax.study.sweep import Sweep


def get_sweep():
  runs = {obj: {'objective': obj} for obj in ('ar', 'mdm', 'dual')}
  return Sweep('objectives_default', 'configs/default.py', runs, __doc__)
