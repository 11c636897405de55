import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlm_jax import config
from dlm_jax.core import model as model_lib
from dlm_jax.core import noise as noise_lib
from dlm_jax.core import objectives
from dlm_jax.data.tokenizers import BOS, MASK, PAD


def cfg_for(objective, rho=0.5, low_discrepancy=False, L=4, V=12, **diffusion):
  c = config.base()
  c.objective = objective
  c.dual.ar_weight = str(1 - rho)
  c.diffusion.low_discrepancy = low_discrepancy
  for k, v in diffusion.items():
    if k in ('beta_a', 'beta_b', 'mu', 'sigma', 'uniform_mix'):
      c.diffusion.sampler_params[k] = v
    else:
      c.diffusion[k] = v
  c.model.update(dict(d_model=16, num_layers=1, num_heads=2, vocab_size=V, mlp_dim=32))
  c.data.seq_len = L
  return c


def make(c, scale=1.0, seed=0):
  model, params = model_lib.init_params(c.model, jax.random.PRNGKey(seed), c.data.seq_len)
  # larger weights make predictions depend strongly on context (a sharper test)
  params = jax.tree_util.tree_map(lambda p: p * scale, params)
  return model, params


def test_shift_inputs():
  x = jnp.array([[5, 6, 7, 8]])
  np.testing.assert_array_equal(objectives.shift_inputs(x), [[BOS, 5, 6, 7]])
  m = jnp.array([[False, True, False, True]])
  np.testing.assert_array_equal(objectives.shift_inputs(x, m), [[BOS, 5, MASK, 7]])


@pytest.mark.parametrize('rho,ref', [(0.0, 'ar'), (1.0, 'mdm')])
def test_dual_endpoints_equal_pure_objectives(rho, ref):
  c = cfg_for('dual', rho, L=16, V=40)
  model, params = make(c)
  batch = {'targets': jax.random.randint(jax.random.PRNGKey(1), (8, 16), 4, 40)}
  rng = jax.random.PRNGKey(2)
  dual, dm = objectives.loss_fn(params, batch, rng, model=model, cfg=c)
  pure, pm = objectives.loss_fn(params, batch, rng, model=model, cfg=cfg_for(ref, L=16, V=40))
  np.testing.assert_allclose(dual, pure, rtol=1e-6)
  gd = jax.grad(lambda p: objectives.loss_fn(p, batch, rng, model=model, cfg=c)[0])(params)
  gp = jax.grad(lambda p: objectives.loss_fn(p, batch, rng, model=model,
                                             cfg=cfg_for(ref, L=16, V=40))[0])(params)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                         gd, gp)


def test_dual_mixes_both_modes():
  c = cfg_for('dual', 0.25, L=16, V=40)
  model, params = make(c)
  batch = {'targets': jax.random.randint(jax.random.PRNGKey(1), (8, 16), 4, 40)}
  loss, m = objectives.loss_fn(params, batch, jax.random.PRNGKey(2), model=model, cfg=c)
  assert 'ar_nll' in m and 'mdm_nelbo' in m
  # 2 MDM + 6 AR sequences of equal length: loss is the token-weighted mix
  np.testing.assert_allclose(loss, (6 * m['ar_nll'] + 2 * m['mdm_nelbo']) / 8, rtol=1e-5)


def test_ar_loss_is_mean_next_token_ce():
  c = cfg_for('ar', L=6, V=20)
  model, params = make(c)
  x = jax.random.randint(jax.random.PRNGKey(1), (3, 6), 4, 20)
  x = x.at[2, 4:].set(PAD)  # padding is excluded
  loss, _ = objectives.loss_fn(params, {'targets': x}, jax.random.PRNGKey(0), model=model, cfg=c)
  lp = jax.nn.log_softmax(model.apply({'params': params}, objectives.shift_inputs(x), 'causal'))
  manual = [-lp[b, i, x[b, i]] for b in range(3) for i in range(6) if x[b, i] != PAD]
  np.testing.assert_allclose(loss, np.mean(manual), rtol=1e-6)


def exact_nelbo(model, params, x_L, eps):
  """E_{t~U(eps,1)} E_mask [w(t) sum_{i masked} -log p(x_i | x_t)] by enumerating all masks."""
  L = len(x_L)
  total = 0.0
  for bits in itertools.product([0, 1], repeat=L):
    k = sum(bits)
    if k == 0:
      continue
    m = jnp.array([bits], bool)
    lp = jax.nn.log_softmax(model.apply({'params': params},
                                        objectives.shift_inputs(jnp.array([x_L]), m),
                                        'bidirectional'))
    s = float(sum(-lp[0, i, x_L[i]] for i in range(L) if bits[i]))
    # (1/(1-eps)) * int_eps^1 (1/t) t^k (1-t)^(L-k) dt, expanded as a polynomial
    integral = sum(math.comb(L - k, j) * (-1) ** j * (1 - eps ** (k + j)) / (k + j)
                   for j in range(L - k + 1))
    total += s * integral / (1 - eps)
  return total / L


