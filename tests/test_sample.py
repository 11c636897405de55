import dataclasses
import json
import math
import os
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import special

from conftest import ROOT
from dlm_jax import config
from dlm_jax import errors
from dlm_jax.core import kernels
from dlm_jax.core import model as model_lib
from dlm_jax.core import objectives
from dlm_jax.core import sampling
from dlm_jax.data.tokenizers import EOS, MASK, PAD
from dlm_jax.infer import sample as sample_app
from dlm_jax.run import resume
from dlm_jax.run import rundir
from dlm_jax.run import samples as run_samples
from dlm_jax.run import validate
from dlm_jax.study import plot

V = 30


def setup(scan=True, L=16, tie=True, scale=5.0):
  c = config.base().model
  c.update(dict(d_model=32, num_layers=2, num_heads=2, vocab_size=V, mlp_dim=64,
                scan_layers=scan, tie_embeddings=tie))
  model, params = model_lib.init_params(c, jax.random.PRNGKey(0), L)
  params = jax.tree_util.tree_map(lambda p: scale * p, params)  # peaked, input-dependent outputs
  return model, params


@pytest.mark.parametrize('scan', [True, False])
def test_kv_cache_logits_equal_full_forward(scan):
  model, params = setup(scan)
  x = jax.random.randint(jax.random.PRNGKey(1), (2, 12), 4, V)
  full = model.apply({'params': params}, x, 'causal')
  cache = model_lib.init_cache(model.cfg, 2, 12)
  step = jax.jit(lambda p, x, c, i: model.apply({'params': p}, x, 'causal', cache=c,
                                                cache_pos=i))
  first, cache = step(params, x[:, :5], cache, 0)
  outs = [first]
  for i in range(5, 12):
    out, cache = step(params, x[:, i:i + 1], cache, i)
    outs.append(out)
  np.testing.assert_allclose(jnp.concatenate(outs, 1)[..., 4:], full[..., 4:], atol=1e-4)


def _reference_greedy(model, params, prompt, n, L=16):
  """Greedy decoding by recomputing the whole prefix, outside the sampler."""
  fwd = jax.jit(lambda p, x: sampling.sampleable(
      model.apply({'params': p}, objectives.shift_inputs(x), 'causal')))
  x = list(prompt)
  for _ in range(n):
    logits = fwd(params, jnp.asarray([x + [0] * (L - len(x))]))
    x.append(int(jnp.argmax(logits[0, len(x)])))
  return x[len(prompt):]


def test_greedy_ar_with_kv_cache_equals_recomputing_the_prefix():
  model, params = setup()
  s = sampling.Sampler(model, params, context=16)
  prompts = [[5, 6, 7, 8, 9], [9], []]  # different lengths in one batch
  outs = {}
  for kv in (True, False):
    st = sampling.Settings(mode='ar', length=7, temperature=0, kv_cache=kv, stop_at_eos=False)
    outs[kv] = [list(t) for t in s.generate(jax.random.PRNGKey(0), prompts, st)['tokens']]
  assert outs[True] == outs[False]
  for p, got in zip(prompts, outs[True]):
    assert got == _reference_greedy(model, params, p, 7)


def test_ar_sampling_with_kv_cache_matches_recompute_under_the_same_key():
  model, params = setup()
  s = sampling.Sampler(model, params, context=16)
  for st in (sampling.Settings(mode='ar', length=8, temperature=1.0, stop_at_eos=False),
             sampling.Settings(mode='ar', length=8, temperature=0.7, top_k=5, top_p=0.9,
                             stop_at_eos=False)):
    a = s.generate(jax.random.PRNGKey(3), [[5, 6], [7]] * 3, st)['tokens']
    b = s.generate(jax.random.PRNGKey(3), [[5, 6], [7]] * 3,
                   dataclasses.replace(st, kv_cache=False))['tokens']
    assert [list(x) for x in a] == [list(x) for x in b]
    assert all(((t >= 4) & (t != MASK)).all() for t in a)  # no PAD / BOS / [MASK]


