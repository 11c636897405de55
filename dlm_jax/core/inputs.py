"""What the model reads for a row of targets, shared by the losses, the samplers and the
likelihood estimators (the one shifted parameterisation: every head predicts the token at its own
position).

For a window x_0..x_{L-1} the model reads u = [BOS, x_0..x_{L-2}] and its logits at position i
predict x_i; a masked target's copy in the input is [MASK]. Segment ids follow the input alone.
"""
import jax
import jax.numpy as jnp

from dlm_jax.core.tokens import BOS, EOS, MASK


def shift_inputs(targets_BxL, mask_BxL=None):
  """u = [BOS, x_0..x_{L-2}] with masked targets shown as [MASK]."""
  x_BxL = targets_BxL if mask_BxL is None else jnp.where(mask_BxL, MASK, targets_BxL)
  bos_Bx1 = jnp.full((x_BxL.shape[0], 1), BOS, x_BxL.dtype)
  return jnp.concatenate([bos_Bx1, x_BxL[:, :-1]], axis=1)


def input_segments(inputs_BxL):
  """Segment ids from the tokens the model reads: an EOS input starts a new document. In MDM mode
  a masked EOS is not an input, so its boundary is not revealed: the documents around it share a
  segment. Segment ids are therefore a function of the noisy input alone, which is what makes
  p(x_0 | x_t) a valid denoiser and the NELBO a bound (data.segment_ids)."""
  return jnp.cumsum(inputs_BxL == EOS, axis=1)


def token_dropout_mask(rng, B, L, p):
  """Inputs replaced by [MASK] at rate p (never BOS at position 0)."""
  return jax.random.bernoulli(rng, p, (B, L)).at[:, 0].set(False)


def apply(model, params, inputs_BxL, attention, segments, rng, train, prefix_len_B=None):
  """The model's logits for `inputs_BxL`; segments: no attention across visible EOS inputs."""
  seg_BxL = input_segments(inputs_BxL) if segments else None
  return model.apply({'params': params}, inputs_BxL, attention, prefix_len_B, seg_BxL,
                     deterministic=not train, rngs={'dropout': rng} if train else None)