@pytest.mark.parametrize('ld,diffusion', [
    (False, {}),
    (True, {}),
    (True, dict(time_sampler='logit_normal', mu=0.0, sigma=1.0, uniform_mix=0.05)),
    (False, dict(time_sampler='beta', beta_a=2.0, beta_b=2.0)),
    (True, dict(time_sampler='truncated_normal', mu=0.5, sigma=0.2)),
])
def test_mdm_nelbo_is_unbiased_against_exact_enumeration(ld, diffusion):
  """Under every time sampler the `elbo`-weighted training loss is the exact NELBO on average."""
  c = cfg_for('mdm', low_discrepancy=ld, L=4, V=12, **diffusion)
  model, params = make(c, scale=8.0)
  x_L = [5, 9, 7, 5]
  exact = exact_nelbo(model, params, x_L, c.diffusion.eps)
  batch = {'targets': jnp.tile(jnp.array([x_L]), (64, 1))}
  per_batch = jax.jit(jax.vmap(
      lambda r: objectives.loss_fn(params, batch, r, model=model, cfg=c)[0]))(
          jax.random.split(jax.random.PRNGKey(0), 400))
  # each batch of 64 is one draw of the (low-discrepancy or iid) estimator
  mean, se = float(per_batch.mean()), float(per_batch.std() / np.sqrt(per_batch.size))
  assert abs(mean - exact) < 3 * se, (mean, se, exact)
  assert se < 0.05 * exact  # the check has power


def test_mdm_nelbo_detects_a_wrong_weight():
  """The exact-enumeration check can fail: w(t)=1 instead of 1/t is far outside 3 SE."""
  c = cfg_for('mdm', L=4, V=12)
  model, params = make(c, scale=8.0)
  exact = exact_nelbo(model, params, [5, 9, 7, 5], c.diffusion.eps)
  batch = {'targets': jnp.tile(jnp.array([[5, 9, 7, 5]]), (64, 1))}

  def wrong(r):
    _, m_BxL, w_B, _ = noise_lib.Noise(c.diffusion).sample(r, batch['targets'])
    one_B = jnp.ones_like(w_B)
    s = objectives.mdm_terms(model, params, batch, m_BxL, one_B, one_B, r, train=False)
    return s['loss_sum'] / s['tokens']
  v = jax.jit(jax.vmap(wrong))(jax.random.split(jax.random.PRNGKey(0), 400))
  assert abs(float(v.mean()) - exact) > 10 * float(v.std() / 20)


def test_mdm_loss_counts_only_masked_targets():
  c = cfg_for('mdm', L=8, V=20)
  model, params = make(c)
  x = jax.random.randint(jax.random.PRNGKey(1), (2, 8), 4, 20)
  w = jnp.array([2.0, 2.0])
  none = jnp.zeros((2, 8), bool)
  s = objectives.mdm_terms(model, params, {'targets': x}, none, w, w, None, train=False)
  assert float(s['loss_sum']) == 0.0


def test_plain_weighting_trains_a_different_objective_but_reports_the_nelbo():
  bell = dict(time_sampler='logit_normal', uniform_mix=0.05)
  c_plain = cfg_for('mdm', L=16, V=40, weighting='plain', **bell)
  c_elbo = cfg_for('mdm', L=16, V=40, weighting='elbo', **bell)
  model, params = make(c_plain)
  batch = {'targets': jax.random.randint(jax.random.PRNGKey(1), (8, 16), 4, 40)}
  lp, mp = objectives.loss_fn(params, batch, jax.random.PRNGKey(3), model=model, cfg=c_plain)
  le, me = objectives.loss_fn(params, batch, jax.random.PRNGKey(3), model=model, cfg=c_elbo)
  np.testing.assert_allclose(mp['mdm_nelbo'], me['mdm_nelbo'], rtol=1e-6)
  np.testing.assert_allclose(le, me['mdm_nelbo'], rtol=1e-6)
  np.testing.assert_allclose(lp, mp['mdm_loss'], rtol=1e-6)  # what plain trains, named
  assert abs(float(lp) - float(le)) > 1e-3
  # a sampler whose NELBO weights cannot be unbiased (pure logit-normal): plain may still train
  # on it, but the training metrics carry no mdm_nelbo to misread
  c_bad = cfg_for('mdm', L=16, V=40, weighting='plain', time_sampler='logit_normal')
  _, mb = objectives.loss_fn(params, batch, jax.random.PRNGKey(3), model=model, cfg=c_bad)
  assert 'mdm_nelbo' not in mb and 'mdm_loss' in mb


