"""The lm-eval-harness adapter, run through lm_eval itself on local tasks (extra [lmeval])."""
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.extras
lm_eval = pytest.importorskip(
    'lm_eval', reason='needs the [lmeval] extra and a CPU torch (README: "Install")')

from conftest import ROOT, train_tiny_run  # pylint: disable=g-import-not-at-top,wrong-import-position
from dlm_jax import lmeval as lmeval_cli
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
      include_path=tasks_dir, include_defaults=False), log_samples=True, bootstrap_iters=0)


@pytest.fixture
def cli(monkeypatch):
  """lm-eval's own CLI in this process (python -m dlm_jax.lmeval's main -> cli_evaluate), with
  the built-in task index skipped (indexing lm-eval's thousands of task files: ~20 s on 2 cores;
  these tests use only their own tasks); returns the exit status (0 when it returned)."""
  from lm_eval.tasks import TaskManager  # pylint: disable=g-import-not-at-top
  init = TaskManager.__init__
  monkeypatch.setattr(TaskManager, '__init__',
                      lambda self, *a, **k: init(self, *a, **dict(k, include_defaults=False)))
  monkeypatch.setenv('HF_DATASETS_OFFLINE', '1')
  monkeypatch.setattr(sys, 'argv', list(sys.argv))

  def run(*argv):
    try:
      lmeval_cli.main(list(argv))
    except SystemExit as e:
      return e.code
    finally:  # lm-eval's log handler keeps the stderr it was made with; pytest closes that one
      for h in logging.getLogger('lm_eval').handlers:
        if isinstance(h, logging.StreamHandler):
          h.setStream(sys.__stderr__)
    return 0
  return run


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
  """`python -m dlm_jax.lmeval` itself (a fresh process; the in-process tests below cover the
  arguments): the model is registered and the results are named after the run."""
  run, tasks, _, _ = run_and_tasks
  r = subprocess.run([sys.executable, '-m', 'dlm_jax.lmeval', '--model_args',
                      f'workdir={run},estimator=nelbo,nelbo_samples=2', '--tasks', 'dlm_mc',
                      '--include_path', tasks, '--output_path', str(tmp_path / 'o')],
                     env=dict(os.environ, PYTHONPATH=ROOT, HF_DATASETS_OFFLINE='1'),
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-2000:]
  assert 'dlm_mc' in r.stdout and 'acc' in r.stdout
  assert os.listdir(tmp_path / 'o') == [lmeval.run_name(run)]


def test_cli_takes_every_model_arg(run_and_tasks, cli, tmp_path, capsys):
  """Every documented --model_args key through lm-eval's own CLI, beside lm-eval's --batch_size
  (before: TypeError, multiple values for 'batch_size'): model_args' batch_size wins, in one
  warning line; results land in <output_path>/<run name>/ (before: a random name); the scores
  are those of the same model built from Python."""
  run, tasks, _, _ = run_and_tasks
  out = tmp_path / 'o'
  assert cli('--model_args', f'workdir={run},estimator=nelbo,nelbo_samples=2,batch_size=auto',
             'greedy=ar', '--batch_size', '3', '--tasks', 'dlm_mc', '--include_path', tasks,
             '--output_path', str(out), '--log_samples', '--limit', '2') == 0
  err = capsys.readouterr().err
  assert ("warning: lm-eval's --batch_size 3 ignored: --model_args batch_size=auto wins"
          in err.splitlines())
  name = lmeval.run_name(run)
  assert name == 'run' and os.listdir(out) == [name]
  (results,) = (out / name).glob('results_*.json')
  (samples,) = (out / name).glob('samples_dlm_mc_*.jsonl')
  config = json.loads(results.read_text())['config']
  lm = lmeval.DlmJaxLM(run, estimator='nelbo', nelbo_samples=2, greedy='ar')
  assert config['dlm_jax'] == dict(workdir=os.path.abspath(run), name=name, step=lm.step,
                                   estimator='nelbo', nelbo_samples=2, greedy='ar',
                                   batch_size=lm.cfg.eval.batch_size)
  assert lm.scorer.K == 2 != lmeval.DlmJaxLM(run, estimator='nelbo').scorer.K
  assert config['batch_sizes'] == [lm.cfg.eval.batch_size]
  docs = [json.loads(l) for l in samples.read_text().splitlines()]
  reqs = [_Req((a['arg_0'], a['arg_1'])) for d in docs for a in d['arguments'].values()]
  got = [(float(ll), hit == 'True') for d in docs for (ll, hit), in d['resps']]
  assert len(got) == 5
  ours = lm.loglikelihood(reqs)
  np.testing.assert_allclose([g[0] for g in got], [o[0] for o in ours], rtol=1e-6)
  assert [g[1] for g in got] == [o[1] for o in ours]