def test_ar_stops_at_eos():
  model, params = setup(scan=False, tie=False)
  params['head']['kernel'] = jnp.zeros_like(params['head']['kernel'])  # uniform next tokens
  s = sampling.Sampler(model, params, context=16)
  # greedy: EOS is the first sampleable id, so every row stops at once
  out = s.generate(jax.random.PRNGKey(0), [[5, 6, 7], [5]],
                   sampling.Settings(mode='ar', length=6, temperature=0))
  assert [t.tolist() for t in out['tokens']] == [[EOS], [EOS]]
  assert out['passes'] == 1 + 3  # prefill, then lockstep from position 1 until row 0 stopped
  # sampled: a row ends at its first EOS, the others run to the full length
  out = s.generate(jax.random.PRNGKey(1), [[5]] * 64, sampling.Settings(mode='ar', length=8))
  stopped = [t for t in out['tokens'] if EOS in t.tolist()]
  assert len(stopped) >= 5
  for t in out['tokens']:
    t = t.tolist()
    assert (t.index(EOS) == len(t) - 1) if EOS in t else len(t) == 8


def test_filter_logits_top_k_and_top_p():
  logits = jnp.log(jnp.array([[[0.5, 0.25, 0.15, 0.1]]]))
  keep = lambda **kw: np.isfinite(np.asarray(sampling.filter_logits(logits, **kw)))[0, 0].tolist()
  assert keep(top_k=2) == [True, True, False, False]
  assert keep(top_p=0.5) == [True, False, False, False]  # 0.5 alone reaches 0.5
  assert keep(top_p=0.6) == [True, True, False, False]
  assert keep(top_p=0.95) == [True, True, True, True]
  assert keep(top_k=3, top_p=0.7) == [True, True, False, False]
  # a sampled token is always inside the nucleus
  st = sampling.Settings(temperature=1.0, top_p=0.6)
  toks = sampling.draw(jax.random.PRNGKey(0), jnp.broadcast_to(logits, (1, 500, 4)), st)
  assert set(np.asarray(toks).ravel().tolist()) == {0, 1}


def test_time_grids():
  for grid in sampling.GRIDS:
    t = sampling.time_grid(grid, 8)
    assert t[0] == 1 and t[-1] == 0 and (np.diff(t) < 0).all()
  # cosine: fewer reveals early (the first step is shorter than uniform's)
  assert 1 - sampling.time_grid('cosine', 8)[1] < 1 / 8


def _overfit(seq, steps=200):
  """A tiny MDM trained on one sequence until it is memorised."""
  model, params = setup(L=len(seq), scale=1.0)
  opt = optax.adam(1e-2)
  state = opt.init(params)
  targets = jnp.asarray([seq] * 16)

  @jax.jit
  def step(params, state, rng):
    def loss(p):
      r1, r2 = jax.random.split(rng)
      t = jax.random.uniform(r1, (16, 1))
      mask = jax.random.uniform(r2, targets.shape) < t
      logits = model.apply({'params': p}, objectives.shift_inputs(targets, mask), 'bidirectional')
      return jnp.mean(kernels.token_ce(logits, targets))
    g = jax.grad(loss)(params)
    upd, state = opt.update(g, state)
    return optax.apply_updates(params, upd), state
  rng = jax.random.PRNGKey(0)
  for _ in range(steps):
    rng, sub = jax.random.split(rng)
    params, state = step(params, state, sub)
  return model, params


def test_mdm_greedy_with_T_equal_L_reproduces_a_memorised_sequence():
  seq = [7, 12, 9, 20, 5, 5, 17, 28, 11, 6, 13, 4]
  model, params = _overfit(seq)
  s = sampling.Sampler(model, params, context=len(seq))
  L = len(seq)
  st = sampling.Settings(length=L, steps=L, strategy='confidence', temperature=0)
  out = s.generate(jax.random.PRNGKey(1), [[]] * 2, st)
  for row in out['tokens']:
    assert MASK not in row.tolist()
    assert row.tolist() == seq
  assert out['passes'] == L  # one token per step, one pass per token
  # prompt-conditioned: the rest of the memorised sequence
  out = s.generate(jax.random.PRNGKey(1), [seq[:4]], sampling.Settings(
      length=L - 4, steps=L - 4, strategy='confidence', temperature=0))
  assert out['tokens'][0].tolist() == seq[4:]


