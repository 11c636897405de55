"""Likelihood estimators: batched variants equal brute force; NELBO equals the any-order average."""
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from dlm_jax import config as config_lib
from dlm_jax.core import model as model_lib
from dlm_jax.core import objectives
from dlm_jax.data import tokenizers
from dlm_jax.data.tokenizers import MASK, PAD
from dlm_jax.infer import likelihood


@pytest.fixture(scope='module')
def tiny_model():
  """A random byte-level model with its weights scaled up, so its conditionals depend strongly on
  the context (a freshly initialised model is nearly uniform and would hide index errors)."""
  c = config_lib.base().model
  c.d_model, c.num_layers, c.num_heads, c.vocab_size, c.mlp_dim = 32, 2, 2, 260, 64
  model, params = model_lib.init_params(c, jax.random.PRNGKey(0), 16)
  params = jax.tree_util.tree_map(lambda p: p * 6.0, params)
  return model, params


def _rows(tok, texts, L):
  ids = [np.asarray(x) for x in tok.encode_batch(texts)]
  return np.stack([np.pad(x, (0, L - len(x)), constant_values=PAD) for x in ids]).astype(np.int32)


_JIT = {}


def _logp(model, params, inputs_1xL, attention, n=None):
  """One plain forward pass of one row (the brute-force reference), on the row's first n
  positions only: a row is a sequence of its own length, trailing padding is not part of it."""
  key = (id(model), attention)
  if key not in _JIT:
    _JIT[key] = jax.jit(lambda p, x: jax.nn.log_softmax(model.apply({'params': p}, x,
                                                                    attention))[0])
  x = jnp.asarray(inputs_1xL)[:, :n]
  out = np.full((inputs_1xL.shape[1], 260), np.nan)
  out[:x.shape[1]] = np.asarray(_JIT[key](params, x), np.float64)
  return out


def _len(x_L):
  """A row's length: up to its last non-PAD token."""
  return int(np.flatnonzero(np.asarray(x_L) != PAD).max()) + 1


def test_batched_pll_equals_one_pass_per_position(tiny_model):
  model, params = tiny_model
  tok = tokenizers.get_tokenizer('byte')
  x = _rows(tok, ['a cat sat', 'on the mat!'], 16)
  score = x != PAD
  score[0, :2] = False  # context
  sc = likelihood.Scorer(model, params, chunk=5, tokenizer=tok)
  got = sc('pll', x, score)['logp']
  want = np.zeros(2)
  for n in range(2):
    for i in np.flatnonzero(score[n]):
      m = np.zeros((1, 16), bool)
      m[0, i] = True
      inp = objectives.shift_inputs(jnp.asarray(x[n:n + 1]), jnp.asarray(m))
      want[n] += _logp(model, params, inp, 'bidirectional', _len(x[n]))[i, x[n, i]]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
  # the model is far from uniform, so a misaligned read position would not pass
  assert abs(got[0] / score[0].sum() + math.log(256)) > 0.5


def test_chain_rule_equals_product_of_conditionals(tiny_model):
  model, params = tiny_model
  tok = tokenizers.get_tokenizer('byte')
  x = _rows(tok, ['to be or not'], 16)
  score = x != PAD
  score[0, :3] = False
  got = likelihood.Scorer(model, params, chunk=4)('chain', x, score)['logp'][0]
  want, pos = 0.0, np.flatnonzero(score[0])
  for i in pos:  # log p(x_i | x_<i, context), later scored tokens masked
    m = np.zeros((1, 16), bool)
    m[0, pos[pos >= i]] = True
    inp = objectives.shift_inputs(jnp.asarray(x), jnp.asarray(m))
    want += _logp(model, params, inp, 'bidirectional', _len(x[0]))[i, x[0, i]]
  assert got == pytest.approx(want, rel=1e-5)
  ident = likelihood.Scorer(model, params, chunk=4)(
      'chain', x, score, order_RxL=np.tile(np.arange(16), (1, 1)))['logp'][0]
  assert ident == pytest.approx(got, rel=1e-6)


def _any_order_average(sc, x, score):
  pos = np.flatnonzero(score[0])
  tot, n = 0.0, 0
  for perm in itertools.permutations(range(len(pos))):
    order = np.zeros((1, x.shape[1]), int)
    order[0, pos] = np.argsort(perm)  # position pos[perm[k]] is revealed k-th
    tot += sc('chain', x, score, order_RxL=order)['logp'][0]
    n += 1
  return tot / n


def _exact_truncated_nelbo(model, params, x, score, eps):
  """E_{t ~ U[eps, 1]} [ (1/t) sum_{i in S} log p(x_i | x_S masked) ], S ~ Bernoulli(t), by
  enumerating every mask S and integrating t exactly (incomplete beta functions)."""
  pos = np.flatnonzero(score[0])
  n, total = len(pos), 0.0
  for k in range(1, n + 1):
    a, b = k, n - k + 1
    coef = special.beta(a, b) * (1.0 - special.betainc(a, b, eps)) / (1.0 - eps)
    for S in itertools.combinations(pos, k):
      m = np.zeros((1, x.shape[1]), bool)
      m[0, list(S)] = True
      lp = _logp(model, params, objectives.shift_inputs(jnp.asarray(x), jnp.asarray(m)),
                 'bidirectional', _len(x[0]))
      total += coef * sum(lp[i, x[0, i]] for i in S)
  return total


