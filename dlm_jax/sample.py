"""Samplers. For now: AR ancestral sampling (full recompute per token) and the MDM ancestral
sampler on a uniform time grid. KV caching, confidence-based unmasking and guidance: issue 8.
"""
import json
import os

import jax
import jax.numpy as jnp

from dlm_jax import masking
from dlm_jax import objectives
from dlm_jax import sharding
from dlm_jax.data.tokenizers import MASK


def _draw(rng, logits_BxLxV, temperature):
  if temperature == 0:
    return jnp.argmax(logits_BxLxV, -1).astype(jnp.int32)
  return jax.random.categorical(rng, logits_BxLxV / temperature).astype(jnp.int32)


def ar_sample(model, params, rng, num, length, temperature=1.0):
  """x_i ~ p(x_i | x_<i), one full causal forward per token (lax.fori_loop, jit-compiled)."""
  def body(i, carry):
    x_BxL, rng = carry
    rng, sub = jax.random.split(rng)
    logits_BxLxV = model.apply({'params': params}, objectives.shift_inputs(x_BxL), 'causal')
    tok_B = _draw(sub, logits_BxLxV[:, i], temperature)
    return x_BxL.at[:, i].set(tok_B), rng
  x0 = jnp.full((num, length), MASK, jnp.int32)
  return jax.lax.fori_loop(0, length, body, (x0, rng))[0]


def mdm_sample(model, params, rng, num, length, steps, temperature=1.0, schedule=None):
  """Ancestral sampling from t=1 to 0 over `steps` uniform steps: a masked token is revealed
  between t and s < t with probability (alpha_s - alpha_t) / (1 - alpha_t); at s=0 all are."""
  sch = schedule or masking.Linear()

  def body(k, carry):
    x_BxL, rng = carry
    rng, r_tok, r_rev = jax.random.split(rng, 3)
    t = 1.0 - k / steps
    s = 1.0 - (k + 1) / steps
    masked_BxL = x_BxL == MASK
    logits_BxLxV = model.apply({'params': params},
                               objectives.shift_inputs(x_BxL, masked_BxL), 'bidirectional')
    cand_BxL = _draw(r_tok, logits_BxLxV, temperature)
    p_reveal = (sch.alpha(s) - sch.alpha(t)) / (1.0 - sch.alpha(t))
    reveal_BxL = masked_BxL & (jax.random.uniform(r_rev, x_BxL.shape) < p_reveal)
    return jnp.where(reveal_BxL, cand_BxL, x_BxL), rng
  x0 = jnp.full((num, length), MASK, jnp.int32)
  return jax.lax.fori_loop(0, steps, body, (x0, rng))[0]


def mdm_infill_greedy(model, params, x_BxL, fill_BxL, steps: int):
  """Fills the `fill` positions of x one per step, most confident first (argmax), keeping every
  other position fixed; `steps` >= the largest number of positions to fill in a row."""
  x_BxL = jnp.where(fill_BxL, MASK, x_BxL)

  def body(_, x_BxL):
    masked_BxL = x_BxL == MASK
    logits_BxLxV = model.apply({'params': params}, objectives.shift_inputs(x_BxL, masked_BxL),
                               'bidirectional')
    logp_BxLxV = jax.nn.log_softmax(logits_BxLxV)
    best_BxL = jnp.argmax(logp_BxLxV, -1).astype(jnp.int32)
    conf_BxL = jnp.where(masked_BxL, jnp.max(logp_BxLxV, -1), -jnp.inf)
    pos_B = jnp.argmax(conf_BxL, -1)
    any_B = masked_BxL.any(-1)
    rows = jnp.arange(x_BxL.shape[0])
    new = jnp.where(any_B, best_BxL[rows, pos_B], x_BxL[rows, pos_B])
    return x_BxL.at[rows, pos_B].set(new)
  return jax.lax.fori_loop(0, steps, body, x_BxL)


def write_samples(setup, params, workdir):
  """Unconditional samples in each mode the run trains, appended to samples.jsonl."""
  cfg = setup.cfg
  sc = cfg.sample
  if sc.num_samples == 0:
    return []
  length = sc.length or cfg.data.seq_len
  rows = []
  rng = jax.random.PRNGKey(cfg.seed + 7)
  modes = {'ar': ('ar',), 'prefix': ('ar',), 'mdm': ('mdm',),
           'dual': ('ar', 'mdm')}[cfg.objective]
  rep = sharding.replicated(setup.mesh)  # every process gets every sample
  for mode in modes:
    if mode == 'ar':
      fn = jax.jit(lambda p, r: ar_sample(setup.model, p, r, sc.num_samples, length,
                                          sc.temperature), out_shardings=rep)
      settings = dict(mode='ar', temperature=sc.temperature, length=length)
    else:
      fn = jax.jit(lambda p, r: mdm_sample(setup.model, p, r, sc.num_samples, length, sc.steps,
                                           sc.temperature,
                                           masking.get_schedule(cfg.diffusion.schedule,
                                                                cfg.diffusion)),
                   out_shardings=rep)
      settings = dict(mode='mdm', steps=sc.steps, temperature=sc.temperature, length=length)
    toks = jax.device_get(fn(params, rng))
    for row in toks:
      rows.append(dict(settings, prompt='', text=setup.tokenizer.decode(row),
                       tokens=[int(t) for t in row]))
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'samples.jsonl'), 'a', encoding='utf-8') as f:
      for r in rows:
        f.write(json.dumps(r, ensure_ascii=False) + '\n')
  return rows
