"""Likelihood evaluation. Validation reports, per mode the run trains:
  AR   NLL per token and perplexity;
  MDM  NELBO per token with uniform low-discrepancy t and a fixed seed (so runs with different
       training samplers are comparable) and its perplexity bound exp(NELBO).
Both also in bits per byte when the split's bytes/token ratio is known.
"""
import math

import jax
import jax.numpy as jnp

from dlm_jax import masking
from dlm_jax import objectives
from dlm_jax import sharding


def modes(cfg):
  """What validation measures for a run: AR NLL for anything with an AR share, the MDM NELBO for
  anything with an MDM share, and the prefix-LM NLL (prompt = first half) for prefix-LM training."""
  m = {'ar': ('ar',), 'mdm': ('mdm',), 'dual': ('ar', 'mdm'), 'prefix': ('ar', 'prefix')}
  out = m[cfg.objective]
  if cfg.objective == 'dual' and cfg.dual.ar_attention == 'prefix':
    out = out + ('prefix',)
  return out


class Validator:
  """Callable params -> metrics over a fixed list of validation batches."""

  def __init__(self, model, cfg, batches, mesh, bytes_per_token=None):
    self.batches = batches
    self.modes = modes(cfg)
    self.seed = cfg.eval.seed
    self.bytes_per_token = bytes_per_token
    noise = masking.Noise.for_evaluation(cfg.diffusion)
    rep, bsh = sharding.replicated(mesh), sharding.batch_sharding(mesh)
    self._bsh = bsh

    def sums(params, batch, rng):
      out = {}
      if 'ar' in self.modes:
        ar = objectives.ar_terms(model, params, batch, rng, train=False)
        out.update(ar_nll_sum=ar['nll_sum'], ar_tokens=ar['tokens'])
      if 'prefix' in self.modes:
        B, L = batch['targets'].shape
        pre = objectives.ar_terms(model, params, batch, rng, False,
                                  jnp.full((B,), L // 2, jnp.int32))
        out.update(prefix_nll_sum=pre['nll_sum'], prefix_tokens=pre['tokens'])
      if 'mdm' in self.modes:
        _, mask_BxL, w_B, elbo_B = noise.sample(rng, batch['targets'])
        md = objectives.mdm_terms(model, params, batch, mask_BxL, w_B, elbo_B, rng, train=False)
        out.update(mdm_nelbo_sum=md['nelbo_sum'], mdm_tokens=md['tokens'])
      return out

    self._sums = jax.jit(sums, in_shardings=(rep, bsh, rep), out_shardings=rep)

  def __call__(self, params):
    tot = {}
    for i, b in enumerate(self.batches):
      rng = jax.random.fold_in(jax.random.PRNGKey(self.seed), i)
      s = self._sums(params, jax.device_put(b, self._bsh), rng)
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
    return out
