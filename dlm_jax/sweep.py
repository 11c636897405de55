"""python -m dlm_jax.sweep: sweeps (sweep files import Sweep from here too) (the code: dlm_jax/study/sweep.py)."""
from dlm_jax.study.sweep import Sweep, main  # pylint: disable=unused-import

if __name__ == '__main__':
  main()
