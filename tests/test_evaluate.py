import json
import os
import subprocess

import jax
import jax.numpy as jnp
import numpy as np

from conftest import ROOT, tiny_config
from dlm_jax import config
from dlm_jax.core import model as model_lib
from dlm_jax.core import noise as noise_lib
from dlm_jax.core import objectives
from dlm_jax.core import sharding
from dlm_jax.run import validate


def test_validator_matches_hand_computation_and_is_deterministic():
  cfg = config.resolve(tiny_config('dual'), 50)
  model, params = model_lib.init_params(cfg.model, jax.random.PRNGKey(0), 32)
  batches = [{'targets': np.asarray(jax.random.randint(jax.random.PRNGKey(i), (8, 32), 4, 50))}
             for i in range(2)]
  mesh = sharding.make_mesh(cfg.mesh)
  v = validate.Validator(model, cfg, batches, mesh, bytes_per_token=4.0)
  out = v(params)
  ce = []
  for b in batches:
    lp = jax.nn.log_softmax(model.apply({'params': params},
                                        objectives.shift_inputs(jnp.asarray(b['targets'])),
                                        'causal'))
    ce.append(-jnp.take_along_axis(lp, b['targets'][..., None], -1))
  np.testing.assert_allclose(out['ar_nll'], float(jnp.mean(jnp.stack(ce))), rtol=1e-5)
  np.testing.assert_allclose(out['ar_bpb'], out['ar_nll'] / 4.0 / np.log(2), rtol=1e-6)
  assert v(params) == out  # fixed seed: the MDM NELBO estimate is reproducible
  # a different training sampler does not change the validation estimator
  cfg2 = config.resolve(tiny_config('dual'), 50)
  cfg2.diffusion.time_sampler = 'beta'
  cfg2.diffusion.weighting = 'plain'
  assert validate.Validator(model, cfg2, batches, mesh, bytes_per_token=4.0)(params) == out


def test_validator_on_task_batches_never_masks_the_prompt():
  """Regression: the MDM NELBO of a task counts only target tokens and never noises the prompt."""
  cfg = config.resolve(tiny_config('mdm'), 50)
  model, params = model_lib.init_params(cfg.model, jax.random.PRNGKey(0), 32)
  x = np.array(jax.random.randint(jax.random.PRNGKey(1), (8, 32), 4, 50))
  x[:, 28:] = 0  # PAD after a short target
  P = np.array([20, 22, 24, 25, 26, 21, 23, 27], np.int32)
  batch = {'targets': x, 'prefix_len': P}
  out = validate.Validator(model, cfg, [batch], sharding.make_mesh(cfg.mesh))(params)
  noise = noise_lib.Noise.for_evaluation(cfg.diffusion)
  _, m, _, e = noise.sample(jax.random.fold_in(jax.random.PRNGKey(cfg.eval.seed), 0),
                            jnp.asarray(x), jnp.asarray(P))
  assert not bool(jnp.any(m & (jnp.arange(32)[None] < P[:, None])))
  lp = jax.nn.log_softmax(model.apply({'params': params},
                                      objectives.shift_inputs(jnp.asarray(x), m), 'bidirectional'))
  ce = -jnp.take_along_axis(lp, jnp.asarray(x)[..., None], -1)[..., 0]
  manual = float(jnp.sum(e[:, None] * m * ce)) / float(np.sum((np.arange(32)[None] >= P[:, None])
                                                              & (x != 0)))
  np.testing.assert_allclose(out['mdm_nelbo'], manual, rtol=1e-5)


def test_mode_eval_prints_a_progress_line_per_stage_in_batch_logs(tmp_path, tiny_run):
  """--mode eval with stdout in a file (a SLURM log): one plain line per estimator and task as it
  finishes (before, nothing until the final table, after minutes of chain-rule or PLL passes)."""
  _, run, main = tiny_run('dual')
  task = tmp_path / 'mc.jsonl'
  task.write_text(json.dumps({'context': 'The', 'choices': [' cat', ' dog'], 'gold': 0}) + '\n')
  r = subprocess.run(main + ['--mode', 'eval', f'--config.eval.tasks={task}',
                             '--config.eval.likelihood_rows=2', '--config.eval.estimators=ar,pll'],
                     env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True)
  assert r.returncode == 0, r.stderr
  lines = [l for l in r.stdout.splitlines() if l.startswith('eval ')]
  assert [l.split(' | ')[:2] for l in lines] == [['eval 1/3', 'ar'], ['eval 2/3', 'pll'],
                                                 ['eval 3/3', 'task mc']], r.stdout
  assert 'nats/token, 2 rows' in lines[0] and 'acc ' in lines[2] and lines[2].endswith(' s)')
