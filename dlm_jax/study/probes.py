"""Probes from the SMDM paper, AR vs MDM (vs dual): the reversal curse and temporal shift.

  python -m dlm_jax.probes reversal --out runs/probes/reversal [--workers 2] [--steps N]
  python -m dlm_jax.probes shift    --out runs/probes/shift    [--workers 2] [--steps N]

Each writes its data under <out>/data, trains its runs with the sweep runner (finished runs are
skipped, so a rerun only re-evaluates), scores them and writes <out>/report.json and a table.

reversal  Generated facts "A is the author of B." about invented people and books. Half of the
          pairs also appear reversed in training ("B was written by A."), so every model has
          seen the reverse template; the other half appear only forwards. Queries, greedy exact
          match of the answer: `forward` "A is the author of" -> " B."; `reverse` "B was written
          by" -> " A." (a left-to-right prompt: what an AR model must do); `reverse_infill` the
          training sentence with A's tokens masked (needs the right context: MDM only). MDM
          answers are filled most-confident-first at the answer's true length (an oracle the
          AR model does not get; it stops wherever its argmax says).
shift     The embedded corpus split by era: 1590-1818 prose and verse (Shakespeare, Milton,
          Austen) vs American English of 1961 (Brown). An AR and an MDM model train on each era
          and are scored on both eras' validation windows (AR: NLL; MDM: NELBO, 8 samples);
          the gap out-of-era minus in-era measures how much each objective's fit is tied to the
          training era.
"""
import json
import os

import numpy as np

from dlm_jax import configs as shipped
from dlm_jax import errors
from dlm_jax.core import objectives
from dlm_jax.data import corpus as corpus_lib
from dlm_jax.data import pipeline
from dlm_jax.data.tokenizers import EOS
from dlm_jax.infer import likelihood
from dlm_jax.run import rundir
from dlm_jax.study import sweep

_GIVEN = ('Ad', 'Bel', 'Cor', 'Dun', 'El', 'Fal', 'Gar', 'Hol', 'Ir', 'Jas', 'Kel', 'Lor', 'Mar',
          'Nor', 'Os', 'Per', 'Quin', 'Ros', 'Sal', 'Tam', 'Ul', 'Ver', 'Wil', 'Yar', 'Zan')
_GIVEN_END = ('a', 'en', 'ia', 'ric', 'wyn', 'dor', 'ette', 'ius', 'ara', 'el')
_FAMILY = ('Black', 'Thorn', 'Ash', 'Brook', 'Stone', 'Hart', 'Fen', 'Mere', 'Gale', 'Wren',
           'Holt', 'Crane')
_FAMILY_END = ('wood', 'field', 'ley', 'ton', 'ridge', 'more', 'well', 'by')
_ADJ = ('Silent', 'Hidden', 'Golden', 'Broken', 'Distant', 'Crimson', 'Hollow', 'Frozen',
        'Wandering', 'Last', 'Quiet', 'Burning', 'Secret', 'Painted', 'Endless', 'Forgotten')
_NOUN = ('River', 'Garden', 'Lantern', 'Harbour', 'Orchard', 'Tower', 'Mirror', 'Meadow',
         'Compass', 'Voyage', 'Winter', 'Kingdom', 'Bridge', 'Letter', 'Island', 'Clock')


def reversal_pairs(n, seed=0):
  """n distinct (person, title) pairs, deterministic in seed."""
  rng = np.random.default_rng(seed)
  people = sorted({f'{g}{e} {f}{k}' for g in _GIVEN for e in _GIVEN_END for f in _FAMILY
                   for k in _FAMILY_END})
  titles = sorted({f'The {a} {b}' for a in _ADJ for b in _NOUN})
  if n > len(titles):
    raise ValueError(f'at most {len(titles)} pairs')
  p = rng.choice(len(people), n, replace=False)
  t = rng.choice(len(titles), n, replace=False)
  return [(people[i], titles[j]) for i, j in zip(p, t)]


def forward(a, b):
  return f'{a} is the author of {b}.'


def backward(a, b):
  return f'{b} was written by {a}.'


def _doc_id(stem, want_val, val_fraction):
  k = 0
  while corpus_lib.is_validation(f'{stem}#{k}', val_fraction) != want_val:
    k += 1
  return f'{stem}#{k}'


