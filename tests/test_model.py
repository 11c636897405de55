import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlm_jax import config
from dlm_jax.core import flops
from dlm_jax.core import model as model_lib
from dlm_jax.core import sharding
from dlm_jax.data.tokenizers import MASK
from dlm_jax.run import resume


def mcfg(**kw):
  c = config.base().model
  c.update(dict(d_model=32, num_layers=2, num_heads=4, vocab_size=50, mlp_dim=64))
  c.update(kw)
  return c


def logits(cfg, params, toks, **kw):
  return model_lib.Transformer(cfg).apply({'params': params}, jnp.asarray(toks), **kw)


@pytest.fixture(scope='module')
def setup():
  cfg = mcfg()
  _, params = model_lib.init_params(cfg, jax.random.PRNGKey(0), 12)
  toks = np.asarray(jax.random.randint(jax.random.PRNGKey(1), (2, 12), 4, 50))
  return cfg, params, toks


def changed_positions(cfg, params, toks, j, **kw):
  a = logits(cfg, params, toks, **kw)
  t2 = toks.copy()
  t2[:, j] = 4 + (t2[:, j] - 3) % 46
  b = logits(cfg, params, t2, **kw)
  return np.any(np.abs(np.asarray(a - b)) > 1e-6, axis=(0, 2))  # per position


def test_causal_never_sees_the_future(setup):
  cfg, params, toks = setup
  for j in range(12):
    ch = changed_positions(cfg, params, toks, j, attention='causal')
    assert not ch[:j].any(), f'changing token {j} changed logits before it'
    assert ch[j:].all()


def test_bidirectional_sees_everything(setup):
  cfg, params, toks = setup
  assert changed_positions(cfg, params, toks, 11, attention='bidirectional').all()


def test_prefix_is_bidirectional_inside_and_causal_after(setup):
  cfg, params, toks = setup
  P = 5
  pl = jnp.array([P, P])
  ch = changed_positions(cfg, params, toks, 3, attention='prefix', prefix_len_B=pl)
  assert ch.all()  # a prefix token is seen by every position
  for j in range(P, 12):
    ch = changed_positions(cfg, params, toks, j, attention='prefix', prefix_len_B=pl)
    assert not ch[:j].any() and ch[j:].all()
  # prefix length 0 is causal, prefix length L is bidirectional
  a = logits(cfg, params, toks, attention='prefix', prefix_len_B=jnp.array([0, 12]))
  assert np.allclose(a[0], logits(cfg, params, toks, attention='causal')[0], atol=1e-5)
  assert np.allclose(a[1], logits(cfg, params, toks, attention='bidirectional')[1], atol=1e-5)


@pytest.mark.parametrize('kind', ['causal', 'bidirectional'])
def test_segments_never_attend_across(setup, kind):
  cfg, params, toks = setup
  seg = jnp.array([[0] * 6 + [1] * 6] * 2)
  for j in range(12):
    ch = changed_positions(cfg, params, toks, j, attention=kind, segment_ids_BxL=seg)
    other = np.arange(12) // 6 != j // 6
    assert not ch[other].any(), f'token {j} leaked into another segment ({kind})'
  # each segment alone equals the model run on that segment alone (RoPE: same relative offsets)
  a = logits(cfg, params, toks, attention=kind, segment_ids_BxL=seg)
  b = logits(cfg, params, toks[:, :6], attention=kind)
  np.testing.assert_allclose(a[:, :6], b, atol=1e-5)


def test_mask_logit_never_predicted(setup):
  cfg, params, toks = setup
  lp = jax.nn.log_softmax(logits(cfg, params, toks, attention='bidirectional'))
  assert float(jnp.max(lp[..., MASK])) < -1e6


@pytest.mark.parametrize('tie', [True, False])
@pytest.mark.parametrize('scan', [True, False])
@pytest.mark.parametrize('kv,bias', [(0, False), (2, True), (1, False)])
def test_param_counts_match_pytree(tie, scan, kv, bias):
  cfg = mcfg(tie_embeddings=tie, scan_layers=scan, num_layers=3, mlp_dim=96, num_kv_heads=kv,
             qkv_bias=bias)
  _, params = model_lib.init_params(cfg, jax.random.PRNGKey(0), 8)
  n = sum(x.size for x in jax.tree_util.tree_leaves(params))
  c = flops.param_counts(32, 3, 96, 50, tie, num_heads=4, num_kv_heads=kv, qkv_bias=bias)
  assert n == c['N_total']
  emb = params['embed']['embedding'].size + (0 if tie else params['head']['kernel'].size)
  assert n - emb == c['N_nonembed']


