"""Noise schedules, time samplers, ELBO weighting and mask patterns: the one place noise levels
and masks are decided.

Forward process: each maskable token is kept with probability alpha(t), else replaced by [MASK].
The continuous-time NELBO weight is w(t) = -alpha'(t) / (1 - alpha(t)) (linear: 1/t).

Times live on [eps, 1]. The reference measure is U(eps, 1) (MDLM's t = eps + (1 - eps) u), so the
estimated quantity is  NELBO = E_{t ~ U(eps,1)} [ w(t) f(t) ],  f(t) = E_mask sum_masked CE.
A time sampler draws t from a density q on [eps, 1] (a bell-shaped family truncated to [eps, 1]).
Weighting modes:
  elbo   per-sample weight w(t) * u(t) / q(t), u = 1 / (1 - eps): an unbiased NELBO under any q;
  plain  per-sample weight w(t): the sampler reshapes the objective (what bell-shaped sampling
         "for speed" does); the unbiased NELBO is still computed alongside and reported.
Samplers are exact inverse CDFs of the truncated law applied to u in (0, 1), so any sampler can be
combined with low-discrepancy u_i = (u + i / B) mod 1 across the batch.
"""
import math

import jax
import jax.numpy as jnp
from jax.scipy import special

# ----------------------------------------------------------------------------- schedules


class Schedule:
  """alpha(t) with its derivative; `weight` is the ELBO weight w(t)."""
  name = ''

  def alpha(self, t):
    raise NotImplementedError

  def dalpha(self, t):
    raise NotImplementedError

  def weight(self, t):
    return -self.dalpha(t) / (1.0 - self.alpha(t))


class Linear(Schedule):
  """alpha = 1 - t; w = 1/t."""
  name = 'linear'

  def alpha(self, t):
    return 1.0 - t

  def dalpha(self, t):
    return -jnp.ones_like(t)

  def weight(self, t):
    return 1.0 / t


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


class Polynomial(Schedule):
  """alpha = 1 - t^k; w = k / t."""
  name = 'polynomial'

  def __init__(self, k=2.0):
    self.k = k

  def alpha(self, t):
    return 1.0 - t ** self.k

  def dalpha(self, t):
    return -self.k * t ** (self.k - 1.0)

  def weight(self, t):
    return self.k / t


class LogLinear(Schedule):
  """MDLM/SEDD log-linear noise: sigma(t) = -log(1 - (1 - delta) t), alpha = exp(-sigma)."""
  name = 'loglinear'

  def __init__(self, delta=1e-3):
    self.delta = delta

  def alpha(self, t):
    return 1.0 - (1.0 - self.delta) * t

  def dalpha(self, t):
    return -(1.0 - self.delta) * jnp.ones_like(t)

  def weight(self, t):
    return 1.0 / t


SCHEDULES = ('linear', 'cosine', 'polynomial', 'loglinear')


def get_schedule(name: str, dcfg=None) -> Schedule:
  if name == 'linear':
    return Linear()
  if name == 'cosine':
    return Cosine()
  if name == 'polynomial':
    return Polynomial(dcfg.poly_k if dcfg is not None else 2.0)
  if name == 'loglinear':
    return LogLinear(dcfg.eps if dcfg is not None else 1e-3)
  raise ValueError(f'unknown schedule {name!r} (one of {", ".join(SCHEDULES)})')


# ----------------------------------------------------------------------------- time samplers


class TimeDist:
  """A law on (0, 1) truncated to [eps, 1]: `cdf`, `pdf`, `icdf` of the untruncated law."""
  name = ''

  def __init__(self, eps):
    self.eps = eps

  def pdf0(self, t):
    raise NotImplementedError

  def cdf0(self, t):
    raise NotImplementedError

  def icdf0(self, p):
    raise NotImplementedError

  def _mass(self):
    return self.cdf0(jnp.float32(1.0)) - self.cdf0(jnp.float32(self.eps))

  def density(self, t):
    """q(t) of the truncated law on [eps, 1] (0 outside)."""
    inside = (t >= self.eps) & (t <= 1.0)
    return jnp.where(inside, self.pdf0(t) / self._mass(), 0.0)

  def from_uniform(self, u):
    """Exact inverse CDF of the truncated law."""
    lo = self.cdf0(jnp.float32(self.eps))
    t = self.icdf0(lo + u * self._mass())
    return jnp.clip(t, self.eps, 1.0)


