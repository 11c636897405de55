"""Sampling kernels for every mode one set of weights trains, and the Sampler that compiles them.

Shifted parameterisation: the model reads u = [BOS, x_0..x_{L-2}] and its logits at position i
predict x_i, in both attention modes.

  AR   x_i ~ p(x_i | x_<i), causal; a KV cache (model.init_cache) holds the keys and values of
       earlier positions, so each token costs one single-position pass. Prompts of different
       lengths share a batch: the prompts are prefilled in one pass, then every row steps in
       lockstep from the shortest prompt, copying its own prompt tokens until it reaches its own
       end; a row stops at EOS. The whole loop is one compiled lax.while_loop.
  MDM  a canvas of [MASK]s (with any positions fixed: a prompt, a suffix, any infilling pattern)
       is revealed from t=1 to t=0 over a grid of T steps (uniform, or cosine: more reveals late):
         ancestral   a masked token is revealed between t and s < t w.p.
                     (alpha_s - alpha_t) / (1 - alpha_t), its value drawn from p(x | z_t)
         confidence  exactly as many tokens as the schedule expects, the most confident first
                     (MaskGIT / LLaDA low-confidence remasking; T = L and temperature 0: one
                     greedy token per step)
       semi-autoregressive blocks (block_size > 0) reveal the canvas block by block, T / blocks
       steps each, later blocks staying masked (but visible) meanwhile. A step that revealed
       nothing leaves the input unchanged, so the next step reuses its logits (MDLM's caching;
       `nfe` counts the passes actually run). A final pass fills any [MASK] left.
  CFG  unsupervised classifier-free guidance (Nie et al., SMDM): log-probabilities
       l = l_u + (1 + w) (l_c - l_u), l_u from the same model with the prompt (every fixed
       position) replaced by [MASK], renormalised per position (so confidence decoding ranks
       positions by the guided distribution, as SMDM and LLaDA do); w = 0 is plain conditional
       sampling.

To add: a strategy, a STRATEGIES name and its branch in mdm_loop's step; a mode, register_mode.
"""
import dataclasses
import functools
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from dlm_jax.core import model as model_lib
from dlm_jax.core import decoding
from dlm_jax.core import noise as noise_lib
from dlm_jax.core import sharding
from dlm_jax.core.family_sampler import family_loop
from dlm_jax.core.inputs import shift_inputs
from dlm_jax.core.decoding import GRIDS, MODES, STRATEGIES, Settings  # noqa: F401
from dlm_jax.core.decoding import draw, filter_logits, sampleable, time_grid  # noqa: F401
from dlm_jax.core.registry import need
from dlm_jax.core.schedules import Linear, get_schedule
from dlm_jax.core.tokens import BOS, EOS, MASK, PAD
from dlm_jax.errors import SampleError


def ar_loop(model, params, rng, x_BxS, plen_B, n, st: Settings):
  """x_BxS: row b's prompt in its first plen_B[b] positions (PAD after). Generates n tokens per
  row at plen_B[b]..plen_B[b]+n-1 (PAD after an EOS); returns (x_BxS, passes)."""
  B, S = x_BxS.shape
  W = S - n  # the prompt buffer
  end_B = plen_B + n
  use_cache = st.kv_cache
  cache = model_lib.init_cache(model.cfg, B, S) if use_cache else None
  if use_cache and W > 0:  # prefill: keys / values of positions 0..W-1 (garbage past a row's
    # prompt is overwritten before any query reads it)
    _, cache = model.apply({'params': params}, shift_inputs(x_BxS)[:, :W], 'causal',
                           cache=cache, cache_pos=0)

  def logits_at(x_BxS, cache, i):
    if use_cache:
      prev_B = jnp.where(i == 0, BOS, jax.lax.dynamic_index_in_dim(x_BxS, jnp.maximum(i - 1, 0),
                                                                   1, keepdims=False))
      logits_Bx1xV, cache = model.apply({'params': params}, prev_B[:, None], 'causal',
                                        cache=cache, cache_pos=i)
      return sampleable(logits_Bx1xV[:, 0]), cache
    logits_BxSxV = model.apply({'params': params}, shift_inputs(x_BxS), 'causal')
    return sampleable(jax.lax.dynamic_index_in_dim(logits_BxSxV, i, 1, keepdims=False)), cache

  def cond(carry):
    i, _, _, done_B, _, _ = carry
    return (i < jnp.max(end_B)) & ~jnp.all(done_B)

  def body(carry):
    i, x_BxS, cache, done_B, rng, passes = carry
    rng, sub = jax.random.split(rng)
    logits_BxV, cache = logits_at(x_BxS, cache, i)
    tok_B = draw(sub, logits_BxV[:, None], st)[:, 0]
    gen_B = (i >= plen_B) & (i < end_B) & ~done_B
    old_B = jax.lax.dynamic_index_in_dim(x_BxS, i, 1, keepdims=False)
    x_BxS = jax.lax.dynamic_update_index_in_dim(x_BxS, jnp.where(gen_B, tok_B, old_B), i, 1)
    if st.stop_at_eos:
      done_B = done_B | (gen_B & (tok_B == EOS))
    done_B = done_B | (i + 1 >= end_B)
    return i + 1, x_BxS, cache, done_B, rng, passes + 1

  init = (jnp.min(plen_B), x_BxS, cache, jnp.zeros(B, bool), rng, jnp.int32(1 if W else 0))
  _, x_BxS, _, _, _, passes = jax.lax.while_loop(cond, body, init)
  return x_BxS, passes


