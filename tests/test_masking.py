import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

from dlm_jax import config
from dlm_jax.core import noise as noise_lib
from dlm_jax.core import schedules
from dlm_jax.data.tokenizers import BOS, EOS, PAD

EPS = 1e-3
SAMPLERS = [
    ('uniform', {}),
    ('beta', dict(beta_a=2.0, beta_b=2.0)),
    ('beta', dict(beta_a=5.0, beta_b=3.0)),
    ('logit_normal', dict(mu=0.0, sigma=1.0)),
    ('logit_normal', dict(mu=0.5, sigma=0.5)),
    ('truncated_normal', dict(mu=0.5, sigma=0.15)),
]


def dcfg(name, params=None, **kw):
  d = config.base().diffusion
  d.time_sampler = name
  for k, v in (params or {}).items():
    d.sampler_params[k] = v
  for k, v in kw.items():
    d[k] = v
  return d


def reference_pdf(name, p):
  """Independent (scipy) density of the untruncated law."""
  if name == 'uniform':
    return lambda t: 1.0
  if name == 'beta':
    return stats.beta(p['beta_a'], p['beta_b']).pdf
  if name == 'logit_normal':
    return lambda t: stats.norm(p['mu'], p['sigma']).pdf(np.log(t / (1 - t))) / (t * (1 - t))
  return stats.norm(p['mu'], p['sigma']).pdf


def truncated_moments(name, p):
  f = reference_pdf(name, p)
  z = integrate.quad(f, EPS, 1, limit=200)[0]
  m1 = integrate.quad(lambda t: t * f(t), EPS, 1, limit=200)[0] / z
  m2 = integrate.quad(lambda t: t * t * f(t), EPS, 1, limit=200)[0] / z
  return m1, m2 - m1 * m1


@pytest.mark.parametrize('name,params', SAMPLERS)
@pytest.mark.parametrize('ld', [False, True])
def test_sampler_mean_and_variance_match_analytic(name, params, ld):
  dist = schedules.get_time_dist(dcfg(name, params))
  n = 200_000
  t = np.asarray(noise_lib.sample_times(jax.random.PRNGKey(0), n, dist, ld))
  assert t.min() >= EPS and t.max() <= 1.0
  mean, var = truncated_moments(name, params)
  assert abs(t.mean() - mean) < 4 * np.sqrt(var / n) + 1e-4
  assert abs(t.var() - var) < 0.02 * var


@pytest.mark.parametrize('name,params', SAMPLERS)
def test_density_integrates_to_one_and_matches_histogram(name, params):
  dist = schedules.get_time_dist(dcfg(name, params))
  q = lambda t: float(dist.density(jnp.float32(t)))
  assert abs(integrate.quad(q, EPS, 1, limit=200)[0] - 1) < 1e-3
  ref = reference_pdf(name, params)
  z = integrate.quad(ref, EPS, 1, limit=200)[0]
  grid = np.linspace(0.05, 0.95, 19)
  np.testing.assert_allclose([q(g) for g in grid], [ref(g) / z for g in grid], rtol=2e-3)
  t = np.asarray(noise_lib.sample_times(jax.random.PRNGKey(1), 400_000, dist, False))
  hist, edges = np.histogram(t, bins=20, range=(EPS, 1.0), density=True)
  mid = 0.5 * (edges[1:] + edges[:-1])
  dens = np.array([q(m) for m in mid])
  # bin-averaged density vs midpoint density: loose, but catches a wrong sampler or density
  np.testing.assert_allclose(hist, dens, rtol=0.08, atol=0.02)


@pytest.mark.parametrize('schedule', schedules.SCHEDULES)
def test_weight_matches_finite_difference(schedule):
  s = schedules.get_schedule(schedule, config.base().diffusion)
  t = jnp.linspace(0.02, 0.98, 49, dtype=jnp.float32)
  h = 1e-3
  fd = (s.alpha(t + h) - s.alpha(t - h)) / (2 * h)
  np.testing.assert_allclose(s.dalpha(t), fd, rtol=2e-3, atol=1e-4)
  np.testing.assert_allclose(s.weight(t), -fd / (1 - s.alpha(t)), rtol=2e-3)
  assert float(s.alpha(jnp.float32(0.0))) == pytest.approx(1.0, abs=1e-6)
  assert float(s.alpha(jnp.float32(1.0))) == pytest.approx(0.0, abs=1e-3)


