"""Pure training objectives: `(params, batch, rng) -> (loss, metrics)`.

Shifted parameterisation (one head for every mode): for a window x_0..x_{L-1} the model reads
u = [BOS, x_0..x_{L-2}] and its logits at position i predict x_i.
  AR    causal attention; every non-pad target counts.
  MDM   t ~ sampler, target i masked w.p. 1 - alpha(t) (its copy in the input, if any, becomes
        [MASK]), bidirectional attention, loss w(t) * CE on masked targets. Divided by the number of
        non-pad tokens this is the unbiased continuous-time NELBO per token.
  prefix  prefix-LM: the first P targets (P ~ U{0..L-1} per sequence, or batch['prefix_len']) are
        a prompt seen bidirectionally (input positions 0..P); loss only on targets i >= P, whose
        inputs are never visible to the position predicting them.
  dual  n_mdm sequences of each batch (chosen by a seeded permutation) train as MDM, the rest as
        AR (causal or prefix-LM: dual.ar_attention), one set of weights; loss = (AR sum + MDM sum)
        / all tokens. n_mdm follows the MDM fraction rho = 1 - ar_weight exactly over steps
        (`mdm_count`), so rho = 0 is exactly AR and rho = 1 exactly MDM.
Token dropout (train.token_dropout, AR and prefix-LM only): inputs replaced by [MASK] at rate p
during training, targets unchanged.
Each mode first computes sums (`*_terms`) so the modes compose and evaluation reuses them.
"""
import functools
import math

import jax
import jax.numpy as jnp

from dlm_jax import config as config_lib
from dlm_jax import masking
from dlm_jax.data.tokenizers import BOS, MASK, PAD


def shift_inputs(targets_BxL, mask_BxL=None):
  """u = [BOS, x_0..x_{L-2}] with masked targets shown as [MASK]."""
  x_BxL = targets_BxL if mask_BxL is None else jnp.where(mask_BxL, MASK, targets_BxL)
  bos_Bx1 = jnp.full((x_BxL.shape[0], 1), BOS, x_BxL.dtype)
  return jnp.concatenate([bos_Bx1, x_BxL[:, :-1]], axis=1)


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


def _apply(model, params, inputs_BxL, attention, segment_ids, rng, train):
  return model.apply({'params': params}, inputs_BxL, attention, None, segment_ids,
                     deterministic=not train, rngs={'dropout': rng} if train else None)


def ar_terms(model, params, batch, rng, train=True, prefix_P_B=None, token_dropout=0.0):
  """Sums for next-token prediction (causal), or prefix-LM when prefix_P_B is given."""
  targets_BxL = batch['targets']
  B, L = targets_BxL.shape
  valid_BxL = targets_BxL != PAD
  inputs_BxL = shift_inputs(targets_BxL)
  rng_drop, rng_tok = jax.random.split(rng) if rng is not None else (None, None)
  if train and token_dropout > 0:
    drop_BxL = jax.random.bernoulli(rng_tok, token_dropout, (B, L)).at[:, 0].set(False)
    inputs_BxL = jnp.where(drop_BxL, MASK, inputs_BxL)
  if prefix_P_B is None:
    logits_BxLxV = _apply(model, params, inputs_BxL, 'causal', batch.get('segment_ids'),
                          rng_drop, train)
    if 'prefix_len' in batch:  # task data: loss on the target only
      valid_BxL = valid_BxL & (jnp.arange(L)[None, :] >= batch['prefix_len'][:, None])
  else:
    logits_BxLxV = model.apply({'params': params}, inputs_BxL, 'prefix', prefix_P_B + 1,
                               batch.get('segment_ids'), deterministic=not train,
                               rngs={'dropout': rng_drop} if train else None)
    valid_BxL = valid_BxL & (jnp.arange(L)[None, :] >= prefix_P_B[:, None])
  valid_BxL = valid_BxL.astype(jnp.float32)
  nll_sum = jnp.sum(token_ce(logits_BxLxV, targets_BxL) * valid_BxL)
  return dict(loss_sum=nll_sum, nll_sum=nll_sum, tokens=jnp.sum(valid_BxL))


def sample_prefix(rng, batch):
  """Prefix lengths: batch['prefix_len'] when the data carries them, else U{0..L-1}."""
  if 'prefix_len' in batch:
    return batch['prefix_len'].astype(jnp.int32)
  B, L = batch['targets'].shape
  return jax.random.randint(rng, (B,), 0, L)


