"""Uniform and hybrid noise (core/family.py): the NELBO term is the path KL's rate, exact against
a brute-force sum over the generator; the bound is tight at the true posterior and stays a bound
with eps truncation once the reconstruction term is in; the training draws follow q_t and the
training estimator's expectation is the NELBO under every time sampler; masked noise keeps today's
numbers; bad settings are refused in one line.
"""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlm_jax import config as config_lib
from dlm_jax.core import family
from dlm_jax.core import model as model_lib
from dlm_jax.core import noise as noise_lib
from dlm_jax.core import objectives
from dlm_jax.core import schedules
from dlm_jax.core.tokens import MASK

V, N = 8, [4, 5, 6]  # ids 0-3 specials, 7 never predicted
n = len(N)


def prior(p):
  pi = np.zeros(V)
  pi[MASK], pi[N] = 1 - p, p / n
  return pi


def brute_term(xhat, x, z, a, da, p):
  """sum_{y != z} [R_hat - R + R log(R / R_hat)]: R(z->y|x) = (da/a) pi(z) Q_y(x) / Q_z(x), the
  true reverse rate; R_hat = sum_x' xhat(x') R(z->y|x'), the model's."""
  pi, r = prior(p), da / a
  Q = lambda xv: a * np.eye(V)[xv] + (1 - a) * pi
  tot = 0.0
  for y in range(V):
    if y == z:
      continue
    R = r * pi[z] * Q(x)[y] / Q(x)[z]
    Rh = r * pi[z] * sum(xhat[xp] * Q(xp)[y] / Q(xp)[z] for xp in N)
    tot += Rh - R + (R * np.log(R / Rh) if R > 0 else 0.0)
  return tot


def term(logits, x, z, a, p, da=1.0):
  B = len(a)
  return np.asarray(family.token_nelbo(
      jnp.asarray(logits, jnp.float32), jnp.asarray(x), jnp.asarray(z), jnp.asarray(a, jnp.float32),
      jnp.full(B, da, jnp.float32), jnp.asarray((1 - np.asarray(a)) * p / n, jnp.float32),
      jnp.full(B, float(n), jnp.float32)), np.float64)


@pytest.mark.parametrize('p', [0.3, 1.0])
def test_the_term_is_the_path_kl_rate_out_of_z(p):
  """token_nelbo equals the brute-force rate sum for every x, every z (a [MASK], x itself, another
  token), at alpha from nearly clean to nearly pure noise, for confident and flat predictors."""
  rng = np.random.default_rng(0)
  worst = 0.0
  for a in (0.999, 0.9, 0.5, 0.01):
    for scale in (0.3, 3.0):
      lg = np.full(V, -1e9)
      lg[N] = rng.normal(size=n) * scale
      xhat = np.exp(lg - np.logaddexp.reduce(lg))
      for x in N:
        for z in ([MASK] if p < 1 else []) + N:
          got = term(lg[None, None], [[x]], [[z]], [a], p, 1.3)[0, 0]
          want = brute_term(xhat, x, z, a, 1.3, p)
          worst = max(worst, abs(got - want) / max(1.0, abs(want)))
  assert worst < 2e-4, worst


L = 2
X = np.array(list(itertools.product(N, repeat=L)))
P_DATA = np.random.default_rng(1).dirichlet(np.ones(len(X)))


def posterior_logits(t, Z, p):
  """log E[x_i = v | z_t = z] for every t, z (T x Z x L x V) under P_DATA, by enumeration; with
  q(z | x) for every t, z, x (T x Z x X)."""
  a, pi = 1 - t, prior(p)
  q = lambda zc, xc: (a[:, None, None] * (zc[None, :, None] == xc[None, None, :])
                      + (1 - a[:, None, None]) * pi[zc][None, :, None])
  Qzx = np.prod([q(Z[:, i], X[:, i]) for i in range(L)], 0)
  post = Qzx * P_DATA
  post /= post.sum(2, keepdims=True)
  lg = np.full((len(t), len(Z), L, V), -1e9)
  for i in range(L):
    for v in N:
      lg[:, :, i, v] = np.log(np.maximum(post[:, :, X[:, i] == v].sum(2), 1e-30))
  return lg, Qzx


