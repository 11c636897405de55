"""python -m dlm_jax.scaling: scaling-law fits (the code: dlm_jax/study/scaling.py)."""
from dlm_jax.study.scaling import main

if __name__ == '__main__':
  main()
