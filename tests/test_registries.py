"""Extensions found by name through one registry (issue 29): noise schedules, time samplers (with
the parameters they declare and check), LR schedules and trackers; each config section checked by
its owner; the special ids in a core leaf. A toy of each kind is registered and removed again."""
import ast
import os

import jax.numpy as jnp
import pytest

from dlm_jax import config
from dlm_jax.core import model_config
from dlm_jax.core import noise
from dlm_jax.core import optim
from dlm_jax.core import sampling
from dlm_jax.core import schedules
from dlm_jax.core import sharding
from dlm_jax.core import tokens
from dlm_jax.core.registry import Param, registered
from dlm_jax.data import pipeline
from dlm_jax.data import tokenizers
from dlm_jax.errors import ConfigError
from dlm_jax.run import resume
from dlm_jax.run import trackers

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))


@pytest.fixture
def toy_sampler():
  """t = eps + (1 - eps) u^(1/power) on [eps, 1]: a sampler with its own parameter."""
  @registered(schedules.TIME_SAMPLERS)
  class Power(schedules.TimeDist):
    name = 'toy_power'
    params = (Param('power', 2.0, lambda v: v > 0, 'must be > 0, got {v}'),)

    def __init__(self, eps, power):
      super().__init__(eps)
      self.power = float(power)

    def density(self, t):
      s = (t - self.eps) / (1.0 - self.eps)
      return jnp.where((t >= self.eps) & (t <= 1.0),
                       self.power * s ** (self.power - 1.0) / (1.0 - self.eps), 0.0)

    def from_uniform(self, u):
      return self.eps + (1.0 - self.eps) * u ** (1.0 / self.power)
  yield Power
  del schedules.TIME_SAMPLERS['toy_power']


def test_a_registered_time_sampler_is_a_choice_with_its_parameter_in_the_schema(toy_sampler):
  c = config.base()
  assert c.diffusion.sampler_params.power == 2.0  # its Param's default, from the registry
  c.diffusion.time_sampler, c.diffusion.weighting = 'toy_power', 'plain'
  config.validate(c)
  dist = schedules.get_time_dist(c.diffusion)
  assert isinstance(dist, toy_sampler) and dist.power == 2.0
  c.diffusion.sampler_params.power = -1.0
  with pytest.raises(ConfigError, match=r'^config\.diffusion\.sampler_params\.power: must be > 0, '
                     r'got -1\.0$'):
    config.validate(c)
  c.diffusion.sampler_params.uniform_mix = 0.2  # mixed like any registered sampler but uniform
  c.diffusion.sampler_params.power = 3.0
  assert isinstance(schedules.get_time_dist(c.diffusion), schedules.UniformMixture)


def test_without_it_the_toy_sampler_is_unknown():
  c = config.base()
  assert 'power' not in c.diffusion.sampler_params
  c.diffusion.time_sampler = 'toy_power'
  with pytest.raises(ConfigError, match="config.diffusion.time_sampler: 'toy_power' is not one "
                     'of uniform, beta, logit_normal, truncated_normal'):
    config.validate(c)
  with pytest.raises(ValueError, match='unknown time sampler'):
    schedules.get_time_dist(c.diffusion)


@pytest.mark.parametrize('sampler,key,value,needle', [
    ('beta', 'beta_a', 0.0, 'must be > 0, got 0.0'),
    ('beta', 'beta_b', -1.0, 'must be > 0, got -1.0'),
    ('logit_normal', 'sigma', 0.0, 'must be > 0 (a width of 0.0 makes the density improper)'),
    ('truncated_normal', 'sigma', -2.0, 'must be > 0 (a width of -2.0 makes the density'),
])
def test_each_sampler_checks_its_own_parameters_only_when_chosen(sampler, key, value, needle):
  c = config.base()
  c.diffusion.weighting = 'plain'
  c.diffusion.sampler_params[key] = value
  config.validate(c)  # uniform reads none of them
  c.diffusion.time_sampler = sampler
  with pytest.raises(ConfigError, match='^' + f'config.diffusion.sampler_params.{key}: '
                     .replace('.', r'\.') + '.*' + needle.split(' (')[0]):
    config.validate(c)


def test_schedules_are_one_registry_and_their_parameters_are_checked():
  assert list(schedules.SCHEDULES) == ['linear', 'cosine', 'polynomial', 'loglinear', 'logsnr']
  c = config.base()
  for name, cls in schedules.SCHEDULES.items():
    assert isinstance(schedules.get_schedule(name, c.diffusion), cls)
  assert schedules.get_schedule('polynomial', c.diffusion).k == c.diffusion.poly_k
  assert schedules.get_schedule('loglinear', c.diffusion).delta == c.diffusion.eps
  assert schedules.get_schedule('logsnr', c.diffusion).shift == c.diffusion.logsnr_shift
  c.diffusion.poly_k = 0.0
  with pytest.raises(ConfigError, match=r'^config\.diffusion\.poly_k: must be positive, got 0\.0$'):
    config.validate(c)
  c.diffusion.poly_k, c.diffusion.logsnr_scale = 2.0, 0.5
  with pytest.raises(ConfigError, match=r'^config\.diffusion\.logsnr_scale: must be in \[1, 10\]'):
    config.validate(c)
  with pytest.raises(ValueError, match="unknown schedule 'nope'"):
    schedules.get_schedule('nope')


