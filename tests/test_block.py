"""Block diffusion (core/block.py, core/blockattn.py, core/blocksample.py): its attention against
the rule in words, its two ends (L' = 1 is AR, L' = L is MDM), its sampler with and without the
KV cache, its config refusals, and a run end to end."""
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from test_estimands import letters_corpus
from dlm_jax import config as config_lib
from dlm_jax.core import block
from dlm_jax.core import blockattn
from dlm_jax.core import losses
from dlm_jax.core import model as model_lib
from dlm_jax.core import noise as noise_lib
from dlm_jax.core import objectives
from dlm_jax.core import sampling
from dlm_jax.core.inputs import shift_inputs
from dlm_jax.errors import ConfigError
from dlm_jax.run import loop
from dlm_jax.run import validate

L, V = 12, 40


@pytest.fixture(scope='module')
def tiny_model():
  c = config_lib.base()
  c.model.update(dict(d_model=32, num_layers=2, num_heads=2, vocab_size=V))
  model, params = model_lib.init_params(c.model, jax.random.PRNGKey(0), L)
  return c, model, params


def targets(B=3, seed=1):
  return jax.random.randint(jax.random.PRNGKey(seed), (B, L), 4, V)


@pytest.mark.parametrize('n,size', [(6, 1), (6, 2), (6, 3), (6, 6), (8, 4)])
def test_attention_matches_the_rule(n, size):
  """Noised i (block b) sees noised block b and clean j < start(b); clean j (block c) sees clean
  blocks <= c; nothing else."""
  want = np.zeros((2 * n, 2 * n), bool)
  for q in range(2 * n):
    for k in range(2 * n):
      qb, kb = (q % n) // size, (k % n) // size
      if q < n and k < n:
        want[q, k] = qb == kb
      elif q < n:
        want[q, k] = (k - n) < qb * size
      elif k >= n:
        want[q, k] = kb <= qb
  np.testing.assert_array_equal(blockattn.block_allowed(n, size), want)
  np.testing.assert_array_equal(blockattn.block_positions(n), list(range(n)) * 2)


def test_block_of_one_is_ar(tiny_model):
  """L' = 1: the noised half's logits are the causal logits of the same params; each target's
  NELBO weight times its mask probability integrates to exactly 1 over t ~ U(eps, 1) (linear
  schedule), and the sums are linear in the mask and weights with the AR per-token CE, so the
  block NELBO's expectation is the AR NLL."""
  c, model, params = tiny_model
  x_BxL = targets()
  mask_BxL = jax.random.bernoulli(jax.random.PRNGKey(2), 0.5, x_BxL.shape)
  ar_BxLxV = model.apply({'params': params}, shift_inputs(x_BxL), 'causal')
  b_BxLxV = block.block_logits(model, params, x_BxL, mask_BxL, 1)
  np.testing.assert_allclose(b_BxLxV, ar_BxLxV, atol=2e-6, rtol=0)
  assert np.abs(b_BxLxV - ar_BxLxV).max() < 1e-5
  # E[elbo(t) 1{masked}] = (1 / (1 - eps)) int_eps^1 w(t) (1 - alpha(t)) dt, Gauss-Legendre
  noise = noise_lib.Noise(c.diffusion)
  xq, wq = np.polynomial.legendre.leggauss(40)
  eps = c.diffusion.eps
  t = jnp.asarray(eps + (1 - eps) * (xq + 1) / 2, jnp.float32)
  integral = float(np.sum(wq / 2 * np.asarray(noise.schedule.weight(t) *
                                               noise.schedule.mask_prob(t))))
  assert integral == pytest.approx(1.0, abs=1e-6)
  # the sums with the real draw: sum over masked targets of the block's weight times AR's CE
  mask_BxL, w_BxJ, elbo_BxJ = block.draw_noise(noise, jax.random.PRNGKey(3), x_BxL, 1)
  t_ = block.block_terms(model, params, dict(targets=x_BxL), mask_BxL, w_BxJ, elbo_BxJ, 1)
  ce_BxL = losses.token_ce(ar_BxLxV, x_BxL)
  assert float(t_['nelbo_sum']) == pytest.approx(float(jnp.sum(elbo_BxJ * mask_BxL * ce_BxL)),
                                                 rel=1e-5)
  ar = losses.ar_terms(model, params, dict(targets=x_BxL), None, train=False)
  ones = jnp.ones(x_BxL.shape)
  full = block.block_terms(model, params, dict(targets=x_BxL), ones.astype(bool), ones, ones, 1)
  assert float(full['nelbo_sum']) == pytest.approx(float(ar['nll_sum']), rel=1e-5)
  assert float(full['tokens']) == float(ar['tokens']) == x_BxL.size


