"""Block diffusion's attention (BD3-LM, arXiv 2503.09573): the layout of its 2L-long input.

The model reads [noised copy ; clean copy] of the shifted inputs u = [BOS, x_0..x_{L-2}], both
copies at RoPE positions 0..L-1, cut into blocks of `size` positions (position i is in block
i // size). Noised position i of block b attends to the noised positions of block b and to the
clean positions before block b; clean position j of block c attends to the clean positions of
blocks <= c (block-causal, so a finished block's keys and values are a KV cache for the next).
"""
import jax.numpy as jnp
import numpy as np


def block_allowed(L: int, size: int) -> np.ndarray:
  """bool[2L, 2L], True = the query (row) may attend to the key (column)."""
  pos_S = np.arange(2 * L)
  blk_S, clean_S = (pos_S % L) // size, pos_S >= L
  qb, kb = blk_S[:, None], blk_S[None, :]
  qc, kc = clean_S[:, None], clean_S[None, :]
  return ((~qc & ~kc & (qb == kb)) | (~qc & kc & (kb < qb)) | (qc & kc & (kb <= qb)))


def block_positions(L: int) -> np.ndarray:
  """The RoPE positions of the two copies: [0..L-1, 0..L-1]."""
  return np.concatenate([np.arange(L), np.arange(L)])


def cache_allowed(S: int, start, T: int):
  """bool[T, S] for a block of T queries at positions start..start+T-1 over a KV cache of S
  positions: every key before the block's end (the clean blocks before it, and itself whole)."""
  return jnp.broadcast_to(jnp.arange(S)[None, :] < start + T, (T, S))
