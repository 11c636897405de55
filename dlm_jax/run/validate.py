"""Validation during training. Reports, per mode the run trains (the objective registry):
  AR      NLL per token and perplexity;
  MDM     NELBO per token with uniform low-discrepancy t and a fixed seed (so runs with different
          training samplers are comparable) and its perplexity bound exp(NELBO);
  prefix  the prefix-LM NLL with the first half as prompt;
in bits per byte too when the split's bytes/token ratio is known, and task exact match. What each
number estimates, in words: `estimands`.
"""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from dlm_jax.core import noise as noise_lib
from dlm_jax.core import objectives
from dlm_jax.core import sharding
from dlm_jax.core.sampling import mdm_infill_greedy
from dlm_jax.data.tokenizers import PAD


def modes(cfg):
  """What validation measures for a run (the objective registry's `validation`)."""
  return objectives.of(cfg).validation(cfg)


def estimands(cfg) -> dict:
  """What each validation metric estimates, in words (summary.json `estimands`, the end-of-run
  table, README). Every MDM number is an upper bound (a NELBO), exact in expectation."""
  d = cfg.data
  doc = 'each document (segment ids: no attention across EOS)' if d.segment_ids else 'the window'
  out = {}
  if 'ar' in modes(cfg):
    out['ar_nll'] = (f'-log p(x) per token of {doc}, causal; EOS is a token, so the length of '
                     'each document is paid for')
  if 'prefix' in modes(cfg):
    out['prefix_nll'] = ('-log p(second half | first half) per token of the second half '
                         '(prefix-LM attention, prompt = the first L/2 tokens, or the task prompt)')
  if 'mdm' in modes(cfg):
    given = []
    padded = objectives.rows_padded(cfg)
    if padded and cfg.diffusion.pad == 'visible':
      given.append('its length (diffusion.pad=visible: PAD never masked)')
    if not cfg.diffusion.mask_eos:
      given.append('the EOS positions (diffusion.mask_eos=False)')
    cond = f' given {" and ".join(given)}' if given else ''
    length = ('' if given or not padded else
              ', the length included (PAD masked and predicted, diffusion.pad=predict)')
    out['mdm_nelbo'] = (f'an upper bound on -log p(x){cond} per token of {doc}{length}: the '
                        'continuous-time NELBO, uniform low-discrepancy t, fixed seed')
  if cfg.data.task:
    for k in list(out):
      out[k] += '; task rows: the target given the prompt'
  out['*_ppl'] = 'exp of the per-token number (a perplexity bound for mdm_ppl)'
  out['*_bpb'] = ('the same in bits per UTF-8 byte of the scored targets (1 byte per EOS)'
                  if cfg.data.task else 'the same in bits per UTF-8 byte of the split')
  return out


def bytes_per_token(setup, batches):
  """UTF-8 bytes per scored token, what `*_bpb` divides by: the split's ratio for LM data; for
  task data that of the scored rows' targets (target bytes + 1 per EOS over target tokens + EOS),
  not the LM corpus's (cloze: 3.88 bytes per target token against 3.46 for the corpus)."""
  if setup.val_target_bytes is None:
    info = setup.data_info
    return info['val_bytes'] / info['val_tokens']
  rows = sum(b['targets'].shape[0] for b in batches)
  tokens = sum(int(np.sum((b['targets'] != PAD) & (np.arange(b['targets'].shape[1])[None] >=
                                                   b['prefix_len'][:, None]))) for b in batches)
  return float(np.sum(setup.val_target_bytes[:rows])) / tokens