def mdm_loop(model, params, rng, x_BxL, fill_BxL, block_BxL, st: Settings, schedule,
             n_blocks: int, segments: bool, guided: bool):
  """Fills the `fill` positions of x_BxL (others fixed; PAD = outside the sequence when
  `segments`). block_BxL: the semi-AR block of each fill position. Returns (x_BxL, passes)."""
  B, L = x_BxL.shape
  cond_BxL = ~fill_BxL & (x_BxL != PAD)  # the prompt: what guidance removes
  seg_BxL = ((x_BxL != PAD) | fill_BxL).astype(jnp.int32) if segments else None
  x_BxL = jnp.where(fill_BxL, MASK, x_BxL)
  spb = st.steps // n_blocks  # steps per block
  t_G = jnp.asarray(time_grid(st.grid, spb))
  a1 = schedule.alpha(jnp.float32(1.0))
  w = st.guidance
  blocks_J = jnp.arange(n_blocks)
  size_BxJ = jnp.sum(fill_BxL[:, :, None] & (block_BxL[:, :, None] == blocks_J), 1)

  def forward(x_BxL):
    u_BxL = shift_inputs(x_BxL)  # [MASK] stays [MASK]
    if not guided:
      return jax.nn.log_softmax(sampleable(model.apply({'params': params}, u_BxL,
                                                       'bidirectional', None, seg_BxL)))
    u0_BxL = shift_inputs(jnp.where(cond_BxL, MASK, x_BxL))
    seg = None if seg_BxL is None else jnp.concatenate([seg_BxL, seg_BxL])
    lp = jax.nn.log_softmax(sampleable(model.apply(
        {'params': params}, jnp.concatenate([u_BxL, u0_BxL]), 'bidirectional', None, seg)))
    lc_BxLxV, lu_BxLxV = lp[:B], lp[B:]
    # normalised per position: confidence ranks positions by the guided distribution itself
    return jax.nn.log_softmax(lu_BxLxV + (1.0 + w) * (lc_BxLxV - lu_BxLxV))

  def refresh(x_BxL, lp_BxLxV, stale, passes):
    if not st.reuse_logits:
      return forward(x_BxL), passes + 1
    return jax.lax.cond(stale, lambda: (forward(x_BxL), passes + 1), lambda: (lp_BxLxV, passes))

  def body(k, carry):
    x_BxL, lp_BxLxV, stale, rng, passes = carry
    rng, r_tok, r_rev = jax.random.split(rng, 3)
    j, kk = k // spb, k % spb
    t, s = t_G[kk], t_G[kk + 1]
    lp_BxLxV, passes = refresh(x_BxL, lp_BxLxV, stale, passes)
    masked_BxL = x_BxL == MASK
    elig_BxL = masked_BxL & (block_BxL == j)
    cand_BxL = draw(r_tok, lp_BxLxV, st)
    if st.strategy == 'ancestral':
      at, as_ = schedule.alpha(t), schedule.alpha(s)
      p_reveal = jnp.where(s <= 0, 1.0, (as_ - at) / (1.0 - at))
      reveal_BxL = elig_BxL & (jax.random.uniform(r_rev, (B, L)) < p_reveal)
    else:
      conf_BxL = jnp.take_along_axis(lp_BxLxV, cand_BxL[..., None], -1)[..., 0]
      conf_BxL = jnp.where(elig_BxL, conf_BxL, -jnp.inf)
      frac = jnp.where(s <= 0, 0.0, (1.0 - schedule.alpha(s)) / (1.0 - a1))
      # still masked after this step; floor(x + 1/2) (not round-half-even) so that T >= the span
      # reveals at most one token per step
      keep_B = jnp.floor(size_BxJ[:, j] * frac + 0.5).astype(jnp.int32)
      n_B = jnp.maximum(jnp.sum(elig_BxL, 1) - keep_B, 0)
      rank_BxL = jnp.argsort(jnp.argsort(-conf_BxL, axis=1, stable=True), axis=1)
      reveal_BxL = elig_BxL & (rank_BxL < n_B[:, None])
    x_BxL = jnp.where(reveal_BxL, cand_BxL, x_BxL)
    return x_BxL, lp_BxLxV, jnp.any(reveal_BxL), rng, passes

  V = model.cfg.vocab_size
  init = (x_BxL, jnp.zeros((B, L, V), jnp.float32), jnp.bool_(True), rng, jnp.int32(0))
  x_BxL, lp_BxLxV, stale, rng, passes = jax.lax.fori_loop(0, n_blocks * spb, body, init)

  def cleanup():  # the grid reveals everything by t=0; this only guards: never leave a [MASK]
    lp, n = refresh(x_BxL, lp_BxLxV, stale, passes)
    return jnp.where(fill_BxL & (x_BxL == MASK), jnp.argmax(lp, -1).astype(jnp.int32), x_BxL), n
  return jax.lax.cond(jnp.any(fill_BxL & (x_BxL == MASK)), cleanup, lambda: (x_BxL, passes))


