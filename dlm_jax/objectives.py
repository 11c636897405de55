"""Pure training objectives: `(params, batch, rng) -> (loss, metrics)`.

Shifted parameterisation (one head for every mode): for a window x_0..x_{L-1} the model reads
u = [BOS, x_0..x_{L-2}] and its logits at position i predict x_i.
  AR    causal attention; every non-pad target counts.
  MDM   t ~ sampler, target i masked w.p. 1 - alpha(t) (its copy in the input, if any, becomes
        [MASK]), bidirectional attention, loss w(t) * CE on masked targets. Divided by the number of
        non-pad tokens this is the unbiased continuous-time NELBO per token.
  dual  round(rho * B) sequences of each batch (chosen by a seeded permutation) train as MDM, the
        rest as AR, one set of weights; loss = (AR sum + MDM sum) / all tokens, so rho = 0 is
        exactly AR and rho = 1 exactly MDM.
Each mode first computes sums (`*_terms`) so the modes compose and evaluation reuses them.
"""
import functools

import jax
import jax.numpy as jnp
import optax

from dlm_jax import masking
from dlm_jax.data.tokenizers import BOS, MASK, PAD


def shift_inputs(targets_BxL, mask_BxL=None):
  """u = [BOS, x_0..x_{L-2}] with masked targets shown as [MASK]."""
  x_BxL = targets_BxL if mask_BxL is None else jnp.where(mask_BxL, MASK, targets_BxL)
  bos_Bx1 = jnp.full((x_BxL.shape[0], 1), BOS, x_BxL.dtype)
  return jnp.concatenate([bos_Bx1, x_BxL[:, :-1]], axis=1)


def token_ce(logits_BxLxV, targets_BxL):
  return optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV, targets_BxL)


def _apply(model, params, inputs_BxL, attention, segment_ids, rng, train):
  return model.apply({'params': params}, inputs_BxL, attention, None, segment_ids,
                     deterministic=not train, rngs={'dropout': rng} if train else None)


def ar_terms(model, params, batch, rng, train=True):
  """Sums for next-token prediction: loss_sum (= nll_sum) and token count."""
  targets_BxL = batch['targets']
  valid_BxL = (targets_BxL != PAD).astype(jnp.float32)
  logits_BxLxV = _apply(model, params, shift_inputs(targets_BxL), 'causal',
                        batch.get('segment_ids'), rng, train)
  nll_sum = jnp.sum(token_ce(logits_BxLxV, targets_BxL) * valid_BxL)
  return dict(loss_sum=nll_sum, nll_sum=nll_sum, tokens=jnp.sum(valid_BxL))


def mdm_terms(model, params, batch, mask_BxL, weight_B, elbo_weight_B, rng, train=True):
  """Sums given the noise: loss_sum = sum_b weight_b sum_{i masked} CE_bi (the training loss) and
  nelbo_sum with the unbiased-NELBO weights (equal to loss_sum under `elbo` weighting)."""
  targets_BxL = batch['targets']
  valid_BxL = (targets_BxL != PAD).astype(jnp.float32)
  logits_BxLxV = _apply(model, params, shift_inputs(targets_BxL, mask_BxL), 'bidirectional',
                        batch.get('segment_ids'), rng, train)
  ce_BxL = token_ce(logits_BxLxV, targets_BxL) * mask_BxL
  return dict(loss_sum=jnp.sum(weight_B[:, None] * ce_BxL),
              nelbo_sum=jnp.sum(elbo_weight_B[:, None] * ce_BxL),
              tokens=jnp.sum(valid_BxL), masked=jnp.sum(mask_BxL))


def _take(batch, idx):
  return {k: jnp.take(v, idx, axis=0) for k, v in batch.items()}


def loss_fn(params, batch, rng, *, model, cfg, train=True):
  """The configured objective; returns (loss, metrics) with per-mode NLL / NELBO per token."""
  rng_noise, rng_drop, rng_perm = jax.random.split(rng, 3)
  noise = masking.Noise(cfg.diffusion)
  B = batch['targets'].shape[0]
  rho = {'ar': 0.0, 'mdm': 1.0, 'dual': cfg.dual.mdm_fraction}[cfg.objective]
  n_mdm = int(round(rho * B))
  if cfg.objective == 'dual':
    perm_B = jax.random.permutation(rng_perm, B)
    idx_mdm, idx_ar = perm_B[:n_mdm], perm_B[n_mdm:]
  else:
    idx_mdm = idx_ar = None
  metrics, loss_sum, tokens = {}, 0.0, 0.0
  if n_mdm < B:
    sub = batch if idx_ar is None else _take(batch, idx_ar)
    ar = ar_terms(model, params, sub, rng_drop, train)
    loss_sum, tokens = loss_sum + ar['loss_sum'], tokens + ar['tokens']
    metrics['ar_nll'] = ar['nll_sum'] / ar['tokens']
  if n_mdm > 0:
    _, mask_BxL, w_B, elbo_B = noise.sample(rng_noise, batch['targets'])
    sub = batch
    if idx_mdm is not None:
      sub, mask_BxL, w_B, elbo_B = (_take(batch, idx_mdm), mask_BxL[idx_mdm], w_B[idx_mdm],
                                    elbo_B[idx_mdm])
    md = mdm_terms(model, params, sub, mask_BxL, w_B, elbo_B, jax.random.fold_in(rng_drop, 1),
                   train)
    loss_sum, tokens = loss_sum + md['loss_sum'], tokens + md['tokens']
    metrics['mdm_nelbo'] = md['nelbo_sum'] / md['tokens']
    metrics['mask_rate'] = md['masked'] / md['tokens']
  loss = loss_sum / tokens
  metrics['loss'] = loss
  return loss, metrics


def make_loss_fn(model, cfg, train=True):
  return functools.partial(loss_fn, model=model, cfg=cfg, train=train)