@pytest.mark.parametrize('strategy', sampling.STRATEGIES)
def test_infilling_never_changes_fixed_positions(strategy):
  model, params = setup()
  s = sampling.Sampler(model, params, context=16)
  rng = np.random.default_rng(0)
  x = rng.integers(4, V, (4, 16)).astype(np.int32)
  x[3, 12:] = PAD  # a shorter row
  fill = rng.random((4, 16)) < 0.5
  fill[3, 12:] = False
  for bs, grid, steps in ((0, 'uniform', 4), (4, 'cosine', 12)):
    st = sampling.Settings(length=1, steps=steps, strategy=strategy, block_size=bs, grid=grid,
                         temperature=1.0, top_p=0.9)
    out, _ = s.infill(jax.random.PRNGKey(2), x, fill, st)
    np.testing.assert_array_equal(out[~fill], x[~fill])
    assert not (out == MASK).any() and (out[fill] >= 4).all()


def test_semi_autoregressive_blocks_equal_block_by_block_infilling():
  model, params = setup()
  s = sampling.Sampler(model, params, context=16)
  x = np.array([[5, 6, 7, 8] + [0] * 8], np.int32)
  fill = np.zeros((1, 12), bool)
  fill[0, 4:] = True
  st = sampling.Settings(length=8, steps=8, strategy='confidence', temperature=0, block_size=4)
  got, _ = s.infill(jax.random.PRNGKey(0), x, fill, st)
  # by hand: block one with block two masked (and held), then block two
  one = x.copy()
  one[0, 8:] = MASK
  f1 = np.zeros_like(fill)
  f1[0, 4:8] = True
  step = dataclasses.replace(st, steps=4, block_size=0)
  a, _ = s.infill(jax.random.PRNGKey(0), one, f1, step)
  assert (a[0, 8:] == MASK).all()
  f2 = np.zeros_like(fill)
  f2[0, 8:] = True
  b, _ = s.infill(jax.random.PRNGKey(0), a, f2, step)
  np.testing.assert_array_equal(got, b)


def test_logit_reuse_changes_nothing_but_the_passes():
  model, params = setup()
  s = sampling.Sampler(model, params, context=16)
  st = sampling.Settings(length=6, steps=64, temperature=1.0)
  a = s.generate(jax.random.PRNGKey(4), [[5, 6]], st)
  b = s.generate(jax.random.PRNGKey(4), [[5, 6]], dataclasses.replace(st, reuse_logits=False))
  assert [t.tolist() for t in a['tokens']] == [t.tolist() for t in b['tokens']]
  assert b['passes'] == 64 and a['passes'] <= 7  # at most one pass per revealed token (+1)


def test_guidance_zero_equals_conditional_sampling_and_w_matters():
  model, params = setup()
  s = sampling.Sampler(model, params, context=16)
  prompts = [[5, 6, 7, 8], [9, 10]]
  for strategy in ('ancestral',):  # the guided logits are the same for every strategy
    st = sampling.Settings(length=8, steps=8, strategy=strategy, temperature=1.0)
    plain = s.generate(jax.random.PRNGKey(5), prompts, st)['tokens']
    w0 = s.generate(jax.random.PRNGKey(5), prompts, st, guided=True)['tokens']
    assert [t.tolist() for t in plain] == [t.tolist() for t in w0]
    w3 = s.generate(jax.random.PRNGKey(5), prompts, dataclasses.replace(st, guidance=3.0))
    assert [t.tolist() for t in w3['tokens']] != [t.tolist() for t in plain]


def test_bad_arguments_name_the_argument():
  model, params = setup()
  s = sampling.Sampler(model, params, context=16)
  with pytest.raises(errors.SampleError, match='exceeds the model context of 16'):
    s.generate(jax.random.PRNGKey(0), [list(range(4, 14))], sampling.Settings(mode='ar', length=8))
  for kw, name in ((dict(steps=0), 'sample.steps'), (dict(top_p=0.0), 'sample.top_p'),
                   (dict(top_p=1.5), 'sample.top_p'), (dict(strategy='x'), 'sample.strategy'),
                   (dict(mode='ar', guidance=1.0), 'sample.guidance')):
    with pytest.raises(errors.SampleError, match=name):
      s.generate(jax.random.PRNGKey(0), [[5]], sampling.Settings(length=4, **kw))
  with pytest.raises(errors.SampleError, match='multiple of the number of semi-autoregressive'):
    s.generate(jax.random.PRNGKey(0), [[5]], sampling.Settings(length=8, steps=3, block_size=4))
  with pytest.raises(errors.SampleError, match='infilling'):
    s.generate(jax.random.PRNGKey(0), [[5]], sampling.Settings(mode='ar', length=4), [[6]])