def test_mdm_count_honours_small_fractions_exactly():
  c = cfg_for('dual')
  c.dual.ar_weight = '255/256'
  counts = [objectives.mdm_count(c, s, 32) for s in range(256)]
  assert sum(counts) == 32 and set(counts) == {0, 1}
  c.dual.ar_weight = '63/64'
  assert [objectives.mdm_count(c, s, 64) for s in range(5)] == [1] * 5
  c.dual.ar_weight = '1/4'
  assert [objectives.mdm_count(c, s, 8) for s in range(3)] == [6] * 3
  assert objectives.mdm_count(cfg_for('ar'), 3, 8) == 0
  assert objectives.mdm_count(cfg_for('mdm'), 3, 8) == 8


def test_token_dropout_masks_only_inputs_at_the_rate():
  c = cfg_for('ar', L=64, V=40)
  model, params = make(c)
  seen = {}

  class Spy:
    def apply(self, variables, inputs, *a, **k):
      seen['inputs'] = inputs
      return model.apply(variables, inputs, *a, **k)
  x = jax.random.randint(jax.random.PRNGKey(1), (64, 64), 4, 40)
  objectives.ar_terms(Spy(), params, {'targets': x}, jax.random.PRNGKey(0), True,
                      token_dropout=0.25)
  u = seen['inputs']
  dropped = np.asarray(u == MASK)
  assert not dropped[:, 0].any()  # BOS is never dropped
  assert abs(dropped[:, 1:].mean() - 0.25) < 0.02
  kept = ~dropped[:, 1:]
  np.testing.assert_array_equal(np.asarray(u)[:, 1:][kept], np.asarray(x)[:, :-1][kept])
  # evaluation never drops
  objectives.ar_terms(Spy(), params, {'targets': x}, jax.random.PRNGKey(0), False,
                      token_dropout=0.25)
  assert not bool((seen['inputs'] == MASK).any())


def test_prefix_lm_loss_is_only_on_targets_after_the_prompt_and_never_leaks():
  c = cfg_for('prefix', L=12, V=40)
  model, params = make(c, scale=3.0)
  x = np.asarray(jax.random.randint(jax.random.PRNGKey(1), (2, 12), 4, 40))
  P = jnp.array([5, 0])
  s = objectives.ar_terms(model, params, {'targets': jnp.asarray(x)}, None, False, P)
  assert float(s['tokens']) == (12 - 5) + 12
  logits = model.apply({'params': params}, objectives.shift_inputs(jnp.asarray(x)), 'prefix',
                       P + 1)
  lp = jax.nn.log_softmax(logits)
  manual = sum(-float(lp[b, i, x[b, i]]) for b in range(2) for i in range(12) if i >= int(P[b]))
  np.testing.assert_allclose(float(s['nll_sum']), manual, rtol=1e-5)
  # no position with loss can see the target it predicts: changing x_i leaves logits at i unchanged
  for i in range(5, 12):
    x2 = x.copy()
    x2[0, i] = 4 + (x2[0, i] - 3) % 36
    l2 = model.apply({'params': params}, objectives.shift_inputs(jnp.asarray(x2)), 'prefix',
                     P + 1)
    np.testing.assert_allclose(l2[0, i], logits[0, i], atol=1e-5)
  # the prompt is bidirectional: a late prompt token changes an early prompt position
  x3 = x.copy()
  x3[0, 3] = 4 + (x3[0, 3] - 3) % 36
  l3 = model.apply({'params': params}, objectives.shift_inputs(jnp.asarray(x3)), 'prefix', P + 1)
  assert float(jnp.abs(l3[0, 1] - logits[0, 1]).max()) > 1e-4


def test_dual_with_prefix_ar_share():
  c = cfg_for('dual', 0.5, L=16, V=40)
  c.dual.ar_attention = 'prefix'
  model, params = make(c)
  batch = {'targets': jax.random.randint(jax.random.PRNGKey(1), (8, 16), 4, 40)}
  loss, m = objectives.loss_fn(params, batch, jax.random.PRNGKey(2), model=model, cfg=c)
  assert 'prefix_nll' in m and 'mdm_nelbo' in m and np.isfinite(float(loss))