class Uniform(TimeDist):
  name = 'uniform'

  def pdf0(self, t):
    return jnp.ones_like(t)

  def cdf0(self, t):
    return t

  def icdf0(self, p):
    return p

  def from_uniform(self, u):
    return self.eps + (1.0 - self.eps) * u


class Beta(TimeDist):
  """Beta(a, b); the inverse CDF by bisection on the regularised incomplete beta function."""
  name = 'beta'

  def __init__(self, eps, a, b):
    super().__init__(eps)
    self.a, self.b = float(a), float(b)
    self.log_norm = math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)

  def pdf0(self, t):
    t = jnp.clip(t, 1e-12, 1 - 1e-7)
    return jnp.exp((self.a - 1) * jnp.log(t) + (self.b - 1) * jnp.log1p(-t) - self.log_norm)

  def cdf0(self, t):
    return special.betainc(self.a, self.b, jnp.clip(t, 0.0, 1.0))

  def icdf0(self, p):
    lo, hi = jnp.zeros_like(p), jnp.ones_like(p)

    def body(_, lohi):
      lo, hi = lohi
      mid = 0.5 * (lo + hi)
      below = self.cdf0(mid) < p
      return jnp.where(below, mid, lo), jnp.where(below, hi, mid)
    lo, hi = jax.lax.fori_loop(0, 40, body, (lo, hi))
    return 0.5 * (lo + hi)


class LogitNormal(TimeDist):
  """logit(t) ~ N(mu, sigma^2)."""
  name = 'logit_normal'

  def __init__(self, eps, mu, sigma):
    super().__init__(eps)
    self.mu, self.sigma = float(mu), float(sigma)

  def pdf0(self, t):
    t = jnp.clip(t, 1e-12, 1 - 1e-7)
    z = (jnp.log(t) - jnp.log1p(-t) - self.mu) / self.sigma
    return jnp.exp(-0.5 * z * z) / (self.sigma * jnp.sqrt(2 * jnp.pi) * t * (1 - t))

  def cdf0(self, t):
    t = jnp.clip(t, 1e-12, 1 - 1e-7)
    return special.ndtr((jnp.log(t) - jnp.log1p(-t) - self.mu) / self.sigma)

  def icdf0(self, p):
    return jax.nn.sigmoid(self.mu + self.sigma * special.ndtri(jnp.clip(p, 1e-7, 1 - 1e-7)))


class TruncatedNormal(TimeDist):
  """N(mu, sigma^2) truncated to [eps, 1]."""
  name = 'truncated_normal'

  def __init__(self, eps, mu, sigma):
    super().__init__(eps)
    self.mu, self.sigma = float(mu), float(sigma)

  def pdf0(self, t):
    z = (t - self.mu) / self.sigma
    return jnp.exp(-0.5 * z * z) / (self.sigma * jnp.sqrt(2 * jnp.pi))

  def cdf0(self, t):
    return special.ndtr((t - self.mu) / self.sigma)

  def icdf0(self, p):
    return self.mu + self.sigma * special.ndtri(jnp.clip(p, 1e-7, 1 - 1e-7))


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


TIME_SAMPLERS = ('uniform', 'beta', 'logit_normal', 'truncated_normal')


def get_time_dist(dcfg) -> TimeDist:
  name, sp, eps = dcfg.time_sampler, dcfg.sampler_params, dcfg.eps
  if name == 'uniform':
    return Uniform(eps)
  if name == 'beta':
    dist = Beta(eps, sp.beta_a, sp.beta_b)
  elif name == 'logit_normal':
    dist = LogitNormal(eps, sp.mu, sp.sigma)
  elif name == 'truncated_normal':
    dist = TruncatedNormal(eps, sp.mu, sp.sigma)
  else:
    raise ValueError(f'unknown time sampler {name!r} (one of {", ".join(TIME_SAMPLERS)})')
  return UniformMixture(dist, sp.uniform_mix) if sp.uniform_mix > 0 else dist


def uniforms(rng, batch: int, low_discrepancy: bool):
  """u_B in [0, 1): iid, or (u + i / B) mod 1 with one shared u (antithetic for B = 2)."""
  if low_discrepancy:
    return jnp.mod(jax.random.uniform(rng, ()) + jnp.arange(batch) / batch, 1.0)
  return jax.random.uniform(rng, (batch,))