@pytest.mark.parametrize('name', ['nano', 'tiny'])
def test_named_sizes_count_exactly(name):
  s = flops.SIZES[name]
  cfg = mcfg(d_model=s.d_model, num_layers=s.num_layers, num_heads=s.num_heads,
             mlp_dim=s.mlp_dim, vocab_size=8192)
  shapes = jax.eval_shape(lambda: model_lib.init_params(cfg, jax.random.PRNGKey(0), 8)[1])
  n = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes))
  assert n == flops.param_counts(s.d_model, s.num_layers, s.mlp_dim, 8192)['N_total']


def test_scan_equals_unrolled(setup):
  cfg, params, toks = setup
  cfg_u = mcfg(scan_layers=False)
  p_u = {k: v for k, v in params.items() if k != 'layers'}
  for i in range(cfg.num_layers):
    p_u[f'layers_{i}'] = jax.tree_util.tree_map(lambda x: x[i], params['layers'])
  for kind in ('causal', 'bidirectional'):
    np.testing.assert_allclose(logits(cfg, params, toks, attention=kind),
                               logits(cfg_u, p_u, toks, attention=kind), atol=1e-5)


def test_dropout_only_in_training(setup):
  _, params, toks = setup
  cfg = mcfg(attn_dropout=0.3, mlp_dropout=0.3, resid_dropout=0.3, embed_dropout=0.3)
  m = model_lib.Transformer(cfg)
  ev1 = m.apply({'params': params}, toks, 'causal')
  ev2 = m.apply({'params': params}, toks, 'causal')
  np.testing.assert_array_equal(ev1, ev2)
  np.testing.assert_allclose(ev1, logits(mcfg(), params, toks, attention='causal'), atol=1e-6)
  tr = m.apply({'params': params}, toks, 'causal', deterministic=False,
               rngs={'dropout': jax.random.PRNGKey(3)})
  assert np.abs(np.asarray(tr - ev1)).max() > 1e-3


# Qwen3's attention: head dim H = 12 apart from d / N = 8, RMSNorm on q and k, 2 key/value heads
QWEN3 = dict(head_dim=12, qk_norm=True, num_kv_heads=2)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _jlogits(cfg, params, toks, attention):
  return model_lib.Transformer(cfg).apply({'params': params}, toks, attention)


def _unrolled(params, n):
  out = {k: v for k, v in params.items() if k != 'layers'}
  for i in range(n):
    out[f'layers_{i}'] = jax.tree_util.tree_map(lambda x: x[i], params['layers'])
  return out


@pytest.fixture(scope='module')
def qwen3():
  cfg = model_lib.ModelConfig.of(mcfg(**QWEN3))
  params = jax.jit(lambda r: model_lib.init_params(cfg, r, 12)[1])(jax.random.PRNGKey(0))
  # norm scales away from their init of ones, so a q_norm / k_norm mix-up shows
  params = jax.tree_util.tree_map_with_path(
      lambda p, x: x * jnp.linspace(0.5, 1.5, x.shape[-1]) if 'norm' in jax.tree_util.keystr(p)
      else x, params)
  toks = np.asarray(jax.random.randint(jax.random.PRNGKey(1), (2, 12), 4, 50))
  return cfg, params, toks


def test_head_dim_and_qk_norm_fast_path_equals_plain_path(qwen3):
  """Scanned layers + explicit attention (hand-written backward) + remat against unrolled
  layers + the reference softmax under plain autodiff: logits and gradients, with H != d / N."""
  cfg, params, toks = qwen3
  assert params['layers']['q']['kernel'].shape == (2, 32, 4, 12)
  assert params['layers']['k_norm']['scale'].shape == (2, 12)
  fast = model_lib.ModelConfig.of(mcfg(**QWEN3, attention='explicit', remat='full'))
  plain = model_lib.ModelConfig.of(mcfg(**QWEN3, attention='reference', remat='none',
                                        scan_layers=False))
  targets = jnp.asarray(toks)

  @functools.partial(jax.jit, static_argnums=(0, 2))
  def loss_and_grads(c, p, kind):
    def loss(p):
      out = model_lib.Transformer(c).apply({'params': p}, targets, kind)
      lp = jax.nn.log_softmax(out)
      return -jnp.mean(jnp.take_along_axis(lp, targets[..., None], -1)), out
    return jax.value_and_grad(loss, has_aux=True)(p)
  for kind in ('causal',):  # the bidirectional kernel is the same code without the tril mask
    (l1, o1), g1 = loss_and_grads(fast, params, kind)
    (l2, o2), g2 = loss_and_grads(plain, _unrolled(params, 2), kind)
    np.testing.assert_allclose(o1, o2, atol=1e-5)
    np.testing.assert_allclose(l1, l2, rtol=1e-6)
    g1 = _unrolled(g1, 2)
    assert jax.tree_util.tree_structure(g1) == jax.tree_util.tree_structure(g2)
    for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2)):
      np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)
    assert float(jnp.abs(g1['layers_0']['q_norm']['scale']).max()) > 1e-4  # it is trained