def test_block_of_L_is_mdm(tiny_model):
  """L' = L: the same noise gives the MDM sums of the same params (bidirectional logits)."""
  c, model, params = tiny_model
  x_BxL = targets(B=4)
  noise = noise_lib.Noise(c.diffusion)
  mask_BxL, w_BxJ, elbo_BxJ = block.draw_noise(noise, jax.random.PRNGKey(5), x_BxL, L)
  _, mask2, w2, elbo2 = noise.sample(jax.random.PRNGKey(5), x_BxL)
  np.testing.assert_array_equal(mask_BxL, mask2)  # one block per row: MDM's own draw
  np.testing.assert_array_equal(w_BxJ[:, 0], w2)
  b = block.block_terms(model, params, dict(targets=x_BxL), mask_BxL, w_BxJ, elbo_BxJ, L)
  m = losses.mdm_terms(model, params, dict(targets=x_BxL), mask2, w2, elbo2, None, train=False)
  for k in ('loss_sum', 'nelbo_sum', 'tokens', 'masked'):
    assert float(b[k]) == pytest.approx(float(m[k]), rel=1e-5), k
  md_BxLxV = model.apply({'params': params}, shift_inputs(x_BxL, mask_BxL), 'bidirectional')
  np.testing.assert_allclose(block.block_logits(model, params, x_BxL, mask_BxL, L), md_BxLxV,
                             atol=2e-6, rtol=0)


def test_a_block_sees_only_its_past(tiny_model):
  """Changing the targets of later blocks, or the noise of other blocks, leaves block b's
  logits unchanged; changing the last target of block b - 1 changes them."""
  _, model, params = tiny_model
  x_BxL, size, b = targets(B=2), 3, 1
  mask_BxL = jax.random.bernoulli(jax.random.PRNGKey(2), 0.5, x_BxL.shape)
  base = block.block_logits(model, params, x_BxL, mask_BxL, size)[:, b * size:(b + 1) * size]
  later = x_BxL.at[:, (b + 1) * size:].set(7)
  other = mask_BxL.at[:, :b * size].set(True).at[:, (b + 1) * size:].set(False)
  for x2, m2 in ((later, mask_BxL), (x_BxL, other)):
    got = block.block_logits(model, params, x2, m2, size)[:, b * size:(b + 1) * size]
    np.testing.assert_array_equal(got, base)
  prev = x_BxL.at[:, b * size - 1].set(5 + x_BxL[:, b * size - 1] % 7)
  got = block.block_logits(model, params, prev, mask_BxL, size)[:, b * size:(b + 1) * size]
  assert np.abs(got - base).max() > 1e-4


@pytest.mark.parametrize('strategy', ['ancestral', 'confidence'])
def test_cache_equals_recompute(tiny_model, strategy):
  """Temperature 0: the KV-cache sampler gives what recomputing the whole prefix gives, with
  prompts of different lengths (ending mid-block)."""
  _, model, params = tiny_model
  sampler = sampling.Sampler(model, params, context=L)
  prompts = [[5, 6, 7, 8, 9], [11], []]
  outs = {}
  for cache in (True, False):
    st = sampling.Settings(mode='block', length=6, steps=3, block_size=3, temperature=0.0,
                           strategy=strategy, kv_cache=cache, stop_at_eos=False)
    outs[cache] = sampler.generate(jax.random.PRNGKey(0), prompts, st)
  for a, b in zip(outs[True]['tokens'], outs[False]['tokens']):
    assert len(a) == 6
    np.testing.assert_array_equal(a, b)


