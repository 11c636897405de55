import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlm_jax import config
from dlm_jax.core import flops
from dlm_jax.core import model as model_lib
from dlm_jax.data.tokenizers import MASK


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
