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


def test_mdm_infill_fills_only_the_span_and_keeps_the_rest():
  model, params = setup()
  x = jax.random.randint(jax.random.PRNGKey(3), (3, 8), 4, 30)
  fill = jnp.zeros((3, 8), bool).at[0, 5:].set(True).at[1, 2].set(True)
  out = np.asarray(sample.mdm_infill_greedy(model, params, x, fill, 3))
  assert not (out == MASK).any()
  np.testing.assert_array_equal(out[~np.asarray(fill)], np.asarray(x)[~np.asarray(fill)])


def test_ar_exact_match_equals_greedy_decoding():
  from dlm_jax import evaluate
  model, params = setup()
  # targets whose continuation is the model's own greedy output -> exact match 1
  prompt = jnp.array([[5, 6, 7, 0, 0, 0, 0, 0]])
  x = prompt
  for i in range(3, 8):
    logits = model.apply({'params': params}, objectives.shift_inputs(x), 'causal')
    x = x.at[0, i].set(jnp.argmax(logits[0, i]))
  batch = {'targets': x, 'prefix_len': jnp.array([3])}
  assert bool(evaluate.task_exact_match(model, params, batch, 'ar')[0])
  wrong = {'targets': x.at[0, 6].set((x[0, 6] + 1) % 26 + 4), 'prefix_len': jnp.array([3])}
  assert not bool(evaluate.task_exact_match(model, params, wrong, 'ar')[0])
  assert evaluate.task_exact_match(model, params, batch, 'mdm').shape == (1,)
