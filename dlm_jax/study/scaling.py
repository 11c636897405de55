"""Fitting a law to a runs table: the driver, bootstrap intervals and the CLI (the laws are in
study/laws.py: to add one, its loss and fitter there and a LAWS entry here).

  python -m dlm_jax.scaling fit --runs RUNS.csv --law chinchilla|isoflop|data_constrained|power \
      [--bootstrap K] [--fix NAME=VALUE,...] [--seed S] --out FIT.json

RUNS.csv columns: N, D, loss; optional U (unique tokens), C (FLOPs; default 6 N D), family, run.
"""
import argparse
import json
import sys
import warnings

import numpy as np

from dlm_jax.errors import FitError, SweepError
from dlm_jax.study import laws
from dlm_jax.study import sweep


def read_runs(path):
  """RUNS.csv -> dict of numpy columns (N, D, loss required)."""
  try:
    rows = sweep.read_csv(path)
  except SweepError:
    raise FitError(f'--runs {path}: no such file') from None
  if not rows:
    raise FitError(f'{path}: no runs')
  for col in ('N', 'D', 'loss'):
    if col not in rows[0]:
      raise FitError(f'{path}: missing column {col!r} (have {", ".join(rows[0])})')
  out = {}
  for col in rows[0]:
    vals = [r[col] for r in rows]
    try:
      out[col] = np.array([float(v) if v not in ('', None) else np.nan for v in vals])
    except ValueError:
      out[col] = np.array(vals, dtype=object)
  if 'run' not in out:
    out['run'] = np.array([f'row {i + 2}' for i in range(len(rows))], dtype=object)
  return out


def check_positive(runs, cols):
  names = runs.get('run', np.arange(len(runs[cols[0]])))
  for c in cols:
    x = np.asarray(runs[c], float)
    bad = ~np.isfinite(x) | (x <= 0)
    if bad.any():
      raise FitError(f'column {c}: non-positive or NaN values in runs '
                     f'{", ".join(str(n) for n in np.asarray(names)[bad][:10])}')


# name -> (the columns it needs, fit(runs, fix, starts, window) -> laws.Fit)
LAWS = {
    'chinchilla': (('N', 'D', 'loss'), lambda r, fix, starts, window: laws.fit_chinchilla(
        r['N'], r['D'], r['loss'], fix, starts)),
    'isoflop': (('N', 'loss'), lambda r, fix, starts, window: laws.fit_isoflop(
        r['N'], r['C'], r['loss'], r.get('run'), window)),
    'data_constrained': (('N', 'D', 'U', 'loss'), lambda r, fix, starts, window:
                         laws.fit_data_constrained(r['N'], r['D'], r['U'], r['loss'], fix)),
    'power': (('loss',), lambda r, fix, starts, window: laws.fit_power(r['C'], r['loss'],
                                                                        r.get('family'))),
}


def fit(law, runs, fix=None, seed=0, bootstrap=0, window=0):
  """Fits `law` to the runs table (dict of columns); returns the FIT.json dict. window: isoflop
  only, the sizes around each budget's minimum its parabola uses (0: all, as published)."""
  fix = fix or {}
  if law not in LAWS:
    raise FitError(f'unknown law {law!r}: use {", ".join(LAWS)}')
  cols, fit_law = LAWS[law]
  for c in cols:
    if c not in runs:
      raise FitError(f'{law}: the runs table needs a column {c!r}')
  runs = dict(runs)
  if 'C' not in runs or np.isnan(np.asarray(runs['C'], float)).all():
    check_positive(runs, ('N', 'D'))
    runs['C'] = 6 * np.asarray(runs['N'], float) * np.asarray(runs['D'], float)
  check_positive(runs, tuple(cols) + ('C',))

  def one(idx, starts=None):
    return fit_law({k: np.asarray(v)[idx] for k, v in runs.items()}, fix, starts, window)

  n = len(runs['loss'])
  main = one(np.arange(n))
  for w in main.extra.get('warnings', []):  # the main fit's only, not every bootstrap draw's
    print(f'warning: {law}: {w}', file=sys.stderr)
  out = main.to_json()
  out['fixed'] = fix
  if law == 'chinchilla':
    Cs = np.logspace(np.log10(np.min(runs['C'])), np.log10(np.max(runs['C'])), 5)
    n_opt, d_opt = laws.compute_optimal(main.params, Cs)
    out['frontier'] = dict(C=Cs.tolist(), N_opt=n_opt.tolist(), D_opt=d_opt.tolist())
  if bootstrap:
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(bootstrap):
      idx = rng.integers(0, n, n)
      try:
        with warnings.catch_warnings():
          warnings.simplefilter('ignore')
          f = one(idx, main.starts if law == 'chinchilla' else None)
      except FitError:
        continue  # e.g. a resample with too few sizes in a budget
      draws.append(flat_params(f))
    keys = sorted(set().union(*draws)) if draws else []
    out['ci'] = {k: [float(np.percentile([d[k] for d in draws if k in d], 2.5)),
                     float(np.percentile([d[k] for d in draws if k in d], 97.5))] for k in keys}
    out['bootstrap'] = dict(requested=bootstrap, used=len(draws), seed=seed, level=0.95)
  return out


def flat_params(f):
  """Scalar parameters and derived quantities of a Fit, flattened for intervals."""
  out = {}
  if f.law == 'power':
    for fam, p in f.params.items():
      out[f'{fam}.k'], out[f'{fam}.gamma'] = p['k'], p['gamma']
    if 'compute_multiplier' in f.extra:
      out['compute_multiplier'] = f.extra['compute_multiplier']
  else:
    out.update({k: v for k, v in f.params.items() if isinstance(v, float)})
  if f.law == 'chinchilla':
    p = f.params
    out['a_opt'] = p['beta'] / (p['alpha'] + p['beta'])  # N_opt ~ C^a_opt
  return out


def parse_fix(s):
  out = {}
  for part in filter(None, (s or '').split(',')):
    k, sep, v = part.partition('=')
    if not sep:
      raise FitError(f'--fix {part!r}: expected NAME=VALUE')
    try:
      out[k.strip()] = float(v)
    except ValueError:
      raise FitError(f'--fix {part!r}: {v!r} is not a number') from None
  return out


def main(argv=None):
  ap = argparse.ArgumentParser(prog='python -m dlm_jax.scaling', description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = ap.add_subparsers(dest='cmd', required=True)
  f = sub.add_parser('fit', help='fit a law to a runs table')
  f.add_argument('--runs', required=True)
  f.add_argument('--law', required=True, choices=list(LAWS))
  f.add_argument('--bootstrap', type=int, default=0)
  f.add_argument('--fix', default='')
  f.add_argument('--seed', type=int, default=0)
  f.add_argument('--window', type=int, default=0,
                 help='isoflop: fit each parabola to the K sizes around the budget minimum '
                 '(0: every size, the published procedure)')
  f.add_argument('--out', required=True)
  a = ap.parse_args(argv)
  try:
    res = fit(a.law, read_runs(a.runs), parse_fix(a.fix), a.seed, a.bootstrap, a.window)
  except FitError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  with open(a.out, 'w', encoding='utf-8') as fo:
    json.dump(res, fo, indent=2)
  print(json.dumps({k: res[k] for k in ('law', 'params', 'objective', 'n_runs', 'converged')},
                   default=str))
  if 'ci' in res:
    for k, (lo, hi) in res['ci'].items():
      print(f'  {k:24s} [{lo:.4g}, {hi:.4g}]')
