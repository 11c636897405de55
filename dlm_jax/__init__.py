"""dlm_jax: autoregressive, masked-diffusion and dual language models in JAX/Flax."""

__version__ = '0.1.0'
