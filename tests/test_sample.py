import jax
import jax.numpy as jnp
import numpy as np

from dlm_jax import config, model as model_lib, objectives, sample
from dlm_jax.data.tokenizers import MASK


def setup():
  c = config.base().model
  c.update(dict(d_model=32, num_layers=2, num_heads=2, vocab_size=30, mlp_dim=64))
  model, params = model_lib.init_params(c, jax.random.PRNGKey(0), 8)
  params = jax.tree_util.tree_map(lambda p: 5 * p, params)
  return model, params


def test_greedy_ar_sample_is_argmax_chain():
  model, params = setup()
  x = np.asarray(sample.ar_sample(model, params, jax.random.PRNGKey(1), 2, 6, temperature=0.0))
  for b in range(2):
    for i in range(6):
      prefix = jnp.asarray(x[b:b + 1])
      logits = model.apply({'params': params}, objectives.shift_inputs(prefix), 'causal')
      assert int(jnp.argmax(logits[0, i])) == x[b, i]


def test_mdm_sample_unmasks_everything():
  model, params = setup()
  for steps in (1, 3, 8):
    x = np.asarray(sample.mdm_sample(model, params, jax.random.PRNGKey(2), 3, 8, steps))
    assert not (x == MASK).any()
    assert x.min() >= 0