def test_nelbo_matches_any_order_chain_rule_average(tiny_model):
  model, params = tiny_model
  tok = tokenizers.get_tokenizer('byte')
  x = _rows(tok, ['xyzw'], 8)
  score = x != PAD
  score[0, 0] = False  # one context token, four scored
  sc = likelihood.Scorer(model, params, chunk=64)
  any_order = _any_order_average(sc, x, score)
  exact = _exact_truncated_nelbo(model, params, x, score, 1e-3)
  # the NELBO of a time-independent MDM is the any-order average (up to the [0, eps] truncation)
  assert exact == pytest.approx(any_order, rel=2e-3)
  # the left-to-right chain rule is one term of that average, not the average itself
  l2r = sc('chain', x, score)['logp'][0]
  assert abs(l2r - any_order) > 1e-3
  K = 4096
  mc = likelihood.Scorer(model, params, chunk=512, nelbo_samples=K, seed=3)('nelbo', x, score)
  mean, se = mc['logp'][0], mc['se'][0]
  assert se > 0
  assert abs(mean - exact) < 3 * se, (mean, exact, se)


def test_ar_estimator_equals_training_objective(tiny_model):
  model, params = tiny_model
  tok = tokenizers.get_tokenizer('byte')
  x = _rows(tok, ['hello world', 'abc'], 16)
  got = likelihood.Scorer(model, params, chunk=3)('ar', x, x != PAD)
  terms = objectives.ar_terms(model, params, {'targets': jnp.asarray(x)}, None, train=False)
  assert -got['logp'].sum() == pytest.approx(float(terms['nll_sum']), rel=1e-5)
  assert got['tokens'].sum() == int(terms['tokens'])


def test_chunk_size_and_batch_company_do_not_change_scores(tiny_model):
  model, params = tiny_model
  tok = tokenizers.get_tokenizer('byte')
  x = _rows(tok, ['one two', 'three four five', 'six'], 16)
  sc7 = likelihood.Scorer(model, params, chunk=7, tokenizer=tok)
  sc64 = likelihood.Scorer(model, params, chunk=64, tokenizer=tok)
  for est in ('pll', 'pll_word_l2r', 'pll_word', 'pll_span', 'chain', 'fused', 'pll_mix'):
    a = sc7(est, x, x != PAD)['logp']
    b = sc64(est, x[1:2], x[1:2] != PAD)['logp']
    assert a[1] == pytest.approx(b[0], rel=1e-5), est


def test_variants_masks_words_and_spans():
  score = np.array([[False, True, True, True, True, False]])
  starts = np.array([[True, True, False, True, False, True]])  # words: [1,2] [3,4]
  _, m, r = likelihood.variants('pll_word_l2r', score, starts)
  np.testing.assert_array_equal(m.astype(int), [[0, 1, 1, 0, 0, 0], [0, 0, 1, 0, 0, 0],
                                                [0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 1, 0]])
  np.testing.assert_array_equal(r.argmax(1), [1, 2, 3, 4])
  _, m, r = likelihood.variants('pll_word', score, starts)
  np.testing.assert_array_equal(m.astype(int), [[0, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 0]])
  np.testing.assert_array_equal(r, m)
  _, m, _ = likelihood.variants('pll_span', score, span=3)
  np.testing.assert_array_equal(m.astype(int)[2:], [[0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 1, 0]])
  _, m, _ = likelihood.variants('chain', score)
  np.testing.assert_array_equal(m.sum(1), [4, 3, 2, 1])
  assert MASK not in (0, 1)  # ids used above are positions, not tokens


def test_greedy_matches_argmax(tiny_model):
  model, params = tiny_model
  tok = tokenizers.get_tokenizer('byte')
  x = _rows(tok, ['abcdef'], 16)
  sc = likelihood.Scorer(model, params, chunk=4)
  lp = _logp(model, params, objectives.shift_inputs(jnp.asarray(x)), 'causal')
  pred = lp.argmax(-1)
  x_greedy = x.copy()
  x_greedy[0, 3] = pred[3]  # make position 3 the argmax given its prefix
  score = np.zeros_like(x, bool)
  score[0, 3] = True
  assert sc.greedy('ar', x_greedy, score)[0]
  x_bad = x_greedy.copy()
  x_bad[0, 3] = (pred[3] + 1 - 4) % 256 + 4
  assert not sc.greedy('ar', x_bad, score)[0]


def test_unknown_estimator_and_missing_tokenizer(tiny_model):
  model, params = tiny_model
  x = np.full((1, 8), 10, np.int32)
  with pytest.raises(ValueError, match='unknown estimator'):
    likelihood.Scorer(model, params)('bogus', x, x > 0)
  with pytest.raises(ValueError, match='needs the tokenizer'):
    likelihood.Scorer(model, params)('pll_word', x, x > 0)


def test_bench_eval_reports_every_estimator(tiny):
  """`python -m dlm_jax.bench eval` runs each estimator on real validation windows."""
  from dlm_jax.study import perf as bench
  cfg = tiny('dual')
  cfg.data.tokenizer = 'byte'
  cfg.eval.chunk = 16
  out = bench.bench_eval(cfg, 2, ['ar', 'nelbo', 'pll'])
  assert [r['estimator'] for r in out] == ['ar', 'nelbo', 'pll']
  assert all(r['rows'] == 2 and r['seqs_per_s'] > 0 for r in out)
