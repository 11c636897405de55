"""Collecting a sweep: one row per expected run (missing, failed and unfinished runs included),
the runs table (runs.csv) written atomically and read back, and the tables shipped with the
package (dlm_jax/study/results/) that the notebooks and docs analyse without training.
"""
import csv
import os

from dlm_jax.core import objectives
from dlm_jax.errors import DataError, SweepError
from dlm_jax.run import rundir


COLUMNS = ('run', 'status', 'objective', 'ratio', 'size', 'N', 'N_total', 'N_nonembed', 'D', 'U',
           'epochs', 'C', 'loss', 'loss_metric', 'steps', 'wall_time_s', 'error')


def loss_of(summary, which='final'):
  """The run's headline validation loss (the objective registry's `headline`: AR NLL where the
  run has an AR share, else the MDM NELBO; a dual run's NELBO stays in its own column)."""
  f = summary.get(which, {})
  obj = objectives.OBJECTIVES.get(summary.get('objective'))
  for k in (obj.headline if obj else ()):
    if k in f:
      return f[k], k
  return float('nan'), ''


def collect(root, names):
  """One row per expected run, in sweep order; missing, failed and unfinished runs are rows
  with their status (never dropped)."""
  rows = []
  for name in names:
    wd = os.path.join(root, name)
    st = rundir.status_of(wd)
    if st.startswith(('preempted', 'interrupted')):  # resumable: the next `local` continues it
      st = 'partial'
    row = dict(run=name, status=st if st in ('done', 'missing', 'partial') else 'failed',
               error='' if st in ('done', 'missing', 'partial') else st)
    if os.path.exists(rundir.path(wd, rundir.SUMMARY)):
      try:
        s = rundir.read_summary(wd)
      except DataError:  # reported in the row's status
        s = {}
      loss, key = loss_of(s)
      row.update({k: s.get(k) for k in ('objective', 'ratio', 'size', 'N_total', 'N_nonembed', 'D',
                                        'U', 'epochs', 'C', 'steps', 'wall_time_s')})
      row.update(N=s.get('N_nonembed'), loss=loss, loss_metric=key)
      for which in ('final', 'best'):
        for k, v in s.get(which, {}).items():
          row[f'{which}_{k}'] = v
    elif st == 'missing' and os.path.isdir(wd):
      row.update(status='failed', error=_last_error(wd) or 'no summary.json')
    rows.append(row)
  return rows


def _last_error(wd):
  p = os.path.join(wd, 'launcher.log')
  if not os.path.exists(p):
    return ''
  lines = [l for l in open(p, encoding='utf-8').read().splitlines() if l.strip()]
  errs = [l for l in lines if l.startswith('error:')]
  return (errs or lines[-1:] or [''])[-1][:300]


def write_csv(rows, path):
  """Atomically: a failed write (full disk) leaves the previous table intact."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  keys = list(COLUMNS) + sorted({k for r in rows for k in r} - set(COLUMNS))
  try:
    with open(path + '.tmp', 'w', newline='', encoding='utf-8') as f:
      w = csv.DictWriter(f, keys)
      w.writeheader()
      for r in rows:
        w.writerow({k: r.get(k, '') for k in keys})
    os.replace(path + '.tmp', path)
  except OSError as e:
    raise SweepError(f'could not write {path} ({e}); the previous table, if any, is kept') from None


RESULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'results')


def shipped_table(name: str) -> str:
  """A runs table shipped with the package (dlm_jax/study/results/<name>.csv: the micro sweeps
  behind docs/ and the notebooks), so an analysis runs without training."""
  path = os.path.join(RESULTS, f'{name}.csv')
  if not os.path.isfile(path):
    names = sorted(f[:-4] for f in os.listdir(RESULTS) if f.endswith('.csv'))
    raise SweepError(f'no shipped runs table {name!r} (shipped: {", ".join(names)})')
  return path


def read_csv(path):
  """A runs table (runs.csv) as a list of row dicts (strings): the one reader of the file."""
  try:
    with open(path, encoding='utf-8') as f:
      return list(csv.DictReader(f))
  except FileNotFoundError:
    raise SweepError(f'{path}: no such runs table') from None


def dataframe(rows):
  """A pandas DataFrame of collected rows (dicts or CSV strings), numeric columns as numbers."""
  try:
    import pandas as pd  # pylint: disable=g-import-not-at-top  # only the analysis needs it
  except ImportError:
    raise SweepError('a DataFrame needs pandas (a dependency of dlm_jax): pip install pandas'
                     ) from None
  df = pd.DataFrame(rows)
  for c in df.columns:
    conv = pd.to_numeric(df[c].replace('', float('nan')), errors='coerce')
    if conv.notna().sum() == (df[c].astype(str) != '').sum() and conv.notna().any():
      df[c] = conv
  return df
