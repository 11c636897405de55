"""The noise process: the one place noise levels, masks and their NELBO weights are decided, for
training, validation and likelihood evaluation alike.

The reference measure is U(eps, 1) (MDLM's t = eps + (1 - eps) u), so the estimated quantity is
  NELBO = E_{t ~ U(eps,1)} [ w(t) f(t) ],  f(t) = E_mask sum_masked CE.
A time sampler (core/schedules.py) draws t from a density q on [eps, 1]. Weighting modes:
  elbo   per-sample weight w(t) u(t) / q(t), u = 1 / (1 - eps): the NELBO under any q that
         float32 sampling can follow for the schedule (grid_bias_bound; validation refuses others);
  plain  per-sample weight w(t): the sampler reshapes the objective (what bell-shaped sampling
         "for speed" does); the NELBO is still computed alongside where it is unbiased.
Mask patterns: Bernoulli(1 - alpha(t)) per token, or exactly stochastic_round(n (1 - alpha(t)))
tokens, whose NELBO weight is exact_count_weights, not w(t).
"""
import functools
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dlm_jax.core import family
from dlm_jax.core.exact_count import exact_count_mask, exact_count_table
from dlm_jax.core.exact_count import exact_count_weights  # pylint: disable=unused-import
from dlm_jax.core.model_config import never_predicted
from dlm_jax.core.registry import choice, need
from dlm_jax.core.schedules import MIX, SCHEDULES, TIME_SAMPLERS, Linear, Schedule, TimeDist
from dlm_jax.core.schedules import Uniform, UniformMixture, get_schedule, get_time_dist
from dlm_jax.core.tokens import BOS, EOS, PAD


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


U_BITS = 23           # jax.random.uniform's float32 draws are multiples of 2**-23


BIAS_TOLERANCE = 1e-3  # the largest relative NELBO bias a time sampler may bring (`elbo`)

# Per-masked-token CE profiles g(t) (E[CE sum at t] / (1 - alpha(t)), up to scale) the bias is
# computed for: flat, rising to the all-masked (unigram) CE, falling to the full-context CE, each
# up to 3x its mean. The bias is linear in g, so its relative size for any nonnegative mix of these
# is at most the largest of theirs.
CE_PROFILES = {'1': lambda t: np.ones_like(t), 't': lambda t: t, 't^2': lambda t: t * t,
               '1-t': lambda t: 1.0 - t, '(1-t)^2': lambda t: (1.0 - t) ** 2}


def grid_points(dist: TimeDist, edge: int = 4096) -> dict:
  """The u points grid_bias_bound evaluates, with their t and (1 - eps) q(t) as the sampler
  computes them in float32 (one inverse-CDF pass; the schedule-free, costly part)."""
  n = 2 ** U_BITS
  cuts = [0, edge]
  if isinstance(dist, UniformMixture):
    k = int(round(dist.lam * n))
    cuts += [k - edge, k + edge]
  cuts += [n - edge, n]
  ks = np.concatenate([np.arange(a, b) for a, b in zip(cuts[0::2], cuts[1::2])])
  gaps = list(zip(cuts[1:-1:2], cuts[2::2]))
  panels = [np.linspace(a / n, b / n, 129) for a, b in gaps]
  mid = np.concatenate([0.5 * (e[1:] + e[:-1]) for e in panels])
  half = np.concatenate([0.5 * np.diff(e) for e in panels])
  x, wq = np.polynomial.legendre.leggauss(32)
  u_q = (mid[:, None] + half[:, None] * x[None]).ravel()
  ends = np.asarray(gaps, np.float64).ravel() / n
  # weights: a grid cell 1 / N (exact sum), a quadrature node, an Euler-Maclaurin end |H| / 2N
  weight = np.concatenate([np.full(len(ks), 1.0 / n), (wq[None] * half[:, None]).ravel(),
                           np.full(len(ends), 1.0 / (2 * n))])
  part = np.repeat([0, 1, 2], [len(ks), len(u_q), len(ends)])

  @jax.jit
  def t_and_q(u):
    t = dist.from_uniform(u)
    return t, (1.0 - dist.eps) * dist.density(t)

  t, q = t_and_q(jnp.asarray(np.concatenate([ks / n, u_q, ends]), jnp.float32))
  return dict(t=t, q=q, weight=weight, part=part)


