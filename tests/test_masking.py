import jax
import jax.numpy as jnp
import numpy as np

from dlm_jax import masking


def test_linear_weight_matches_finite_difference():
  t = jnp.linspace(0.01, 0.99, 50)
  s = masking.Linear
  h = 1e-3
  fd = (s.alpha(t + h) - s.alpha(t - h)) / (2 * h)
  np.testing.assert_allclose(s.dalpha(t), fd, rtol=1e-3)
  np.testing.assert_allclose(s.weight(t), -fd / (1 - s.alpha(t)), rtol=1e-3)
  np.testing.assert_allclose(s.weight(t), 1 / t, rtol=1e-5)


def test_low_discrepancy_times_are_evenly_spread():
  t = np.sort(np.asarray(masking.sample_times(jax.random.PRNGKey(0), 16, 'low_discrepancy', 0.0)))
  np.testing.assert_allclose(np.diff(t), 1 / 16, atol=1e-6)
  t = masking.sample_times(jax.random.PRNGKey(1), 1000, 'uniform', 0.1)
  assert float(t.min()) >= 0.1 and float(t.max()) <= 1.0


def test_bernoulli_mask_rate_and_maskable():
  t = jnp.full((4000,), 0.3)
  maskable = jnp.ones((4000, 16), bool).at[:, 0].set(False)
  m = masking.bernoulli_mask(jax.random.PRNGKey(0), t, maskable)
  assert not bool(m[:, 0].any())
  assert abs(float(m[:, 1:].mean()) - 0.3) < 0.01
