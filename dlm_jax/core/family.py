"""The noise family: masked, uniform and hybrid discrete diffusion as one forward process (the
interpolating family of GIDD, von Ruette et al. 2025, with a constant mixing distribution).

Each maskable token is, independently, kept with probability alpha(t) and otherwise redrawn from the
prior pi = (1 - p) [MASK] + p Uniform(N), N the n ids the model predicts
(model_config.never_predicted): q_t(z | x) = alpha x + (1 - alpha) pi. p = 0 is masked diffusion,
p = 1 uniform diffusion, 0 < p < 1 hybrid (diffusion.noise, diffusion.p_uniform).

The continuous-time NELBO of this CTMC (forward rate -alpha'/alpha to a fresh draw from pi; the
reverse rate of the model's x_hat is the true one with x replaced by x_hat) is, per position with
Q = q_t(. | x), Q_hat = q_t(. | x_hat) = alpha x_hat + (1 - alpha) pi and the noised token z:
  term(z) = sum_{y != z} [R_hat(z->y) - R(z->y) + R(z->y) log(R(z->y) / R_hat(z->y))]
(the path KL's rate out of z), R(z->y) = (-alpha'/alpha) pi(z) Q(y) / Q(z) the true reverse rate
given x and R_hat = sum_x' x_hat(x') R(.|x') the model's: the reverse process averages the true
one over x_hat, as the ancestral sampler does (core/sampling.py), so at the true posterior x_hat the
bound is tight (tests/test_family.py). (Plugging x_hat into Q instead, GIDD's form, coincides at
[MASK] and is looser at tokens.) For p = 0 it is w(t) CE at [MASK] and 0 elsewhere: masked
diffusion's NELBO; the masked path keeps its own, cheaper code (core/losses.py).
The NELBO is E_{t ~ U(eps, 1)} [sum over maskable positions of term], as the masked one.
"""
import jax
import jax.numpy as jnp
import numpy as np

from dlm_jax.core.tokens import MASK


def support_ids(never_V) -> np.ndarray:
  """The ids uniform noise draws from: those the model predicts."""
  return np.flatnonzero(~np.asarray(never_V)).astype(np.int32)


def corrupt(rng, targets_BxL, noised_BxL, p: float, ids_N):
  """z: a noised position becomes [MASK] w.p. 1 - p, else a uniform id of N (maybe x itself)."""
  r_kind, r_tok = jax.random.split(rng)
  B, L = targets_BxL.shape
  tok_BxL = jnp.asarray(ids_N)[jax.random.randint(r_tok, (B, L), 0, len(ids_N))]
  uni_BxL = jax.random.uniform(r_kind, (B, L)) < p
  return jnp.where(noised_BxL, jnp.where(uni_BxL, tok_BxL, MASK), targets_BxL).astype(
      targets_BxL.dtype)


def token_nelbo(logits_BxLxV, targets_BxL, z_BxL, a_B, da_B, c_B, n_B):
  """term(z) per position (B x L; the caller keeps the maskable ones). a = alpha(t), da =
  -alpha'(t), c = (1 - alpha) p / n (the uniform part of q_t per id), n = |N|. x_hat =
  softmax(logits), zero on the never-predicted ids (logits -1e9). In log space, so confident and
  hopeless predictions keep their precision; at alpha = 0 (t = 1) the term's limit, 0."""
  live_B = a_B > 0
  a_B = jnp.where(live_B, a_B, 1.0)
  a, c, n = a_B[:, None], c_B[:, None], n_B[:, None]
  la, lc = jnp.log(a), jnp.log(c)
  m = 1.0 - a - n * c                                   # q_t([MASK] | x): (1 - alpha)(1 - p)
  lm = jnp.log(jnp.maximum(m, 1e-30))
  logp_BxLxV = jax.nn.log_softmax(logits_BxLxV, -1)
  pick = lambda ids_BxL: jnp.take_along_axis(logp_BxLxV, ids_BxL[..., None], -1)[..., 0]
  lpx_BxL = pick(targets_BxL)

  # z = [MASK]: rate / (1 - alpha) times KL(Q || Q_hat), Q_hat = alpha x_hat + (1 - alpha) pi
  lqhx_BxL = jnp.logaddexp(la + lpx_BxL, lc)
  soft_BxL = jnp.sum(jax.nn.softplus(logp_BxLxV + (la - lc)[..., None]), -1)  # sum log(Qh_y/c)
  kl_BxL = (-c * soft_BxL + (a + c) * (jnp.log(a + c) - lqhx_BxL) + c * (lqhx_BxL - lc))
  at_mask_BxL = kl_BxL / (1.0 - a)

  # z = v in N: the reverse rate to y is rate pi(v) g(y), g(y) = alpha x_hat_y / c + c C (y in N),
  # m C ([MASK]), C = sum_x x_hat_x / q_t(v | x) = (1 - x_hat_v) / c + x_hat_v / (alpha + c)
  v_BxL = jnp.where(z_BxL == MASK, targets_BxL, z_BxL)
  lpv_BxL = pick(v_BxL)
  pv_BxL = jnp.exp(lpv_BxL)
  lC_BxL = jnp.logaddexp(jnp.log1p(-jnp.minimum(pv_BxL, 1.0 - 1e-7)) - lc,
                         lpv_BxL - jnp.log(a + c))
  lcC_BxL = lc + lC_BxL
  shift_BxL = la - lc - lcC_BxL                          # log g(y) = log cC + softplus(lp_y + shift)
  lg = lambda lp_BxL: lcC_BxL + jax.nn.softplus(lp_BxL + shift_BxL)
  sum_lg_BxL = n * lcC_BxL + jnp.sum(jax.nn.softplus(logp_BxLxV + shift_BxL[..., None]), -1)
  lgv_BxL, lgx_BxL = lg(lpv_BxL), lg(lpx_BxL)
  hit_BxL = v_BxL == targets_BxL
  lqv_BxL = jnp.where(hit_BxL, jnp.log(a + c), lc)       # log Q(v)
  sum_g_BxL = a * (1.0 - pv_BxL) / c + ((n - 1.0) * c + m) * jnp.exp(lC_BxL)
  # sum_{y != v} Q_y log(Q_y / (Q_v g_y)): N \ {v} at Q = c, then x's own Q (if x != v), [MASK]
  s_BxL = c * ((n - 1.0) * (lc - lqv_BxL) - (sum_lg_BxL - lgv_BxL))
  s_BxL += jnp.where(hit_BxL, 0.0, (a + c) * (jnp.log(a + c) - lqv_BxL - lgx_BxL)
                     - c * (lc - lqv_BxL - lgx_BxL))
  s_BxL += jnp.where(m > 0, m * (-lqv_BxL - lC_BxL), 0.0)
  qv_BxL = jnp.exp(lqv_BxL)
  at_token_BxL = (c / (1.0 - a)) * (sum_g_BxL - (1.0 - qv_BxL) / qv_BxL + s_BxL / qv_BxL)

  term_BxL = (da_B / a_B)[:, None] * jnp.where(z_BxL == MASK, at_mask_BxL, at_token_BxL)
  return jnp.where(live_B[:, None], term_BxL, 0.0)
