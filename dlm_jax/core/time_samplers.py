"""The time samplers that draw t on [eps, 1] (config.diffusion.time_sampler), each by its exact
inverse CDF (see core/schedules.py, which re-exports them beside the schedules)."""
import math

import jax
import jax.numpy as jnp
from jax.scipy import special

from dlm_jax.core.registry import Param, registered

TIME_SAMPLERS = {}  # config.diffusion.time_sampler: name -> TimeDist class



class TimeDist:
  """A law on (0, 1) truncated to [eps, 1]. Subclasses give the untruncated law's density
  `pdf0`, CDF `cdf0` and survival function `sf0` (1 - cdf0, accurate in the upper tail) with
  their inverses `icdf0` and `isf0`. `params`: its Params under config.diffusion.sampler_params,
  which `from_params` reads. `flat`: a constant density, whose elbo weights float32 sampling
  follows exactly (no bias bound to check)."""
  name = ''
  params = ()
  flat = False

  def __init__(self, eps):
    self.eps = eps

  @classmethod
  def from_params(cls, eps, sp):
    return cls(eps, *(sp[p.key] for p in cls.params))

  def pdf0(self, t):
    raise NotImplementedError

  def cdf0(self, t):
    raise NotImplementedError

  def icdf0(self, p):
    raise NotImplementedError

  def sf0(self, t):
    return 1.0 - self.cdf0(t)

  def isf0(self, q):
    return self.icdf0(1.0 - q)

  def _bounds(self):
    """(mass below eps, mass above 1, mass of [eps, 1]) of the untruncated law."""
    eps, one = jnp.float32(self.eps), jnp.float32(1.0)
    below, above = self.cdf0(eps), self.sf0(one)
    return below, above, jnp.where(below < 0.5, self.cdf0(one) - below, self.sf0(eps) - above)

  def density(self, t):
    """q(t) of the truncated law on [eps, 1] (0 outside)."""
    inside = (t >= self.eps) & (t <= 1.0)
    return jnp.where(inside, self.pdf0(t) / self._bounds()[2], 0.0)

  def from_uniform(self, u):
    """Exact inverse CDF of the truncated law. u < 1/2 goes through the CDF and u >= 1/2 through
    the survival function, so float32 rounding cuts off neither tail (p = 1 - 1e-9 is not a
    float32, but its complement is), and nothing is clipped to a sub-interval."""
    below, above, mass = self._bounds()
    lower = self.icdf0(below + jnp.minimum(u, 0.5) * mass)
    upper = self.isf0(above + (1.0 - jnp.maximum(u, 0.5)) * mass)
    return jnp.clip(jnp.where(u < 0.5, lower, upper), self.eps, 1.0)


@registered(TIME_SAMPLERS)
class Uniform(TimeDist):
  name, flat = 'uniform', True

  def pdf0(self, t):
    return jnp.ones_like(t)

  def cdf0(self, t):
    return t

  def icdf0(self, p):
    return p

  def from_uniform(self, u):
    return self.eps + (1.0 - self.eps) * u


def _bisect(f, target, increasing, iters=40):
  """t in [0, 1] with f(t) = target for a monotone f (elementwise)."""
  lo, hi = jnp.zeros_like(target), jnp.ones_like(target)

  def body(_, lohi):
    lo, hi = lohi
    mid = 0.5 * (lo + hi)
    left = (f(mid) < target) if increasing else (f(mid) > target)
    return jnp.where(left, mid, lo), jnp.where(left, hi, mid)
  lo, hi = jax.lax.fori_loop(0, iters, body, (lo, hi))
  return 0.5 * (lo + hi)


@registered(TIME_SAMPLERS)
class Beta(TimeDist):
  """Beta(a, b); inverses by bisection on the regularised incomplete beta function."""
  name = 'beta'
  params = tuple(Param(k, 2.0, lambda v: v > 0, 'must be > 0, got {v}')
                 for k in ('beta_a', 'beta_b'))

  def __init__(self, eps, a, b):
    super().__init__(eps)
    self.a, self.b = float(a), float(b)
    self.log_norm = math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)

  def pdf0(self, t):
    """Finite on the closed interval where the law's density is: a zero exponent's factor is 1
    at the end it would meet (xlogy(0, 0) = 0), so Beta(a, 1) at t = 1, which the float32
    inverse CDF reaches, and Beta(1, b) at t = 0 are a / B(a, 1) and b / B(1, b), not 0 * log 0."""
    t = jnp.clip(t, 0.0, 1.0)
    return jnp.exp(special.xlogy(self.a - 1, t) + special.xlog1py(self.b - 1, -t) - self.log_norm)

  def cdf0(self, t):
    return special.betainc(self.a, self.b, jnp.clip(t, 0.0, 1.0))

  def sf0(self, t):
    return special.betainc(self.b, self.a, jnp.clip(1.0 - t, 0.0, 1.0))

  def icdf0(self, p):
    return _bisect(self.cdf0, p, increasing=True)

  def isf0(self, q):
    return _bisect(self.sf0, q, increasing=False)