# Unbiasedness of the `elbo` weights under every sampler, with no exclusions, and the refusal of
# those that cannot be: tests/test_estimands.py.


@pytest.mark.parametrize('a,b', [(2.0, 1.0), (1.0, 2.0), (1.0, 1.0), (3.0, 1.0), (1.0, 3.0)])
def test_beta_density_is_finite_on_the_closed_interval(a, b):
  """Beta(a, 1) at t = 1 and Beta(1, b) at t = 0 have density a and b (scipy), not 0 * log 0 =
  NaN; the float32 inverse CDF of Beta(a > 1, 1) does return t = 1.0, and the NELBO weight there
  is finite under both weightings. The truncated density integrates to 1."""
  dist = schedules.get_time_dist(dcfg('beta', dict(beta_a=a, beta_b=b)))
  ends = jnp.array([0.0, EPS, 1.0], jnp.float32)
  ref = stats.beta(a, b).pdf(np.array([0.0, EPS, 1.0]))
  np.testing.assert_allclose(dist.pdf0(ends), ref, rtol=1e-5)
  z = stats.beta(a, b).sf(EPS)
  np.testing.assert_allclose(dist.density(ends)[1:], ref[1:] / z, rtol=1e-5)
  q = lambda t: float(dist.density(jnp.float32(t)))
  assert integrate.quad(q, EPS, 1, limit=200, epsabs=1e-10)[0] == pytest.approx(1.0, abs=1e-6)
  if a > 1 and b == 1:  # the grid's last uniform reaches the end
    assert float(dist.from_uniform(jnp.array([1.0 - 2.0 ** -23], jnp.float32))[0]) == 1.0
  t = jnp.array([EPS, 1.0] if b == 1 else [EPS], jnp.float32)  # q(1) = 0 for b > 1: never drawn
  for weighting in ('elbo', 'plain'):
    w = noise_lib.time_weights(t, schedules.Linear(), dist, weighting)
    assert np.all(np.isfinite(np.asarray(w))), (weighting, w)


def test_beta_elbo_verdicts_name_the_right_end():
  """Beta(2, 1) (density largest at t = 1) is accepted under elbo; Beta(3, 1), whose density
  vanishes at eps as 3 t^2, is refused for that (its bias bound, not a NaN: 'up to inf')."""
  c = config.base()
  c.diffusion.time_sampler, c.diffusion.sampler_params.beta_a = 'beta', 2.0
  c.diffusion.sampler_params.beta_b = 1.0
  config.validate(c)
  assert noise_lib.nelbo_bias_bound(c.diffusion) < noise_lib.BIAS_TOLERANCE
  c.diffusion.sampler_params.beta_a = 3.0
  bound = noise_lib.nelbo_bias_bound(c.diffusion)
  assert noise_lib.BIAS_TOLERANCE < bound < 1.0  # finite: the density is, everywhere
  with pytest.raises(config.ConfigError, match=r'time_sampler: beta .*schedule=linear.*near eps '
                     r'or 1.*bias up to 0\.\d'):
    config.validate(c)


def test_logit_normal_elbo_weights_are_heavy_tailed_without_a_uniform_mix():
  pure = schedules.get_time_dist(dcfg('logit_normal', dict(mu=0.0, sigma=0.5)))
  mixed = schedules.get_time_dist(dcfg('logit_normal', dict(mu=0.0, sigma=0.5, uniform_mix=0.1)))
  t = jnp.array([EPS, 0.01, 0.5], jnp.float32)
  w_pure = noise_lib.time_weights(t, schedules.Linear(), pure, 'elbo')[1]
  w_mix = noise_lib.time_weights(t, schedules.Linear(), mixed, 'elbo')[1]
  assert float(w_pure[0]) > 1e20
  np.testing.assert_array_less(w_mix, schedules.Linear().weight(t) / 0.1 + 1e-3)


def test_uniform_mixture_density_and_sampler_agree():
  d = schedules.get_time_dist(dcfg('beta', dict(beta_a=4.0, beta_b=4.0, uniform_mix=0.3)))
  assert abs(integrate.quad(lambda s: float(d.density(jnp.float32(s))), EPS, 1)[0] - 1) < 1e-3
  t = np.asarray(noise_lib.sample_times(jax.random.PRNGKey(5), 200_000, d, True))
  hist, edges = np.histogram(t, bins=10, range=(EPS, 1.0), density=True)
  mid = 0.5 * (edges[1:] + edges[:-1])
  np.testing.assert_allclose(hist, [float(d.density(jnp.float32(m))) for m in mid], rtol=0.1)


