"""Pure training objectives `(params, batch, rng) -> (loss, metrics)` and the registry of what
each objective trains, validates, estimates, samples and reports.

Shifted parameterisation (one head for every mode): for a window x_0..x_{L-1} the model reads
u = [BOS, x_0..x_{L-2}] and its logits at position i predict x_i.
  AR    causal attention; every non-pad target counts.
  MDM   t ~ sampler, target i masked w.p. 1 - alpha(t) (its copy in the input, if any, becomes
        [MASK]), bidirectional attention, loss w(t) * CE on masked targets. Divided by the number of
        non-pad tokens this is the NELBO per token.
  prefix  prefix-LM: the first P targets (P ~ U{0..L-1} per sequence, or batch['prefix_len']) are
        a prompt seen bidirectionally (input positions 0..P); loss only on targets i >= P, whose
        inputs are never visible to the position predicting them.
  dual  n_mdm sequences of each batch (chosen by a seeded permutation) train as MDM, the rest as
        AR (causal or prefix-LM: dual.ar_attention), one set of weights; loss = (AR sum + MDM sum)
        / all tokens. n_mdm follows the MDM fraction rho = 1 - ar_weight exactly over steps
        (`mdm_count`), so rho = 0 is exactly AR and rho = 1 exactly MDM.
Token dropout (train.token_dropout, AR and prefix-LM only): inputs replaced by [MASK] at rate p
during training, targets unchanged. Each mode first computes sums (`*_terms`) so the modes
compose, microbatches add up and validation reuses them.

To add an objective: an OBJECTIVES entry below (and, if it trains a new kind of loss, its terms
in this file). Config validation, validation metrics, --mode eval, --mode sample, probes and the
sweep collector all read the registry.
"""
import dataclasses
import fractions
import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp

from dlm_jax.core import noise as noise_lib
from dlm_jax.core import sharding
from dlm_jax.core.kernels import token_ce
from dlm_jax.core.tokens import BOS, EOS, MASK, PAD


def parse_fraction(s) -> fractions.Fraction:
  """'63/64' -> Fraction(63, 64); '0.75' -> Fraction(3, 4)."""
  return fractions.Fraction(str(s).strip())


@dataclasses.dataclass(frozen=True)
class Objective:
  """What an objective trains and what the rest of the code does with it."""
  mdm_share: Callable        # cfg -> Fraction of each batch's sequences trained as MDM
  ar_attention: Callable     # cfg -> attention of the AR share: 'causal' or 'prefix'
  validation: Callable       # cfg -> validation modes, of 'ar', 'mdm', 'prefix'
  estimators: tuple          # eval.estimators=auto (likelihood estimators of --mode eval)
  task_estimator: str        # eval.task_estimator=auto (zero-shot option scores)
  sample_modes: tuple        # sample.mode=auto
  headline: tuple            # the validation metric a sweep reports as the run's loss, in order


def _dual_ar_attention(cfg):
  return cfg.dual.ar_attention


# every likelihood estimator of --mode eval (infer/likelihood.py computes them)
ESTIMATORS = ('ar', 'nelbo', 'chain', 'pll', 'pll_word_l2r', 'pll_word', 'pll_span', 'pll_mix',
              'fused')
MDM_ESTIMATORS = ('nelbo', 'chain', 'pll', 'pll_word_l2r', 'pll_mix')
OBJECTIVES = {
    'ar': Objective(lambda cfg: fractions.Fraction(0), lambda cfg: 'causal',
                    lambda cfg: ('ar',), ('ar',), 'ar', ('ar',), ('ar_nll',)),
    'mdm': Objective(lambda cfg: fractions.Fraction(1), lambda cfg: 'causal',
                     lambda cfg: ('mdm',), MDM_ESTIMATORS, 'nelbo', ('mdm',), ('mdm_nelbo',)),
    'dual': Objective(lambda cfg: 1 - parse_fraction(cfg.dual.ar_weight), _dual_ar_attention,
                      lambda cfg: ('ar', 'mdm') + (('prefix',) if _dual_ar_attention(cfg) ==
                                                   'prefix' else ()),
                      ('ar', 'nelbo', 'chain', 'pll', 'pll_mix', 'fused'), 'nelbo', ('ar', 'mdm'),
                      ('ar_nll', 'mdm_nelbo')),
    # prefix-LM; validation also reports the causal NLL, so it compares with AR
    'prefix': Objective(lambda cfg: fractions.Fraction(0), lambda cfg: 'prefix',
                        lambda cfg: ('ar', 'prefix'), ('ar',), 'ar', ('ar',),
                        ('ar_nll', 'prefix_nll')),
}


