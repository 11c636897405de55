"""Loss kinds: what one row of a batch is trained on, as one object each (`KINDS`, by name).

  ar      causal attention; every non-pad target counts.
  prefix  prefix-LM: the first P targets (P ~ U{0..L-1} per sequence, or batch['prefix_len']) are
          a prompt seen bidirectionally (input positions 0..P); loss only on targets i >= P, whose
          inputs are never visible to the position predicting them.
  mdm     t ~ sampler, target i masked w.p. 1 - alpha(t) (its copy in the input, if any, becomes
          [MASK]), bidirectional attention, loss w(t) * CE on masked targets. Divided by the number
          of non-pad tokens this is the NELBO per token.

A kind owns everything the rest of the code does with it: the noise it draws for a step (from the
named keys of `draw`), its training sums and metrics, what its validation numbers estimate (in
words), its validation sums, its task exact match and the sampler that decodes what it trains.
An objective (core/objectives.py) trains one kind on the rows outside its MDM share and one on the
share. To add a kind: a subclass of LossKind and `register(kind)`; an objective naming it.
"""
import math

import jax
import jax.numpy as jnp

from dlm_jax.core import family
from dlm_jax.core import noise as noise_lib
from dlm_jax.core.inputs import apply, shift_inputs, token_dropout_mask
from dlm_jax.core.kernels import token_ce
from dlm_jax.core.sampling import mdm_infill_greedy
from dlm_jax.core.tokens import MASK, PAD


def rows_padded(cfg) -> bool:
  """Do training and validation rows hold PAD? data.packing=pad does, and task rows always do
  (prompt, target, EOS, then PAD), whatever data.packing says; then diffusion.pad decides whether
  an MDM number pays for the length or is given it."""
  return cfg.data.packing == 'pad' or bool(cfg.data.task)


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
    logits_BxLxV = apply(model, params, inputs_BxL, 'causal', segments, rng_drop, train)
    if 'prefix_len' in batch:  # task data: loss on the target only
      valid_BxL = valid_BxL & (jnp.arange(L)[None, :] >= batch['prefix_len'][:, None])
  else:
    logits_BxLxV = apply(model, params, inputs_BxL, 'prefix', segments, rng_drop, train,
                         prefix_P_B + 1)
    valid_BxL = valid_BxL & (jnp.arange(L)[None, :] >= prefix_P_B[:, None])
  valid_BxL = valid_BxL.astype(jnp.float32)
  nll_sum = jnp.sum(token_ce(logits_BxLxV, targets_BxL) * valid_BxL)
  return dict(loss_sum=nll_sum, nll_sum=nll_sum, tokens=jnp.sum(valid_BxL))


def mdm_inputs(targets_BxL, mask_BxL, fam=None):
  """What the denoiser reads: the shifted noisy targets (masked: [MASK] where masked; the noise
  family's draws, `fam['z']`, else)."""
  return shift_inputs(targets_BxL, mask_BxL) if fam is None else shift_inputs(fam['z'])


FAMILY_KEYS = ('z', 'maskable', 'a', 'da', 'c', 'n', 'ce')  # noise_lib.Noise.draw's `fam`


def family_of(noise):
  """The family draws among a row batch's noise arrays (None under masked noise)."""
  return {k: noise[k] for k in FAMILY_KEYS} if 'z' in noise else None


