"""The fast path (fused attention, scan, remat, bf16) computes what the plain path computes, and
flops.py counts what XLA compiles."""
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from dlm_jax import config
from dlm_jax.core import flops
from dlm_jax.core import kernels
from dlm_jax.core import model as model_lib
from dlm_jax.core import objectives
from dlm_jax.data.tokenizers import EOS
from dlm_jax.run import setup as setup_lib


def _setup(objective, L=32, segments=False, **model):
  c = config.base()
  c.objective = objective
  c.data.segment_ids = segments
  c.model.update(dict(d_model=64, num_layers=2, num_heads=4, **model))
  c.data.seq_len = L
  c.diffusion.time_sampler = 'uniform'
  return config.resolve(c, 260)


def _loss_and_grads(cfg, params, batch):
  m = model_lib.Transformer(cfg.model)
  fn = objectives.make_loss_fn(m, cfg, train=True)
  return jax.jit(jax.value_and_grad(lambda p: fn(p, batch, jax.random.PRNGKey(3))[0]))(params)


def _unroll(params, n):
  out = {k: v for k, v in params.items() if k != 'layers'}
  for i in range(n):
    out[f'layers_{i}'] = jax.tree_util.tree_map(lambda x: x[i], params['layers'])
  return out


def _batch(L, segments=False, B=4):
  rng = np.random.default_rng(0)
  x = rng.integers(4, 260, (B, L))
  if segments:  # two documents per row: data.segment_ids splits them at the EOS input
    x[:, L // 2 - 1] = EOS
  return {'targets': jnp.asarray(x, jnp.int32)}


@pytest.mark.parametrize('objective,segments,arch', [
    ('ar', False, {}), ('dual', True, {}),  # dual: causal and bidirectional, with segment masks
    ('dual', False, dict(num_kv_heads=2, qkv_bias=True)),  # grouped-query attention, biases
    pytest.param('mdm', False, {}, marks=pytest.mark.slow),
    pytest.param('prefix', False, {}, marks=pytest.mark.slow)])
def test_fast_path_equals_plain_path(objective, segments, arch):
  """float32: XLA's fused attention + scan + remat give the loss and gradients of explicit
  softmax attention, unrolled layers, no remat."""
  plain = _setup(objective, attention='reference', scan_layers=False, remat='none',
                 segments=segments, **arch)
  _, params = model_lib.init_params(_setup(objective, **arch).model, jax.random.PRNGKey(0), 32)
  if arch.get('qkv_bias'):  # biases away from their zero init, so their gradients count
    params = jax.tree_util.tree_map_with_path(
        lambda p, x: x + 0.1 if jax.tree_util.keystr(p).endswith("['bias']") else x, params)
  batch = _batch(32, segments)
  ref_loss, ref_g = _loss_and_grads(plain, _unroll(params, 2), batch)
  for attention, remat, unroll in (('xla', 'none', 1), ('xla', 'full', 1), ('xla', 'dots', 1),
                                   ('explicit', 'none', 2)):
    fast = _setup(objective, attention=attention, scan_layers=True, remat=remat,
                  scan_unroll=unroll, segments=segments, **arch)
    loss, g = _loss_and_grads(fast, params, batch)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(_unroll(g, 2)), jax.tree_util.tree_leaves(ref_g)):
      np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)


def _grads(f, args, argnums):
  return jax.jit(jax.grad(lambda *a: jnp.sum(f(*a) * jnp.cos(f(*a))), argnums))(*args)