def test_qk_norm_makes_attention_invariant_to_the_scale_of_q_and_k(qwen3):
  """RMSNorm sits between the q/k projections and RoPE: scaling those kernels changes nothing
  with qk_norm and changes the logits without it."""
  cfg, params, toks = qwen3
  scaled = jax.tree_util.tree_map_with_path(
      lambda p, x: 3.0 * x if jax.tree_util.keystr(p).split("']")[1] in ("['q", "['k") else x,
      params)
  assert not np.array_equal(scaled['layers']['q']['kernel'], params['layers']['q']['kernel'])
  np.testing.assert_allclose(_jlogits(cfg, scaled, toks, 'causal'),
                             _jlogits(cfg, params, toks, 'causal'), atol=1e-4)
  plain = {k: v for k, v in params['layers'].items() if k not in ('q_norm', 'k_norm')}
  no_norm = model_lib.ModelConfig.of(mcfg(head_dim=12, num_kv_heads=2))
  a = _jlogits(no_norm, dict(params, layers=plain), toks, 'causal')
  b = _jlogits(no_norm, dict(scaled, layers={k: scaled['layers'][k] for k in plain}), toks,
               'causal')
  assert np.abs(np.asarray(a - b)).max() > 1e-2


def test_head_dim_kv_cache_equals_full_forward(qwen3):
  cfg, params, toks = qwen3
  model = model_lib.Transformer(cfg)
  cache = model_lib.init_cache(cfg, 2, 12)
  assert cache['k'].shape == (2, 2, 12, 2, 12)  # layers x B x S x K x H
  step = jax.jit(lambda p, x, c, i: model.apply({'params': p}, x, 'causal', cache=c,
                                                cache_pos=i))
  out, cache = step(params, jnp.asarray(toks[:, :7]), cache, 0)
  outs = [out]
  for i in range(7, 12):
    out, cache = step(params, jnp.asarray(toks[:, i:i + 1]), cache, i)
    outs.append(out)
  np.testing.assert_allclose(jnp.concatenate(outs, 1), _jlogits(cfg, params, toks, 'causal'),
                             atol=1e-4)


@pytest.mark.parametrize('bias', [False, True])
@pytest.mark.parametrize('scan', [True, False])
def test_head_dim_and_qk_norm_counts_match_the_pytree_and_a_hand_count(bias, scan):
  """d=32, N=4, H=12, K=2, F=64, V=50, 2 layers, tied. Per layer: q, o 32 x 48 each, k, v
  32 x 24 each, MLP 3 x 32 x 64, 2 norms of 32, q/k norms of 12 each (+ biases 48 + 2 x 24):
  10,840 (+96); nonembed = 2 x that + 32. Training FLOPs per token at L=16:
  3 x (2 x (2 x 10,752 matmul + 1,600 head) + 2 layers x 4 x 16 x 48 attention) = 157,056."""
  cfg = mcfg(**QWEN3, qkv_bias=bias, scan_layers=scan)
  shapes = jax.eval_shape(lambda: model_lib.init_params(cfg, jax.random.PRNGKey(0), 8)[1])
  n = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes))
  c = flops.from_config(config.resolve(_run_config(cfg), 50).model, 16)
  nonembed = 2 * (10840 + 96 * bias) + 32
  assert (n, c['N_total'], c['N_nonembed']) == (nonembed + 1600, nonembed + 1600, nonembed)
  assert c['flops_per_token'] == 157056
  assert flops.from_config(config.resolve(_run_config(mcfg()), 50).model, 16)[
      'flops_per_token'] == 3 * (2 * (2 * (4 * 32 * 32 + 3 * 32 * 64) + 1600) + 2 * 4 * 16 * 32)