def test_unigram_entropy():
  assert run_samples.unigram_entropy([5, 5, 5, 5]) == 0
  assert math.isclose(run_samples.unigram_entropy([4, 5, 6, 7]), math.log(4))


def test_mode_sample_cli_writes_scored_samples(tmp_path, tiny_run):
  cfg_path, run, main = tiny_run('dual')
  prompts = tmp_path / 'prompts.jsonl'
  prompts.write_text('{"prompt": "The cat"}\n{"prompt": "A", "suffix": " end."}\n')
  env = dict(os.environ, PYTHONPATH=ROOT)
  r = subprocess.run(main + ['--mode', 'sample', f'--config.sample.prompts={prompts}',
                             '--config.sample.mode=mdm', '--config.sample.length=6',
                             '--config.sample.guidance=1.5', '--config.sample.block_size=3',
                             '--config.sample.steps=4'],
                     capture_output=True, text=True, env=env, check=False)
  assert r.returncode == 0, r.stderr[-2000:]
  assert 'gen_ppl' in r.stdout
  rows = [json.loads(line) for line in open(os.path.join(run, 'samples.jsonl'))]
  assert len(rows) == 2 and rows[1]['suffix'] == ' end.' and rows[0]['prompt'] == 'The cat'
  assert all(r['mode'] == 'mdm' and r['guidance'] == 1.5 and r['step'] == 4 for r in rows)
  assert all(r['gen_ppl'] > 1 and r['scorer'] == os.path.abspath(run) for r in rows)
  # bad input: one line naming the argument, exit 2, nothing appended
  before = open(os.path.join(run, 'samples.jsonl')).read()
  r = subprocess.run(main + ['--mode', 'sample', '--config.sample.top_p=2'],
                     capture_output=True, text=True, env=env, check=False)
  assert r.returncode == 2 and 'sample.top_p' in r.stderr.strip().splitlines()[-1]
  assert open(os.path.join(run, 'samples.jsonl')).read() == before

  # in process: unconditional samples in both modes of the dual run, scored by the run itself
  cfg = rundir.load_run(run)[0]
  cfg.sample.num_samples, cfg.sample.length, cfg.sample.stop_at_eos = 3, 8, False
  rows, summary = sample_app.run(cfg, run)
  assert [r['mode'] for r in rows] == ['ar'] * 3 + ['mdm'] * 3
  assert all(r['num_tokens'] == 8 == r['gen_tokens_scored'] for r in rows)
  scorer = sample_app.GenerativeScorer(run)
  nll, _ = scorer.score([[]] * 6, [r['tokens'] for r in rows], scorer.tok)
  np.testing.assert_allclose(nll, [r['gen_nll'] for r in rows], rtol=1e-5)
  assert set(summary) == {'ar', 'mdm'} and summary['ar']['gen_ppl'] > 1
  for key, value, msg in (('prompts', '/nonexistent.txt', 'sample.prompts: file not found'),
                          ('prompts', str(tmp_path / 'long.txt'), 'exceeds the model context'),
                          ('scorer', str(tmp_path), 'not a run directory')):
    (tmp_path / 'long.txt').write_text('x' * 40 + '\n')
    bad = resume.from_run(cfg.to_dict())
    bad.sample[key] = value
    with pytest.raises((errors.SampleError, errors.TrainingError, errors.ConfigError), match=msg):
      sample_app.run(bad, run)
  assert len(open(os.path.join(run, 'samples.jsonl')).readlines()) == 8

  # the sampling benchmark and its quality-vs-speed plot on the same run
  from dlm_jax.study import perf as bench
  res = bench.bench_sample([('ar', run), ('mdm', run)], run, 6, ['2', 'L'], 2, 'ancestral', True)
  assert [(r['mode'], r['kv_cache'], r['steps']) for r in res] == [
      ('ar', True, None), ('ar', False, None), ('mdm', None, 2), ('mdm', None, 6)]
  assert all(r['gen_ppl'] > 1 and r['tokens_per_s'] > 0 for r in res)
  assert res[0]['passes'] == 6 and res[2]['passes'] <= 2
  files = plot.sample_bench(res, str(tmp_path / 'bench'))
  assert all(os.path.getsize(f) > 0 for f in files)