def mdm_infill_greedy(model, params, x_BxL, fill_BxL, steps: int):
  """Greedy infilling inside jit: the fill positions revealed most-confident-first at temperature
  0, at most one per step when steps >= the largest span (zero-shot targets, lm-eval). Trailing
  PAD is outside the sequence (its own segment), so the result does not depend on padding."""
  st = Settings(mode='mdm', length=1, steps=steps, strategy='confidence', temperature=0.0)
  block_BxL = jnp.where(fill_BxL, 0, -1)
  return mdm_loop(model, params, jax.random.PRNGKey(0), x_BxL, fill_BxL, block_BxL, st,
                  Linear(), 1, True, False)[0]


class Sampler:
  """Compiles each sampler once per settings and shape for one model; `schedule` is the MDM
  masking schedule (the run's diffusion.schedule); `context` the longest sequence allowed."""

  def __init__(self, model, params, *, context: int, schedule=None, mesh=None, noise_p=0.0):
    """noise_p: the run's uniform share of the prior (noise.uniform_frac; 0: masked)."""
    self.model, self.params, self.context = model, params, context
    self.schedule = schedule or Linear()
    self.noise_p = float(noise_p)
    self.mesh = mesh
    self._fns = {}

  @classmethod
  def from_config(cls, model, params, cfg, mesh=None):
    """The run's sampler: its context, MDM schedule and noise (config.data / diffusion)."""
    return cls(model, params, context=cfg.data.seq_len, mesh=mesh,
               schedule=get_schedule(cfg.diffusion.schedule, cfg.diffusion),
               noise_p=noise_lib.uniform_frac(cfg.diffusion))

  def _jit(self, key, fn):
    if key not in self._fns:
      kw = {}
      if self.mesh is not None:
        kw['out_shardings'] = sharding.replicated(self.mesh)  # every process gets every sample
      self._fns[key] = jax.jit(fn, **kw)
    return self._fns[key]

  def generate(self, rng, prompts, st: Settings, suffixes=None, guided=None):
    """Samples for a batch of prompts (lists of token ids; [] for unconditional).
    suffixes: MDM only, tokens after the generated span (infilling). Returns dict(tokens=[ids
    per row: the generated span], passes=model passes, seconds)."""
    st.check()
    B = len(prompts)
    prompts = [np.asarray(p, np.int32).reshape(-1) for p in prompts]
    suffixes = [np.zeros(0, np.int32)] * B if suffixes is None else [
        np.asarray(s, np.int32).reshape(-1) for s in suffixes]
    if not self.INFILLS[st.mode] and any(len(s) for s in suffixes):
      raise SampleError('suffix (infilling) needs sample.mode=mdm: an AR model only continues')
    for p, s in zip(prompts, suffixes):
      if len(p) + st.length + len(s) > self.context:
        raise SampleError(f'prompt ({len(p)} tokens) + sample.length ({st.length})'
                          f'{f" + suffix ({len(s)})" if len(s) else ""} exceeds the model '
                          f'context of {self.context} tokens')
    plen_B = np.asarray([len(p) for p in prompts], np.int32)
    t0 = time.time()
    out, passes = getattr(self, f'_generate_{st.mode}')(rng, prompts, suffixes, plen_B, st, guided)
    return dict(tokens=out, passes=int(passes), seconds=time.time() - t0)

  INFILLS, SETTINGS = {'ar': False, 'mdm': True}, {}  # infills a span?; cfg -> Settings keys

  @classmethod
  def register_mode(cls, name, generate, infills: bool, settings=lambda cfg: {}):
    """Another module's mode (core/block.py): `generate` is its _generate_<name>."""
    global MODES
    decoding.MODES = MODES = decoding.MODES + (name,)  # Settings.check reads decoding's
    cls.INFILLS[name], cls.SETTINGS[name] = infills, settings
    setattr(cls, f'_generate_{name}', generate)

  def _generate_ar(self, rng, prompts, suffixes, plen_B, st, guided):
    B = len(prompts)
    W = int(plen_B.max()) if B else 0
    x_BxS = np.full((B, W + st.length), PAD, np.int32)
    for b, p in enumerate(prompts):
      x_BxS[b, :len(p)] = p
    fn = self._jit(('ar', st), functools.partial(ar_loop, self.model, n=st.length, st=st))
    x, passes = jax.device_get(fn(self.params, rng, x_BxS, plen_B))
    out = [x[b, plen_B[b]:plen_B[b] + st.length] for b in range(B)]
    return [o[:np.flatnonzero(o == PAD)[0]] if (o == PAD).any() else o for o in out], passes

  def _generate_mdm(self, rng, prompts, suffixes, plen_B, st, guided):
    B = len(prompts)
    tot = [len(p) + st.length + len(s) for p, s in zip(prompts, suffixes)]
    L = max(tot)
    x_BxL = np.full((B, L), PAD, np.int32)
    fill_BxL = np.zeros((B, L), bool)
    for b, (p, s) in enumerate(zip(prompts, suffixes)):
      x_BxL[b, :len(p)] = p
      fill_BxL[b, len(p):len(p) + st.length] = True
      x_BxL[b, len(p) + st.length:tot[b]] = s
    x, passes = self.infill(rng, x_BxL, fill_BxL, st, guided)
    return [x[b, plen_B[b]:plen_B[b] + st.length] for b in range(B)], passes

  def infill(self, rng, x_BxL, fill_BxL, st: Settings, guided=None):
    """MDM: (x with the fill positions sampled, passes). Rows are x_BxL's (PAD marks the end of
    a shorter row); every position outside fill_BxL is kept."""
    x_BxL, fill_BxL = np.asarray(x_BxL, np.int32), np.asarray(fill_BxL, bool)
    sizes = fill_BxL.sum(1)
    if st.block_size:
      n_blocks = max(1, math.ceil(int(sizes.max(initial=0)) / st.block_size))
      rank_BxL = np.cumsum(fill_BxL, 1) - 1
      block_BxL = np.where(fill_BxL, rank_BxL // st.block_size, -1)
    else:
      n_blocks, block_BxL = 1, np.where(fill_BxL, 0, -1)
    if st.steps % n_blocks:
      raise SampleError(f'sample.steps: T={st.steps} must be a multiple of the number of '
                        f'semi-autoregressive blocks ({n_blocks} = ceil({int(sizes.max())} / '
                        f'block_size {st.block_size}))')
    guided = st.guidance != 0 if guided is None else guided
    segments = bool(((x_BxL == PAD) & ~fill_BxL).any())
    if self.noise_p > 0:
      check_family(st, self.noise_p)
      fn = self._jit(('family', st, segments, guided), functools.partial(
          family_loop, self.model, st=st, schedule=self.schedule, p=self.noise_p,
          segments=segments, guided=guided))
      x, passes = jax.device_get(fn(self.params, rng, x_BxL, fill_BxL))
      return np.asarray(x), int(passes)
    fn = self._jit(('mdm', st, n_blocks, segments, guided), functools.partial(
        mdm_loop, self.model, st=st, schedule=self.schedule, n_blocks=n_blocks,
        segments=segments, guided=guided))
    x, passes = jax.device_get(fn(self.params, rng, x_BxL, fill_BxL, block_BxL.astype(np.int32)))
    return np.asarray(x), int(passes)


def check_family(st: Settings, p: float):
  """What the family's reverse process does not define: confidence decoding only unmasks, semi-AR
  blocks keep later tokens masked, and with p = 1 (uniform noise) there is no [MASK] to hide the
  prompt behind, so no null prompt for guidance."""
  noise = 'uniform' if p == 1 else 'hybrid'
  need(st.strategy == 'ancestral', 'sample.strategy',
       f'{st.strategy} only unmasks; under diffusion.noise={noise} tokens are also corrected: '
       'use ancestral')
  need(st.block_size == 0, 'sample.block_size',
       f'semi-autoregressive blocks are defined for masked noise only, not {noise}')
  need(p < 1 or st.guidance == 0, 'sample.guidance',
       'uniform noise never shows [MASK], so there is no null prompt to guide against (hybrid '
       'and masked noise have one)')


def settings_from_config(cfg, mode):
  """Settings for `mode` from the sample.* keys of the same names; length 0 is the context,
  guidance applies to MDM (and is an error for sample.mode ar, not silently dropped)."""
  sc = cfg.sample
  keys = {f.name: sc[f.name] for f in dataclasses.fields(Settings) if f.name in sc}
  keys.update(mode=mode, length=sc.length or cfg.data.seq_len,
              guidance=sc.guidance if mode == 'mdm' or sc.mode == 'ar' else 0.0,
              **Sampler.SETTINGS.get(mode, lambda cfg: {})(cfg))
  return Settings(**keys)


def defaults() -> dict:
  """config.sample (sample.py; at the end of training and --mode sample): Settings' keys and
  defaults, but mode and length, plus which prompts, how many and how they are batched."""
  return dict(
      dataclasses.asdict(Settings()),
      num_samples=4,           # samples per mode (with prompts: the first N prompts; 0: all)
      mode='auto',             # auto: every mode the objective trains | ar | mdm | both
      length=0,                # new tokens per sample; 0: data.seq_len
      prompts='',              # '' unconditional | data:N (first N tokens of validation windows)
                               # | a .txt (a prompt per line) | a .jsonl ({"prompt", "suffix"})
      batch_size=16,           # prompts per compiled sampling call
      scorer='',               # generative perplexity: an AR-capable run dir; '': this run unless
                               # it is MDM-only; 'none': off (--mode sample only)
      seed=0)                  # --mode sample


def check_prompts(spec):
  """sample.prompts: '', data:N with N >= 1, or an existing file (checked before training)."""
  if spec.startswith('data:'):
    need(spec[5:].isdigit() and int(spec[5:]) >= 1, 'sample.prompts',
         f'{spec!r}: data:N needs a whole number of tokens N >= 1')
  elif spec:
    need(os.path.isfile(spec), 'sample.prompts', f'file not found: {spec}')


def check_config(cfg):
  """The sample.* keys: raises ConfigError naming sample.prompts / num_samples / batch_size /
  length, else SampleError naming the key (config.validate runs it)."""
  sc = cfg.sample
  need(sc.num_samples >= 0, 'sample.num_samples', 'must be >= 0')
  need(sc.batch_size >= 1, 'sample.batch_size', 'must be >= 1')
  need(0 <= sc.length <= cfg.data.seq_len, 'sample.length', 'must be in [0, data.seq_len]')
  if cfg.sample.mode not in ('auto', 'both') + MODES:
    raise SampleError(f'sample.mode: {cfg.sample.mode!r} is not one of auto, both, {MODES}')
  for mode in MODES:  # the checks of every mode, whichever the run samples with
    settings_from_config(cfg, mode).check()
  if not noise_lib.masked(cfg.diffusion):
    check_family(settings_from_config(cfg, 'mdm'), noise_lib.uniform_frac(cfg.diffusion))
