"""Likelihood estimators over padded token rows, shared by `--mode eval`, zero-shot scoring and
the lm-eval adapter.

A row is targets x_0..x_{L-1} (PAD after the text) with a boolean `score` marking the tokens to
score; the unscored rest (a prompt, a passage, a question) is context that stays visible. Every
estimator returns per row an estimate of log p(scored tokens | context) in nats:

  ar            sum_i log p(x_i | x_<i): causal attention, one pass per row.
  nelbo         the continuous-time ELBO (a lower bound): K samples per row with low-discrepancy
                t_k = eps + (1 - eps) ((u + k/K) mod 1), scored tokens masked w.p. 1 - alpha(t_k),
                weight w(t_k) = -alpha'(t_k) / (1 - alpha(t_k)); mean and standard error over k.
                Uniform / hybrid noise (core/family.py): noised scored tokens redrawn from the
                prior, every scored token pays the family's term, plus the reconstruction term
                -log x_hat(x | z_eps) of one more pass per sample.
  chain         the MDM's left-to-right chain rule: for scored token i, it and every scored token
                after it are masked; sum_i log p(x_i | x_<i). `order=` gives any other ordering
                (the any-order chain rule; its average over orderings equals the NELBO's mean).
  pll           pseudo-log-likelihood, one token masked per pass (Salazar et al., 2020).
  pll_word_l2r  the token and the rest of its word to the right masked (Kauf & Ivanova, 2023).
  pll_word      the whole word masked; each of its tokens read from that one pass.
  pll_span      the token and the next span-1 scored tokens masked.
  pll_mix       the mean of pll and pll_word_l2r (single- and multi-token masks combined).
  fused         the mean of pll and ar (bidirectional and causal evidence; same units).

Masked-variant estimators (chain and the pll family) build one (row, input mask, read positions)
variant per forward pass on the host and run them in fixed-size chunks through one compiled
function, so a row's L variants cost L / chunk large passes, never L small ones. Words come from
`tokenizers.word_starts`.
"""
import functools
import hashlib
import math

import jax
import jax.numpy as jnp
import numpy as np

from dlm_jax.core import family
from dlm_jax.core import noise as noise_lib
from dlm_jax.core.model_config import never_predicted
from dlm_jax.core import objectives
from dlm_jax.core import schedules
from dlm_jax.core.kernels import token_ce
from dlm_jax.core.sampling import mdm_infill_greedy
from dlm_jax.data import tokenizers
from dlm_jax.data.tokenizers import PAD

MASKED = ('chain', 'pll', 'pll_word_l2r', 'pll_word', 'pll_span')
ESTIMATORS = objectives.ESTIMATORS
WORD_ESTIMATORS = ('pll_word_l2r', 'pll_word', 'pll_mix')
ESTIMANDS = {
    'ar': 'log p(scored | context): causal chain rule, exact',
    'nelbo': 'a lower bound on log p(scored | context, row length): K-sample continuous-time ELBO',
    'chain': 'log p(scored | context, row length) under the left-to-right unmasking order',
    'pll': 'pseudo-log-likelihood (not a normalised likelihood): one token masked per pass',
    'pll_word_l2r': 'pseudo-log-likelihood, the token and the rest of its word masked',
    'pll_word': 'pseudo-log-likelihood, whole words masked',
    'pll_span': 'pseudo-log-likelihood, the token and the next eval.pll_span - 1 masked',
    'pll_mix': 'mean of pll and pll_word_l2r',
    'fused': 'mean of pll and ar',
}


def _word_ids(starts_L, score_L):
  """Word index per position (-1 where unscored); a word is a run of scored tokens with no start
  inside it."""
  wid = np.cumsum(starts_L | ~score_L) - 1
  return np.where(score_L, wid, -1)