def test_hand_written_backwards_equal_autodiff():
  """The hand-written VJPs of the fast path (SwiGLU MLP, explicit attention, token
  cross-entropy, rotary embedding) against autodiff of the same forward, float32."""
  k = iter(jax.random.split(jax.random.PRNGKey(0), 12))
  rnd = lambda *s: jax.random.normal(next(k), s, jnp.float32)
  close = lambda a, b: [np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)
                        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))]
  h, wg, wu, wd = rnd(2, 8, 16), rnd(16, 24) * 0.3, rnd(16, 24) * 0.3, rnd(24, 16) * 0.3
  plain = lambda h, g, u, d: (jax.nn.silu(h @ g) * (h @ u)) @ d
  np.testing.assert_allclose(kernels.swiglu(h, wg, wu, wd), plain(h, wg, wu, wd), rtol=1e-6)
  close(_grads(kernels.swiglu, (h, wg, wu, wd), (0, 1, 2, 3)),
        _grads(plain, (h, wg, wu, wd), (0, 1, 2, 3)))
  q, kk, v = rnd(2, 8, 2, 4), rnd(2, 8, 2, 4), rnd(2, 8, 2, 4)
  seg = model_lib.attention_mask('causal', 8, segment_ids_BxL=jnp.array([[1] * 3 + [2] * 5] * 2))
  for mask, causal in ((None, True), (None, False), (seg[0], False)):
    fast = lambda q, k, v: kernels.softmax_attention(q, k, v, mask, causal)
    ref = lambda q, k, v: kernels.reference_attention(q, k, v, mask, causal)
    np.testing.assert_allclose(fast(q, kk, v), ref(q, kk, v), rtol=1e-6, atol=1e-7)
    close(_grads(fast, (q, kk, v), (0, 1, 2)), _grads(ref, (q, kk, v), (0, 1, 2)))
  logits, t = rnd(2, 8, 11), jax.random.randint(next(k), (2, 8), 0, 11)
  import optax  # pylint: disable=g-import-not-at-top
  np.testing.assert_allclose(kernels.token_ce(logits, t),
                             optax.softmax_cross_entropy_with_integer_labels(logits, t), rtol=1e-6)
  close(_grads(lambda x: kernels.token_ce(x, t), (logits,), 0),
        _grads(lambda x: optax.softmax_cross_entropy_with_integer_labels(x, t), (logits,), 0))
  x = rnd(2, 8, 2, 4)
  def plain_rope(x):
    ang = jnp.arange(8.0)[:, None] * (1.0 / 10000 ** (jnp.arange(0, 4, 2) / 4))[None]
    sin, cos = jnp.sin(ang)[None, :, None], jnp.cos(ang)[None, :, None]
    x1, x2 = jnp.split(x, 2, -1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)
  np.testing.assert_allclose(kernels.rope(x, 10000.0), plain_rope(x), rtol=1e-6, atol=1e-7)
  close(_grads(lambda x: kernels.rope(x, 10000.0), (x,), 0), _grads(plain_rope, (x,), 0))


def test_bf16_compute_is_within_its_expected_error():
  """bf16 activations with float32 master weights: the loss within 1% and the gradient
  direction (cosine) within 1% of float32."""
  f32 = _setup('dual')
  bf16 = _setup('dual', dtype='bfloat16')
  _, params = model_lib.init_params(f32.model, jax.random.PRNGKey(0), 32)
  batch = _batch(32)
  l32, g32 = _loss_and_grads(f32, params, batch)
  l16, g16 = _loss_and_grads(bf16, params, batch)
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(g16))  # master weights
  assert abs(float(l16) - float(l32)) / float(l32) < 1e-2
  v32 = np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(g32)])
  v16 = np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(g16)])
  assert v32 @ v16 / np.linalg.norm(v32) / np.linalg.norm(v16) > 0.99


@pytest.mark.parametrize('objective,L,d,V,arch', [
    ('ar', 128, 128, 8192, {}), ('mdm', 512, 128, 260, {}),
    # Qwen3's attention: N H = 4 x 32 = 128 != d = 64 in the projections and the attention
    ('mdm', 128, 64, 260, dict(head_dim=32, qk_norm=True, num_kv_heads=2))])
