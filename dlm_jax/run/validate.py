"""Validation during training. Reports, per loss kind the run trains (the objective registry;
each kind's `validation_sums` and `validation_metrics`, core/losses.py):
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

from dlm_jax.core import losses
from dlm_jax.core import objectives
from dlm_jax.core import sharding
from dlm_jax.data.tokenizers import PAD


def modes(cfg):
  """What validation measures for a run (the objective registry's `validation`), by kind name."""
  return objectives.of(cfg).validation(cfg)


def estimands(cfg) -> dict:
  """What each validation metric estimates, in words (summary.json `estimands`, the end-of-run
  table, README), from each kind (core/losses.py). Every MDM number is an upper bound (a NELBO),
  exact in expectation."""
  d = cfg.data
  doc = 'each document (segment ids: no attention across EOS)' if d.segment_ids else 'the window'
  out = {}
  for kind in losses.in_order(modes(cfg)):
    out.update(kind.estimands(cfg, doc))
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
    self._kinds = losses.in_order(self.modes)
    rep, bsh = sharding.replicated(mesh), sharding.batch_sharding(mesh)
    self._bsh = bsh
    parts = [k.validation_sums(model, cfg) for k in self._kinds]

    def sums(params, batch, rng):
      out = {}
      for part in parts:
        out.update(part(params, batch, rng))
      return out

    in_sh = None if params_sharding is None else (params_sharding, bsh, rep)
    self._sums = jax.jit(sums, in_shardings=in_sh, out_shardings=rep)
    self.task = bool(batches) and 'prefix_len' in batches[0]
    if self.task:
      in_sh = None if params_sharding is None else (params_sharding, bsh)
      self._exact = {m: jax.jit(functools.partial(losses.KINDS[m].exact_match, model),
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
    for kind in self._kinds:
      out.update(kind.validation_metrics(tot))
    if self.bytes_per_token:
      for kind in self._kinds:
        if kind.bpb_of in out:
          out[f'{kind.name}_bpb'] = out[kind.bpb_of] / self.bytes_per_token / math.log(2)
    out['eval_tokens'] = int(sum(jnp.size(b['targets']) for b in self.batches))
    if self.task:
      for m, fn in self._exact.items():
        hits = [fn(params, sharding.put_global(b, self._bsh)) for b in self.batches]
        out[f'{m}_exact_match'] = float(np.mean(np.concatenate(jax.device_get(hits))))
    return out


def task_exact_match(model, params, batch, mode):
  """Per example: does greedy decoding reproduce the target (and its EOS) exactly, as the loss
  kind `mode` decodes (its `exact_match`)?"""
  return losses.KINDS[mode].exact_match(model, params, batch)