def variants(estimator, score_RxL, word_start_RxL=None, span=2, order_RxL=None):
  """(row_P, mask_PxL, read_PxL): one forward pass per variant. order_RxL: per row, the rank of
  each scored position in the chain-rule ordering (default: left to right)."""
  N, L = score_RxL.shape
  rows, masks, reads = [], [], []
  for n in range(N):
    pos = np.flatnonzero(score_RxL[n])
    if pos.size == 0:
      continue
    if estimator == 'chain':
      rank = np.arange(pos.size) if order_RxL is None else np.argsort(np.argsort(
          order_RxL[n, pos]))
      m = np.zeros((pos.size, L), bool)
      m[:, pos] = rank[None, :] >= rank[:, None]
      r = np.zeros((pos.size, L), bool)
      r[np.arange(pos.size), pos] = True
    elif estimator == 'pll_word':
      wid = _word_ids(word_start_RxL[n], score_RxL[n])
      words = np.unique(wid[pos])
      m = wid[None, :] == words[:, None]
      r = m
    else:
      r = np.zeros((pos.size, L), bool)
      r[np.arange(pos.size), pos] = True
      if estimator == 'pll':
        m = r
      elif estimator == 'pll_span':
        idx = np.arange(L)[None, :]
        m = (idx >= pos[:, None]) & (idx < pos[:, None] + span) & score_RxL[n][None]
      elif estimator == 'pll_word_l2r':
        wid = _word_ids(word_start_RxL[n], score_RxL[n])
        m = (wid[None, :] == wid[pos][:, None]) & (np.arange(L)[None, :] >= pos[:, None])
      else:
        raise ValueError(f'unknown masked estimator {estimator!r}')
    rows.append(np.full(len(m), n))
    masks.append(m)
    reads.append(r)
  if not rows:
    return np.zeros(0, int), np.zeros((0, L), bool), np.zeros((0, L), bool)
  return np.concatenate(rows), np.concatenate(masks), np.concatenate(reads)


def row_keys(seed, targets_RxL, score_RxL):
  """One PRNG key per row from the seed and the row's content (its tokens up to the last
  non-PAD one and its score mask), so a row's Monte Carlo noise is the same whatever rows share
  its batch, in whatever order, and however much padding follows it."""
  keys = []
  for x_L, s_L in zip(targets_RxL, score_RxL):
    n = int(np.max(np.flatnonzero(x_L != tokenizers.PAD), initial=-1)) + 1
    h = hashlib.blake2b(np.ascontiguousarray(x_L[:n], np.int32).tobytes() +
                        np.packbits(s_L[:n]).tobytes(), digest_size=4).digest()
    keys.append(int.from_bytes(h, 'little'))
  base = jax.random.PRNGKey(seed)
  return jax.vmap(lambda h: jax.random.fold_in(base, h))(jnp.asarray(keys, jnp.uint32))


def row_segments(inputs_BxL, targets_BxL, segments):
  """Attention segments of scored rows: positions past a row's last non-PAD target (trailing
  padding, which is batching, not data; the first of them reads the last target) form their own
  segment, so no score depends on how much padding follows; with `segments` (a run trained with
  data.segment_ids) documents are split at visible EOS inputs as in training."""
  n_B = jnp.max(jnp.where(targets_BxL != tokenizers.PAD, jnp.arange(targets_BxL.shape[1]) + 1,
                          0), axis=1)
  inside_BxL = jnp.arange(targets_BxL.shape[1])[None] < n_B[:, None]
  seg_BxL = objectives.input_segments(inputs_BxL) if segments else jnp.zeros_like(inputs_BxL)
  return jnp.where(inside_BxL, seg_BxL, -1)


