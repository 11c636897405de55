"""The hand-written backwards of the fast path (`jax.custom_vjp`): each keeps fewer activations
than autodiff of the same forward, and each is tested against that autodiff
(tests/test_perf.py). Shape letters: see core/model.py.

  swiglu             down(silu(h gate) * (h up)); saves the two pre-activations only
  softmax_attention  softmax(q k^T / sqrt(H)) v; saves the probabilities only (the CPU default)
  rope               rotary position embedding; its backward is the inverse rotation
  token_ce           -log softmax(logits)[target]; its backward is softmax - onehot in one pass
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

NEG_INF = -1e9

_TOKENS = (((0, 1), (0, 1)), ((), ()))  # dot_general: contract batch and length


@jax.custom_vjp
def swiglu(h_BxLxD, gate_DxF, up_DxF, down_FxD):
  """down(silu(h @ gate) * (h @ up)), with a hand-written backward: it keeps only the two
  pre-activations (autodiff also keeps silu, the product and the sigmoid, each [B, L, F]) and
  forms the weight gradients as direct contractions over tokens. Under scan-over-layers on CPU
  this MLP's forward + backward runs ~20% faster (BENCHMARKS.md)."""
  return _swiglu_fwd(h_BxLxD, gate_DxF, up_DxF, down_FxD)[0]


def _swiglu_fwd(h_BxLxD, gate_DxF, up_DxF, down_FxD):
  g_BxLxF = h_BxLxD @ gate_DxF
  u_BxLxF = h_BxLxD @ up_DxF
  y_BxLxD = (nn.silu(g_BxLxF) * u_BxLxF) @ down_FxD
  return y_BxLxD, (h_BxLxD, gate_DxF, up_DxF, down_FxD, g_BxLxF, u_BxLxF)


def _swiglu_bwd(res, dy_BxLxD):
  h_BxLxD, gate_DxF, up_DxF, down_FxD, g_BxLxF, u_BxLxF = res
  sig_BxLxF = jax.nn.sigmoid(g_BxLxF)
  silu_BxLxF = g_BxLxF * sig_BxLxF
  da_BxLxF = dy_BxLxD @ down_FxD.T
  d_down = jax.lax.dot_general(silu_BxLxF * u_BxLxF, dy_BxLxD, _TOKENS)
  du_BxLxF = da_BxLxF * silu_BxLxF
  dg_BxLxF = da_BxLxF * u_BxLxF * (sig_BxLxF + silu_BxLxF * (1 - sig_BxLxF))
  d_gate = jax.lax.dot_general(h_BxLxD, dg_BxLxF, _TOKENS)
  d_up = jax.lax.dot_general(h_BxLxD, du_BxLxF, _TOKENS)
  dh_BxLxD = dg_BxLxF @ gate_DxF.T + du_BxLxF @ up_DxF.T
  return dh_BxLxD, d_gate, d_up, d_down

swiglu.defvjp(_swiglu_fwd, _swiglu_bwd)


def _probs(q_BxLxNxH, k_BxSxNxH, mask, is_causal):
  """softmax(q k^T / sqrt(H)) in float32 under the mask (or causal)."""
  H, L, S = q_BxLxNxH.shape[-1], q_BxLxNxH.shape[1], k_BxSxNxH.shape[1]
  s_BxNxLxS = jnp.einsum('blnh,bmnh->bnlm', q_BxLxNxH, k_BxSxNxH).astype(jnp.float32)
  s_BxNxLxS = s_BxNxLxS / jnp.sqrt(H).astype(jnp.float32)
  if is_causal:
    mask = jnp.tril(jnp.ones((L, S), bool))[None, None]
  if mask is not None:
    s_BxNxLxS = jnp.where(mask, s_BxNxLxS, NEG_INF)
  return jax.nn.softmax(s_BxNxLxS, -1)


def reference_attention(q_BxLxNxH, k_BxSxNxH, v_BxSxNxH, mask, is_causal, dropout=None):
  """softmax(q k^T / sqrt(H)) v written out under plain autodiff: the path the fast kernels are
  tested against, and the one attention dropout needs (`dropout` applied to the probabilities)."""
  p_BxNxLxS = _probs(q_BxLxNxH, k_BxSxNxH, mask, is_causal)
  if dropout is not None:
    p_BxNxLxS = dropout(p_BxNxLxS)
  return jnp.einsum('bnlm,bmnh->blnh', p_BxNxLxS.astype(q_BxLxNxH.dtype), v_BxSxNxH)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def softmax_attention(q_BxLxNxH, k_BxSxNxH, v_BxSxNxH, mask, is_causal):
  """reference_attention with a hand-written backward that keeps only the probabilities (no
  scores, no broadcast mask): the CPU default (model.attention=auto)."""
  return _attention_fwd(q_BxLxNxH, k_BxSxNxH, v_BxSxNxH, mask, is_causal)[0]


def _attention_fwd(q_BxLxNxH, k_BxSxNxH, v_BxSxNxH, mask, is_causal):
  p_BxNxLxS = _probs(q_BxLxNxH, k_BxSxNxH, mask, is_causal).astype(q_BxLxNxH.dtype)
  o_BxLxNxH = jnp.einsum('bnlm,bmnh->blnh', p_BxNxLxS, v_BxSxNxH)
  return o_BxLxNxH, (q_BxLxNxH, k_BxSxNxH, v_BxSxNxH, p_BxNxLxS)  # the mask is in p's zeros