def exact_nelbo(p, lo):
  """Per x: (1/(1-lo)) int_lo^1 E_z[sum_i term] dt (linear schedule, quadrature in t,
  enumeration of z), with the true posterior as the model; and E_z[sum_i -log xhat(x | z_lo)]."""
  Z = np.array(list(itertools.product(([MASK] if p < 1 else []) + N, repeat=L)))
  xg, wg = np.polynomial.legendre.leggauss(20)
  edges = np.concatenate([np.geomspace(lo, 0.05, 30), np.linspace(0.05, 1, 20)[1:]])
  mid, half = 0.5 * (edges[1:] + edges[:-1]), 0.5 * np.diff(edges)
  t = (mid[:, None] + half[:, None] * xg).ravel()
  w = (half[:, None] * wg).ravel()
  lg, Qzx = posterior_logits(t, Z, p)
  T, nz, nx = len(t), len(Z), len(X)
  shape = (T, nz, nx)
  got = term(np.broadcast_to(lg[:, :, None], shape + (L, V)).reshape(-1, L, V),
             np.broadcast_to(X[None, None], shape + (L,)).reshape(-1, L),
             np.broadcast_to(Z[None, :, None], shape + (L,)).reshape(-1, L),
             np.broadcast_to(1 - t[:, None, None], shape).ravel(), p)
  integral = np.einsum('t,tzx,tzx->x', w, Qzx, got.sum(1).reshape(shape)) / (1 - lo)
  lg0, Q0 = posterior_logits(np.array([lo]), Z, p)
  logp0 = lg0[0] - np.logaddexp.reduce(lg0[0], -1, keepdims=True)
  recon = np.array([np.sum(Q0[0, :, k] * -sum(logp0[:, i, X[k, i]] for i in range(L)))
                    for k in range(nx)])
  return integral, recon


@pytest.mark.parametrize('p', [0.3, 1.0])
def test_the_bound_is_tight_at_the_true_posterior_and_a_bound_when_truncated(p):
  """With the exact posterior as x_hat: the NELBO integrated from t -> 0 is -log p(x) for every x
  (the reverse process is then the true one); truncated at eps = 1e-3 the integral alone falls
  below -log p(x) (why validation adds the reconstruction term), and with it, it is above."""
  nll = -np.log(P_DATA)
  full, _ = exact_nelbo(p, 1e-6)
  np.testing.assert_allclose(full, nll, rtol=3e-4)
  integral, recon = exact_nelbo(p, 1e-3)
  assert np.any(integral < nll * (1 - 1e-3))
  assert np.all(integral + recon >= nll), (integral + recon) / nll


def family_cfg(noise='uniform', **diffusion):
  c = config_lib.base()
  c.objective = 'mdm'
  c.model.update(dict(d_model=16, num_layers=1, num_heads=2, vocab_size=V, mlp_dim=32,
                      vocab_real=7, unpredicted='0,1,2'))  # N = 4, 5, 6
  c.data.seq_len = 6
  c.diffusion.noise = noise
  for k, v in diffusion.items():
    if k in c.diffusion.sampler_params:
      c.diffusion.sampler_params[k] = v
    else:
      c.diffusion[k] = v
  config_lib.validate(c)
  return c


@pytest.mark.parametrize('noise,p', [('uniform', 1.0), ('hybrid', 0.3)])
def test_training_draws_follow_q_t(noise, p):
  """Noise.draw at a fixed t (a point-mass check through many rows): a maskable position is x with
  probability alpha + (1 - alpha) pi(x), [MASK] with (1 - alpha)(1 - p), another id of N with
  (1 - alpha) p / n; never an unpredicted id; BOS and PAD under pad=visible untouched."""
  c = family_cfg(noise, pad='visible', **({'p_uniform': p} if noise == 'hybrid' else {}))
  nz = noise_lib.Noise.of(c)
  np.testing.assert_array_equal(nz.ids_N, N)
  rows = np.array([[1, 4, 5, 6, 2, 0]] * 200_000, np.int32)  # BOS x x x EOS PAD
  d = nz.draw(jax.random.PRNGKey(0), jnp.asarray(rows))
  z, a = np.asarray(d['z']), np.asarray(d['a'])
  assert np.all(z[:, 0] == 1) and np.all(z[:, 5] == 0)
  assert not np.any(z == 7)
  pi = prior(p)
  for col in (1, 2, 3):
    x = rows[0, col]
    for y in range(V):
      want = np.mean(a * (y == x) + (1 - a) * pi[y])
      assert abs(np.mean(z[:, col] == y) - want) < 4e-3, (col, y)