def mdm_sums(logits_BxLxV, batch, mask_BxL, weight_B, elbo_weight_B, fam=None):
  """The sums of mdm_terms from the denoiser's logits (what block diffusion reuses per block).
  Under uniform / hybrid noise (`fam`) every maskable position carries the family's NELBO term
  (core/family.py), noised or not; weighting=ce trains the CE of the noised ones instead."""
  targets_BxL = batch['targets']
  valid_BxL = targets_BxL != PAD
  if 'prefix_len' in batch:  # task data: the prompt is context, not data to model
    valid_BxL = valid_BxL & (jnp.arange(targets_BxL.shape[1])[None] >= batch['prefix_len'][:, None])
  valid_BxL = valid_BxL.astype(jnp.float32)
  ce_BxL = token_ce(logits_BxLxV, targets_BxL) * mask_BxL
  out = dict(tokens=jnp.sum(valid_BxL), masked=jnp.sum(mask_BxL))
  if fam is None:
    return dict(out, loss_sum=jnp.sum(weight_B[:, None] * ce_BxL),
                nelbo_sum=jnp.sum(elbo_weight_B[:, None] * ce_BxL))
  term_BxL = family.token_nelbo(logits_BxLxV, targets_BxL, fam['z'], fam['a'], fam['da'],
                                fam['c'], fam['n']) * fam['maskable']
  term_B, ce_B = jnp.sum(term_BxL, 1), jnp.sum(ce_BxL, 1)
  return dict(out, loss_sum=jnp.sum(weight_B * jnp.where(fam['ce'] > 0, ce_B, term_B)),
              nelbo_sum=jnp.sum(elbo_weight_B * term_B))


def reconstruction_sum(model, params, cfg, batch, rng, noise):
  """Uniform / hybrid noise: -log p(x | z_eps) summed over the maskable positions, p(x_i | z) =
  x_hat_i (the reverse process's last step), with z_eps drawn at t = eps. The truncated bound
  needs it: the family's integrand grows like (1 - x_hat(x)) / t near t = 0, so dropping [0, eps]
  is not negligible (it put an exact model's NELBO 1.8% below -log p(x): tests/test_family.py)."""
  targets_BxL = batch['targets']
  r_m, r_z = jax.random.split(jax.random.fold_in(rng, 7))
  maskable_BxL = noise.maskable(targets_BxL, batch.get('prefix_len'))
  t_B = jnp.full((targets_BxL.shape[0],), noise.cfg.eps, jnp.float32)
  noised_BxL = noise_lib.bernoulli_mask(r_m, t_B, maskable_BxL, noise.schedule)
  z_BxL = family.corrupt(r_z, targets_BxL, noised_BxL, noise.p, noise.ids_N)
  logits_BxLxV = apply(model, params, shift_inputs(z_BxL), 'bidirectional',
                       cfg.data.segment_ids, rng, False)
  return jnp.sum(token_ce(logits_BxLxV, targets_BxL) * maskable_BxL)


def mdm_terms(model, params, batch, mask_BxL, weight_B, elbo_weight_B, rng, train=True,
              segments=False, fam=None):
  """Sums given the noise: loss_sum = sum_b weight_b sum_{i masked} CE_bi (the training loss) and
  nelbo_sum with the unbiased-NELBO weights (equal to loss_sum under `elbo` weighting). The
  denominator `tokens` counts non-PAD targets (after a task's prompt), as AR's does; masked PAD
  targets (diffusion.pad=predict) are in the sums: they pay for the length. segments: as
  ar_terms'. fam: the noise family's extra draws (uniform / hybrid noise), None for masked."""
  logits_BxLxV = apply(model, params, mdm_inputs(batch['targets'], mask_BxL, fam),
                       'bidirectional', segments, rng, train)
  return mdm_sums(logits_BxLxV, batch, mask_BxL, weight_B, elbo_weight_B, fam)


def sample_prefix(rng, batch):
  """Prefix lengths: batch['prefix_len'] when the data carries them, else U{0..L-1}."""
  if 'prefix_len' in batch:
    return batch['prefix_len'].astype(jnp.int32)
  B, L = batch['targets'].shape
  return jax.random.randint(rng, (B,), 0, L)


def _ppl(nll):
  return math.exp(min(nll, 700))


