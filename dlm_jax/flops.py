"""python -m dlm_jax.flops: the named size table (the code: dlm_jax/core/flops.py)."""
import sys

from dlm_jax.core.flops import main

if __name__ == '__main__':
  main(sys.argv)