def _attention_bwd(is_causal, res, do_BxLxNxH):
  del is_causal
  q_BxLxNxH, k_BxSxNxH, v_BxSxNxH, p_BxNxLxS = res
  scale = 1 / jnp.sqrt(q_BxLxNxH.shape[-1]).astype(jnp.float32)
  dv_BxSxNxH = jnp.einsum('bnlm,blnh->bmnh', p_BxNxLxS, do_BxLxNxH)
  dp_BxNxLxS = jnp.einsum('blnh,bmnh->bnlm', do_BxLxNxH, v_BxSxNxH).astype(jnp.float32)
  p32 = p_BxNxLxS.astype(jnp.float32)
  ds_BxNxLxS = (p32 * (dp_BxNxLxS - jnp.sum(dp_BxNxLxS * p32, -1, keepdims=True)) * scale
                ).astype(q_BxLxNxH.dtype)
  dq_BxLxNxH = jnp.einsum('bnlm,bmnh->blnh', ds_BxNxLxS, k_BxSxNxH)
  dk_BxSxNxH = jnp.einsum('bnlm,blnh->bmnh', ds_BxNxLxS, q_BxLxNxH)
  return dq_BxLxNxH, dk_BxSxNxH, dv_BxSxNxH, None

softmax_attention.defvjp(_attention_fwd, _attention_bwd)


def rope_frequencies(H: int, base: float, scaling: str = ''):
  """The H/2 inverse frequencies; scaling 'llama3:FACTOR,LOW,HIGH,CONTEXT' is Llama 3.1's
  long-context rule: wavelengths above CONTEXT/LOW are divided by FACTOR, those below
  CONTEXT/HIGH kept, the band between interpolated."""
  inv_freq_K = 1.0 / (base ** (jnp.arange(0, H, 2, dtype=jnp.float32) / H))
  if not scaling:
    return inv_freq_K
  factor, low, high, context = (float(v) for v in scaling.split(':', 1)[1].split(','))
  wavelen_K = 2 * jnp.pi / inv_freq_K
  smooth_K = (context / wavelen_K - low) / (high - low)
  mixed_K = (1 - smooth_K) * inv_freq_K / factor + smooth_K * inv_freq_K
  return jnp.where(wavelen_K < context / high, inv_freq_K,
                   jnp.where(wavelen_K > context / low, inv_freq_K / factor, mixed_K))


def rope(x_BxLxNxH, base: float, offset=0, scaling: str = '', positions_L=None):
  """Rotary position embedding on the last axis (half-split convention); the first row is at
  position `offset` (a decode step), or row i at positions_L[i] (block diffusion's two copies)."""
  L, H = x_BxLxNxH.shape[1], x_BxLxNxH.shape[-1]
  inv_freq_K = rope_frequencies(H, base, scaling)
  pos_L = jnp.arange(L, dtype=jnp.float32) + jnp.asarray(offset, jnp.float32)
  if positions_L is not None:
    pos_L = jnp.asarray(positions_L, jnp.float32)
  ang_LxK = pos_L[:, None] * inv_freq_K[None]
  sin, cos = jnp.sin(ang_LxK)[None, :, None], jnp.cos(ang_LxK)[None, :, None]
  return _rotate(x_BxLxNxH, sin, cos)


@jax.custom_vjp
def _rotate(x_BxLxNxH, sin, cos):
  """A rotation per position; its backward is the inverse rotation (no split/concat adjoints)."""
  x1, x2 = jnp.split(x_BxLxNxH.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxLxNxH.dtype)

_rotate.defvjp(lambda x, sin, cos: (_rotate(x, sin, cos), (sin, cos)),
               lambda res, g: (_rotate(g, -res[0], res[1]), None, None))


@jax.custom_vjp
def token_ce(logits_BxLxV, targets_BxL):
  """-log softmax(logits)[target] per token (as optax's integer-label cross-entropy), with a
  backward that forms softmax - onehot in one elementwise pass (no scatter of the labels)."""
  return _ce_fwd(logits_BxLxV, targets_BxL)[0]


def _ce_fwd(logits_BxLxV, targets_BxL):
  lse_BxL = jax.nn.logsumexp(logits_BxLxV, -1)
  label_BxL = jnp.take_along_axis(logits_BxLxV, targets_BxL[..., None], -1)[..., 0]
  return lse_BxL - label_BxL, (logits_BxLxV, lse_BxL, targets_BxL)


def _ce_bwd(res, g_BxL):
  logits_BxLxV, lse_BxL, targets_BxL = res
  V = logits_BxLxV.shape[-1]
  onehot = jnp.arange(V, dtype=targets_BxL.dtype) == targets_BxL[..., None]
  d_BxLxV = (jnp.exp(logits_BxLxV - lse_BxL[..., None]) - onehot) * g_BxL[..., None]
  return d_BxLxV.astype(logits_BxLxV.dtype), None

token_ce.defvjp(_ce_fwd, _ce_bwd)