class Scorer:
  """Per-row log-likelihoods of scored tokens under any estimator, for one model and params.

  Rows are sequences of their own length (trailing PAD is padding: nothing attends to it), so a
  score is the same whatever the padding, the batch company or `chunk`. MDM estimators therefore
  estimate log p(scored | context, the row's length).
  chunk: rows per compiled forward pass (a shorter tail is padded to a power of two, so at most
  log2(chunk) + 1 shapes compile).
  dcfg: the diffusion config (schedule, eps) for `nelbo`; None: linear, eps 1e-3.
  segments: split documents at visible EOS inputs (a run trained with data.segment_ids).
  tokenizer: needed by the word-level estimators."""

  def __init__(self, model, params, *, chunk=64, dcfg=None, nelbo_samples=16, span=2, seed=0,
               tokenizer=None, segments=False):
    self.params, self.chunk, self.K, self.span, self.seed = params, chunk, nelbo_samples, span, seed
    self.tokenizer = tokenizer
    self.schedule = schedules.get_schedule(dcfg.schedule, dcfg) if dcfg else schedules.Linear()
    self.eps = float(dcfg.eps) if dcfg else 1e-3
    self.p = noise_lib.uniform_frac(dcfg) if dcfg else 0.0
    ids_N = family.support_ids(never_predicted(model.cfg, model.cfg.vocab_size))

    def apply(params, targets_BxL, mask_BxL, attention):
      inputs_BxL = objectives.shift_inputs(targets_BxL, mask_BxL)
      logits_BxLxV = model.apply({'params': params}, inputs_BxL, attention, None,
                                 row_segments(inputs_BxL, targets_BxL, segments))
      return -token_ce(logits_BxLxV, targets_BxL), logits_BxLxV

    def causal(params, targets_BxL, read_BxL):
      lp_BxL, logits_BxLxV = apply(params, targets_BxL, None, 'causal')
      greedy_BxL = jnp.argmax(logits_BxLxV, -1) == targets_BxL
      return jnp.sum(jnp.where(read_BxL, lp_BxL, 0.0), -1), jnp.all(greedy_BxL | ~read_BxL, -1)

    def masked(params, targets_BxL, mask_BxL, read_BxL):
      lp_BxL, _ = apply(params, targets_BxL, mask_BxL, 'bidirectional')
      return jnp.sum(jnp.where(read_BxL, lp_BxL, 0.0), -1)

    def denoise(params, targets_BxL, z_BxL):
      inputs_BxL = objectives.shift_inputs(z_BxL)
      return model.apply({'params': params}, inputs_BxL, 'bidirectional', None,
                         row_segments(inputs_BxL, targets_BxL, segments))

    def noised(params, targets_BxL, z_BxL, t_B, read_BxL):
      """-(the family's term summed over the read positions): uniform / hybrid noise."""
      logits_BxLxV = denoise(params, targets_BxL, z_BxL)
      a_B = self.schedule.alpha(t_B)
      da_B = self.schedule.weight(t_B) * self.schedule.mask_prob(t_B)
      n = float(len(ids_N))
      term_BxL = family.token_nelbo(logits_BxLxV, targets_BxL, z_BxL, a_B, da_B,
                                    (1.0 - a_B) * self.p / n, jnp.full_like(a_B, n))
      return -jnp.sum(jnp.where(read_BxL, term_BxL, 0.0), -1)

    def corrupt(keys_N, targets_NxL, mask_NxKxL):
      """z per (row, sample) from the row's own key (after row_noise's draws)."""
      K = mask_NxKxL.shape[1]
      one = lambda key, x_L, m_KxL: family.corrupt(jax.random.fold_in(key, 1), jnp.tile(
          x_L[None], (K, 1)), m_KxL, self.p, ids_N)
      return jax.vmap(one)(keys_N, targets_NxL, mask_NxKxL)

    self._causal = jax.jit(causal)
    self._masked = jax.jit(masked)
    def reconstruct(params, targets_BxL, z_BxL, read_BxL):
      """sum over the read positions of log x_hat(x | z_eps): the reverse process's last step."""
      lp_BxL = -token_ce(denoise(params, targets_BxL, z_BxL), targets_BxL)
      return jnp.sum(jnp.where(read_BxL, lp_BxL, 0.0), -1)

    self._noised = jax.jit(noised)
    self._reconstruct = jax.jit(reconstruct)
    self._corrupt = jax.jit(corrupt)
    self._noise = jax.jit(functools.partial(noise_lib.row_noise, K=self.K, schedule=self.schedule,
                                            eps=self.eps))
    self._model = model

  @classmethod
  def from_config(cls, model, params, cfg, tokenizer=None):
    """A Scorer with the run config's eval.* settings (chunk, NELBO samples, span, seed) and
    diffusion schedule."""
    e = cfg.eval
    return cls(model, params, chunk=e.chunk, dcfg=cfg.diffusion, nelbo_samples=e.nelbo_samples,
               span=e.pll_span, seed=e.seed, tokenizer=tokenizer, segments=cfg.data.segment_ids)

  # -- the passes
  def _chunks(self, fn, *arrays):
    """fn over fixed-size chunks of the leading axis; outputs concatenated (padding dropped)."""
    V = arrays[0].shape[0]
    outs = []
    for s in range(0, V, self.chunk):
      part = [a[s:s + self.chunk] for a in arrays]
      n = part[0].shape[0]
      size = min(self.chunk, 1 << (n - 1).bit_length())  # a short tail: next power of two
      if n < size:
        part = [np.concatenate([p, np.repeat(p[:1], size - n, 0)]) for p in part]
      out = jax.device_get(fn(self.params, *part))
      outs.append(jax.tree_util.tree_map(lambda o: np.asarray(o)[:n], out))
    if not outs:
      return None
    return jax.tree_util.tree_map(lambda *o: np.concatenate(o), *outs)

  def _variant_sum(self, targets_RxL, row_P, mask_PxL, read_PxL):
    N = targets_RxL.shape[0]
    lp = np.zeros(N)
    if row_P.size:
      lp_P = self._chunks(self._masked, targets_RxL[row_P], mask_PxL, read_PxL)
      np.add.at(lp, row_P, lp_P)
    return lp

  # -- the estimators
  def ar(self, targets_RxL, score_RxL):
    """(log p per row, greedy per row: every scored token is the causal argmax)."""
    out = self._chunks(self._causal, targets_RxL, score_RxL)
    if out is None:
      return np.zeros(0), np.zeros(0, bool)
    return out[0].astype(np.float64), out[1]

  def nelbo(self, targets_RxL, score_RxL):
    """(mean over K samples of -NELBO per row, its standard error). The noise is the run's
    (row_noise's masks; uniform / hybrid: redrawn tokens and the reconstruction pass), drawn from
    each row's own key."""
    N, L = targets_RxL.shape
    K = self.K
    keys = row_keys(self.seed, targets_RxL, score_RxL)
    t_RxK, mask_RxKxL, w_RxK = jax.device_get(self._noise(keys, jnp.asarray(score_RxL)))
    row_P = np.repeat(np.arange(N), K)
    mask_PxL = np.asarray(mask_RxKxL).reshape(N * K, L)
    if self.p == 0:
      lp_P = self._chunks(self._masked, targets_RxL[row_P], mask_PxL, mask_PxL)
      elbo_RxK = np.asarray(w_RxK, np.float64) * lp_P.reshape(N, K)
    else:
      z_PxL = np.asarray(self._corrupt(keys, jnp.asarray(targets_RxL), jnp.asarray(mask_RxKxL)),
                         np.int32).reshape(N * K, L)
      t_P = np.asarray(t_RxK, np.float32).reshape(N * K)
      lp_P = self._chunks(self._noised, targets_RxL[row_P], z_PxL, t_P, score_RxL[row_P])
      # the reconstruction term: each sample's own z at t = eps (the row's keys folded apart)
      keys0 = jax.vmap(lambda k: jax.random.fold_in(k, 2))(keys)
      _, m0_RxKxL, _ = jax.device_get(self._noise(keys0, jnp.asarray(score_RxL),
                                                  t_NxK=jnp.full((N, K), self.eps)))
      z0_PxL = np.asarray(self._corrupt(keys0, jnp.asarray(targets_RxL), jnp.asarray(m0_RxKxL)),
                          np.int32).reshape(N * K, L)
      lp0_P = self._chunks(self._reconstruct, targets_RxL[row_P], z0_PxL, score_RxL[row_P])
      elbo_RxK = (lp_P + lp0_P).reshape(N, K).astype(np.float64)
    se = elbo_RxK.std(1, ddof=1) / math.sqrt(K) if K > 1 else np.full(N, np.nan)
    return elbo_RxK.mean(1), se

  def masked(self, estimator, targets_RxL, score_RxL, order_RxL=None):
    starts = None
    if estimator in WORD_ESTIMATORS:
      if self.tokenizer is None:
        raise ValueError(f'estimator {estimator!r} needs the tokenizer (word boundaries)')
      starts = tokenizers.word_starts(self.tokenizer, targets_RxL)
    v = variants(estimator, score_RxL, starts, self.span, order_RxL)
    return self._variant_sum(targets_RxL, *v)

  def __call__(self, estimator, targets_RxL, score_RxL, **kw):
    """dict(logp=N, se=N (nelbo only; else 0), tokens=N) for rows of ids and score masks."""
    targets_RxL = np.asarray(targets_RxL, np.int32)
    score_RxL = np.asarray(score_RxL, bool) & (targets_RxL != tokenizers.PAD)
    se = np.zeros(targets_RxL.shape[0])
    if estimator in MASKED:
      lp = self.masked(estimator, targets_RxL, score_RxL, **kw)
    elif estimator in ESTIMATORS:
      lp, se = getattr(self, f'_estimate_{estimator}')(targets_RxL, score_RxL, se)
    else:
      raise ValueError(f'unknown estimator {estimator!r} (one of {", ".join(ESTIMATORS)})')
    return dict(logp=np.asarray(lp, np.float64), se=se, tokens=score_RxL.sum(1))

  # the estimators that are not one masked variant per pass: (log p, standard error) per row
  def _estimate_ar(self, targets_RxL, score_RxL, se):
    return self.ar(targets_RxL, score_RxL)[0], se

  def _estimate_nelbo(self, targets_RxL, score_RxL, se):
    return self.nelbo(targets_RxL, score_RxL)

  def _estimate_pll_mix(self, targets_RxL, score_RxL, se):
    return 0.5 * (self.masked('pll', targets_RxL, score_RxL) +
                  self.masked('pll_word_l2r', targets_RxL, score_RxL)), se

  def _estimate_fused(self, targets_RxL, score_RxL, se):
    return 0.5 * (self.masked('pll', targets_RxL, score_RxL) +
                  self.ar(targets_RxL, score_RxL)[0]), se

  def greedy(self, mode, targets_RxL, score_RxL):
    """Per row: does greedy decoding with sampler `mode` (core/sampling.py MODES) reproduce the
    scored tokens? 'ar': teacher-forced argmax (exact for greedy decoding); 'mdm': the span
    filled most-confident-first, one per pass."""
    targets_RxL = np.asarray(targets_RxL, np.int32)
    score_RxL = np.asarray(score_RxL, bool)
    return getattr(self, f'_greedy_{mode}')(targets_RxL, score_RxL)

  def _greedy_ar(self, targets_RxL, score_RxL):
    return self.ar(targets_RxL, score_RxL)[1]

  def _greedy_mdm(self, targets_RxL, score_RxL):
    steps = int(score_RxL.sum(1).max()) if score_RxL.size else 0

    def fill(params, x_BxL, fill_BxL):
      pred_BxL = mdm_infill_greedy(self._model, params, x_BxL, fill_BxL, steps)
      return jnp.all((pred_BxL == x_BxL) | ~fill_BxL, -1)
    out = self._chunks(jax.jit(fill), targets_RxL, score_RxL)
    return np.zeros(0, bool) if out is None else out


