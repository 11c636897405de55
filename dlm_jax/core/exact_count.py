"""Exact-count masks: exactly stochastic_round(n (1 - alpha(t))) of n maskable tokens, and the
importance weights over the count that keep their NELBO unbiased (diffusion.mask_pattern =
exact_count; masked noise only: core/noise.py refuses it for uniform and hybrid noise)."""
import functools
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from scipy import special as sp_special

from dlm_jax.core.schedules import Linear, Schedule, TimeDist, get_schedule, get_time_dist


def exact_count_mask(rng, t_B, maskable_BxL, schedule: Schedule = Linear()):
  """Exactly k_b = stochastic_round(n_b (1 - alpha(t_b))) maskable positions, chosen uniformly
  (n_b = number of maskable positions). Same per-token marginal as Bernoulli, less variance; its
  NELBO weights are `exact_count_weights`, not w(t)."""
  r_round, r_pos = jax.random.split(rng)
  n_B = jnp.sum(maskable_BxL, axis=1).astype(jnp.float32)
  x_B = n_B * schedule.mask_prob(t_B)
  k_B = jnp.floor(x_B) + (jax.random.uniform(r_round, x_B.shape) < x_B - jnp.floor(x_B))
  score_BxL = jnp.where(maskable_BxL, jax.random.uniform(r_pos, maskable_BxL.shape), 2.0)
  rank_BxL = jnp.argsort(jnp.argsort(score_BxL, axis=1), axis=1)
  return (rank_BxL < k_B[:, None]) & maskable_BxL


def exact_count_weights(schedule: Schedule, dist: TimeDist, L: int) -> np.ndarray:
  """v[n, k]: the unbiased NELBO weight of an exact-count mask of k of n maskable tokens.

  Given the number masked, the masked set is uniform in both processes, so the NELBO
  E_{U(eps,1)}[w(t) sum_masked CE] = sum_k c[n, k] g(k), g(k) the expected CE sum over size-k
  sets, with c[n, k] = P-weighted (1/(1-eps)) int w(t) Binom(k; n, s(t)) dt = (1/(1-eps)) (1/k)
  [I_{s(1)}(k, n-k+1) - I_{s(eps)}(k, n-k+1)] (s = 1 - alpha, w dt = ds / s, I the regularised
  incomplete beta). Exact-count draws k with probability pi[n, k] = E_{t~q}[max(0, 1 - |n s(t)
  - k|)] (stochastic rounding), so v = c / pi makes E[v g(k)] = NELBO: importance weighting over
  k. pi is integrated in t by Gauss-Legendre on each linear piece of the hat (float64)."""
  eps = dist.eps
  s_lo = float(schedule.mask_prob(jnp.float32(eps)))
  s_hi = float(schedule.mask_prob(jnp.float32(1.0)))
  n = np.arange(L + 1)[:, None].astype(np.float64)
  k = np.arange(L + 1)[None, :].astype(np.float64)
  valid = (k >= 1) & (k <= n)
  a, b = np.where(valid, k, 1.0), np.where(valid, n - k + 1, 1.0)
  c = np.where(valid, (sp_special.betainc(a, b, s_hi) - sp_special.betainc(a, b, s_lo)) /
               (np.maximum(k, 1.0) * (1.0 - eps)), 0.0)
  # every (n, j) piece [s = j/n, (j+1)/n] in one flat array, mapped to t and clipped to [eps, 1]
  nn = np.repeat(np.arange(1, L + 1), np.arange(1, L + 1))
  jj = np.concatenate([np.arange(m) for m in range(1, L + 1)])
  bounds = np.stack([jj / nn, (jj + 1) / nn], 1).clip(s_lo, s_hi)
  t_ab = np.asarray(schedule.t_of_mask_prob(jnp.asarray(bounds, jnp.float32)), np.float64)
  t_ab = t_ab.clip(eps, 1.0)
  x, wq = np.polynomial.legendre.leggauss(12)
  mid, half = t_ab.mean(1, keepdims=True), 0.5 * (t_ab[:, 1:] - t_ab[:, :1])
  tt = mid + half * x[None]
  q = np.asarray(dist.density(jnp.asarray(tt, jnp.float32)), np.float64)
  ns = nn[:, None] * np.asarray(schedule.mask_prob(jnp.asarray(tt, jnp.float32)), np.float64)
  rise = np.sum(half * wq * (ns - jj[:, None]) * q, 1)     # hat of k = j + 1, rising side
  fall = np.sum(half * wq * (jj[:, None] + 1 - ns) * q, 1)  # hat of k = j, falling side
  pi = np.zeros((L + 1, L + 1))
  np.add.at(pi, (nn, jj + 1), rise)
  np.add.at(pi, (nn, jj), fall)
  if np.any(valid & (c > 0) & (pi <= 0)):
    raise ValueError('diffusion.mask_pattern=exact_count: some mask counts are never drawn under '
                     'this time sampler, so no weighting makes the NELBO unbiased')
  return np.where(valid & (pi > 0), c / np.where(pi > 0, pi, 1.0), 0.0).astype(np.float32)


@functools.lru_cache(maxsize=16)
def exact_count_table(key, L):
  """exact_count_weights of a whole config.diffusion (`key`: its JSON; the schedule and the
  sampler both matter, unlike _key's)."""
  d = ml_collections.ConfigDict(json.loads(key))
  with jax.ensure_compile_time_eval():
    return exact_count_weights(get_schedule(d.schedule, d), get_time_dist(d), L)