def of(cfg) -> Objective:
  return OBJECTIVES[cfg.objective]


def mdm_fraction(cfg) -> fractions.Fraction:
  """Share of sequences trained as MDM under the configured objective."""
  return of(cfg).mdm_share(cfg)


def rows_padded(cfg) -> bool:
  """Do training and validation rows hold PAD? data.packing=pad does, and task rows always do
  (prompt, target, EOS, then PAD), whatever data.packing says; then diffusion.pad decides whether
  an MDM number pays for the length or is given it."""
  return cfg.data.packing == 'pad' or bool(cfg.data.task)


def prefix_ar(cfg) -> bool:
  return of(cfg).ar_attention(cfg) == 'prefix'


def mdm_count(cfg, step: int, batch_size: int) -> int:
  """MDM sequences in the batch of `step`: floor((s+1) rho B) - floor(s rho B), exact rationals, so
  fractions like 1/256 are honoured over steps even when rho * B is not an integer."""
  rho = mdm_fraction(cfg) * batch_size
  return math.floor((step + 1) * rho) - math.floor(step * rho)


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


def _apply(model, params, inputs_BxL, attention, segments, rng, train, prefix_len_B=None):
  seg_BxL = input_segments(inputs_BxL) if segments else None
  return model.apply({'params': params}, inputs_BxL, attention, prefix_len_B, seg_BxL,
                     deterministic=not train, rngs={'dropout': rng} if train else None)


def ar_terms(model, params, batch, rng, train=True, prefix_P_B=None, token_dropout=0.0,
             segments=False):
  """Sums for next-token prediction (causal), or prefix-LM when prefix_P_B is given. A
  batch['drop'] mask (drawn by `draw`) replaces those inputs by [MASK] (token dropout); else
  token_dropout > 0 draws one from rng. segments: no attention across visible EOS inputs
  (data.segment_ids)."""
  targets_BxL = batch['targets']
  B, L = targets_BxL.shape
  valid_BxL = targets_BxL != PAD
  inputs_BxL = shift_inputs(targets_BxL)
  rng_drop, rng_tok = jax.random.split(rng) if rng is not None else (None, None)
  drop_BxL = batch.get('drop')
  if drop_BxL is None and train and token_dropout > 0:
    drop_BxL = token_dropout_mask(rng_tok, B, L, token_dropout)
  if train and drop_BxL is not None:
    inputs_BxL = jnp.where(drop_BxL, MASK, inputs_BxL)
  if prefix_P_B is None:
    logits_BxLxV = _apply(model, params, inputs_BxL, 'causal', segments, rng_drop, train)
    if 'prefix_len' in batch:  # task data: loss on the target only
      valid_BxL = valid_BxL & (jnp.arange(L)[None, :] >= batch['prefix_len'][:, None])
  else:
    logits_BxLxV = _apply(model, params, inputs_BxL, 'prefix', segments, rng_drop, train,
                          prefix_P_B + 1)
    valid_BxL = valid_BxL & (jnp.arange(L)[None, :] >= prefix_P_B[:, None])
  valid_BxL = valid_BxL.astype(jnp.float32)
  nll_sum = jnp.sum(token_ce(logits_BxLxV, targets_BxL) * valid_BxL)
  return dict(loss_sum=nll_sum, nll_sum=nll_sum, tokens=jnp.sum(valid_BxL))


def token_dropout_mask(rng, B, L, p):
  """Inputs replaced by [MASK] at rate p (never BOS at position 0)."""
  return jax.random.bernoulli(rng, p, (B, L)).at[:, 0].set(False)


def sample_prefix(rng, batch):
  """Prefix lengths: batch['prefix_len'] when the data carries them, else U{0..L-1}."""
  if 'prefix_len' in batch:
    return batch['prefix_len'].astype(jnp.int32)
  B, L = batch['targets'].shape
  return jax.random.randint(rng, (B,), 0, L)