def grid_bias_bound(dist: TimeDist, schedule: Schedule, points=None) -> float:
  """The relative bias the float32 sampler brings to the `elbo`-weighted NELBO of `schedule`.

  u is drawn on the grid k / N, N = 2**23, so the estimator's mean is the left Riemann sum over u
  of H(u) = G(t(u)) / ((1 - eps) q(t(u))) with G = w(t) (1 - alpha(t)) g(t); the NELBO is
  int_eps^1 G dt / (1 - eps). Where q vanishes at an end the sum misses the end beyond the last
  grid point and over-weighs the last points, a bias of order G(end) / N^(1/(1+power)): relative
  to the NELBO, G(end) / mean(G), which the schedule's w (1 - alpha) = -alpha' sets as much as g
  does (polynomial: 2t, so 4x at t = 1 for g = t^2); a bound for a unit integrand is low by that
  factor. So, for every profile in CE_PROFILES (hence for any nonnegative mix of them): the first
  and last 4096 grid cells (and those around a mixture's switch) are summed exactly as the
  sampler computes them in float32, the smooth interior is integrated by Gauss-Legendre
  quadrature in u, its Euler-Maclaurin end terms |H| / 2N are added as error, and the result is
  compared with the integral in t. inf where the weights overflow."""
  pts = grid_points(dist) if points is None else points
  t32 = pts['t']
  h = np.asarray(schedule.weight(t32) / pts['q'] * schedule.mask_prob(t32), np.float64)
  if not np.all(np.isfinite(h)):
    return float('inf')
  t, wu, part = np.asarray(t32, np.float64), pts['weight'], pts['part']
  x, wq = np.polynomial.legendre.leggauss(32)
  tx = np.linspace(dist.eps, 1.0, 257)  # the NELBO itself: quadrature in t
  mid_t, half_t = 0.5 * (tx[1:] + tx[:-1]), 0.5 * np.diff(tx)
  t_i = (mid_t[:, None] + half_t[:, None] * x[None]).ravel()
  t_i32 = jnp.asarray(t_i, jnp.float32)
  phi_i = np.asarray(schedule.weight(t_i32) * schedule.mask_prob(t_i32), np.float64)
  wt = (wq[None] * half_t[:, None]).ravel() / (1.0 - dist.eps)
  worst = 0.0
  for g in CE_PROFILES.values():
    exact = np.sum(phi_i * g(t_i) * wt)
    hw = h * g(t) * wu
    grid, em = np.sum(hw[part < 2]), np.sum(np.abs(hw[part == 2]))
    worst = max(worst, (abs(grid - exact) + em) / exact)
  return float(worst)


def nelbo_bias_bound(dcfg) -> float:
  """grid_bias_bound of the configured time sampler and schedule (0 for uniform)."""
  if TIME_SAMPLERS[dcfg.time_sampler].flat:
    return 0.0
  params = {p.key: float(dcfg[p.key]) for p in SCHEDULES[dcfg.schedule].params}
  return _bias_bound_cached(_key(dcfg), dcfg.schedule, json.dumps(params, sort_keys=True))


def _key(dcfg) -> str:
  """The sampler's own settings (what the costly grid_points depend on)."""
  return json.dumps(dict(time_sampler=dcfg.time_sampler, eps=dcfg.eps,
                         sampler_params=dcfg.sampler_params.to_dict()), sort_keys=True)


@functools.lru_cache(maxsize=64)
def _dist_and_points(key):
  dist = get_time_dist(ml_collections.ConfigDict(json.loads(key)))
  return dist, grid_points(dist)


@functools.lru_cache(maxsize=256)
def _bias_bound_cached(key, schedule, params):
  """params: the schedule's own Params (JSON)."""
  with jax.ensure_compile_time_eval():  # host numbers, also when first asked inside a jit trace
    dist, pts = _dist_and_points(key)
    sch = get_schedule(schedule, ml_collections.ConfigDict(dict(json.loads(params), eps=dist.eps)))
    return grid_bias_bound(dist, sch, pts)


def bernoulli_mask(rng, t_B, maskable_BxL, schedule: Schedule = Linear()):
  """Each maskable token masked independently with probability 1 - alpha(t_b)."""
  p_Bx1 = schedule.mask_prob(t_B)[:, None]
  return (jax.random.uniform(rng, maskable_BxL.shape) < p_Bx1) & maskable_BxL