class _Gaussian(TimeDist):
  """A law whose standardised variable z = (g(t) - mu) / sigma is N(0, 1) for an increasing g
  (logit_normal: in logit space; truncated_normal: centre and width in t)."""
  params = (Param('mu', 0.0),
            Param('sigma', 1.0, lambda v: v > 0,
                  'must be > 0 (a width of {v} makes the density improper)'))

  def __init__(self, eps, mu, sigma):
    super().__init__(eps)
    self.mu, self.sigma = float(mu), float(sigma)

  def z(self, t):
    raise NotImplementedError

  def t_of_z(self, z):
    raise NotImplementedError

  def cdf0(self, t):
    return special.ndtr(self.z(t))

  def sf0(self, t):
    return special.ndtr(-self.z(t))

  def icdf0(self, p):
    return self.t_of_z(special.ndtri(p))

  def isf0(self, q):
    return self.t_of_z(-special.ndtri(q))


@registered(TIME_SAMPLERS)
class LogitNormal(_Gaussian):
  """logit(t) ~ N(mu, sigma^2)."""
  name = 'logit_normal'

  def z(self, t):
    t = jnp.clip(t, 0.0, 1.0)
    return (jnp.log(t) - jnp.log1p(-t) - self.mu) / self.sigma

  def t_of_z(self, z):
    return jax.nn.sigmoid(self.mu + self.sigma * z)

  def pdf0(self, t):
    z = self.z(t)
    inside = (t > 0) & (t < 1)
    tt = jnp.where(inside, t, 0.5)
    return jnp.where(inside, jnp.exp(-0.5 * z * z) / (self.sigma * jnp.sqrt(2 * jnp.pi) *
                                                      tt * (1 - tt)), 0.0)


@registered(TIME_SAMPLERS)
class TruncatedNormal(_Gaussian):
  """N(mu, sigma^2) truncated to [eps, 1]."""
  name = 'truncated_normal'

  def z(self, t):
    return (t - self.mu) / self.sigma

  def t_of_z(self, z):
    return self.mu + self.sigma * z

  def pdf0(self, t):
    z = self.z(t)
    return jnp.exp(-0.5 * z * z) / (self.sigma * jnp.sqrt(2 * jnp.pi))


class UniformMixture(TimeDist):
  """lam * U(eps, 1) + (1 - lam) * dist ("defensive" importance sampling).

  Under `elbo` weighting the per-sample weight w(t) u(t) / q(t) is bounded by w(t) / lam, so
  bell-shaped samplers whose tails are thinner than the ELBO weight (logit-normal: q vanishes
  faster than any power of t as t -> 0) keep a finite-variance estimator. The component is chosen
  by u itself (u < lam: uniform), so low-discrepancy u stays stratified."""

  def __init__(self, dist, lam):
    super().__init__(dist.eps)
    self.dist, self.lam = dist, float(lam)
    self.name = f'{dist.name}+uniform{lam:g}'

  def density(self, t):
    inside = (t >= self.eps) & (t <= 1.0)
    u = jnp.where(inside, 1.0 / (1.0 - self.eps), 0.0)
    return self.lam * u + (1.0 - self.lam) * self.dist.density(t)

  def from_uniform(self, u):
    lam = self.lam
    t_uni = self.eps + (1.0 - self.eps) * jnp.clip(u / lam, 0.0, 1.0)
    t_bell = self.dist.from_uniform(jnp.clip((u - lam) / (1.0 - lam), 0.0, 1.0))
    return jnp.where(u < lam, t_uni, t_bell)


# mixed into any sampler but uniform (UniformMixture): bounded `elbo` weights
MIX = Param('uniform_mix', 0.0, lambda v: 0.0 <= v < 1.0, '{v} is outside [0, 1)')


def get_time_dist(dcfg) -> TimeDist:
  """The registered sampler config.diffusion.time_sampler names, mixed with U(eps, 1) by
  sampler_params.uniform_mix (uniform itself never is)."""
  name, sp, eps = dcfg.time_sampler, dcfg.sampler_params, dcfg.eps
  if name not in TIME_SAMPLERS:
    raise ValueError(f'unknown time sampler {name!r} (one of {", ".join(TIME_SAMPLERS)})')
  dist = TIME_SAMPLERS[name].from_params(eps, sp)
  if isinstance(dist, Uniform) or sp.uniform_mix <= 0:
    return dist
  return UniformMixture(dist, sp.uniform_mix)

