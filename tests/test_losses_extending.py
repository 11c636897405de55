"""Loss kinds and objectives as registered objects: the registry reproduces the objectives it
replaced, and a new kind (tests/extending/toy_loss.py) is one object in one file that trains,
validates and reports through the normal code, then leaves the registries as they were."""
import math

import jax
import numpy as np
import pytest

from conftest import tiny_config
from dlm_jax import config as config_lib
from dlm_jax.core import losses
from dlm_jax.core import model as model_lib
from dlm_jax.core import objectives
from dlm_jax.core import sampling
from dlm_jax.core import sharding
from dlm_jax.run import loop
from dlm_jax.run import validate
from extending import toy_loss


def cfg_for(objective, ar_attention='causal', ar_weight='1/2'):
  c = tiny_config(objective)
  c.dual.ar_attention, c.dual.ar_weight = ar_attention, ar_weight
  return c


# (objective, dual.ar_attention) -> trained kinds, MDM fraction, validation, sample modes, as the
# positional table of lambdas had them
EXPECTED = {
    ('ar', 'causal'): (('ar', None), 0, ('ar',), ('ar',)),
    ('mdm', 'causal'): ((None, 'mdm'), 1, ('mdm',), ('mdm',)),
    ('prefix', 'causal'): (('prefix', None), 0, ('ar', 'prefix'), ('ar',)),
    ('dual', 'causal'): (('ar', 'mdm'), 0.5, ('ar', 'mdm'), ('ar', 'mdm')),
    ('dual', 'prefix'): (('prefix', 'mdm'), 0.5, ('ar', 'mdm', 'prefix'), ('ar', 'mdm')),
}


@pytest.mark.parametrize('objective,attention', list(EXPECTED))
def test_objectives_compose_the_kinds_they_replaced(objective, attention):
  kinds, rho, val, sample = EXPECTED[(objective, attention)]
  c = cfg_for(objective, attention)
  o = objectives.of(c)
  assert tuple(k and k.name for k in o.trained(c)) == kinds
  assert objectives.mdm_fraction(c) == rho
  assert o.validation(c) == validate.modes(c) == val
  assert o.sample_modes == sample == objectives.sample_modes(c)
  assert objectives.prefix_ar(c) == (kinds[0] == 'prefix')


def test_validation_reports_the_same_metrics_in_the_same_order():
  """Metric names and their order as the per-mode branches wrote them (dual, prefix-LM share)."""
  c = config_lib.resolve(cfg_for('dual', 'prefix'), 50)
  model, params = model_lib.init_params(c.model, jax.random.PRNGKey(0), 32)
  batches = [{'targets': np.asarray(jax.random.randint(jax.random.PRNGKey(1), (8, 32), 4, 50))}]
  out = validate.Validator(model, c, batches, sharding.make_mesh(c.mesh), 4.0)(params)
  assert list(out) == ['ar_nll', 'ar_ppl', 'prefix_nll', 'mdm_nelbo', 'mdm_ppl', 'ar_bpb',
                       'mdm_bpb', 'eval_tokens']
  assert list(validate.estimands(c)) == ['ar_nll', 'prefix_nll', 'mdm_nelbo', '*_ppl', '*_bpb']


def test_every_estimator_decodes_with_a_sampler():
  assert {e: losses.decoder_of(e) for e in ('ar', 'nelbo', 'fused')} == dict(
      ar='ar', nelbo='mdm', fused='mdm')
  assert all(losses.decoder_of(e) in sampling.MODES for e in objectives.ESTIMATORS)


def test_registering_twice_or_an_unknown_kind_is_refused():
  with pytest.raises(ValueError, match='already registered'):
    losses.register(losses.AR())
  with pytest.raises(ValueError, match='unregistered loss kinds nope'):
    objectives.register('toy', objectives.Objective(kinds=('nope',), estimators=('ar',),
                                                    task_estimator='ar', headline=()))
  assert 'toy' not in objectives.OBJECTIVES


@pytest.fixture
def toy():
  kinds, objs = dict(losses.KINDS), dict(objectives.OBJECTIVES)
  toy_loss.register()
  try:
    yield
  finally:
    toy_loss.unregister()
    # back to the original state: the same objects, in the same order
    assert list(losses.KINDS.items()) == list(kinds.items())
    assert list(objectives.OBJECTIVES.items()) == list(objs.items())


def test_toy_kind_is_twice_the_ar_loss_with_the_same_metric(toy):
  c = config_lib.resolve(tiny_config('doubled'), 50)
  a = config_lib.resolve(tiny_config('ar'), 50)
  model, params = model_lib.init_params(c.model, jax.random.PRNGKey(0), 32)
  batch = {'targets': jax.random.randint(jax.random.PRNGKey(1), (8, 32), 4, 50)}
  rng = jax.random.PRNGKey(2)
  loss, m = objectives.loss_fn(params, batch, rng, model=model, cfg=c)
  ar_loss, am = objectives.loss_fn(params, batch, rng, model=model, cfg=a)
  np.testing.assert_allclose(loss, 2 * ar_loss, rtol=1e-6)
  np.testing.assert_allclose(m['doubled_nll'], am['ar_nll'], rtol=1e-6)
  assert set(m['sums']) == {'loss', 'tokens', 'doubled_sum', 'doubled_tokens'}
  assert objectives.mdm_fraction(c) == 0 and objectives.sample_modes(c) == ('ar',)


def test_toy_kind_trains_through_the_normal_step_and_reports_its_validation(toy, tmp_path):
  c = tiny_config('doubled', num_steps=4, eval_every=4, checkpoint_every=4)
  c.sample.num_samples = 0
  s = loop.train_and_evaluate(config_lib.validate(c), str(tmp_path / 'run'))
  assert s['objective'] == 'doubled' and s['steps'] == 4
  assert math.isfinite(s['final']['doubled_nll']) and 'doubled_ppl' not in s['final']
  assert 'doubled_bpb' in s['final'] and not any(k.startswith(('ar_', 'mdm_')) for k in s['final'])
  assert s['estimands']['doubled_nll'].endswith('causal (trained at weight 2)')