MASK_PATTERNS = {'bernoulli': bernoulli_mask, 'exact_count': exact_count_mask}


PAD_MODES = ('predict', 'visible')
WEIGHTINGS = ('elbo', 'plain', 'ce')
# the forward process's prior pi = (1 - p) [MASK] + p Uniform(predicted ids), by p
NOISE_TYPES = ('masked', 'uniform', 'hybrid')


def uniform_frac(dcfg) -> float:
  """p of the prior pi: 0 masked, 1 uniform, diffusion.p_uniform for hybrid."""
  return {'masked': 0.0, 'uniform': 1.0}.get(dcfg.noise, dcfg.get('p_uniform', 0.0))


def masked(dcfg) -> bool:
  """Is the prior all [MASK] (p = 0)? What the masked-only code paths ask (one home for it)."""
  return uniform_frac(dcfg) == 0.0


class Noise:
  """The configured forward process (config.diffusion): draws t, masks and per-sample weights.

  PAD (`diffusion.pad`): `predict` (default) noises and predicts PAD like any token, so the NELBO
  bounds -log p(x) with the length of x included, as AR's NLL does through EOS; `visible` never
  masks or scores PAD, so the NELBO bounds -log p(x | its length)."""

  def __init__(self, dcfg, never_V=None):
    """never_V: model_config.never_predicted (what uniform noise must not draw); needed when
    diffusion.noise is uniform or hybrid."""
    self.cfg = dcfg
    self.p = uniform_frac(dcfg)
    self.ids_N = None if never_V is None else family.support_ids(never_V)
    if self.p > 0 and self.ids_N is None:
      raise ValueError(f'diffusion.noise={dcfg.noise} needs the predicted ids (never_V)')
    self.schedule = get_schedule(dcfg.schedule, dcfg)
    self.dist = get_time_dist(dcfg)
    self.pattern = MASK_PATTERNS[dcfg.mask_pattern]
    self.low_discrepancy = dcfg.low_discrepancy
    self.weighting = dcfg.weighting
    # the training-time NELBO metric is reported only where it is unbiased
    self.nelbo_exact = nelbo_bias_bound(dcfg) <= BIAS_TOLERANCE

  @classmethod
  def of(cls, cfg):
    """The run's noise (config.diffusion, the predicted ids from config.model)."""
    V = cfg.model.vocab_size
    return cls(cfg.diffusion, never_predicted(cfg.model, V) if V else None)

  @classmethod
  def for_evaluation(cls, cfg):
    """Validation always measures the unbiased NELBO: uniform low-discrepancy t, Bernoulli masks
    (the schedule, eps, noise type, PAD and EOS conventions stay the run's). cfg: the whole
    config, or its diffusion section for masked noise."""
    dcfg = cfg.diffusion if 'diffusion' in cfg else cfg
    d = ml_collections.ConfigDict(dcfg.to_dict())
    d.time_sampler, d.low_discrepancy, d.mask_pattern, d.weighting = (
        'uniform', True, 'bernoulli', 'elbo')
    V = cfg.model.vocab_size if 'model' in cfg else 0
    return cls(d, never_predicted(cfg.model, V) if V else None)

  def maskable(self, targets_BxL, prefix_len_B=None):
    """Never BOS, nor PAD under pad=visible, nor EOS unless mask_eos, nor a task's prompt."""
    m = targets_BxL != BOS
    if self.cfg.pad == 'visible':
      m &= targets_BxL != PAD
    if not self.cfg.mask_eos:
      m &= targets_BxL != EOS
    if prefix_len_B is not None:
      m &= jnp.arange(targets_BxL.shape[1])[None] >= prefix_len_B[:, None]
    return m

  def sample(self, rng, targets_BxL, prefix_len_B=None):
    """t_B, mask_BxL, training weight_B, unbiased-NELBO weight_B (drawn in batch order)."""
    rng_t, rng_m = jax.random.split(rng)
    t_B = sample_times(rng_t, targets_BxL.shape[0], self.dist, self.low_discrepancy)
    maskable_BxL = self.maskable(targets_BxL, prefix_len_B)
    mask_BxL = self.pattern(rng_m, t_B, maskable_BxL, self.schedule)
    w_B, elbo_B = time_weights(t_B, self.schedule, self.dist, self.weighting)
    if self.cfg.mask_pattern == 'exact_count':
      v_NxK = jnp.asarray(exact_count_table(json.dumps(self.cfg.to_dict(), sort_keys=True),
                                              targets_BxL.shape[1]))
      elbo_B = v_NxK[jnp.sum(maskable_BxL, 1), jnp.sum(mask_BxL, 1)]
      if self.weighting == 'elbo':
        w_B = elbo_B
    if self.weighting == 'ce':
      w_B = jnp.ones_like(w_B)
    return t_B, mask_BxL, w_B, elbo_B

  def draw(self, rng, targets_BxL, prefix_len_B=None):
    """`sample`'s (mask, w, elbo) and, for uniform / hybrid noise, `fam`: the noised tokens z, the
    maskable positions and per row alpha, -alpha', c = (1 - alpha) p / n, n and whether the
    training loss is the cross-entropy (core/family.py; None for masked noise, whose draws stay
    exactly `sample`'s). Family weights: elbo = the time sampler's importance weight u / q (the
    schedule is inside the family's term), training w: that (elbo), 1 (plain, ce)."""
    if self.p == 0:
      _, mask_BxL, w_B, elbo_B = self.sample(rng, targets_BxL, prefix_len_B)
      return dict(mask=mask_BxL, w=w_B, elbo=elbo_B)
    rng, rng_z = jax.random.split(rng)
    t_B, mask_BxL, _, _ = self.sample(rng, targets_BxL, prefix_len_B)
    iw_B = time_weights(t_B, Linear(), self.dist, 'elbo')[1] * t_B  # u(t) / q(t)
    a_B, n = self.schedule.alpha(t_B), float(len(self.ids_N))
    fam = dict(z=family.corrupt(rng_z, targets_BxL, mask_BxL, self.p, self.ids_N),
               maskable=self.maskable(targets_BxL, prefix_len_B), a=a_B,
               da=self.schedule.weight(t_B) * self.schedule.mask_prob(t_B),
               c=(1.0 - a_B) * self.p / n, n=jnp.full_like(t_B, n),
               ce=jnp.full_like(t_B, float(self.weighting == 'ce')))
    w_B = iw_B if self.weighting == 'elbo' else jnp.ones_like(t_B)
    return dict(mask=mask_BxL, w=w_B, elbo=iw_B, **fam)