@pytest.mark.parametrize('sampler', [('uniform', {}), ('beta', dict(beta_a=2.0, beta_b=2.0)),
                                     ('logit_normal', dict(mu=0.0, sigma=1.0, uniform_mix=0.05))],
                         ids=lambda s: s[0])
@pytest.mark.parametrize('schedule', ['linear', 'cosine', 'logsnr'])
def test_the_training_estimator_averages_to_the_nelbo(schedule, sampler):
  """E over Noise.draw (t ~ the sampler, z ~ q_t) of sum elbo_b term_b, for a fixed predictor,
  equals (1/(1-eps)) int_eps^1 E_z[sum term] dt computed by quadrature and enumeration of z (the
  positions are independent given fixed logits), for hybrid noise (every kind of z)."""
  # eps = 0.02: near t = 0 a rare corrupted token carries a weight ~ 1/t (a heavy tail)
  kw = dict(sampler[1], time_sampler=sampler[0], schedule=schedule, p_uniform=0.4,
            logsnr_shift=1.0, eps=0.02)
  c = family_cfg('hybrid', **kw)
  nz = noise_lib.Noise.of(c)
  x = np.array([4, 5, 6, 4, 4, 5], np.int32)
  lg = np.random.default_rng(3).normal(size=(6, V)) * 1.5
  lg[:, [0, 1, 2, 3, 7]] = -1e9
  eps, p = c.diffusion.eps, 0.4
  sch = schedules.get_schedule(schedule, c.diffusion)
  xg, wg = np.polynomial.legendre.leggauss(16)
  edges = np.concatenate([np.geomspace(eps, 0.05, 100), np.linspace(0.05, 1, 200)[1:]])
  mid, half = 0.5 * (edges[1:] + edges[:-1]), 0.5 * np.diff(edges)
  t = (mid[:, None] + half[:, None] * xg).ravel()
  w = (half[:, None] * wg).ravel()
  a = np.asarray(sch.alpha(jnp.asarray(t, jnp.float32)), np.float64)
  da = np.asarray(sch.weight(jnp.asarray(t, jnp.float32)) * sch.mask_prob(
      jnp.asarray(t, jnp.float32)), np.float64)
  pi = prior(p)
  exact = 0.0
  for i in range(6):
    for z in [MASK] + N:
      qz = a * (z == x[i]) + (1 - a) * pi[z]
      tz = np.asarray(family.token_nelbo(
          jnp.asarray(np.broadcast_to(lg[i], (len(t), 1, V)), jnp.float32),
          jnp.full((len(t), 1), x[i]), jnp.full((len(t), 1), z), jnp.asarray(a, jnp.float32),
          jnp.asarray(da, jnp.float32), jnp.asarray((1 - a) * p / n, jnp.float32),
          jnp.full(len(t), float(n))), np.float64)[:, 0]
      exact += np.sum(w * qz * tz)
  exact /= 1 - eps
  targets = jnp.asarray(np.tile(x, (4096, 1)))
  logits = jnp.asarray(np.broadcast_to(lg, (4096, 6, V)), jnp.float32)

  @jax.jit
  def est(key):
    d = nz.draw(key, targets)
    tok = family.token_nelbo(logits, targets, d['z'], d['a'], d['da'], d['c'], d['n'])
    return jnp.sum(d['elbo'][:, None] * tok * d['maskable'], 1)
  vals = np.concatenate([np.asarray(est(k), np.float64)
                         for k in jax.random.split(jax.random.PRNGKey(0), 40)])
  se = vals.std() / np.sqrt(vals.size)
  assert abs(vals.mean() - exact) < 4 * se + 1e-4 * exact, (vals.mean(), exact, se)
  assert se < 0.02 * exact


