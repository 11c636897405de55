"""python -m dlm_jax.lmeval: lm-eval-harness with the dlm_jax model (the code: dlm_jax/infer/lmeval.py)."""
from dlm_jax.infer.lmeval import main

if __name__ == '__main__':
  main()