def test_a_registered_lr_schedule_is_a_choice_and_decides_resuming():
  flat = optim.LRSchedule('toy_flat', lambda t, rest: lambda step: t.lr * 0.5,
                          uses_num_steps=False)
  registered(optim.LR_SCHEDULES)(flat)
  try:
    c = config.base()
    c.train.lr_schedule, c.train.warmup_steps, c.train.lr = 'toy_flat', 0, 1.0
    config.validate(c)
    assert float(optim.lr_schedule(c.train)(5)) == 0.5
    longer = config.base()
    longer.train.lr_schedule, longer.train.warmup_steps, longer.train.lr = 'toy_flat', 0, 1.0
    longer.train.num_steps = 2 * c.train.num_steps
    assert resume.diff_for_resume(c.to_dict(), longer.to_dict()) == []
    c.train.lr_schedule = longer.train.lr_schedule = 'cosine'
    assert resume.diff_for_resume(c.to_dict(), longer.to_dict())[0].startswith(
        'train.num_steps: 1000 -> 2000 (the cosine learning rate depends on it')
  finally:
    del optim.LR_SCHEDULES['toy_flat']
  c = config.base()
  c.train.lr_schedule = 'toy_flat'
  with pytest.raises(ConfigError, match="config.train.lr_schedule: 'toy_flat' is not one of "
                     'cosine, wsd, constant'):
    config.validate(c)


def test_trackers_own_their_names_and_packages():
  assert list(trackers.TRACKERS) == ['tensorboard', 'wandb', 'clu']
  assert trackers.TRACKERS['clu'].needs == ('clu', 'tensorflow', 'tensorboard')
  c = config.base()
  c.train.trackers = 'tensorboard,mlflow'
  config.validate(c)  # the config is valid; the run refuses it before any work
  with pytest.raises(ConfigError, match="^config.train.trackers: 'mlflow' is not one of "
                     'tensorboard, wandb, clu$'):
    trackers.check_config(c)


def test_the_special_ids_live_in_a_core_leaf_that_core_reads():
  assert (tokens.PAD, tokens.BOS, tokens.EOS, tokens.MASK) == (0, 1, 2, 3)
  assert (tokenizers.PAD, tokenizers.MASK, tokenizers.SPECIALS) == (0, 3, tokens.SPECIALS)
  assert tokens.NUM_SPECIAL == len(tokens.SPECIALS) == 4
  tree = ast.parse(open(os.path.join(ROOT, 'dlm_jax', 'core', 'tokens.py')).read())
  assert not [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
  core = os.path.join(ROOT, 'dlm_jax', 'core')
  for f in sorted(os.listdir(core)):
    if f.endswith('.py'):
      tree = ast.parse(open(os.path.join(core, f)).read())
      reached = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
      assert not [m for m in reached if m.startswith('dlm_jax.data')], f


def test_each_section_is_checked_by_its_owner():
  c = config.base()
  for owner, key, value, needle in (
      (model_config, 'model.remat', 'some', "config.model.remat: 'some' is not one of auto"),
      (noise, 'diffusion.eps', 1.5, 'config.diffusion.eps: 1.5 is outside (0, 1)'),
      (sampling, 'sample.batch_size', 0, 'config.sample.batch_size: must be >= 1'),
      (sharding, 'mesh.fsdp', 0, 'config.mesh.fsdp: must be -1 (the rest) or >= 1'),
      (pipeline, 'data.packing', 'tight', "config.data.packing: 'tight' is not one of wrap, pad"),
      (optim, 'train.b2', 1.0, 'config.train.b1: Adam betas must be in [0, 1)')):
    bad = config.base()
    bad.update_from_flattened_dict({key: value})
    owner.check_config(c)
    for check in (owner.check_config, config.validate):
      with pytest.raises(ConfigError, match='^' + needle.replace('.', r'\.').replace('(', r'\(')
                         .replace(')', r'\)').replace('[', r'\[')):
        check(bad)


def test_a_name_registers_once():
  before = dict(optim.LR_SCHEDULES)
  with pytest.raises(ValueError, match="'wsd': an extension needs a name not yet registered"):
    registered(optim.LR_SCHEDULES)(optim.LRSchedule('wsd', lambda t, rest: None))
  assert optim.LR_SCHEDULES == before
