"""Noise schedules alpha(t) and the time samplers that draw t: the laws the noise process
(core/noise.py) is built from.

Forward process: each maskable token is kept with probability alpha(t), else replaced by [MASK].
The continuous-time NELBO weight is w(t) = -alpha'(t) / (1 - alpha(t)) (linear: 1/t).
Times live on [eps, 1]. A time sampler is a law q on (0, 1) truncated to [eps, 1], drawn by its
exact inverse CDF from u in [0, 1) (the lower half of u through the CDF, the upper half through
the survival function, so float32 rounding cuts off neither tail and nothing is clipped), so any
sampler combines with low-discrepancy u_i = (u + i / B) mod 1 across the batch.

Each schedule and time sampler is a class that names itself and declares its config parameters
(`Param`: key, default, check), filed by name through `registered`; config.diffusion's choices,
the sampler_params defaults and their checks all come from the two registries. A new one is one
decorated class here.
"""
import math

import jax.numpy as jnp

from dlm_jax.core.registry import Param, registered
# the time samplers, re-exported: schedules and samplers are read from here
from dlm_jax.core.time_samplers import MIX, TIME_SAMPLERS, Beta, LogitNormal, TimeDist  # noqa: F401
from dlm_jax.core.time_samplers import TruncatedNormal, Uniform, UniformMixture  # noqa: F401
from dlm_jax.core.time_samplers import get_time_dist  # noqa: F401

SCHEDULES = {}      # config.diffusion.schedule: name -> Schedule class

# ----------------------------------------------------------------------------- schedules


class Schedule:
  """alpha(t) with its derivative; `weight` is the ELBO weight w(t); `mask_prob` = 1 - alpha(t)
  (computed without cancellation where it matters) and `t_of_mask_prob` its inverse."""
  name = ''
  params = ()  # Params under config.diffusion

  @classmethod
  def from_config(cls, dcfg):
    return cls()

  def alpha(self, t):
    raise NotImplementedError

  def dalpha(self, t):
    raise NotImplementedError

  def weight(self, t):
    return -self.dalpha(t) / (1.0 - self.alpha(t))

  def mask_prob(self, t):
    return 1.0 - self.alpha(t)

  def t_of_mask_prob(self, s):
    raise NotImplementedError


@registered(SCHEDULES)
class Linear(Schedule):
  """alpha = 1 - t; w = 1/t."""
  name = 'linear'

  def alpha(self, t):
    return 1.0 - t

  def dalpha(self, t):
    return -jnp.ones_like(t)

  def weight(self, t):
    return 1.0 / t

  def mask_prob(self, t):
    return t

  def t_of_mask_prob(self, s):
    return s


@registered(SCHEDULES)
class Cosine(Schedule):
  """alpha = cos(pi t / 2)."""
  name = 'cosine'

  def alpha(self, t):
    return jnp.cos(0.5 * jnp.pi * t)

  def dalpha(self, t):
    return -0.5 * jnp.pi * jnp.sin(0.5 * jnp.pi * t)

  def weight(self, t):
    # sin/(1-cos) = cot(x/2), stable for small t
    return 0.5 * jnp.pi / jnp.tan(0.25 * jnp.pi * t)

  def mask_prob(self, t):
    return 2.0 * jnp.sin(0.25 * jnp.pi * t) ** 2  # 1 - cos(x) without cancellation

  def t_of_mask_prob(self, s):
    return 4.0 / jnp.pi * jnp.arcsin(jnp.sqrt(0.5 * s))


@registered(SCHEDULES)
class Polynomial(Schedule):
  """alpha = 1 - t^k; w = k / t."""
  name = 'polynomial'
  params = (Param('poly_k', 2.0, lambda v: v > 0, 'must be positive, got {v}'),)

  def __init__(self, k=2.0):
    self.k = k

  @classmethod
  def from_config(cls, dcfg):
    return cls(dcfg.poly_k)

  def alpha(self, t):
    return 1.0 - t ** self.k

  def dalpha(self, t):
    return -self.k * t ** (self.k - 1.0)

  def weight(self, t):
    return self.k / t

  def mask_prob(self, t):
    return t ** self.k

  def t_of_mask_prob(self, s):
    return s ** (1.0 / self.k)


@registered(SCHEDULES)
class LogLinear(Schedule):
  """MDLM/SEDD log-linear noise: sigma(t) = -log(1 - (1 - delta) t), alpha = exp(-sigma);
  delta is diffusion.eps."""
  name = 'loglinear'

  def __init__(self, delta=1e-3):
    self.delta = delta

  @classmethod
  def from_config(cls, dcfg):
    return cls(dcfg.eps)

  def alpha(self, t):
    return 1.0 - (1.0 - self.delta) * t

  def dalpha(self, t):
    return -(1.0 - self.delta) * jnp.ones_like(t)

  def weight(self, t):
    return 1.0 / t

  def mask_prob(self, t):
    return (1.0 - self.delta) * t

  def t_of_mask_prob(self, s):
    return s / (1.0 - self.delta)


@registered(SCHEDULES)
class LogSNR(Schedule):
  """A schedule in log-SNR: alpha = sigmoid(lambda(t)), lambda(t) = shift + scale log((1 - t) / t)
  (shift 0, scale 1: exactly linear). shift > 0 keeps more signal at every t (the log-SNR shift
  uniform noise is often trained with); scale > 1 steepens the middle. alpha(0) = 1, alpha(1) = 0
  for every setting, so the prior at t = 1 is exactly pi. Below scale 1 the weight diverges at
  t = 1 (refused)."""
  name = 'logsnr'
  params = (Param('logsnr_shift', 0.0, lambda v: abs(v) <= 20, 'must be in [-20, 20], got {v}'),
            Param('logsnr_scale', 1.0, lambda v: 1.0 <= v <= 10.0,
                  'must be in [1, 10] (below 1 the NELBO weight diverges at t = 1), got {v}'))

  def __init__(self, shift=0.0, scale=1.0):
    self.shift, self.scale, self.c = shift, scale, math.exp(-shift)

  @classmethod
  def from_config(cls, dcfg):
    return cls(dcfg.logsnr_shift, dcfg.logsnr_scale)

  def _parts(self, t):
    """(t^s, e^shift (1 - t)^s): 1 - alpha and alpha are a / (a + b) and b / (a + b)."""
    return t ** self.scale, (1.0 - t) ** self.scale / self.c

  def alpha(self, t):
    a, b = self._parts(t)
    return b / (a + b)

  def mask_prob(self, t):
    a, b = self._parts(t)
    return a / (a + b)

  def weight(self, t):
    # -alpha' / (1 - alpha) = scale alpha / (t (1 - t)), written finite at t = 1
    return self.scale / (t * (1.0 - t) + self.c * t ** (1.0 + self.scale) *
                         (1.0 - t) ** (1.0 - self.scale))

  def dalpha(self, t):
    return -self.weight(t) * self.mask_prob(t)

  def t_of_mask_prob(self, s):
    return 1.0 / (1.0 + ((1.0 - s) * self.c / s) ** (1.0 / self.scale))


def get_schedule(name: str, dcfg=None) -> Schedule:
  """The registered schedule `name`, its parameters from config.diffusion (else its defaults)."""
  if name not in SCHEDULES:
    raise ValueError(f'unknown schedule {name!r} (one of {", ".join(SCHEDULES)})')
  return SCHEDULES[name].from_config(dcfg) if dcfg is not None else SCHEDULES[name]()