def mdm_terms(model, params, batch, mask_BxL, weight_B, elbo_weight_B, rng, train=True,
              segments=False):
  """Sums given the noise: loss_sum = sum_b weight_b sum_{i masked} CE_bi (the training loss) and
  nelbo_sum with the unbiased-NELBO weights (equal to loss_sum under `elbo` weighting). The
  denominator `tokens` counts non-PAD targets (after a task's prompt), as AR's does; masked PAD
  targets (diffusion.pad=predict) are in the sums: they pay for the length. segments: as
  ar_terms'."""
  targets_BxL = batch['targets']
  valid_BxL = targets_BxL != PAD
  if 'prefix_len' in batch:  # task data: the prompt is context, not data to model
    valid_BxL = valid_BxL & (jnp.arange(targets_BxL.shape[1])[None] >= batch['prefix_len'][:, None])
  valid_BxL = valid_BxL.astype(jnp.float32)
  logits_BxLxV = _apply(model, params, shift_inputs(targets_BxL, mask_BxL), 'bidirectional',
                        segments, rng, train)
  ce_BxL = token_ce(logits_BxLxV, targets_BxL) * mask_BxL
  return dict(loss_sum=jnp.sum(weight_B[:, None] * ce_BxL),
              nelbo_sum=jnp.sum(elbo_weight_B[:, None] * ce_BxL),
              tokens=jnp.sum(valid_BxL), masked=jnp.sum(mask_BxL))


def _take(batch, idx, spread=None):
  out = {k: jnp.take(v, idx, axis=0) for k, v in batch.items()}
  return out if spread is None else jax.tree_util.tree_map(spread, out)


def draw(cfg, batch, rng, n_mdm, train=True):
  """Every random choice of a step, made once for the global batch: which rows train MDM (dual),
  the MDM rows' t, masks and weights, the AR rows' prefix lengths and token-dropout masks.
  Returns (idx_ar, idx_mdm, noise): row indices of each share (None: all rows, or none when the
  share is empty) and per-row noise arrays for the whole batch. Drawing for the global batch
  and only then splitting it is what makes gradient accumulation the same update."""
  rng_noise, rng_perm, rng_prefix, rng_tok = jax.random.split(rng, 4)
  B, L = batch['targets'].shape
  if 0 < n_mdm < B:  # a mixed batch (dual): which rows train which mode
    perm_B = jax.random.permutation(rng_perm, B)
    idx_mdm, idx_ar = perm_B[:n_mdm], perm_B[n_mdm:]
  else:
    idx_mdm = idx_ar = None
  noise = {}
  if n_mdm < B:
    if prefix_ar(cfg):
      noise['prefix_P'] = sample_prefix(rng_prefix, batch)
    if train and cfg.train.token_dropout > 0:
      noise['drop'] = token_dropout_mask(rng_tok, B, L, cfg.train.token_dropout)
  if n_mdm > 0:
    _, noise['mask'], noise['w'], noise['elbo'] = noise_lib.Noise(cfg.diffusion).sample(
        rng_noise, batch['targets'], batch.get('prefix_len'))
  return idx_ar, idx_mdm, noise


def _share(n, micro):
  """Does microbatch `micro` hold any of a share of n rows? (static)"""
  return n > 0 if micro is None or isinstance(micro[0], jax.Array) else (
      len(range(micro[0], n, micro[1])) > 0)


