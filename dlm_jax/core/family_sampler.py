"""Ancestral sampling from the reverse process of uniform and hybrid noise (core/family.py): the
same reverse process the family's NELBO bounds, so the bound and the samples describe one model.

From t to s < t each fill position moves, independently given the model's x_hat (the softmax of
its logits after temperature / top-k / top-p), to y with probability
  p(z_s = y | z_t = z) = sum_x x_hat(x) q(z_t = z | z_s = y) q_s(y | x) / q_t(z | x)
                      ∝ [rho [y = z] + (1 - rho) pi(z)] (alpha_s c_y + (1 - alpha_s) pi(y) C),
c_x = x_hat(x) / q_t(z | x), C = sum_x c_x, rho = alpha_t / alpha_s: the true reverse step
averaged over x_hat. Unlike masked diffusion a token already shown can change (uniform noise
corrects), so every step recomputes the logits when anything moved. The canvas starts from the
prior pi ([MASK] w.p. 1 - p, else a uniform id the model predicts); at s = 0 the step draws from
x_hat, so no [MASK] is left. p = 0 is masked diffusion, which keeps its own loop (core/sampling.py).
"""
import jax
import jax.numpy as jnp

from dlm_jax.core import family
from dlm_jax.core.decoding import Settings, filter_logits, sampleable, time_grid
from dlm_jax.core.inputs import shift_inputs
from dlm_jax.core.model_config import never_predicted
from dlm_jax.core.tokens import MASK, PAD


def prior_V(p: float, ids_N, V: int):
  """pi as a vector over the vocabulary."""
  return jnp.zeros(V).at[MASK].set(1.0 - p).at[jnp.asarray(ids_N)].add(p / len(ids_N))


def step_probs(xhat_BxLxV, z_BxL, a_t, a_s, pi_V):
  """p(z_s = . | z_t = z) per position (B x L x V), rows summing to 1. alpha is clipped to
  [0, 1] (cosine's alpha(1) is -4e-8 in float32)."""
  a_t, a_s = jnp.clip(a_t, 0.0, 1.0), jnp.clip(a_s, 0.0, 1.0)
  V = xhat_BxLxV.shape[-1]
  onehot_BxLxV = jax.nn.one_hot(z_BxL, V, dtype=xhat_BxLxV.dtype)
  piz_BxLx1 = pi_V[z_BxL][..., None]
  c_BxLxV = xhat_BxLxV / (a_t * onehot_BxLxV + (1.0 - a_t) * piz_BxLx1)
  a_BxLxV = a_s * c_BxLxV + (1.0 - a_s) * pi_V * jnp.sum(c_BxLxV, -1, keepdims=True)
  w_BxLxV = ((a_t / a_s) * onehot_BxLxV + (1.0 - a_t / a_s) * piz_BxLx1) * a_BxLxV
  return w_BxLxV / jnp.sum(w_BxLxV, -1, keepdims=True)


def xhat(logits_BxLxV, st: Settings):
  """The model's x_hat under the sampling settings (temperature 0: the argmax, one-hot)."""
  logits_BxLxV = sampleable(logits_BxLxV)
  if st.temperature == 0:
    return jax.nn.one_hot(jnp.argmax(logits_BxLxV, -1), logits_BxLxV.shape[-1])
  return jax.nn.softmax(filter_logits(logits_BxLxV / st.temperature, st.top_k, st.top_p), -1)


def family_loop(model, params, rng, x_BxL, fill_BxL, st: Settings, schedule, p: float,
                segments: bool, guided: bool):
  """Fills the `fill` positions of x_BxL (others fixed) by T ancestral steps of the family's
  reverse process; guidance (hybrid noise) contrasts with the prompt replaced by [MASK]. Returns
  (x_BxL, passes)."""
  B, L = x_BxL.shape
  V = model.cfg.vocab_size
  ids_N = family.support_ids(never_predicted(model.cfg, V))
  pi_V = prior_V(p, ids_N, V)
  cond_BxL = ~fill_BxL & (x_BxL != PAD)
  seg_BxL = ((x_BxL != PAD) | fill_BxL).astype(jnp.int32) if segments else None
  rng, r_init = jax.random.split(rng)
  start_BxL = family.corrupt(r_init, x_BxL, fill_BxL, p, ids_N)
  t_G = jnp.asarray(time_grid(st.grid, st.steps))

  def forward(z_BxL):
    u_BxL = shift_inputs(z_BxL)
    if not guided:
      return model.apply({'params': params}, u_BxL, 'bidirectional', None, seg_BxL)
    u0_BxL = shift_inputs(jnp.where(cond_BxL, MASK, z_BxL))
    seg = None if seg_BxL is None else jnp.concatenate([seg_BxL, seg_BxL])
    lp = jax.nn.log_softmax(sampleable(model.apply(
        {'params': params}, jnp.concatenate([u_BxL, u0_BxL]), 'bidirectional', None, seg)))
    return lp[B:] + (1.0 + st.guidance) * (lp[:B] - lp[B:])

  def body(k, carry):
    z_BxL, logits_BxLxV, stale, rng, passes = carry
    rng, r_step = jax.random.split(rng)
    logits_BxLxV, passes = jax.lax.cond(
        stale | (not st.reuse_logits), lambda: (forward(z_BxL), passes + 1),
        lambda: (logits_BxLxV, passes))
    a_t, a_s = schedule.alpha(t_G[k]), schedule.alpha(t_G[k + 1])
    probs_BxLxV = step_probs(xhat(logits_BxLxV, st), z_BxL, a_t, a_s, pi_V)
    cdf_BxLxV = jnp.cumsum(probs_BxLxV, -1)
    u_BxLx1 = jax.random.uniform(r_step, (B, L, 1)) * cdf_BxLxV[..., -1:]
    y_BxL = jnp.minimum(jnp.sum(cdf_BxLxV <= u_BxLx1, -1), V - 1).astype(z_BxL.dtype)
    new_BxL = jnp.where(fill_BxL, y_BxL, z_BxL)
    return new_BxL, logits_BxLxV, jnp.any(new_BxL != z_BxL), rng, passes

  init = (start_BxL, jnp.zeros((B, L, V), jnp.float32), jnp.bool_(True), rng, jnp.int32(0))
  z_BxL, _, _, _, passes = jax.lax.fori_loop(0, st.steps, body, init)
  return z_BxL, passes