class LossKind:
  """One kind of loss. Training: `draw` (the noise of the whole batch, from the step's named keys
  noise / prefix / drop) then `terms` on this kind's rows; `metrics` of the accumulated sums.
  Validation: `validation_sums` over the fixed batches, then `validation_metrics`."""
  name = ''
  mdm_share = False   # trains the MDM share of a batch (objectives.mdm_count rows), else the rest
  attention = 'causal'  # what dual.ar_attention names it by (AR-share kinds)
  noise_keys = ()     # per-row arrays `draw` adds to the batch (only these reach `terms`)
  sums_keys = ()      # training sums besides loss and tokens
  sampler = 'ar'      # the sample.mode (core/sampling.py) that decodes what it trains
  estimators = ()     # likelihood estimators (infer/likelihood.py) that score what it trains
  bpb_of = ''         # the validation metric also reported in bits per byte (<kind>_bpb)
  input_factor = 1    # input tokens the model reads per target (FLOPs: core/flops.py)

  def draw(self, cfg, batch, keys, train):
    return {}

  def terms(self, model, params, batch, rng, cfg, train):
    """dict(loss_sum, tokens, **sums_keys) of this kind's rows (batch: targets and its noise)."""
    raise NotImplementedError

  def metrics(self, sums, cfg):
    raise NotImplementedError

  def estimands(self, cfg, doc):
    """{validation metric: what it estimates, in words}; doc: what a row is."""
    return {}

  def validation_sums(self, model, cfg):
    """(params, batch, rng) -> sums of one validation batch (traced; summed over batches)."""
    raise NotImplementedError

  def validation_metrics(self, tot):
    raise NotImplementedError

  def exact_match(self, model, params, batch):
    """Per task row: does greedy decoding reproduce the target (and its EOS) exactly?"""
    raise NotImplementedError


def _token_dropout(cfg, batch, keys, train):
  if not (train and cfg.train.token_dropout > 0):
    return {}
  B, L = batch['targets'].shape
  return dict(drop=token_dropout_mask(keys['drop'], B, L, cfg.train.token_dropout))


def _span(batch):
  targets_BxL, P_B = batch['targets'], batch['prefix_len']
  return (jnp.arange(targets_BxL.shape[1])[None] >= P_B[:, None]) & (targets_BxL != PAD)


def _teacher_forced(model, params, batch, attention):
  """Greedy AR decoding yields the target iff every target token is the argmax given the gold
  prefix, so one teacher-forced pass is exact (prefix-LM: the prompt read bidirectionally)."""
  targets_BxL, P_B = batch['targets'], batch['prefix_len']
  logits_BxLxV = model.apply({'params': params}, shift_inputs(targets_BxL), attention, P_B + 1)
  hit_BxL = jnp.argmax(logits_BxLxV, -1) == targets_BxL
  return jnp.all(jnp.where(_span(batch), hit_BxL, True), axis=-1)


class AR(LossKind):
  name, noise_keys, sums_keys, bpb_of = 'ar', ('drop',), ('ar_sum', 'ar_tokens'), 'ar_nll'
  estimators = ('ar',)

  def draw(self, cfg, batch, keys, train):
    return _token_dropout(cfg, batch, keys, train)

  def terms(self, model, params, batch, rng, cfg, train):
    ar = ar_terms(model, params, batch, rng, train, segments=cfg.data.segment_ids)
    return dict(loss_sum=ar['loss_sum'], tokens=ar['tokens'], ar_sum=ar['nll_sum'],
                ar_tokens=ar['tokens'])

  def metrics(self, sums, cfg):
    return {'ar_nll': sums['ar_sum'] / sums['ar_tokens']}

  def estimands(self, cfg, doc):
    return {'ar_nll': f'-log p(x) per token of {doc}, causal; EOS is a token, so the length of '
                      'each document is paid for'}

  def validation_sums(self, model, cfg):
    def sums(params, batch, rng):
      ar = ar_terms(model, params, batch, rng, train=False, segments=cfg.data.segment_ids)
      return dict(ar_nll_sum=ar['nll_sum'], ar_tokens=ar['tokens'])
    return sums

  def validation_metrics(self, tot):
    nll = float(tot['ar_nll_sum'] / tot['ar_tokens'])
    return dict(ar_nll=nll, ar_ppl=_ppl(nll))

  def exact_match(self, model, params, batch):
    return _teacher_forced(model, params, batch, 'causal')