def test_plain_weighting_is_biased_for_bell_samplers():
  dist = schedules.get_time_dist(dcfg('truncated_normal', dict(mu=0.5, sigma=0.2)))
  t = noise_lib.sample_times(jax.random.PRNGKey(0), 100_000, dist, True)
  w, elbo = noise_lib.time_weights(t, schedules.Linear(), dist, 'plain')
  f = t * (1 - t) ** 2
  exact = integrate.quad(lambda s: (1 - s) ** 2, EPS, 1)[0] / (1 - EPS)
  assert abs(float(jnp.mean(elbo * f)) - exact) < 0.01 * exact
  assert abs(float(jnp.mean(w * f)) - exact) > 0.1 * exact


@pytest.mark.parametrize('name,params', [('uniform', {}),
                                         ('truncated_normal', dict(mu=0.5, sigma=0.2)),
                                         ('beta', dict(beta_a=2.0, beta_b=2.0))])
def test_low_discrepancy_has_lower_variance_than_iid(name, params):
  dist = schedules.get_time_dist(dcfg(name, params))
  keys = jax.random.split(jax.random.PRNGKey(3), 2000)

  def est(k, ld):
    t = noise_lib.sample_times(k, 32, dist, ld)
    _, elbo = noise_lib.time_weights(t, schedules.Linear(), dist, 'elbo')
    return jnp.mean(elbo * jnp.sin(3 * t) * t * (1 - t))  # smooth after weighting
  v_iid = float(jnp.var(jax.vmap(lambda k: est(k, False))(keys)))
  v_ld = float(jnp.var(jax.vmap(lambda k: est(k, True))(keys)))
  assert v_ld < 0.2 * v_iid, (v_ld, v_iid)


def test_low_discrepancy_times_are_evenly_spread():
  u = np.sort(np.asarray(noise_lib.uniforms(jax.random.PRNGKey(0), 16, True)))
  np.testing.assert_allclose(np.diff(u), 1 / 16, atol=1e-6)


@pytest.mark.parametrize('pattern', ['bernoulli', 'exact_count'])
@pytest.mark.parametrize('mask_eos', [True, False])
@pytest.mark.parametrize('pad', ['predict', 'visible'])
def test_masks_never_touch_pad_or_specials(pattern, mask_eos, pad):
  noise = noise_lib.Noise(dcfg('uniform', mask_pattern=pattern, mask_eos=mask_eos, pad=pad))
  x = jax.random.randint(jax.random.PRNGKey(0), (512, 32), 4, 100)
  x = x.at[:, 5].set(EOS).at[:, 9].set(BOS).at[:, 20:].set(PAD)
  t, m, _, _ = noise.sample(jax.random.PRNGKey(1), x)
  assert not bool(m[:, 9].any())  # BOS never
  assert bool(m[:, 5].any()) == mask_eos
  # PAD: noised and predicted like any token (predict), or never (visible)
  assert bool(m[:, 20:].any()) == (pad == 'predict')
  # per-token masking rate equals 1 - alpha(t) on average
  rate = np.asarray(m[:, :5].mean(1))
  assert abs(rate.mean() - float(jnp.mean(t))) < 0.02


def test_exact_count_masks_stochastic_round_of_expected_count():
  noise = noise_lib.Noise(dcfg('uniform', mask_pattern='exact_count'))
  x = jnp.full((2000, 10), 7)
  t, m, _, _ = noise.sample(jax.random.PRNGKey(4), x)
  k = np.asarray(m.sum(1))
  expect = 10 * np.asarray(t)
  assert np.all((k == np.floor(expect)) | (k == np.ceil(expect)))
  assert abs(k.mean() - expect.mean()) < 0.05


@pytest.mark.parametrize('key,value,needle', [
    ('eps', 0.0, 'diffusion.eps'), ('eps', 1.0, 'diffusion.eps'),
    ('sigma', 0.0, 'sampler_params.sigma'), ('beta_a', -1.0, 'sampler_params.beta_a'),
    ('beta_b', 0.0, 'sampler_params.beta_b')])
def test_improper_densities_are_rejected(key, value, needle):
  c = config.base()
  if key == 'eps':
    c.diffusion.eps = value
  else:
    c.diffusion.time_sampler = 'beta' if key.startswith('beta') else 'logit_normal'
    c.diffusion.sampler_params[key] = value
  with pytest.raises(config.ConfigError, match=needle):
    config.validate(c)
