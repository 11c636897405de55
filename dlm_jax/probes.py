"""python -m dlm_jax.probes: the SMDM probes (the code: dlm_jax/study/probes.py)."""
import sys

from dlm_jax.study.probes import main

if __name__ == '__main__':
  sys.exit(main())
