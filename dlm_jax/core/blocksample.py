"""sample.mode=block: block diffusion's sampler (core/block.py trains it), block by block with a
KV cache.

The canvas is cut into blocks of L' = block.size positions from position 0. For each block with
positions to fill: sample.steps masked-diffusion steps (ancestral or confidence, as MDM's
sampler, core/sampling.py) over that block's positions, each a pass over the block alone that
attends to the cached keys and values of the finished blocks before it (the clean copy of
training, core/blockattn.py); then one pass over the finished block writes its clean keys and
values into the cache. kv_cache=False recomputes the whole prefix each step instead, with the
training-time [noised ; clean] layout (the reference the cache is tested against).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from dlm_jax.core import model as model_lib
from dlm_jax.core.inputs import shift_inputs
from dlm_jax.core.sampling import draw, sampleable, time_grid
from dlm_jax.core.tokens import MASK, PAD
from dlm_jax.errors import SampleError


def block_loop(model, params, rng, x_BxS, fill_BxS, st, schedule, size: int):
  """Fills the fill positions of x_BxS (S a multiple of size; others fixed). Returns
  (x_BxS, passes)."""
  B, S = x_BxS.shape
  x_BxS = jnp.where(fill_BxS, MASK, x_BxS)
  T = st.steps
  t_G = jnp.asarray(time_grid(st.grid, T))
  a1 = schedule.alpha(jnp.float32(1.0))
  use_cache = st.kv_cache
  cache = model_lib.init_cache(model.cfg, B, S) if use_cache else None

  def block_in(x_BxS, j):
    return jax.lax.dynamic_slice_in_dim(shift_inputs(x_BxS), j * size, size, 1)

  def forward(x_BxS, cache, j):
    """Log-probabilities of block j's positions, B x size x V."""
    if use_cache:
      logits, _ = model.apply({'params': params}, block_in(x_BxS, j), 'block', cache=cache,
                              cache_pos=j * size)
    else:
      u_BxS = shift_inputs(x_BxS)  # block j reads the clean copy of blocks < j only
      logits = jax.lax.dynamic_slice_in_dim(model.apply(
          {'params': params}, jnp.concatenate([u_BxS, u_BxS], 1), 'block', block_size=size),
                                            j * size, size, 1)
    return jax.nn.log_softmax(sampleable(logits))

  def denoise(j, x_BxS, cache, rng, passes):
    fill_BxL = jax.lax.dynamic_slice_in_dim(fill_BxS, j * size, size, 1)
    n_fill_B = jnp.sum(fill_BxL, 1)

    def step(k, carry):
      x_BxS, lp_BxLxV, stale, rng, passes = carry
      rng, r_tok, r_rev = jax.random.split(rng, 3)
      t, s = t_G[k], t_G[k + 1]
      if st.reuse_logits:
        lp_BxLxV, passes = jax.lax.cond(stale, lambda: (forward(x_BxS, cache, j), passes + 1),
                                        lambda: (lp_BxLxV, passes))
      else:
        lp_BxLxV, passes = forward(x_BxS, cache, j), passes + 1
      x_BxL = jax.lax.dynamic_slice_in_dim(x_BxS, j * size, size, 1)
      elig_BxL = x_BxL == MASK
      cand_BxL = draw(r_tok, lp_BxLxV, st)
      if st.strategy == 'ancestral':
        at, as_ = schedule.alpha(t), schedule.alpha(s)
        p_reveal = jnp.where(s <= 0, 1.0, (as_ - at) / (1.0 - at))
        reveal_BxL = elig_BxL & (jax.random.uniform(r_rev, elig_BxL.shape) < p_reveal)
      else:  # confidence: as many as the schedule expects, the most confident first
        conf_BxL = jnp.take_along_axis(lp_BxLxV, cand_BxL[..., None], -1)[..., 0]
        conf_BxL = jnp.where(elig_BxL, conf_BxL, -jnp.inf)
        frac = jnp.where(s <= 0, 0.0, (1.0 - schedule.alpha(s)) / (1.0 - a1))
        keep_B = jnp.floor(n_fill_B * frac + 0.5).astype(jnp.int32)
        n_B = jnp.maximum(jnp.sum(elig_BxL, 1) - keep_B, 0)
        rank_BxL = jnp.argsort(jnp.argsort(-conf_BxL, axis=1, stable=True), axis=1)
        reveal_BxL = elig_BxL & (rank_BxL < n_B[:, None])
      x_BxL = jnp.where(reveal_BxL, cand_BxL, x_BxL)
      x_BxS = jax.lax.dynamic_update_slice_in_dim(x_BxS, x_BxL, j * size, 1)
      return x_BxS, lp_BxLxV, jnp.any(reveal_BxL), rng, passes

    V = model.cfg.vocab_size
    init = (x_BxS, jnp.zeros((B, size, V), jnp.float32), jnp.bool_(True), rng, passes)
    x_BxS, _, _, _, passes = jax.lax.fori_loop(0, T, step, init)
    return x_BxS, passes

  def body(j, carry):
    x_BxS, cache, rng, passes = carry
    rng, sub = jax.random.split(rng)
    todo = jnp.any(jax.lax.dynamic_slice_in_dim(fill_BxS, j * size, size, 1))
    x_BxS, passes = jax.lax.cond(todo, lambda: denoise(j, x_BxS, cache, sub, passes),
                                 lambda: (x_BxS, passes))
    if use_cache:  # the finished block's clean keys and values (the grid reveals every position)
      _, cache = model.apply({'params': params}, block_in(x_BxS, j), 'block', cache=cache,
                             cache_pos=j * size)
      passes = passes + 1
    return x_BxS, cache, rng, passes

  x_BxS, _, _, passes = jax.lax.fori_loop(0, S // size, body, (x_BxS, cache, rng, jnp.int32(0)))
  return x_BxS, passes


def generate(self, rng, prompts, suffixes, plen_B, st, guided):
  """Sampler._generate_block: each row's prompt, then positions up to the end of the block
  holding its last new token (the block is generated whole); returns its st.length new tokens."""
  del suffixes, guided  # a block sampler only continues (no infilling, no guidance)
  size, B = st.block_size, len(prompts)
  if size < 1:
    raise SampleError('sample.mode=block needs block.size >= 1')
  S = -(-int(max(plen_B + st.length)) // size) * size
  if S > self.context:
    raise SampleError(f'sample.mode=block: the last block ends at {S}, past the model context of '
                      f'{self.context} tokens (make block.size divide data.seq_len)')
  x_BxS = np.full((B, S), PAD, np.int32)
  fill_BxS = np.zeros((B, S), bool)
  for b, p in enumerate(prompts):
    x_BxS[b, :len(p)] = p
    fill_BxS[b, len(p):] = True
  fn = self._jit(('block', st, S), functools.partial(
      block_loop, self.model, st=st, schedule=self.schedule, size=size))
  x, passes = jax.device_get(fn(self.params, rng, x_BxS, fill_BxS))
  return [np.asarray(x[b, plen_B[b]:plen_B[b] + st.length]) for b in range(B)], passes