def test_block_of_one_samples_greedy_ar(tiny_model):
  """L' = 1 at temperature 0 is greedy AR decoding."""
  _, model, params = tiny_model
  sampler = sampling.Sampler(model, params, context=L)
  prompts = [[5, 6, 7], [11], []]
  kw = dict(length=8, temperature=0.0, stop_at_eos=False)
  got = sampler.generate(jax.random.PRNGKey(0), prompts, sampling.Settings(
      mode='block', steps=2, block_size=1, **kw))['tokens']
  want = sampler.generate(jax.random.PRNGKey(0), prompts, sampling.Settings(mode='ar', **kw))
  for a, b in zip(got, want['tokens']):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize('key,value,msg', [
    ('block.size', 0, 'config.block.size: must be >= 1, got 0'),
    ('block.size', 5, 'config.block.size: 5 does not divide data.seq_len=128'),
    ('data.segment_ids', True, 'config.data.segment_ids: objective=block has no segment masks'),
    ('data.task', 'cloze', 'config.data.task: objective=block does not train prefix tasks'),
    ('diffusion.noise', 'uniform', 'config.diffusion.noise: uniform: objective=block'),
])
def test_config_refusals(key, value, msg):
  c = config_lib.base()
  c.objective = 'block'
  section, k = key.split('.')
  c[section][k] = value
  with pytest.raises(ConfigError) as e:
    config_lib.validate(c)
  assert str(e.value).startswith(msg) and '\n' not in str(e.value)


def test_registered_and_auto_samples_by_block():
  c = config_lib.base()
  c.objective = 'block'
  assert objectives.sample_modes(c) == ('block',)
  assert objectives.mdm_fraction(c) == 1 and validate.modes(c) == ('block',)
  assert sampling.settings_from_config(c, 'block').block_size == c.block.size
  c.block.size = 2
  assert 'blocks of 2 tokens' in validate.estimands(c)['block_nelbo']
  c.objective, c.data.seq_len = 'mdm', 130  # another objective: block.size need not divide
  config_lib.validate(c)


def test_trains_end_to_end(tmp_path):
  """5 steps of objective=block through the training loop: finite losses, validation
  block_nelbo, block samples without [MASK]."""
  c = tiny_config('block', num_steps=5, eval_every=5, checkpoint_every=5)
  c.block.size = 4
  wd = str(tmp_path / 'run')
  s = loop.train_and_evaluate(config_lib.validate(c), wd)
  assert s['status'] == 'done' and math.isfinite(s['final']['block_nelbo'])
  rows = [json.loads(l) for l in open(os.path.join(wd, 'metrics.jsonl'))]
  assert len(rows) == 5 and all(math.isfinite(r['block_nelbo']) for r in rows)
  samples = [json.loads(l) for l in open(os.path.join(wd, 'samples.jsonl'))]
  assert {r['mode'] for r in samples} == {'block'} and all(r['block_size'] == 4 for r in samples)
  assert all(3 not in r['tokens'] for r in samples)


def test_trained_block_nelbo_never_beats_the_entropy(tmp_path):
  """A d=64, 2-layer block model (L' = 4) trained 300 steps on documents of known entropy
  (test_estimands.letters_corpus: 2.647 nats per token, the length included): its validation
  block_nelbo is a bound, so it stays above that entropy, and it learned (well below ln 16)."""
  h_full, _ = letters_corpus(tmp_path / 'letters.jsonl')
  c = config_lib.base()
  c.objective, c.block.size = 'block', 4
  c.data.corpus, c.data.tokenizer = str(tmp_path / 'letters.jsonl'), 'byte'
  c.data.cache_dir, c.data.seq_len = str(tmp_path / 'cache'), 32
  c.model.update(dict(d_model=64, num_layers=2, num_heads=4))
  c.train.update(dict(batch_size=32, num_steps=300, lr=3e-3, warmup_steps=30, eval_every=300,
                      checkpoint_every=300, log_every=100))
  c.eval.update(dict(num_batches=8, batch_size=64))
  c.sample.num_samples = 0
  s = loop.train_and_evaluate(config_lib.validate(c), str(tmp_path / 'run'))
  nelbo = s['final']['block_nelbo']
  assert nelbo > h_full * 0.99, (nelbo, h_full)
  assert nelbo < h_full * 1.25, (nelbo, h_full)
