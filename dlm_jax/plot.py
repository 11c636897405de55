"""python -m dlm_jax.plot: plots of runs and sweeps (the code: dlm_jax/study/plot.py)."""
from dlm_jax.study.plot import main

if __name__ == '__main__':
  main()