def test_cli_names_the_output_as_asked_and_scores_by_lm_evals_batch_size(run_and_tasks, cli,
                                                                       tmp_path):
  """pretrained= names the output folder (lm-eval's key for it); without a model_args
  batch_size, lm-eval's --batch_size is the batch."""
  run, tasks, _, _ = run_and_tasks
  out = tmp_path / 'o'
  assert cli('--model_args', f'workdir={run},estimator=ar,pretrained=tiny/ar', '--batch_size',
             '2', '--tasks', 'dlm_mc', '--include_path', tasks, '--output_path', str(out),
             '--limit', '1') == 0
  (results,) = out.glob('*/results_*.json')
  assert results.parent.name == 'tiny__ar'  # lm-eval's sanitised name
  config = json.loads(results.read_text())['config']
  assert config['batch_sizes'] == [2] and config['dlm_jax']['name'] == 'tiny/ar'


def test_batch_size_from_both_places_in_python(run_and_tasks, capsys):
  """simple_evaluate(model='dlm_jax', model_args='...', batch_size=...) takes the same path."""
  run, _, _, _ = run_and_tasks
  lm = lmeval.DlmJaxLM.create_from_arg_string(f'workdir={run},estimator=ar,batch_size=2',
                                               dict(batch_size=4, max_batch_size=None,
                                                    device='cuda:0'))
  assert lm.batch == 2 and lm.name == 'run'
  assert capsys.readouterr().err.strip() == ("warning: lm-eval's --batch_size 4 ignored: "
                                             '--model_args batch_size=2 wins')
  lm = lmeval.DlmJaxLM.create_from_arg_obj(dict(workdir=run, estimator='ar', batch_size=2),
                                           dict(batch_size=2))
  assert lm.batch == 2 and not capsys.readouterr().err
  assert lmeval.DlmJaxLM.create_from_arg_obj(dict(workdir=run, estimator='ar'),
                                             dict(batch_size=5, device=None)).batch == 5


def test_the_cli_adds_the_run_name_to_model_args():
  name = lambda *a: lmeval_cli.with_run_name(list(a))
  assert name('--model_args', 'workdir=runs/x/,estimator=ar', '--tasks', 't') == [
      '--model', 'dlm_jax', '--model_args', 'workdir=runs/x/,estimator=ar', '--tasks', 't',
      '--model_args', '{"pretrained": "x"}']
  # lm-eval's other spellings: words, -a, JSON, a leading `run`, -M
  assert name('run', '-a', 'estimator=ar', 'workdir=a/b', '-M', 'dlm_jax')[-1] == (
      '{"pretrained": "b"}')
  assert name('--model_args', '{"workdir": "r,1"}')[-1] == '{"pretrained": "r,1"}'
  assert name('--model_args', 'workdir=a/b,pretrained=mine') == [
      '--model', 'dlm_jax', '--model_args', 'workdir=a/b,pretrained=mine']
  assert name('--model', 'hf', '--model_args', 'workdir=a/b') == [
      '--model', 'hf', '--model_args', 'workdir=a/b']
  assert name('ls', 'tasks') == ['ls', 'tasks']


def test_model_args_and_batch_size_are_checked(run_and_tasks):
  """A misspelled model_args key is refused with the valid ones (before: silently ignored);
  batch_size=auto takes the run's eval.batch_size (before: int('auto') crashed)."""
  from dlm_jax.errors import ConfigError  # pylint: disable=g-import-not-at-top
  run, _, _, _ = run_and_tasks
  with pytest.raises(ConfigError, match=r'--model_args: unknown estimater \(valid: workdir, '
                     r'estimator, batch_size, nelbo_samples, greedy, pretrained\)'):
    lmeval.DlmJaxLM(run, estimater='nelbo')
  lm = lmeval.DlmJaxLM(run, estimator='ar', batch_size='auto', max_batch_size=None, device='cpu')
  assert lm.batch == lm.cfg.eval.batch_size
  assert lmeval.DlmJaxLM(run, estimator='ar', batch_size='auto:4').batch == lm.cfg.eval.batch_size
  with pytest.raises(ConfigError, match="batch_size='x'"):
    lmeval.DlmJaxLM(run, batch_size='x')


@pytest.mark.parametrize('args,extra,line', [
    ('estimater=nelbo', (), 'error: --model_args: unknown estimater (valid: workdir, '),
    ('nelbo_samples=x', (), "error: --model_args nelbo_samples='x': a positive integer"),
    ('greedy=best', (), "error: --model_args greedy='best': not one of ar, mdm"),
    ('estimator=elbo', (), "error: --model_args estimator='elbo': not one of "),
    ('', ('--batch_size', '0'), "error: batch_size='0' (--model_args or lm-eval's --batch_size): "),
    ('x', (), "error: argument --model_args: expected `key=value`, got 'x'")])
def test_cli_refuses_bad_model_args_in_one_line(run_and_tasks, cli, tmp_path, capsys, args, extra,
                                                line):
  """Through lm-eval's own CLI: one line naming the key and the value, exit 2, nothing written."""
  run, tasks, _, _ = run_and_tasks
  out = tmp_path / 'o'
  code = cli('--model_args', f'workdir={run}' + (f',{args}' if args else ''), *extra,
             '--tasks', 'dlm_mc', '--include_path', tasks, '--output_path', str(out))
  err = capsys.readouterr().err
  assert code == 2 and 'Traceback' not in err and not out.exists(), err[-2000:]
  assert err.strip().splitlines()[-1].startswith(line)
