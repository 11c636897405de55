"""Fitting a law to a runs table: the driver, bootstrap intervals and the CLI (each law is a
registered fitting.Law in study/law_<name>.py; study/laws.py imports them all).

  python -m dlm_jax.scaling fit --runs RUNS.csv --law chinchilla|isoflop|data_constrained|power \
      [--bootstrap K (200)] [--no-profile] [--fix NAME=VALUE,...] [--seed S] --out FIT.json

RUNS.csv columns: N, D, loss; optional U (unique tokens), C (FLOPs; default 6 N D), family, run.
"""
import sys

import numpy as np

from dlm_jax.errors import FitError, SweepError
from dlm_jax.study import fitting
from dlm_jax.study import laws
from dlm_jax.study import sweep


NUMERIC = ('N', 'D', 'U', 'C', 'loss', 'N_total', 'N_nonembed', 'epochs', 'ratio', 'seed')


def read_runs(path):
  """RUNS.csv -> dict of numpy columns (N, D, loss required; other columns kept, numeric ones
  as numbers). A cell that should be a number and is not names its column and row."""
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
      if col in NUMERIC:
        i = next(i for i, v in enumerate(vals) if not _is_number(v))
        raise FitError(f'{path}: column {col}, row {i + 2}: {vals[i]!r} is not a number') from None
      out[col] = np.array(vals, dtype=object)
  if 'run' not in out:
    out['run'] = np.array([f'row {i + 2}' for i in range(len(rows))], dtype=object)
  return out


def _is_number(v):
  try:
    float(v if v not in ('', None) else 'nan')
    return True
  except ValueError:
    return False


def check_positive(runs, cols):
  names = runs.get('run', np.arange(len(runs[cols[0]])))
  for c in cols:
    x = np.asarray(runs[c], float)
    bad = ~np.isfinite(x) | (x <= 0)
    if bad.any():
      raise FitError(f'column {c}: non-positive or NaN values in runs '
                     f'{", ".join(str(n) for n in np.asarray(names)[bad][:10])}')


LAWS = fitting.LAWS  # name -> fitting.Law, every registered law


def fit(law, runs, fix=None, seed=0, bootstrap=0, window=0, profile=False):
  """Fits `law` to the runs table (dict of columns); returns the FIT.json dict. bootstrap: K
  resamples for percentile intervals of every parameter and derived quantity; profile
  (chinchilla): profile-likelihood intervals for alpha and beta. window: isoflop only, the sizes
  around each budget's minimum its parabola uses (0: all, as published)."""
  fix = fix or {}
  spec = fitting.get(law)
  for c in spec.columns:
    if c not in runs:
      raise FitError(f'{law}: the runs table needs a column {c!r}')
  runs = dict(runs)
  if 'C' not in runs or np.isnan(np.asarray(runs['C'], float)).all():
    check_positive(runs, ('N', 'D'))
    runs['C'] = 6 * np.asarray(runs['N'], float) * np.asarray(runs['D'], float)
  check_positive(runs, tuple(spec.columns) + ('C',))

  def one(idx, draw=False):
    return spec.fit({k: np.asarray(v)[idx] for k, v in runs.items()}, fix, draw, window=window)

  n = len(runs['loss'])
  main = one(np.arange(n))
  for w in main.extra.get('warnings', []):  # the main fit's only, not every bootstrap draw's
    print(f'warning: {law}: {w}', file=sys.stderr)
  out = main.to_json()
  out['fixed'] = fix
  why = spec.degenerate(main.params, runs)
  if why:
    out['degenerate'] = why
    print(f'warning: {law}: degenerate fit: {why}', file=sys.stderr)
  Cs = np.logspace(np.log10(np.min(runs['C'])), np.log10(np.max(runs['C'])), 5)
  out.update(spec.describe(main, runs, Cs, fix, profile=profile))
  if bootstrap:
    counts = resample_counts(runs, bootstrap, np.random.default_rng(seed))
    draws, failed = spec.draws(runs, counts, main, fix, lambda idx: one(idx, draw=True))
    flat = [spec.flat(d, Cs) for d in draws]
    keys = sorted(set().union(*flat)) if flat else []
    out['ci'] = {k: [float(np.percentile([d[k] for d in flat if k in d], 2.5)),
                     float(np.percentile([d[k] for d in flat if k in d], 97.5))] for k in keys}
    out['bootstrap'] = dict(requested=bootstrap, used=len(draws), failed=failed, seed=seed,
                            level=0.95, resampled='seeds within cells' if 'seed' in runs else
                            'runs')
  return out


def resample_counts(runs, K, rng):
  """(K, n) bootstrap counts: the runs drawn with replacement; with a `seed` column, the seeds
  of each cell (runs that differ only in seed) are drawn with replacement within the cell."""
  n = len(runs['loss'])
  if 'seed' not in runs:
    return np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(K)])
  key = [tuple(np.asarray(runs[c])[i] for c in CELL_COLUMNS if c in runs) for i in range(n)]
  cells = [np.flatnonzero([k == c for k in key]) for c in dict.fromkeys(key)]
  counts = np.zeros((K, n), int)
  for members in cells:
    for k in range(K):
      counts[k] += np.bincount(rng.choice(members, len(members)), minlength=n)
  return counts


CELL_COLUMNS = ('objective', 'family', 'ratio', 'size', 'N', 'D', 'U')


HOFFMANN = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28, R_D_star=15.0, R_N_star=5.0)


def simulated_runs(n, seed=0, noise=0.01, params=None):
  """A runs table of n runs on an IsoFLOP grid (n // 8 sizes around the optimum at each of 8
  budgets 1e18-1e21), unique tokens U = D / R with R cycling 1, 2, 4, 8, 16, loss from the
  data-constrained law (Hoffmann et al.'s Chinchilla fit, R_D* = 15, R_N* = 5) times
  log-normal noise: every law can be fitted to it (benchmarks, coverage)."""
  p = params or HOFFMANN
  rng = np.random.default_rng(seed)
  per = max(n // 8, 3)
  C = np.repeat(np.logspace(18, 21, 8), per)[:n]
  k = np.tile(np.linspace(-1.2, 1.2, per), 8)[:n]
  N = laws.compute_optimal(p, C)[0] * np.exp(k)
  D = C / (6 * N)
  U = D / np.resize([1, 2, 4, 8, 16], n)
  loss = laws.data_constrained_loss(p, N, D, U) * np.exp(rng.normal(0, noise, n))
  family = np.resize(['ar', 'mdm'], n).astype(object)
  return dict(N=N, D=D, U=U, C=C, loss=loss, family=family,
              run=np.array([f'sim{i}' for i in range(n)], dtype=object))


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