def per_token(logp_R, tokens_R):
  """Nats per token over rows (a corpus-level average: total nats / total tokens)."""
  return float(-np.sum(logp_R) / max(np.sum(tokens_R), 1))


def bits_per_byte(logp_R, n_bytes):
  return float(-np.sum(logp_R) / max(n_bytes, 1) / math.log(2))


def encode_pair(tok, context, continuation):
  """(context ids, continuation ids) as lm-eval-harness splits them."""
  n = len(context) - len(context.rstrip())
  if n:
    context, continuation = context[:-n], context[-n:] + continuation
  whole, ctx = tok.encode_batch([context + continuation, context])
  whole, ctx = np.asarray(whole), np.asarray(ctx)
  return whole[:len(ctx)], whole[len(ctx):]

def rows(pairs, seq_len):
  """(targets_RxL, score_RxL, rows cut, rows whose continuation was cut) for (context ids,
  continuation ids) pairs. A row longer than seq_len keeps its last seq_len tokens (as
  lm-eval-harness keeps the last max_length + 1): the context is cut from the left first; a
  continuation longer than seq_len keeps only its last seq_len tokens, and only those are scored."""
  N = len(pairs)
  x = np.full((N, seq_len), PAD, np.int32)
  score = np.zeros((N, seq_len), bool)
  cut = cut_cont = 0
  for n, (c, t) in enumerate(pairs):
    ids = np.concatenate([c, t])
    n_t = len(t)
    if len(ids) > seq_len:
      ids, cut = ids[-seq_len:], cut + 1
      if n_t > seq_len:
        n_t, cut_cont = seq_len, cut_cont + 1
    x[n, :len(ids)] = ids
    score[n, len(ids) - n_t:len(ids)] = True
  return x, score, cut, cut_cont