def sample_times(rng, batch: int, dist: TimeDist, low_discrepancy: bool = True):
  return dist.from_uniform(uniforms(rng, batch, low_discrepancy))


def time_weights(t_B, schedule: Schedule, dist: TimeDist, weighting: str):
  """(training weight, unbiased NELBO weight) per sample; see the module docstring."""
  w_B = schedule.weight(t_B)
  if isinstance(dist, Uniform):
    return w_B, w_B
  elbo_B = w_B / ((1.0 - dist.eps) * dist.density(t_B))
  if weighting == 'elbo':
    return elbo_B, elbo_B
  if weighting == 'plain':
    return w_B, elbo_B
  raise ValueError(f'unknown weighting {weighting!r} (elbo or plain)')


# ----------------------------------------------------------------------------- mask patterns


def bernoulli_mask(rng, t_B, maskable_BxL, schedule: Schedule = Linear()):
  """Each maskable token masked independently with probability 1 - alpha(t_b)."""
  p_Bx1 = (1.0 - schedule.alpha(t_B))[:, None]
  return (jax.random.uniform(rng, maskable_BxL.shape) < p_Bx1) & maskable_BxL


def exact_count_mask(rng, t_B, maskable_BxL, schedule: Schedule = Linear()):
  """Exactly k_b = stochastic_round(n_b (1 - alpha(t_b))) maskable positions, chosen uniformly
  (n_b = number of maskable positions). Same per-token marginal as Bernoulli, less variance."""
  r_round, r_pos = jax.random.split(rng)
  n_B = jnp.sum(maskable_BxL, axis=1).astype(jnp.float32)
  x_B = n_B * (1.0 - schedule.alpha(t_B))
  k_B = jnp.floor(x_B) + (jax.random.uniform(r_round, x_B.shape) < x_B - jnp.floor(x_B))
  score_BxL = jnp.where(maskable_BxL, jax.random.uniform(r_pos, maskable_BxL.shape), 2.0)
  rank_BxL = jnp.argsort(jnp.argsort(score_BxL, axis=1), axis=1)
  return (rank_BxL < k_B[:, None]) & maskable_BxL


MASK_PATTERNS = {'bernoulli': bernoulli_mask, 'exact_count': exact_count_mask}


# ----------------------------------------------------------------------------- the whole process


class Noise:
  """The configured forward process (config.diffusion): draws t, masks and per-sample weights."""

  def __init__(self, dcfg):
    self.cfg = dcfg
    self.schedule = get_schedule(dcfg.schedule, dcfg)
    self.dist = get_time_dist(dcfg)
    self.pattern = MASK_PATTERNS[dcfg.mask_pattern]
    self.low_discrepancy = dcfg.low_discrepancy
    self.weighting = dcfg.weighting

  @classmethod
  def for_evaluation(cls, dcfg):
    """Validation always measures the unbiased NELBO: uniform low-discrepancy t, Bernoulli masks."""
    import ml_collections  # pylint: disable=g-import-not-at-top
    d = ml_collections.ConfigDict(dcfg.to_dict())
    d.time_sampler, d.low_discrepancy, d.mask_pattern, d.weighting = (
        'uniform', True, 'bernoulli', 'elbo')
    return cls(d)

  def maskable(self, targets_BxL, prefix_len_B=None):
    """Never PAD or BOS (nor EOS unless mask_eos), nor a task's prompt (its first prefix_len)."""
    from dlm_jax.data.tokenizers import BOS, EOS, PAD  # pylint: disable=g-import-not-at-top
    m = (targets_BxL != PAD) & (targets_BxL != BOS)
    if not self.cfg.mask_eos:
      m &= targets_BxL != EOS
    if prefix_len_B is not None:
      m &= jnp.arange(targets_BxL.shape[1])[None] >= prefix_len_B[:, None]
    return m

  def sample(self, rng, targets_BxL, prefix_len_B=None):
    """t_B, mask_BxL, training weight_B, unbiased-NELBO weight_B (drawn in batch order)."""
    rng_t, rng_m = jax.random.split(rng)
    t_B = sample_times(rng_t, targets_BxL.shape[0], self.dist, self.low_discrepancy)
    mask_BxL = self.pattern(rng_m, t_B, self.maskable(targets_BxL, prefix_len_B), self.schedule)
    w_B, elbo_B = time_weights(t_B, self.schedule, self.dist, self.weighting)
    return t_B, mask_BxL, w_B, elbo_B