def row_noise(keys_N, maskable_NxL, K: int, schedule: Schedule, eps: float, t_NxK=None):
  """K (t, mask, weight) samples per row for likelihood evaluation: t_k = eps + (1 - eps)
  ((u + k/K) mod 1) (low discrepancy within the row), Bernoulli masks, w(t). Every draw comes
  from the row's own key and its position index, so a row's noise does not depend on the other
  rows, on their order or on trailing padding. Returns (t_NxK, mask_NxKxL, w_NxK). t_NxK: given
  times instead (the family's reconstruction pass at t = eps)."""
  L = maskable_NxL.shape[1]

  def one(key, t_K):
    k_t, k_m = jax.random.split(key)
    if t_K is None:
      t_K = Uniform(eps).from_uniform(uniforms(k_t, K, True))
    u_LxK = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(k_m, i), (K,)))(
        jnp.arange(L))
    return t_K, u_LxK.T < schedule.mask_prob(t_K)[:, None]
  t_NxK, mask_NxKxL = jax.vmap(one)(keys_N, t_NxK)
  return t_NxK, mask_NxKxL & maskable_NxL[:, None], schedule.weight(t_NxK)


def defaults() -> ml_collections.ConfigDict:
  """config.diffusion: the noise process's keys and defaults (choices: the registries above)."""
  first = [cls for cls in SCHEDULES.values() if cls.params]
  return ml_collections.ConfigDict(dict(
      noise='masked',          # masked | uniform | hybrid: the prior pi = (1 - p) [MASK] +
                               # p Uniform(predicted ids), p = 0, 1, p_uniform
      p_uniform=0.5,           # hybrid's p, in (0, 1) (masked and uniform are its two ends)
      schedule='linear',       # a name in schedules.SCHEDULES
      **{p.key: p.default for cls in first for p in cls.params},  # polynomial: poly_k
      eps=1e-3,                # t in [eps, 1]
      time_sampler='uniform',  # a name in schedules.TIME_SAMPLERS
      low_discrepancy=True,    # u_i = (u + i/B) mod 1 across the batch, through the inverse CDF
      sampler_params=ml_collections.ConfigDict(sampler_param_defaults()),
      weighting='elbo',        # elbo: w(t)/q(t), unbiased NELBO | plain: w(t), sampler reshapes
                               # | ce: unweighted cross-entropy on the noised tokens (a training
                               # loss, not a bound; validation still reports the NELBO)
      mask_pattern='bernoulli',  # a name in MASK_PATTERNS
      mask_eos=True,           # EOS is a real token to predict (AR pays for it too)
      pad='predict',           # predict: PAD is noised and predicted like any token, so the NELBO
                               # bounds -log p(x) with its length, as AR's NLL does (EOS) |
                               # visible: PAD never masked nor scored: -log p(x | its length)
  ))