def test_ar_exact_match_equals_greedy_decoding():
  model, params = setup()
  # targets whose continuation is the model's own greedy output -> exact match 1
  prompt = jnp.array([[5, 6, 7, 0, 0, 0, 0, 0]])
  x = prompt
  for i in range(3, 8):
    logits = model.apply({'params': params}, objectives.shift_inputs(x), 'causal')
    x = x.at[0, i].set(jnp.argmax(logits[0, i]))
  batch = {'targets': x, 'prefix_len': jnp.array([3])}
  assert bool(validate.task_exact_match(model, params, batch, 'ar')[0])
  wrong = {'targets': x.at[0, 6].set((x[0, 6] + 1) % 26 + 4), 'prefix_len': jnp.array([3])}
  assert not bool(validate.task_exact_match(model, params, wrong, 'ar')[0])
  assert validate.task_exact_match(model, params, batch, 'mdm').shape == (1,)


def test_draw_matches_the_distribution():
  """Inverse-CDF draws follow softmax(logits / temperature) (chi-square on 20k draws) and never
  produce a zero-probability token."""
  from scipy import stats
  p = np.array([0.0, 0.5, 0.2, 0.0, 0.25, 0.05])
  logits = jnp.log(jnp.asarray(p))
  st = sampling.Settings(temperature=1.0)
  toks = np.asarray(sampling.draw(jax.random.PRNGKey(0), jnp.broadcast_to(logits, (1, 20000, 6)),
                                st)).ravel()
  counts = np.bincount(toks, minlength=6)
  assert counts[0] == 0 and counts[3] == 0
  keep = p > 0
  assert stats.chisquare(counts[keep], 20000 * p[keep]).pvalue > 1e-3
  hot = sampling.draw(jax.random.PRNGKey(1), jnp.broadcast_to(logits, (1, 20000, 6)),
                    dataclasses.replace(st, temperature=0.5))
  q = p ** 2 / np.sum(p ** 2)
  counts = np.bincount(np.asarray(hot).ravel(), minlength=6)
  assert stats.chisquare(counts[keep], 20000 * q[keep]).pvalue > 1e-3


def _guided_greedy_reference(model, params, x, fill, w, normalise):
  """Most-confident-first greedy decoding with unsupervised CFG, written out one step at a time;
  `normalise` ranks by the guided distribution (log_softmax of the guided scores) or, as the
  code once did, by the raw guided scores."""
  x = x.copy()
  cond = ~fill
  x[fill] = MASK
  ban = np.zeros(V, bool)
  ban[[PAD, sampling.BOS]] = True
  for _ in range(int(fill.sum())):
    def logp(inp):
      lg = np.asarray(model.apply({'params': params}, objectives.shift_inputs(jnp.asarray(inp)),
                                  'bidirectional'), np.float64)[0]
      lg[:, ban] = -1e9
      return special.log_softmax(lg, -1)
    lc = logp(x)
    lu = logp(np.where(cond, MASK, x))
    g = lu + (1 + w) * (lc - lu)
    if normalise:
      g = special.log_softmax(g, -1)
    conf = np.where(x[0] == MASK, g.max(-1), -np.inf)
    i = int(np.argmax(conf))
    x[0, i] = int(np.argmax(g[i]))
  return x


def test_guided_confidence_ranks_by_the_normalised_guided_distribution():
  """Confidence decoding with guidance reveals, at each step, the position whose guided
  distribution (renormalised per position, as SMDM / LLaDA do) is most confident; ranking by
  the unnormalised l_u + (1 + w)(l_c - l_u) reveals in another order here."""
  model, params = setup(L=12, scale=3.0)
  s = sampling.Sampler(model, params, context=12)
  x = np.array([[5, 6, 7, 8] + [9] * 8], np.int32)
  fill = np.zeros_like(x, bool)
  fill[0, 4:] = True
  w = 2.0
  st = sampling.Settings(length=8, steps=8, strategy='confidence', temperature=0, guidance=w)
  got, _ = s.infill(jax.random.PRNGKey(0), x, fill, st)
  want = _guided_greedy_reference(model, params, x, fill, w, normalise=True)
  np.testing.assert_array_equal(got, want)
  raw = _guided_greedy_reference(model, params, x, fill, w, normalise=False)
  assert (raw != want).any()  # the test can tell the two rankings apart
