"""Training recipes: AR2Diff (init_from) and prompt -> target tasks."""
import glob
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import tiny_config
from dlm_jax import config
from dlm_jax import errors
from dlm_jax.core import model as model_lib
from dlm_jax.core import objectives
from dlm_jax.data import tasks, tokenizers
from dlm_jax.data.corpus import DataError
from dlm_jax.run import checkpoint
from dlm_jax.run import loop
from dlm_jax.run import setup as setup_lib
from dlm_jax.run import step as step_lib


@pytest.fixture(scope='module')
def ar_run(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp('ar') / 'run')
  loop.train_and_evaluate(tiny_config('ar', num_steps=4, checkpoint_every=4, eval_every=4), wd)
  return wd


def restore_state(wd, step):
  mngr = ocp.CheckpointManager(os.path.join(os.path.abspath(wd), 'checkpoints'))
  return mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))['state']


def test_init_from_copies_every_parameter_and_resets_the_optimizer(ar_run, tmp_path):
  cfg = tiny_config('mdm', num_steps=2, checkpoint_every=2, eval_every=2)
  cfg.init_from = ar_run
  setup = setup_lib.build(cfg)
  params = checkpoint.load_init_params(ar_run, setup.cfg)
  src = restore_state(ar_run, 4)
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, src['params'])
  tx, _ = step_lib.make_optimizer(setup.cfg.train, params)
  st = step_lib.init_state(setup, tx, params)
  assert int(st.step) == 0
  jax.tree_util.tree_map(np.testing.assert_array_equal, st.params, src['params'])
  adam = st.opt_state[-1][0]  # (clip, adamw) -> adamw's ScaleByAdamState
  assert all(float(jnp.abs(x).max()) == 0 for x in jax.tree_util.tree_leaves(adam.mu))
  assert max(float(jnp.abs(x).max()) for x in jax.tree_util.tree_leaves(src['opt_state'])) > 0
  # end to end: an MDM run continues from the AR weights (AR2Diff step 2)
  wd = str(tmp_path / 'ar2diff')
  s = loop.train_and_evaluate(cfg, wd)
  assert s['status'] == 'done' and 'mdm_nelbo' in s['final']
  assert json.load(open(os.path.join(wd, 'config.json')))['init_from'] == ar_run


def test_init_from_bad_sources_are_clear_errors_and_write_nothing(ar_run, tmp_path):
  wd = tmp_path / 'new'
  cfg = tiny_config('mdm', num_steps=2)
  cfg.init_from = str(tmp_path / 'missing')
  with pytest.raises(errors.TrainingError, match='no run there'):
    loop.train_and_evaluate(cfg, str(wd))
  cfg.init_from = ar_run
  cfg.model.d_model = 64
  with pytest.raises(errors.TrainingError, match='model.d_model is 32 there and 64 here'):
    loop.train_and_evaluate(cfg, str(wd))
  broken = str(tmp_path / 'broken')
  shutil.copytree(ar_run, broken)
  for f in glob.glob(os.path.join(broken, 'checkpoints', '4', 'state', '**', '*'),
                     recursive=True):
    if os.path.isfile(f) and ('ocdbt' in f or f.endswith('.data') or 'd/' in f):
      open(f, 'wb').write(b'garbage')
  cfg = tiny_config('mdm', num_steps=2)
  cfg.init_from = broken
  with pytest.raises(errors.TrainingError, match=r'no readable checkpoint \(step 4: '):
    loop.train_and_evaluate(cfg, str(wd))
  assert not wd.exists()


def test_cloze_task_is_built_from_real_text():
  tr, va = tasks.load_task('cloze', 0.04)
  assert len(tr) > 5000 and len(va) > 100
  assert all(e['target'].startswith(' ') and e['target'].strip().isalpha() for e in tr[:100])
  tok = tokenizers.get_tokenizer('bpe')
  rows, prefix, dropped, _ = tasks.encode(va, tok, 128, 'validation')
  assert rows.shape[1] == 128 and (prefix > 0).all()
  r = rows[0]
  n = int(prefix[0])
  assert tok.decode(r[:n]) == va[0]['prompt'] or dropped > 0


def test_task_losses_skip_the_prompt_and_mdm_never_masks_it():
  cfg = config.resolve(tiny_config('dual'), 50)
  model, params = model_lib.init_params(cfg.model, jax.random.PRNGKey(0), 32)
  x = jax.random.randint(jax.random.PRNGKey(1), (4, 32), 4, 50)
  P = jnp.array([10, 5, 20, 1])
  batch = {'targets': x, 'prefix_len': P}
  ar = objectives.ar_terms(model, params, batch, jax.random.PRNGKey(2), False)
  assert float(ar['tokens']) == float(jnp.sum(32 - P))
  loss, _ = objectives.loss_fn(params, batch, jax.random.PRNGKey(0), model=model, cfg=cfg)
  assert np.isfinite(float(loss))
  # the MDM share never masks a prompt token
  c = config.resolve(tiny_config('mdm'), 50)
  seen = {}

  class Spy:
    def apply(self, variables, inputs, *a, **k):
      seen['inputs'] = inputs
      return model.apply(variables, inputs, *a, **k)
  objectives.loss_fn(params, batch, jax.random.PRNGKey(3), model=Spy(), cfg=c)
  u = np.asarray(seen['inputs'])
  for b in range(4):
    assert not (u[b, 1:int(P[b]) + 1] == tokenizers.MASK).any()
  assert (u == tokenizers.MASK).any()


def write_task(tmp_path, prompt, n, n_train):
  """A task directory of n counting items (prompt.format(i) -> ' i+1'), n_train for training."""
  d = tmp_path / 'task'
  d.mkdir()
  rows = [dict(prompt=prompt.format(i), target=f' {i + 1}') for i in range(n)]
  (d / 'train.jsonl').write_text('\n'.join(json.dumps(r) for r in rows[:n_train]))
  (d / 'validation.jsonl').write_text('\n'.join(json.dumps(r) for r in rows[n_train:]))
  return d


def test_task_fine_tuning_runs_end_to_end(tmp_path):
  d = write_task(tmp_path, 'The number after {} is', 200, 160)
  cfg = tiny_config('dual', num_steps=3, checkpoint_every=3, eval_every=3)
  cfg.data.task = str(d)
  cfg.data.tokenizer = 'byte'
  s = loop.train_and_evaluate(cfg, str(tmp_path / 'run'))
  assert s['status'] == 'done' and {'ar_nll', 'mdm_nelbo'} <= set(s['final'])
  (d / 'validation.jsonl').write_text('{"prompt": "x", "target": ""}\n')
  with pytest.raises(DataError, match='validation.jsonl:1: empty target'):
    setup_lib.build(cfg)


def test_prefix_task_run_reports_prefix_metrics(tmp_path):
  d = write_task(tmp_path, 'After {} comes', 100, 80)
  cfg = tiny_config('prefix', num_steps=2, checkpoint_every=2, eval_every=2)
  cfg.data.task, cfg.data.tokenizer = str(d), 'byte'
  s = loop.train_and_evaluate(cfg, str(tmp_path / 'run'))
  assert {'ar_nll', 'prefix_nll', 'ar_exact_match', 'prefix_exact_match'} <= set(s['final'])
  assert 0.0 <= s['best']['prefix_exact_match'] <= 1.0