def _rows(idx, n, micro):
  """Row indices of microbatch m of k (rows m, m+k, ... of a share of n rows), or None when the
  share is the whole batch and there is no microbatching."""
  if micro is None:
    return idx
  m, k = micro
  idx = jnp.arange(n) if idx is None else idx
  if n % k == 0:  # m may be traced (a scanned microbatch loop)
    return idx.reshape(n // k, k)[:, m]
  return idx[m::k]  # uneven shares: m is a Python int (an unrolled loop)


def loss_fn(params, batch, rng, *, model, cfg, train=True, n_mdm=None, spread=None,
            micro=None):
  """The configured objective; returns (loss, metrics) with per-mode NLL / NELBO per token.
  n_mdm (static): MDM sequences in this batch; None -> round(rho * B).
  micro: (m, k): the loss of microbatch m of k, with every random choice drawn for the whole
  batch first (`draw`), so that k microbatches weighted by their `tokens` give exactly the
  single-pass gradient.
  spread: lays a row-subset back out over the data-parallel devices (a sharding constraint);
  without it a dual batch's random AR/MDM split would leave XLA to replicate both halves on
  every device (measured: 8x the work on 8 devices)."""
  rng_draw, rng_drop = jax.random.split(rng)
  B = batch['targets'].shape[0]
  if n_mdm is None:
    n_mdm = int(round(mdm_fraction(cfg) * B))
  idx_ar, idx_mdm, noise = draw(cfg, batch, rng_draw, n_mdm, train)
  if micro is not None:
    rng_drop = jax.random.fold_in(rng_drop, micro[0])
  # the same keys in every microbatch (a share may be empty in one of them)
  zero = jnp.zeros((), jnp.float32)
  sums = dict(loss=zero, tokens=zero)
  if n_mdm < B:
    sums.update(ar_sum=zero, ar_tokens=zero)
  if n_mdm > 0:
    sums.update(mdm_loss_sum=zero, mdm_sum=zero, mdm_tokens=zero, masked=zero)
  full = dict(batch, **noise)
  if _share(B - n_mdm, micro):
    rows = _rows(idx_ar, B - n_mdm, micro)
    sub = dict(full) if rows is None else _take(full, rows, spread)
    prefix_P_B = sub.pop('prefix_P', None)
    ar = ar_terms(model, params, {k: v for k, v in sub.items() if k not in ('mask', 'w', 'elbo')},
                  rng_drop, train, prefix_P_B, segments=cfg.data.segment_ids)
    sums.update(loss=sums['loss'] + ar['loss_sum'], tokens=sums['tokens'] + ar['tokens'],
                ar_sum=ar['nll_sum'], ar_tokens=ar['tokens'])
  if _share(n_mdm, micro):
    rows = _rows(idx_mdm, n_mdm, micro)
    sub = dict(full) if rows is None else _take(full, rows, spread)
    mask_BxL, w_B, elbo_B = sub.pop('mask'), sub.pop('w'), sub.pop('elbo')
    sub = {k: v for k, v in sub.items() if k not in ('prefix_P', 'drop')}
    md = mdm_terms(model, params, sub, mask_BxL, w_B, elbo_B, jax.random.fold_in(rng_drop, 1),
                   train, segments=cfg.data.segment_ids)
    sums.update(loss=sums['loss'] + md['loss_sum'], tokens=sums['tokens'] + md['tokens'],
                mdm_loss_sum=md['loss_sum'], mdm_sum=md['nelbo_sum'], mdm_tokens=md['tokens'],
                masked=md['masked'])
  metrics = metrics_from_sums(sums, cfg)
  metrics['tokens'] = sums['tokens']  # the loss's denominator: gradient accumulation weights by it
  metrics['sums'] = sums              # per-mode numerators and denominators, for accumulation
  return metrics['loss'], metrics


def metrics_from_sums(sums, cfg):
  """Per-mode metrics of accumulated sums (the same formulas as loss_fn)."""
  out = {}
  if 'ar_sum' in sums:
    out['prefix_nll' if prefix_ar(cfg) else 'ar_nll'] = sums['ar_sum'] / sums['ar_tokens']
  if 'mdm_sum' in sums:
    if noise_lib.Noise(cfg.diffusion).nelbo_exact:
      out['mdm_nelbo'] = sums['mdm_sum'] / sums['mdm_tokens']
    if cfg.diffusion.weighting == 'plain':
      out['mdm_loss'] = sums['mdm_loss_sum'] / sums['mdm_tokens']
    out['mask_rate'] = sums['masked'] / sums['mdm_tokens']
  out['loss'] = sums['loss'] / sums['tokens']
  return out


def make_loss_fn(model, cfg, train=True, mesh=None):
  spread = None
  if mesh is not None:
    sh = sharding.batch_sharding(mesh)
    spread = lambda x: jax.lax.with_sharding_constraint(x, sh)
  return functools.partial(loss_fn, model=model, cfg=cfg, train=train, spread=spread)


# config.objective / config.dual, checked by their owner (config.validate asks). Imported here, at
# the end, so this block merges apart from the rest of the module.
from dlm_jax.core.registry import choice, need  # pylint: disable=wrong-import-position

AR_ATTENTIONS = ('causal', 'prefix')  # config.dual.ar_attention


def check_config(cfg):
  """config.objective, config.dual, and model.unpredicted against the PAD rows it trains."""
  choice(cfg, 'objective', tuple(OBJECTIVES), '')
  try:
    w = parse_fraction(cfg.dual.ar_weight)
  except (ValueError, ZeroDivisionError):
    need(False, 'dual.ar_weight', f'{cfg.dual.ar_weight!r} is not a fraction like '
         "'63/64' or a number")
  need(0 <= w <= 1, 'dual.ar_weight', f'{cfg.dual.ar_weight} is outside [0, 1]')
  choice(cfg.dual, 'ar_attention', AR_ATTENTIONS, 'dual.')
  need(not (rows_padded(cfg) and cfg.diffusion.pad == 'predict' and
            str(PAD) in [x.strip() for x in cfg.model.unpredicted.split(',')]),
       'model.unpredicted', f'lists PAD ({PAD}), which padded rows (data.packing=pad '
       'or a data.task) with diffusion.pad=predict train the model to predict: remove it there, '
       'or use diffusion.pad=visible')