class Prefix(AR):
  """The AR share's sums keep AR's names (ar_sum, ar_tokens); its metric is prefix_nll."""
  name, attention, noise_keys, bpb_of = 'prefix', 'prefix', ('prefix_P', 'drop'), ''
  estimators = ()

  def draw(self, cfg, batch, keys, train):
    return dict(prefix_P=sample_prefix(keys['prefix'], batch),
                **_token_dropout(cfg, batch, keys, train))

  def terms(self, model, params, batch, rng, cfg, train):
    batch = dict(batch)
    P_B = batch.pop('prefix_P')
    ar = ar_terms(model, params, batch, rng, train, P_B, segments=cfg.data.segment_ids)
    return dict(loss_sum=ar['loss_sum'], tokens=ar['tokens'], ar_sum=ar['nll_sum'],
                ar_tokens=ar['tokens'])

  def metrics(self, sums, cfg):
    return {'prefix_nll': sums['ar_sum'] / sums['ar_tokens']}

  def estimands(self, cfg, doc):
    what = ('-log p(second half | first half) per token of the second half (prefix-LM '
            'attention, prompt = the first L/2 tokens, or the task prompt)')
    return {'prefix_nll': what}

  def validation_sums(self, model, cfg):
    def sums(params, batch, rng):
      B, L = batch['targets'].shape
      P_B = batch['prefix_len'] if 'prefix_len' in batch else jnp.full((B,), L // 2, jnp.int32)
      pre = ar_terms(model, params, batch, rng, False, P_B, segments=cfg.data.segment_ids)
      return dict(prefix_nll_sum=pre['nll_sum'], prefix_tokens=pre['tokens'])
    return sums

  def validation_metrics(self, tot):
    return dict(prefix_nll=float(tot['prefix_nll_sum'] / tot['prefix_tokens']))

  def exact_match(self, model, params, batch):
    return _teacher_forced(model, params, batch, 'prefix')


class MDM(LossKind):
  name, mdm_share, sampler, bpb_of = 'mdm', True, 'mdm', 'mdm_nelbo'
  noise_keys = ('mask', 'w', 'elbo') + FAMILY_KEYS
  # fused (the mean of pll and ar) decodes as MDM
  estimators = ('nelbo', 'chain', 'pll', 'pll_word_l2r', 'pll_word', 'pll_span', 'pll_mix', 'fused')
  sums_keys = ('mdm_loss_sum', 'mdm_sum', 'mdm_tokens', 'masked')

  def draw(self, cfg, batch, keys, train):
    return noise_lib.Noise.of(cfg).draw(keys['noise'], batch['targets'], batch.get('prefix_len'))

  def terms(self, model, params, batch, rng, cfg, train):
    batch = dict(batch)
    fam = family_of(batch)
    for k in FAMILY_KEYS if fam else ():
      batch.pop(k)
    mask_BxL, w_B, elbo_B = batch.pop('mask'), batch.pop('w'), batch.pop('elbo')
    md = mdm_terms(model, params, batch, mask_BxL, w_B, elbo_B, jax.random.fold_in(rng, 1),
                   train, segments=cfg.data.segment_ids, fam=fam)
    return dict(loss_sum=md['loss_sum'], tokens=md['tokens'], mdm_loss_sum=md['loss_sum'],
                mdm_sum=md['nelbo_sum'], mdm_tokens=md['tokens'], masked=md['masked'])

  def metrics(self, sums, cfg):
    out = {}
    # the family's training sums lack the reconstruction term: not a bound (validation adds it)
    if noise_lib.masked(cfg.diffusion) and noise_lib.Noise(cfg.diffusion).nelbo_exact:
      out['mdm_nelbo'] = sums['mdm_sum'] / sums['mdm_tokens']
    if cfg.diffusion.weighting != 'elbo' or not noise_lib.masked(cfg.diffusion):
      out['mdm_loss'] = sums['mdm_loss_sum'] / sums['mdm_tokens']
    out['mask_rate'] = sums['masked'] / sums['mdm_tokens']
    return out

  def estimands(self, cfg, doc):
    given = []
    padded = rows_padded(cfg)
    if padded and cfg.diffusion.pad == 'visible':
      given.append('its length (diffusion.pad=visible: PAD never masked)')
    if not cfg.diffusion.mask_eos:
      given.append('the EOS positions (diffusion.mask_eos=False)')
    cond = f' given {" and ".join(given)}' if given else ''
    length = ('' if given or not padded else
              ', the length included (PAD masked and predicted, diffusion.pad=predict)')
    d = cfg.diffusion
    family_note = ('' if noise_lib.masked(d) else
                   f'; {d.noise} noise (prior (1 - p) [MASK] + p uniform, p = '
                   f'{noise_lib.uniform_frac(d):g}): t in [eps, 1] plus the reconstruction term '
                   '-log p(x | z_eps)')
    return {'mdm_nelbo': f'an upper bound on -log p(x){cond} per token of {doc}{length}: the '
                         'continuous-time NELBO, uniform low-discrepancy t, fixed seed'
                         + family_note}

  def validation_sums(self, model, cfg):
    """Uniform low-discrepancy t and the run's fixed eval seed, whatever the training sampler,
    so runs with different samplers compare."""
    noise = noise_lib.Noise.for_evaluation(cfg)

    def sums(params, batch, rng):
      d = noise.draw(rng, batch['targets'], batch.get('prefix_len'))
      md = mdm_terms(model, params, batch, d['mask'], d['w'], d['elbo'], rng, train=False,
                     segments=cfg.data.segment_ids, fam=family_of(d))
      total = md['nelbo_sum']
      if noise.p > 0:
        total = total + reconstruction_sum(model, params, cfg, batch, rng, noise)
      return dict(mdm_nelbo_sum=total, mdm_tokens=md['tokens'])
    return sums

  def validation_metrics(self, tot):
    nelbo = float(tot['mdm_nelbo_sum'] / tot['mdm_tokens'])
    return dict(mdm_nelbo=nelbo, mdm_ppl=_ppl(nelbo))

  def exact_match(self, model, params, batch):
    """The target span (its gold length, an oracle the padding already reveals in training)
    filled most-confident-first, one token per step: T = L >= any span; steps that reveal
    nothing reuse the logits, so only span + 1 passes run."""
    targets_BxL = batch['targets']
    span_BxL = _span(batch)
    pred_BxL = mdm_infill_greedy(model, params, targets_BxL, span_BxL, targets_BxL.shape[1])
    return jnp.all(jnp.where(span_BxL, pred_BxL == targets_BxL, True), axis=-1)


# in the order their metrics are reported
KINDS = {k.name: k for k in (AR(), Prefix(), MDM())}


def register(kind: LossKind):
  """Adds a loss kind (objectives.register names it in an objective)."""
  if kind.name in KINDS:
    raise ValueError(f'loss kind {kind.name!r} is already registered')
  KINDS[kind.name] = kind
  return kind


def unregister(name: str):
  KINDS.pop(name)


def in_order(names):
  """The registered kinds among `names`, in KINDS order (the order metrics are reported in)."""
  return [k for n, k in KINDS.items() if n in names]


def decoder_of(estimator: str) -> str:
  """The sampler mode that decodes greedily where `estimator` scores (zero-shot target items,
  lm-eval generation): that of the kind the estimator belongs to."""
  return next(k.sampler for k in KINDS.values() if estimator in k.estimators)