class Validator:
  """Callable params -> metrics over a fixed list of validation batches."""

  def __init__(self, model, cfg, batches, mesh, bytes_per_token=None, params_sharding=None):
    """params_sharding: the parameters' NamedShardings (train.state_layout); None: whatever
    layout the parameters arrive in."""
    self.batches = batches
    self.modes = modes(cfg)
    self.seed = cfg.eval.seed
    self.bytes_per_token = bytes_per_token
    seg = cfg.data.segment_ids
    noise = noise_lib.Noise.for_evaluation(cfg.diffusion)
    rep, bsh = sharding.replicated(mesh), sharding.batch_sharding(mesh)
    self._bsh = bsh

    def sums(params, batch, rng):
      out = {}
      if 'ar' in self.modes:
        ar = objectives.ar_terms(model, params, batch, rng, train=False, segments=seg)
        out.update(ar_nll_sum=ar['nll_sum'], ar_tokens=ar['tokens'])
      if 'prefix' in self.modes:
        B, L = batch['targets'].shape
        P_B = batch['prefix_len'] if 'prefix_len' in batch else jnp.full((B,), L // 2, jnp.int32)
        pre = objectives.ar_terms(model, params, batch, rng, False, P_B, segments=seg)
        out.update(prefix_nll_sum=pre['nll_sum'], prefix_tokens=pre['tokens'])
      if 'mdm' in self.modes:
        _, mask_BxL, w_B, elbo_B = noise.sample(rng, batch['targets'], batch.get('prefix_len'))
        md = objectives.mdm_terms(model, params, batch, mask_BxL, w_B, elbo_B, rng, train=False,
                                  segments=seg)
        out.update(mdm_nelbo_sum=md['nelbo_sum'], mdm_tokens=md['tokens'])
      return out

    in_sh = None if params_sharding is None else (params_sharding, bsh, rep)
    self._sums = jax.jit(sums, in_shardings=in_sh, out_shardings=rep)
    self.task = bool(batches) and 'prefix_len' in batches[0]
    if self.task:
      in_sh = None if params_sharding is None else (params_sharding, bsh)
      self._exact = {m: jax.jit(functools.partial(task_exact_match, model, mode=m),
                                in_shardings=in_sh, out_shardings=rep) for m in self.modes}

  def __call__(self, params):
    tot = {}
    for i, b in enumerate(self.batches):
      rng = jax.random.fold_in(jax.random.PRNGKey(self.seed), i)
      s = self._sums(params, sharding.put_global(b, self._bsh), rng)
      for k, v in s.items():
        tot[k] = tot.get(k, 0.0) + v
    tot = jax.device_get(tot)
    out = {}
    if 'ar' in self.modes:
      nll = float(tot['ar_nll_sum'] / tot['ar_tokens'])
      out.update(ar_nll=nll, ar_ppl=math.exp(min(nll, 700)))
    if 'prefix' in self.modes:
      out['prefix_nll'] = float(tot['prefix_nll_sum'] / tot['prefix_tokens'])
    if 'mdm' in self.modes:
      nelbo = float(tot['mdm_nelbo_sum'] / tot['mdm_tokens'])
      out.update(mdm_nelbo=nelbo, mdm_ppl=math.exp(min(nelbo, 700)))
    if self.bytes_per_token:
      for k in ('ar_nll', 'mdm_nelbo'):
        if k in out:
          out[k.split('_')[0] + '_bpb'] = out[k] / self.bytes_per_token / math.log(2)
    out['eval_tokens'] = int(sum(jnp.size(b['targets']) for b in self.batches))
    if self.task:
      for m, fn in self._exact.items():
        hits = [fn(params, sharding.put_global(b, self._bsh)) for b in self.batches]
        out[f'{m}_exact_match'] = float(np.mean(np.concatenate(jax.device_get(hits))))
    return out


def task_exact_match(model, params, batch, mode):
  """Per example: does greedy decoding reproduce the target (and its EOS) exactly?
  AR: greedy decoding yields the target iff every target token is the argmax given the gold
  prefix, so one teacher-forced pass is exact. MDM: the target span (its gold length, an oracle
  the padding already reveals in training) is filled most-confident-first, one token per step."""
  targets_BxL, P_B = batch['targets'], batch['prefix_len']
  L = targets_BxL.shape[1]
  span_BxL = (jnp.arange(L)[None] >= P_B[:, None]) & (targets_BxL != PAD)
  if mode in ('ar', 'prefix'):  # prefix-LM: the prompt is read bidirectionally, then causal
    logits_BxLxV = model.apply({'params': params}, objectives.shift_inputs(targets_BxL),
                               'causal' if mode == 'ar' else 'prefix', P_B + 1)
    pred_BxL = jnp.argmax(logits_BxLxV, -1)
  else:
    # T = L >= any span; steps that reveal nothing reuse the logits, so only span + 1 passes run
    pred_BxL = mdm_infill_greedy(model, params, targets_BxL, span_BxL, L)
  return jnp.all(jnp.where(span_BxL, pred_BxL == targets_BxL, True), axis=-1)