def write_reversal_data(out_dir, n_pairs=200, seed=0, val_fraction=0.05):
  """facts.jsonl (every training fact in the train split by construction) and pairs.json."""
  pairs = reversal_pairs(n_pairs, seed)
  both, fwd_only = pairs[:n_pairs // 2], pairs[n_pairs // 2:]
  docs = [dict(id=_doc_id(f'f{i}', False, val_fraction), text=forward(a, b))
          for i, (a, b) in enumerate(pairs)]
  docs += [dict(id=_doc_id(f'r{i}', False, val_fraction), text=backward(a, b))
           for i, (a, b) in enumerate(both)]
  docs += [dict(id=_doc_id(f'v{i}', True, val_fraction), text=forward(a, b))  # monitoring only
           for i, (a, b) in enumerate(both[:16])]
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, 'facts.jsonl'), 'w', encoding='utf-8') as f:
    for d in docs:
      f.write(json.dumps(d) + '\n')
  json.dump(dict(both=both, forward_only=fwd_only), open(os.path.join(out_dir, 'pairs.json'), 'w'))
  return os.path.join(out_dir, 'facts.jsonl')


def _rows_with_eos(tok, L, contexts, answers):
  """Rows [context, answer, EOS] as the facts were trained (one per padded row, EOS-terminated);
  the answer's tokens are scored. A context of None puts the answer first (infilling the
  subject of the full training sentence)."""
  x = np.zeros((len(answers), L), np.int32)
  score = np.zeros((len(answers), L), bool)
  for n, (c, a) in enumerate(zip(contexts, answers)):
    if c is None:
      ids = np.asarray(tok.encode_batch([a[0] + a[1]])[0])
      k = len(tok.encode_batch([a[0]])[0])
      lo, hi = 0, k
    else:
      ci, ai = likelihood.encode_pair(tok, c, a)
      ids, lo, hi = np.concatenate([ci, ai]), len(ci), len(ci) + len(ai)
    ids = np.concatenate([ids, [EOS]])[:L]
    x[n, :len(ids)] = ids
    score[n, lo:min(hi, L)] = True
  return x, score


def score_reversal(run_dir, data_dir):
  cfg, tok, model, params, step = rundir.load_run(run_dir)
  pairs = json.load(open(os.path.join(data_dir, 'pairs.json')))
  scorer = likelihood.Scorer(model, params, chunk=64)
  L = cfg.data.seq_len
  modes = objectives.of(cfg).sample_modes
  out = dict(run=run_dir, objective=cfg.objective, step=int(step), acc={})
  for subset, ps in pairs.items():
    ps = [tuple(p) for p in ps]
    fwd = _rows_with_eos(tok, L, [f'{a} is the author of' for a, _ in ps], [f' {b}.' for _, b in ps])
    rev = _rows_with_eos(tok, L, [f'{b} was written by' for _, b in ps], [f' {a}.' for a, _ in ps])
    for mode in modes:
      out['acc'][f'{subset}/forward/{mode}'] = float(np.mean(scorer.greedy(mode, *fwd)))
      out['acc'][f'{subset}/reverse/{mode}'] = float(np.mean(scorer.greedy(mode, *rev)))
    if 'mdm' in modes:
      inf = _rows_with_eos(tok, L, [None] * len(ps),
                           [(a, forward(a, b)[len(a):]) for a, b in ps])
      out['acc'][f'{subset}/reverse_infill/mdm'] = float(np.mean(scorer.greedy('mdm', *inf)))
  return out


def write_shift_data(out_dir):
  """old.jsonl (Shakespeare, Milton, Austen: 1590-1818) and brown.jsonl (1961), ids kept, so
  each file's train/validation split is the embedded corpus's."""
  os.makedirs(out_dir, exist_ok=True)
  docs = corpus_lib.load_documents('embedded')
  eras = dict(old=('shakespeare', 'milton', 'austen'), brown=('brown',))
  paths = {}
  for name, sources in eras.items():
    paths[name] = os.path.join(out_dir, f'{name}.jsonl')
    with open(paths[name], 'w', encoding='utf-8') as f:
      for d in docs:
        if d.source in sources:
          f.write(json.dumps(dict(id=d.id, text=d.text, source=d.source, era=d.era)) + '\n')
  return paths