def _run_config(model):
  c = config.base()
  c.model.update(model.to_dict())
  c.data.seq_len = 16
  return c


def test_sharding_rules_cover_the_qk_norm_and_head_dim_params():
  cfg = mcfg(**QWEN3, qkv_bias=True)
  P = jax.sharding.PartitionSpec
  axes = model_lib.logical_axes(cfg, 8)
  specs = jax.tree_util.tree_leaves(axes, is_leaf=lambda x: isinstance(x, P))
  names = {n for s in specs for n in s}
  assert names <= set(dict(sharding.RULES)), names - set(dict(sharding.RULES))
  assert axes['layers']['q_norm']['scale'] == P('layers', 'norm')

  class FakeMesh:
    shape = {'data': 1, 'fsdp': 4, 'tensor': 2}
  shapes = jax.eval_shape(lambda: model_lib.init_params(cfg, jax.random.PRNGKey(0), 8)[1])
  spec = lambda *path: sharding.logical_to_spec(
      functools.reduce(lambda t, k: t[k], path, axes), functools.reduce(
          lambda t, k: t[k], path, shapes).shape, FakeMesh())
  assert spec('layers', 'q', 'kernel') == P(None, 'fsdp', 'tensor', None)  # 32 x 4 heads x 12
  assert spec('layers', 'k', 'kernel') == P(None, 'fsdp', 'tensor', None)  # 2 kv heads
  assert spec('layers', 'o', 'kernel') == P(None, 'tensor', None, 'fsdp')
  assert spec('layers', 'q_norm', 'scale') == P(None, None)


@pytest.mark.parametrize('change,needle', [
    (dict(head_dim=7), 'config.model.head_dim: head dim 7 must be even for RoPE'),
    (dict(head_dim=-2), 'config.model.head_dim: must be >= 0'),
    (dict(num_heads=5), 'config.model.num_heads: 5 heads do not divide d_model=32'),
    (dict(sliding_window=15), 'config.data.seq_len: 16 is larger than model.sliding_window=15'),
])
def test_head_dim_and_window_are_validated(change, needle):
  c = _run_config(mcfg(**change))
  with pytest.raises(config.ConfigError, match=needle.replace('(', r'\(')):
    config.validate(c)


def test_head_dim_window_accepted_and_old_runs_keep_their_defaults():
  c = _run_config(mcfg(num_heads=5, head_dim=8, sliding_window=16))  # 5 x 8 != 32: allowed
  assert config.validate(c).model.head_dim == 8
  old = config.base().to_dict()
  for k in ('head_dim', 'qk_norm', 'sliding_window'):
    del old['model'][k]
  m = resume.from_run(old).model
  assert (m.head_dim, m.qk_norm, m.sliding_window) == (0, False, 0)
  assert model_lib.head_dim(m) == m.d_model // m.num_heads


def test_embed_alias_is_one_row_for_two_ids_in_every_path(setup):
  """model.embed_alias='1:2' (hf import: BOS is the eos row of a checkpoint whose bos is its
  eos): id 1 reads row 2 in the full and the KV-cached forward, and row 1 gets no gradient,
  so the two ids train as one row."""
  _, params, toks = setup  # the same parameter tree: the alias adds none
  cfg = model_lib.ModelConfig.of(mcfg(embed_alias='1:2', unpredicted='1'))
  plain = model_lib.ModelConfig.of(mcfg(unpredicted='1'))
  toks = toks.copy()
  toks[:, 0], toks[1, 4] = 1, 1
  want = logits(plain, params, np.where(toks == 1, 2, toks))
  np.testing.assert_allclose(logits(cfg, params, toks), want, atol=1e-5)
  assert np.abs(np.asarray(logits(plain, params, toks) - want)).max() > 1e-3
  cache = model_lib.init_cache(cfg, 2, 12)
  out, cache = logits(cfg, params, toks[:, :11], cache=cache, cache_pos=0)
  last, _ = logits(cfg, params, toks[:, 11:], cache=cache, cache_pos=11)
  np.testing.assert_allclose(jnp.concatenate([out, last], 1), want, atol=1e-5)
  loss = lambda p: -jax.nn.log_softmax(logits(cfg, p, toks))[..., 7].sum()
  g = jax.grad(loss)(params)['embed']['embedding']
  assert not np.any(np.asarray(g[1])) and np.any(np.asarray(g[2]))