def test_flop_count_matches_xla_cost_analysis(objective, L, d, V, arch):
  """flops.py's training FLOPs per token against XLA's cost analysis of the compiled forward +
  backward (unrolled: XLA counts a scanned layer once). L=512 with a small vocabulary makes
  attention a quarter of the FLOPs, so leaving it out or halving it for bidirectional
  attention would fail."""
  c = config.base()
  c.objective = objective
  c.model.update(dict(d_model=d, num_layers=2, num_heads=4, scan_layers=False, **arch))
  c.data.seq_len = L
  c = config.resolve(c, V)
  m, params = model_lib.init_params(c.model, jax.random.PRNGKey(0), L)
  fn = objectives.make_loss_fn(m, c, train=True)
  B = 2
  batch = {'targets': jnp.full((B, L), 5, jnp.int32)}
  compiled = jax.jit(jax.grad(lambda p: fn(p, batch, jax.random.PRNGKey(0))[0])).lower(
      params).compile()
  ca = compiled.cost_analysis()
  ca = ca[0] if isinstance(ca, (list, tuple)) else ca
  ours = flops.from_config(c.model, L)['flops_per_token'] * B * L
  assert abs(ca['flops'] / ours - 1) < 0.03, (ca['flops'], ours)


def test_attention_choice_and_its_errors():
  m = _setup('ar').model
  assert model_lib.attention_impl(m, backend='cpu') == 'explicit'
  assert m.remat == 'auto' and model_lib.remat_policy(m, 'cpu') == 'full'
  assert model_lib.remat_policy(m, 'gpu') == 'none'
  assert model_lib.remat_policy(_setup('ar', scan_layers=False).model, 'cpu') == 'none'
  assert model_lib.attention_impl(m, backend='tpu') == 'xla'
  with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter('always')
    model_lib._warned.clear()  # pylint: disable=protected-access
    assert model_lib.attention_impl(m, backend='gpu') == 'xla'  # float32
    assert 'float32' in str(w[-1].message)
  bf = _setup('ar', dtype='bfloat16').model
  assert model_lib.attention_impl(bf, backend='gpu') == 'cudnn'
  with pytest.warns(UserWarning, match='mask'):
    assert model_lib.attention_impl(bf, has_mask=True, backend='gpu') == 'xla'
  forced = _setup('ar', attention='cudnn').model
  with pytest.raises(ValueError, match='model.attention=cudnn needs an NVIDIA GPU'):
    model_lib.attention_impl(forced, backend='cpu')
  # through the trainer: a config error before anything is written
  c = tiny_config('ar')
  c.model.attention = 'cudnn'
  if jax.default_backend() != 'gpu':
    with pytest.raises(config.ConfigError, match='attention=cudnn'):
      setup_lib.build(c)


def test_bench_train_reports_mfu_and_flops(tiny):
  """`python -m dlm_jax.bench train` on a tiny model: AOT compile, timed steps, MFU against the
  in-process matmul peak, and (unrolled) XLA's FLOPs agreeing with flops.py."""
  from dlm_jax.study import perf as bench
  c = bench.train_config(tiny('ar'), '', 32, 4, 'mdm', 'f32')
  c.model.scan_layers = False
  r = bench.bench_step(config.validate(c), 2, measure_peak=True)
  assert r['objective'] == 'mdm' and r['seq_len'] == 32 and r['batch_size'] == 4
  assert r['peak_source'] == 'matmul' and 0 < r['mfu'] < 1 and r['compile_s'] > 0
  # flops.py counts matmuls; XLA also counts the optimizer and the vocab-sized softmax work, ~12%
  # of this tiny model's FLOPs (test_flop_count_matches_xla_cost_analysis is the tight check)
  assert abs(r['xla_flops_per_token'] / r['flops_per_token'] - 1) < 0.15
  assert 'MFU' in bench.format_train(r)


def test_compile_cache_dir_follows_jax_env_then_home(monkeypatch):
  c = tiny_config('ar').train
  monkeypatch.setenv('JAX_COMPILATION_CACHE_DIR', '/shared/sweep/.xla_cache')
  assert setup_lib.compile_cache_dir(c) == '/shared/sweep/.xla_cache'
  monkeypatch.delenv('JAX_COMPILATION_CACHE_DIR')
  assert setup_lib.compile_cache_dir(c).endswith(os.path.join('.cache', 'dlm_jax', 'xla'))
  c.compile_cache = ''
  assert setup_lib.compile_cache_dir(c) == ''