def score_shift(run_dir, paths, rows=64, samples=8):
  cfg, _, model, params, step = rundir.load_run(run_dir)
  est = 'ar' if objectives.mdm_fraction(cfg) == 0 else 'nelbo'
  scorer = likelihood.Scorer(model, params, chunk=64, dcfg=cfg.diffusion, nelbo_samples=samples,
                             seed=cfg.eval.seed)
  out = dict(run=run_dir, objective=cfg.objective, estimator=est, step=int(step), nats={})
  for name, path in paths.items():
    x, _ = pipeline.validation_windows(cfg.data, path, rows, cfg.model.vocab_size)
    r = scorer(est, x, x != 0)
    out['nats'][name] = likelihood.per_token(r['logp'], r['tokens'])
  return out


def _run(sw_name, base, settings, out, workers):
  """Trains `settings` under <out>/runs from the shipped config `base` (found in the installed
  package, not relative to any directory), in the current directory as a sweep does."""
  root = os.path.join(out, 'runs')
  status = sweep.run_local(shipped.find(base), root, settings, workers=workers)
  bad = {k: v for k, v in status.items() if v != 'done'}
  if bad:
    raise errors.TrainingError(f'{sw_name} runs failed: {bad}')
  return root


def reversal(out, workers=2, steps=0):
  """The reversal probe under `out` (data, runs, report.json); returns the report."""
  out = os.path.abspath(out)
  extra = {'train.num_steps': steps} if steps else {}
  data = write_reversal_data(os.path.join(out, 'data'))
  settings = {obj: dict(objective=obj, **{'data.corpus': data}, **extra)
              for obj in ('ar', 'mdm', 'dual')}
  root = _run('reversal', 'configs/probes/reversal.py', settings, out, workers)
  runs = [score_reversal(os.path.join(root, name), os.path.join(out, 'data'))
          for name in settings]
  return _report(out, dict(probe='reversal', runs=runs))


def shift(out, workers=2, steps=0):
  """The temporal-shift probe under `out` (data, runs, report.json); returns the report."""
  out = os.path.abspath(out)
  extra = {'train.num_steps': steps} if steps else {}
  paths = write_shift_data(os.path.join(out, 'data'))
  settings = {f'{obj}_{era}': dict(objective=obj, **{'data.corpus': paths[era]}, **extra)
              for era in paths for obj in ('ar', 'mdm')}
  root = _run('shift', 'configs/probes/shift.py', settings, out, workers)
  runs = []
  for name in settings:
    r = score_shift(os.path.join(root, name), paths)
    r['trained_on'] = name.split('_', 1)[1]
    other = [e for e in paths if e != r['trained_on']][0]
    r['gap'] = r['nats'][other] - r['nats'][r['trained_on']]
    r['ratio'] = r['nats'][other] / r['nats'][r['trained_on']]
    runs.append(r)
  return _report(out, dict(probe='shift', runs=runs))


def _report(out, report):
  report['path'] = os.path.join(out, 'report.json')
  with open(report['path'], 'w', encoding='utf-8') as f:
    json.dump({k: v for k, v in report.items() if k != 'path'}, f, indent=1)
  return report


def format_report(report):
  """A probe's report as a table: accuracy per query (reversal) or nats per era (shift)."""
  runs = report['runs']
  if report['probe'] == 'reversal':
    keys = sorted({k for r in runs for k in r['acc']})
    lines = [f'{"query (pairs/query/mode)":34s}' + ''.join(f'{r["objective"]:>8s}' for r in runs)]
    lines += [f'{k:34s}' + ''.join(f'{r["acc"][k]:8.2f}' if k in r['acc'] else f'{"-":>8s}'
                                   for r in runs) for k in keys]
  else:
    lines = [f'{"run":12s} {"est":6s} {"old":>8s} {"brown":>8s} {"gap":>8s} {"ratio":>7s}']
    lines += [f'{os.path.basename(r["run"]):12s} {r["estimator"]:6s} {r["nats"]["old"]:8.4f} '
              f'{r["nats"]["brown"]:8.4f} {r["gap"]:8.4f} {r["ratio"]:7.3f}' for r in runs]
  return '\n'.join(lines)
