"""Noise schedules, time samplers and mask patterns: the one place noise levels are decided.

Forward process: each maskable token is kept with probability alpha(t), else replaced by [MASK].
Continuous-time NELBO weight w(t) = -alpha'(t) / (1 - alpha(t)); linear alpha = 1 - t gives 1/t.
Times live on [eps, 1]: t = eps + (1 - eps) u with u ~ U(0, 1), so the density is 1/(1 - eps).
"""
import jax
import jax.numpy as jnp


class Linear:
  """alpha(t) = 1 - t."""
  name = 'linear'

  @staticmethod
  def alpha(t):
    return 1.0 - t

  @staticmethod
  def dalpha(t):
    return -jnp.ones_like(t)

  @classmethod
  def weight(cls, t):
    return -cls.dalpha(t) / (1.0 - cls.alpha(t))


SCHEDULES = {'linear': Linear}


def get_schedule(name: str):
  return SCHEDULES[name]


def sample_times(rng, batch: int, sampler: str = 'uniform', eps: float = 1e-3):
  """t_B on [eps, 1]. `low_discrepancy`: u_i = (u + i / B) mod 1, one shared uniform u."""
  if sampler == 'uniform':
    u_B = jax.random.uniform(rng, (batch,))
  elif sampler == 'low_discrepancy':
    u_B = jnp.mod(jax.random.uniform(rng, ()) + jnp.arange(batch) / batch, 1.0)
  else:
    raise ValueError(f'unknown time sampler {sampler!r}')
  return eps + (1.0 - eps) * u_B


def bernoulli_mask(rng, t_B, maskable_BxL, schedule=Linear):
  """Each maskable token masked independently with probability 1 - alpha(t_b)."""
  p_Bx1 = (1.0 - schedule.alpha(t_B))[:, None]
  return (jax.random.uniform(rng, maskable_BxL.shape) < p_Bx1) & maskable_BxL
