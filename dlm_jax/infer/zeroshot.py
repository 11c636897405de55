"""Zero-shot scoring of benchmark items (data/benchmarks.py) with any likelihood estimator.

Multiple choice: acc = argmax_i ll_i == gold; acc_norm = argmax_i ll_i / len(option_i in
characters) == gold (lm-eval-harness's definitions). Target items (LAMBADA): acc = greedy decoding
reproduces the target (AR: every target token is the causal argmax; MDM: the masked target span
filled most-confident-first); ppl = exp(-mean ll) over items (the harness's `perplexity`); bits per
byte of the targets.

Contexts are tokenised as lm-eval does (trailing spaces of the context move to the continuation;
the continuation's ids are the tail of the encoded whole). A context that does not fit is cut
from the left so that the continuation and the end of the context fill data.seq_len; an option
longer than data.seq_len by itself keeps (and is scored on) its last data.seq_len tokens. Both
cuts are counted in the result (`truncated`, `continuation_truncated`).
"""
import math
import os

import numpy as np

from dlm_jax.core import losses
from dlm_jax.data import benchmarks
from dlm_jax.errors import DataError
from dlm_jax.infer import likelihood


def _stderr(hits):
  n = len(hits)
  return float(np.std(hits, ddof=1) / math.sqrt(n)) if n > 1 else float('nan')


def score_items(scorer, estimator, items, tok, seq_len, batch_rows=256):
  """Metrics and per-item predictions for one task's items under one estimator."""
  pairs, owner = [], []
  for k, it in enumerate(items):
    if it['kind'] == 'target':
      opts = [(it['context'], it['target'])]
    else:
      opts = list(zip(it['contexts'], it['continuations']))
    for c, t in opts:
      pairs.append(likelihood.encode_pair(tok, c, t))
      owner.append(k)
  x, score, cut, cut_cont = likelihood.rows(pairs, seq_len)
  ll = np.zeros(len(pairs))
  for s in range(0, len(pairs), batch_rows):
    ll[s:s + batch_rows] = scorer(estimator, x[s:s + batch_rows], score[s:s + batch_rows])['logp']
  out = dict(estimator=estimator, items=len(items), truncated=int(cut),
             continuation_truncated=int(cut_cont))
  if items[0]['kind'] == 'target':
    mode = losses.decoder_of(estimator)
    hits = np.concatenate([scorer.greedy(mode, x[s:s + batch_rows], score[s:s + batch_rows])
                           for s in range(0, len(pairs), batch_rows)]).astype(float)
    n_bytes = sum(len(it['target'].encode('utf-8')) for it in items)
    out.update(acc=float(hits.mean()), acc_stderr=_stderr(hits),
               ppl=float(math.exp(min(-ll.mean(), 700))), bpb=float(-ll.sum() / n_bytes /
                                                                  math.log(2)),
               greedy=mode)
    out['predictions'] = [dict(ll=float(a), hit=bool(h)) for a, h in zip(ll, hits)]
    return out
  owner = np.asarray(owner)
  acc, acc_norm, preds = [], [], []
  for k, it in enumerate(items):
    l = ll[owner == k]
    lens = np.array([max(len(o), 1) for o in it['options']], float)
    p, pn = int(np.argmax(l)), int(np.argmax(l / lens))
    acc.append(p == it['gold'])
    acc_norm.append(pn == it['gold'])
    preds.append(dict(ll=[float(v) for v in l], pred=p, pred_norm=pn, gold=it['gold']))
  acc, acc_norm = np.asarray(acc, float), np.asarray(acc_norm, float)
  chance = float(np.mean([1.0 / len(it['options']) for it in items]))
  out.update(acc=float(acc.mean()), acc_stderr=_stderr(acc), acc_norm=float(acc_norm.mean()),
             acc_norm_stderr=_stderr(acc_norm), chance=chance, predictions=preds)
  return out


def resolve_task(name, tasks_dir):
  """A task name (a file <tasks_dir>/<name>.jsonl) or a path to a JSONL file."""
  if name.endswith('.jsonl') or os.sep in name:
    return os.path.splitext(os.path.basename(name))[0], os.path.expanduser(name)
  path = os.path.join(os.path.expanduser(tasks_dir), f'{name}.jsonl')
  if not os.path.exists(path):
    hint = (f'; build the benchmark files with python -m dlm_jax.prepare --tasks all --out '
            f'{tasks_dir}' if name in benchmarks.TASKS else '')
    raise DataError(f'task {name!r}: file not found: {path}{hint}')
  return name, path