# the default config's losses on a fixed batch, measured on the code before the noise family
MASKED_BEFORE = {
    ('mdm', 'elbo'): {'mdm_nelbo': 3.0907058715820312, 'mask_rate': 0.515625,
                      'loss': 3.0907058715820312},
    ('mdm', 'plain'): {'mdm_loss': 3.0372889041900635, 'mask_rate': 0.5, 'loss': 3.0372889041900635},
    ('dual', 'elbo'): {'ar_nll': 3.71631121635437, 'mdm_nelbo': 3.6076600551605225,
                       'mask_rate': 0.6875, 'loss': 3.6619856357574463},
    ('dual', 'plain'): {'ar_nll': 3.71631121635437, 'mdm_loss': 3.7637038230895996,
                        'mask_rate': 0.65625, 'loss': 3.7400074005126953}}


@pytest.mark.parametrize('case', list(MASKED_BEFORE), ids=lambda c: '_'.join(c))
def test_masked_noise_keeps_the_numbers_it_had(case):
  objective, weighting = case
  c = config_lib.base()
  c.objective = objective
  c.model.update(dict(d_model=32, num_layers=2, num_heads=2, vocab_size=40, mlp_dim=64))
  c.data.seq_len = 16
  c.diffusion.weighting = weighting
  if weighting == 'plain':
    c.diffusion.time_sampler = 'logit_normal'
  model, params = model_lib.init_params(c.model, jax.random.PRNGKey(0), 16)
  x = jax.random.randint(jax.random.PRNGKey(1), (8, 16), 4, 40)
  _, m = objectives.loss_fn(params, {'targets': x}, jax.random.PRNGKey(2), model=model, cfg=c)
  for k, v in MASKED_BEFORE[case].items():
    assert float(m[k]) == pytest.approx(v, rel=1e-6, abs=1e-6), k


@pytest.mark.parametrize('key,value,needle', [
    ('diffusion.p_uniform', 1.0, r'config\.diffusion\.p_uniform: 1\.0 is outside \(0, 1\)'),
    ('diffusion.p_uniform', 0.0, r'config\.diffusion\.p_uniform: 0\.0 is outside \(0, 1\)'),
    ('diffusion.mask_pattern', 'exact_count', r'config\.diffusion\.mask_pattern: exact_count needs '
     r'diffusion\.noise=masked'),
    ('diffusion.schedule', 'loglinear', r'config\.diffusion\.schedule: loglinear keeps alpha\(1\)'),
    ('eval.estimators', 'ce', r"config\.eval\.estimators: 'ce' is a training loss"),
    ('eval.estimators', 'pll', r'config\.eval\.estimators: pll reads \[MASK\]-noised rows'),
    ('diffusion.logsnr_scale', 0.5, r'config\.diffusion\.logsnr_scale: must be in \[1, 10\]'),
])
def test_bad_noise_settings_are_refused_in_one_line(key, value, needle):
  c = config_lib.base()
  c.diffusion.noise = 'hybrid'
  section, k = key.split('.')
  c[section][k] = value
  with pytest.raises(config_lib.ConfigError, match='^' + needle) as e:
    config_lib.validate(c)
  assert '\n' not in str(e.value)


def test_weighting_ce_trains_the_cross_entropy_and_validation_keeps_the_nelbo():
  """ce: the loss is the unweighted CE of the noised tokens; the reported NELBO (masked noise:
  training sums; any noise: validation) is the same number as under elbo weighting."""
  c = config_lib.base()
  c.model.update(dict(d_model=16, num_layers=1, num_heads=2, vocab_size=24, mlp_dim=32))
  c.data.seq_len = 12
  model, params = model_lib.init_params(c.model, jax.random.PRNGKey(0), 12)
  x = jax.random.randint(jax.random.PRNGKey(1), (4, 12), 4, 24)
  out = {}
  for wt in ('elbo', 'ce'):
    c.diffusion.weighting = wt
    out[wt] = objectives.loss_fn(params, {'targets': x}, jax.random.PRNGKey(2), model=model,
                                 cfg=c)[1]
  assert float(out['ce']['mdm_nelbo']) == pytest.approx(float(out['elbo']['mdm_nelbo']))
  s = out['ce']['sums']
  assert float(s['mdm_loss_sum']) < float(s['mdm_sum'])  # 1/t >= 1: the CE sum is smaller
  assert float(out['ce']['loss']) == pytest.approx(float(s['mdm_loss_sum'] / s['tokens']))