def sampler_param_defaults() -> dict:
  """config.diffusion.sampler_params: each registered sampler's Params (a key two samplers share,
  such as mu / sigma, once), then uniform_mix (mixed into any sampler but uniform)."""
  out = {}
  for cls in TIME_SAMPLERS.values():
    for p in cls.params:
      out.setdefault(p.key, p.default)
  out[MIX.key] = MIX.default
  return out


def check_config(cfg, training=True):
  """config.diffusion. training: also whether the time sampler's `elbo` weights are unbiased (what
  only training uses). A schedule's Params are top-level diffusion keys, checked whichever
  schedule runs; a sampler's sampler_params only when it is chosen (samplers share keys)."""
  dc, sp = cfg.diffusion, cfg.diffusion.sampler_params
  choice(dc, 'noise', NOISE_TYPES, 'diffusion.')
  need(0.0 < dc.p_uniform < 1.0, 'diffusion.p_uniform',
       f'{dc.p_uniform} is outside (0, 1): hybrid noise mixes [MASK] and uniform noise, whose two '
       'ends are diffusion.noise=masked (0) and uniform (1)')
  choice(dc, 'schedule', SCHEDULES, 'diffusion.')
  choice(dc, 'time_sampler', TIME_SAMPLERS, 'diffusion.')
  choice(dc, 'weighting', WEIGHTINGS, 'diffusion.')
  choice(dc, 'mask_pattern', MASK_PATTERNS, 'diffusion.')
  choice(dc, 'pad', PAD_MODES, 'diffusion.')
  need(0.0 < dc.eps < 1.0, 'diffusion.eps', f'{dc.eps} is outside (0, 1)')
  for cls in SCHEDULES.values():
    for p in cls.params:
      need(p.ok(dc[p.key]), f'diffusion.{p.key}', p.why.format(v=dc[p.key]))
  for p in (*TIME_SAMPLERS[dc.time_sampler].params, MIX):
    need(p.ok(sp[p.key]), f'diffusion.sampler_params.{p.key}', p.why.format(v=sp[p.key]))
  need(masked(dc) or dc.schedule != 'loglinear', 'diffusion.schedule',
       f'loglinear keeps alpha(1) = eps > 0, so under {dc.noise} noise the process would not end '
       'at its prior; use linear, cosine, polynomial or logsnr')
  need(masked(dc) or dc.mask_pattern == 'bernoulli', 'diffusion.mask_pattern',
       f'exact_count needs diffusion.noise=masked: under {dc.noise} noise the NELBO integrand '
       'depends on t beyond the number of noised tokens, so no weighting of a fixed count is '
       'unbiased; use bernoulli')
  if training and dc.weighting == 'elbo' and not TIME_SAMPLERS[dc.time_sampler].flat:
    bias = nelbo_bias_bound(dc)
    need(bias <= BIAS_TOLERANCE, 'diffusion.time_sampler',
         f'{dc.time_sampler} with these sampler_params cannot give an unbiased NELBO under '
         f'weighting=elbo with schedule={dc.schedule}: its density near eps or 1 falls faster '
         f'than float32 sampling can follow (bias up to {min(bias, 1e9):.3g} relative); add '
         'diffusion.sampler_params.uniform_mix (e.g. 0.05), or use weighting=plain')