def mdm_terms(model, params, batch, mask_BxL, weight_B, elbo_weight_B, rng, train=True):
  """Sums given the noise: loss_sum = sum_b weight_b sum_{i masked} CE_bi (the training loss) and
  nelbo_sum with the unbiased-NELBO weights (equal to loss_sum under `elbo` weighting)."""
  targets_BxL = batch['targets']
  valid_BxL = targets_BxL != PAD
  if 'prefix_len' in batch:  # task data: the prompt is context, not data to model
    valid_BxL = valid_BxL & (jnp.arange(targets_BxL.shape[1])[None] >= batch['prefix_len'][:, None])
  valid_BxL = valid_BxL.astype(jnp.float32)
  logits_BxLxV = _apply(model, params, shift_inputs(targets_BxL, mask_BxL), 'bidirectional',
                        batch.get('segment_ids'), rng, train)
  ce_BxL = token_ce(logits_BxLxV, targets_BxL) * mask_BxL
  return dict(loss_sum=jnp.sum(weight_B[:, None] * ce_BxL),
              nelbo_sum=jnp.sum(elbo_weight_B[:, None] * ce_BxL),
              tokens=jnp.sum(valid_BxL), masked=jnp.sum(mask_BxL))


def _take(batch, idx, spread=None):
  out = {k: jnp.take(v, idx, axis=0) for k, v in batch.items()}
  return out if spread is None else jax.tree_util.tree_map(spread, out)


def mdm_count(cfg, step: int, batch_size: int) -> int:
  """MDM sequences in the batch of `step`: floor((s+1) rho B) - floor(s rho B), exact rationals, so
  fractions like 1/256 are honoured over steps even when rho * B is not an integer."""
  rho = config_lib.mdm_fraction(cfg) * batch_size
  return math.floor((step + 1) * rho) - math.floor(step * rho)


def loss_fn(params, batch, rng, *, model, cfg, train=True, n_mdm=None, spread=None):
  """The configured objective; returns (loss, metrics) with per-mode NLL / NELBO per token.
  n_mdm (static): MDM sequences in this batch; None -> round(rho * B).
  spread: lays a row-subset back out over the data-parallel devices (a sharding constraint);
  without it a dual batch's random AR/MDM split would leave XLA to replicate both halves on
  every device (measured: 8x the work on 8 devices)."""
  rng_noise, rng_drop, rng_perm = jax.random.split(rng, 3)
  B = batch['targets'].shape[0]
  if n_mdm is None:
    n_mdm = int(round(config_lib.mdm_fraction(cfg) * B))
  prefix_ar = cfg.objective == 'prefix' or (cfg.objective == 'dual' and
                                            cfg.dual.ar_attention == 'prefix')
  if cfg.objective == 'dual':
    perm_B = jax.random.permutation(rng_perm, B)
    idx_mdm, idx_ar = perm_B[:n_mdm], perm_B[n_mdm:]
  else:
    idx_mdm = idx_ar = None
  metrics, loss_sum, tokens = {}, 0.0, 0.0
  if n_mdm < B:
    sub = batch if idx_ar is None else _take(batch, idx_ar, spread)
    prefix_P_B = sample_prefix(jax.random.fold_in(rng_perm, 1), sub) if prefix_ar else None
    ar = ar_terms(model, params, sub, rng_drop, train, prefix_P_B, cfg.train.token_dropout)
    loss_sum, tokens = loss_sum + ar['loss_sum'], tokens + ar['tokens']
    metrics['prefix_nll' if prefix_ar else 'ar_nll'] = ar['nll_sum'] / ar['tokens']
  if n_mdm > 0:
    noise = masking.Noise(cfg.diffusion)
    _, mask_BxL, w_B, elbo_B = noise.sample(rng_noise, batch['targets'], batch.get('prefix_len'))
    sub = batch
    if idx_mdm is not None:
      sub = _take(dict(batch, mask=mask_BxL, w=w_B, elbo=elbo_B), idx_mdm, spread)
      mask_BxL, w_B, elbo_B = sub.pop('mask'), sub.pop('w'), sub.pop('elbo')
    md = mdm_terms(model, params, sub, mask_BxL, w_B, elbo_B, jax.random.fold_in(rng_drop, 1),
                   train)
    loss_sum, tokens = loss_sum + md['loss_sum'], tokens + md['tokens']
    metrics['mdm_nelbo'] = md['nelbo_sum'] / md['tokens']
    metrics['mask_rate'] = md['masked'] / md['tokens']
  loss = loss_sum / tokens
  metrics['loss'] = loss
  metrics['tokens'] = tokens  # the loss's denominator: gradient accumulation weights by it
  return loss, metrics


def make_loss_fn(model, cfg, train=True, mesh=None):
  spread = None
  if mesh is not None:
    from dlm_jax import sharding  # pylint: disable=g-import-not-at-top
    sh = sharding.batch_sharding(mesh)
    spread = lambda x: jax.lax.with_sharding_constraint(x, sh)
  return functools.partial(loss_fn, model=model, cfg=cfg, train=train, spread=spread)