@pytest.mark.parametrize('noise', ['uniform', 'hybrid'])
def test_eval_nelbo_estimates_the_family_bound(noise):
  """likelihood.Scorer's `nelbo` (--mode eval, zero-shot, lm-eval) under uniform / hybrid noise:
  its mean over many samples equals the exact bound of a real (tiny, random) model, computed by
  enumerating every noised row z (3 scored tokens) with quadrature in t, plus the reconstruction
  term at eps; context tokens stay clean."""
  from dlm_jax.infer import likelihood
  c = family_cfg(noise, eps=0.02, **({'p_uniform': 0.4} if noise == 'hybrid' else {}))
  c.model.vocab_size, c.model.vocab_real = 8, 8
  c.model.unpredicted = '0,1,2'  # N = 4..7
  p = noise_lib.uniform_frac(c.diffusion)
  model, params = model_lib.init_params(c.model, jax.random.PRNGKey(0), 4)
  params = jax.tree_util.tree_map(lambda v: v * 3.0, params)
  x = np.array([[5, 4, 7, 6]], np.int32)
  score = np.array([[False, True, True, True]])
  ids = [4, 5, 6, 7]
  pi = np.zeros(V)
  pi[MASK], pi[ids] = 1 - p, p / 4
  states = ([MASK] if p < 1 else []) + ids
  Z = np.array([[5, *z] for z in itertools.product(states, repeat=3)], np.int32)
  sch = schedules.Linear()
  eps = c.diffusion.eps
  xg, wg = np.polynomial.legendre.leggauss(12)
  edges = np.concatenate([np.geomspace(eps, 0.05, 40), np.linspace(0.05, 1, 40)[1:]])
  mid, half = 0.5 * (edges[1:] + edges[:-1]), 0.5 * np.diff(edges)
  t = (mid[:, None] + half[:, None] * xg).ravel()
  w = (half[:, None] * wg).ravel()
  logits = np.asarray(model.apply({'params': params}, objectives.shift_inputs(jnp.asarray(Z)),
                                  'bidirectional'), np.float64)     # Z x L x V: t-free
  q = lambda tt: np.prod([(1 - tt)[:, None] * (Z[None, :, i] == x[0, i]) +
                          tt[:, None] * pi[Z[None, :, i]] for i in (1, 2, 3)], 0)  # T x Z
  T = len(t)
  tok = np.asarray(family.token_nelbo(
      jnp.asarray(np.broadcast_to(logits, (T,) + logits.shape).reshape(-1, 4, 8), jnp.float32),
      jnp.asarray(np.broadcast_to(x, (T * len(Z), 4))), jnp.asarray(np.tile(Z, (T, 1))),
      jnp.asarray(np.repeat(1 - t, len(Z)), jnp.float32),
      jnp.ones(T * len(Z), jnp.float32), jnp.asarray(np.repeat(t * p / 4, len(Z)), jnp.float32),
      jnp.full(T * len(Z), 4.0)), np.float64).reshape(T, len(Z), 4)[..., 1:].sum(-1)
  integral = np.sum(w[:, None] * q(t) * tok) / (1 - eps)
  lp = logits - np.logaddexp.reduce(logits, -1, keepdims=True)
  recon = -np.sum(q(np.array([eps]))[0] * lp[:, [1, 2, 3], x[0, 1:]].sum(-1))
  exact = integral + recon
  sc = likelihood.Scorer(model, params, dcfg=c.diffusion, nelbo_samples=8192, chunk=2048)
  out = sc('nelbo', x, score)
  assert -out['logp'][0] == pytest.approx(exact, abs=4 * out['se'][0] + 1e-3 * exact), (
      -out['logp'][0], exact, out['se'][0])
  assert out['se'][0] < 0.015 * exact
