"""The lm-eval-harness adapter, run through lm_eval itself on local tasks (extra [lmeval])."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.extras
lm_eval = pytest.importorskip(
    'lm_eval', reason='needs the [lmeval] extra and a CPU torch (README: "Optional extras")')

from conftest import ROOT, train_tiny_run  # pylint: disable=g-import-not-at-top,wrong-import-position
from dlm_jax.infer import likelihood
from dlm_jax.infer import lmeval
from dlm_jax.infer import zeroshot

ITEMS = [dict(question='The cat sat on the', choices=['mat', 'moon', 'idea'], gold=0),
         dict(question='Once upon a', choices=['time', 'dog'], gold=0),
         dict(question='She opened the', choices=['door', 'sky', 'was'], gold=0),
         dict(question='It was a dark and stormy', choices=['night', 'blue'], gold=0)]


@pytest.fixture(scope='module')
def run_and_tasks(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('lmeval')
  _, run, _ = train_tiny_run(tmp, 'dual', steps=6)
  data = tmp / 'mc.jsonl'
  data.write_text(''.join(json.dumps(x) + '\n' for x in ITEMS))
  texts = tmp / 'docs.jsonl'
  texts.write_text(''.join(json.dumps(dict(text=t)) + '\n' for t in (
      'It is a truth universally acknowledged. ' * 4, 'Call me Ishmael.')))
  tasks = tmp / 'tasks'
  tasks.mkdir()
  (tasks / 'dlm_mc.yaml').write_text(f"""task: dlm_mc
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {data}
validation_split: validation
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{gold}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
""")
  (tasks / 'dlm_ppl.yaml').write_text(f"""task: dlm_ppl
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {texts}
validation_split: validation
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: bits_per_byte
""")
  (tasks / 'dlm_gen.yaml').write_text(f"""task: dlm_gen
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {data}
validation_split: validation
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{choices[0]}}}}"
generation_kwargs:
  until: ["."]
  max_gen_toks: 4
metric_list:
  - metric: exact_match
""")
  return run, str(tasks), str(data), str(texts)


def _evaluate(lm, tasks_dir, names):
  from lm_eval.tasks import TaskManager  # pylint: disable=g-import-not-at-top
  os.environ.setdefault('HF_DATASETS_OFFLINE', '1')
  return lm_eval.simple_evaluate(model=lm, tasks=names, task_manager=TaskManager(
      include_path=tasks_dir), log_samples=True, bootstrap_iters=0)


@pytest.mark.parametrize('estimator', ['ar', 'pll'])
def test_harness_multiple_choice_equals_our_scoring(run_and_tasks, estimator, tmp_path):
  """lm-eval's acc/acc_norm and per-option log-likelihoods equal zeroshot.score_items on the
  same items (the harness joins question and choice with a space, as our schema does)."""
  from dlm_jax.data import benchmarks  # pylint: disable=g-import-not-at-top
  run, tasks, _, _ = run_and_tasks
  lm = lmeval.DlmJaxLM(run, estimator=estimator, batch_size=3)
  out = _evaluate(lm, tasks, ['dlm_mc'])
  res = out['results']['dlm_mc']
  ours_file = tmp_path / 'ours.jsonl'
  ours_file.write_text(''.join(json.dumps(dict(context=x['question'], choices=x['choices'],
                                               gold=x['gold'])) + '\n' for x in ITEMS))
  ours = zeroshot.score_items(lm.scorer, estimator, benchmarks.read(str(ours_file)), lm.tok,
                              lm.L)
  assert res['acc,none'] == pytest.approx(ours['acc'])
  assert res['acc_norm,none'] == pytest.approx(ours['acc_norm'])
  samples = sorted(out['samples']['dlm_mc'], key=lambda s: s['doc_id'])
  for s, p in zip(samples, ours['predictions']):
    harness_ll = [r[0][0] if isinstance(r[0], (list, tuple)) else r[0] for r in s['resps']]
    np.testing.assert_allclose(harness_ll, p['ll'], rtol=1e-5)


def test_harness_rolling_and_generation(run_and_tasks):
  run, tasks, _, texts = run_and_tasks
  lm = lmeval.DlmJaxLM(run, estimator='ar')
  out = _evaluate(lm, tasks, ['dlm_ppl', 'dlm_gen'])
  assert out['results']['dlm_ppl']['bits_per_byte,none'] > 0
  assert 'exact_match,none' in out['results']['dlm_gen']
  # rolling log-likelihood of a document longer than seq_len: every token scored exactly once
  doc = json.loads(open(texts).readline())['text']
  ids = lm.tok.encode_batch([doc])[0]
  assert len(ids) > 2 * lm.L
  total = lm.loglikelihood_rolling([_Req((doc,))])[0]
  x = np.zeros((1, len(ids)), np.int32)
  x[0] = ids
  # the first window equals the AR log-likelihood of the first L tokens
  first = likelihood.Scorer(lm.model, lm.params)('ar', x[:, :lm.L], np.ones((1, lm.L), bool))
  assert total < first['logp'][0] < 0


class _Req:
  def __init__(self, args):
    self.args = args


@pytest.mark.slow
def test_cli_registers_the_model(run_and_tasks, tmp_path):
  run, tasks, _, _ = run_and_tasks
  r = subprocess.run([sys.executable, '-m', 'dlm_jax.lmeval', '--model_args',
                      f'workdir={run},estimator=nelbo,nelbo_samples=2', '--tasks', 'dlm_mc',
                      '--include_path', tasks, '--output_path', str(tmp_path / 'o')],
                     env=dict(os.environ, PYTHONPATH=ROOT, HF_DATASETS_OFFLINE='1'),
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-2000:]
  assert 'dlm_mc' in r.stdout and 'acc' in r.stdout


def test_model_args_and_batch_size_are_checked(run_and_tasks):
  """A misspelled model_args key is refused with the valid ones (before: silently ignored);
  batch_size=auto takes the run's eval.batch_size (before: int('auto') crashed)."""
  from dlm_jax.errors import ConfigError  # pylint: disable=g-import-not-at-top
  run, _, _, _ = run_and_tasks
  with pytest.raises(ConfigError, match=r'--model_args: unknown estimater \(valid: workdir, '
                     'estimator, batch_size, nelbo_samples, greedy\)'):
    lmeval.DlmJaxLM(run, estimater='nelbo')
  lm = lmeval.DlmJaxLM(run, estimator='ar', batch_size='auto', max_batch_size=None, device='cpu')
  assert lm.batch == lm.cfg.eval.batch_size
  assert lmeval.DlmJaxLM(run, estimator='ar', batch_size='auto:4').batch == lm.cfg.eval.batch_size
  with pytest.raises(ConfigError, match="--batch_size 'x'"):
    lmeval.DlmJaxLM(run, batch_size='x')


def test_cli_refuses_a_misspelled_model_arg_in_one_line(run_and_tasks, tmp_path):
  run, tasks, _, _ = run_and_tasks
  r = subprocess.run([sys.executable, '-m', 'dlm_jax.lmeval', '--model_args',
                      f'workdir={run},estimater=nelbo', '--tasks', 'dlm_mc', '--include_path',
                      tasks, '--batch_size', 'auto', '--output_path', str(tmp_path / 'o')],
                     env=dict(os.environ, PYTHONPATH=ROOT, HF_DATASETS_OFFLINE='1'),
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 2 and 'Traceback' not in r.stderr, r.stderr[-2000:]
  assert r.stderr.strip().splitlines()[-1].startswith('error: --model_args: unknown estimater')
