"""Plots (PNG and SVG) of runs and sweeps; the analysis logic lives in study/laws.py, scaling.py
and sweep.py, and each law draws its own panel (fitting.Law.draw).

  python -m dlm_jax.plot curves RUN_DIR... [--metric mdm_nelbo] --out curves
  python -m dlm_jax.plot sweep RUNS.csv --out-dir docs/isoflop_micro [--bootstrap 100]
      [--isoflop-window 3] [--plots compute,isoflop,chinchilla,dual]
  python -m dlm_jax.plot sample-bench BENCH.jsonl --out docs/sample_bench

`sweep` draws, per objective family, every registered law's panel (loss vs compute with the
fitted power law, IsoFLOP curves with their vertices and N_opt(C), fitted-vs-observed
(Chinchilla)) and the dual-ratio heat map when the table has ratio x epochs runs; it writes the
fits it drew as fits.json next to them.
"""
import json
import os

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from dlm_jax.core import objectives  # pylint: disable=wrong-import-position
from dlm_jax.errors import FitError  # pylint: disable=wrong-import-position
from dlm_jax.run import rundir  # pylint: disable=wrong-import-position
from dlm_jax.study import figures  # pylint: disable=wrong-import-position
from dlm_jax.study import fitting  # pylint: disable=wrong-import-position
from dlm_jax.study import laws  # pylint: disable=wrong-import-position
from dlm_jax.study import scaling  # pylint: disable=wrong-import-position


save = figures.save
_log_axis = figures.log_axis  # tests/test_scaling.py checks its decade labels here


def loss_curves(run_dirs, metric=None, out='curves'):
  """Validation loss vs tokens for any set of runs."""
  fig, ax = plt.subplots(figsize=(6, 4))
  headline = {m for o in objectives.OBJECTIVES.values() for m in o.headline}
  for wd in run_dirs:
    rows = rundir.read_validation(wd)
    keys = [metric] if metric else [k for k in sorted(headline) if k in rows[-1]]
    for k in keys:
      tokens, values = rundir.validation_curve(wd, k)
      ax.plot(tokens, values, marker='o', ms=3, label=f'{os.path.basename(wd.rstrip("/"))} {k}')
  ax.set_xscale('log')
  ax.set_xlabel('tokens')
  ax.set_ylabel('validation loss (nats/token)')
  ax.legend(fontsize=7)
  return save(fig, out)


def _families(rows):
  fams = {}
  for r in rows:
    if r.get('status') == 'done' and r.get('loss') not in (None, '') and np.isfinite(float(r['loss'])):
      fams.setdefault(r['objective'], []).append(r)
  return fams


def panels():
  """The panels `plot sweep` can draw, in order: each registered law's (fitting.Law.panel),
  then the dual-ratio heat map."""
  return tuple(law.panel for law in fitting.panel_laws()) + ('dual',)


PLOTS = panels()


def sweep_plots(rows, out_dir, bootstrap=0, seed=0, which=None, isoflop_window=0):
  """Sweep plots for a collected table (list of dicts); returns (files, fits). which: panel
  names (default: every one, panels()). isoflop_window: sizes around each budget's minimum the
  IsoFLOP parabolas use (0: all; laws.fit_isoflop). Chinchilla fits also carry
  profile-likelihood intervals of alpha and beta. With bootstrap > 0 every fitted number drawn
  carries its 95% interval (error bars, legend brackets); warnings (degenerate fits, families or
  panels without data) are drawn on the plots, printed and listed under `warnings` in fits.json
  (the returned dict holds the fits only)."""
  which = panels() if which is None else which
  fams = _families(rows)
  if not fams:  # before: exit 0 and empty plots
    raise FitError(f'no finished run with a finite loss among the {len(rows)} rows of the table: '
                   'nothing to plot (python -m dlm_jax.sweep list shows their status)')
  files, fits, notes = [], {}, []
  os.makedirs(out_dir, exist_ok=True)
  colors = dict(zip(sorted(fams), plt.rcParams['axes.prop_cycle'].by_key()['color']))
  sheet = figures.Sheet(fams, colors, fits, notes, out_dir, scaling.fit, bootstrap, seed,
                        isoflop_window)
  for law in fitting.panel_laws():
    if law.panel in which:
      files += law.draw(sheet)
  if 'dual' in which:
    files += _dual_plot(rows, fits, notes, out_dir)
  with open(os.path.join(out_dir, 'fits.json'), 'w', encoding='utf-8') as fo:
    json.dump(dict(fits, warnings=notes) if notes else fits, fo, indent=2, default=float)
  return files, fits


def _dual_plot(rows, fits, notes, out_dir):
  """Validation AR NLL over AR weight x repetition, with the optimal weight per R and its
  bootstrap interval."""
  dual = [r for r in rows if r.get('status') == 'done' and r.get('ratio') not in (None, '')
          and r.get('epochs') not in (None, '')]
  ratios = sorted({float(r['ratio']) for r in dual})
  reps = sorted({round(float(r['epochs'])) for r in dual})
  if len(ratios) < 3 or len(reps) < 2:
    if any(r.get('objective') == 'dual' for r in dual):  # a dual-ratio table, too small
      notes.append(f'dual_ratio: not drawn ({len(ratios)} AR weights x {len(reps)} repetition '
                   'levels; it needs >= 3 x 2)')
    return []
  grid = np.full((len(reps), len(ratios)), np.nan)
  for r in dual:
    grid[reps.index(round(float(r['epochs']))), ratios.index(float(r['ratio']))] = float(
        r.get('final_ar_nll') or r['loss'])
  fig, ax = plt.subplots(figsize=(8, 3.8))
  im = ax.imshow(grid, aspect='auto', cmap='viridis_r')
  ax.set_xticks(range(len(ratios)), [f'{x:g}' for x in ratios], rotation=45, ha='right')
  ax.set_yticks(range(len(reps)), [str(x) for x in reps])
  ax.set_xlabel('AR weight')
  ax.set_ylabel('epochs R')
  fig.colorbar(im, label='validation AR NLL')
  opt = laws.optimal_ratio([float(r['ratio']) for r in dual],
                           [float(r['epochs']) for r in dual],
                           [float(r.get('final_ar_nll') or r['loss']) for r in dual])
  fits['optimal_ratio'] = opt
  pos = np.arange(len(ratios))
  for j, R in enumerate(reps):
    o = opt[float(R)]
    ax.plot(ratios.index(o['grid_best']), j, 'r*', ms=12,
            label='best weight on the grid' if j == 0 else None)
    if o.get('ci') and o.get('vertex') is not None:
      lo, hi = np.interp(o['ci'], ratios, pos)
      v = np.interp(o['vertex'], ratios, pos)
      ax.errorbar(v, j, xerr=[[v - lo], [hi - v]], fmt='wo', ms=4, capsize=4,
                  label='fitted optimum, 95% bootstrap interval' if j == 0 else None)
  ax.set_title('validation AR NLL over AR weight x epochs', fontsize=9)
  ax.legend(fontsize=7, loc='upper left', framealpha=0.8)
  return save(fig, os.path.join(out_dir, 'dual_ratio'))


def sample_bench(rows, out='sample_bench'):
  """Quality vs speed of samplers (`python -m dlm_jax.bench sample` lines): generative
  perplexity against tokens/s, one panel per sample length, MDM points labelled with T."""
  rows = [r for r in rows if r.get('bench') == 'sample' and 'gen_ppl' in r]
  lengths = sorted({r['length'] for r in rows})
  fig, axes = plt.subplots(1, len(lengths), figsize=(5 * len(lengths), 4), squeeze=False)
  for ax, L in zip(axes[0], lengths):
    rs = [r for r in rows if r['length'] == L]
    name = lambda r: os.path.basename(r['run'].rstrip('/'))
    runs = list(dict.fromkeys(name(r) for r in rs))
    for k, run in enumerate(runs):
      mdm = sorted([r for r in rs if r['mode'] == 'mdm' and name(r) == run],
                   key=lambda r: r['steps'])
      if mdm:
        ax.plot([r['tokens_per_s'] for r in mdm], [r['gen_ppl'] for r in mdm], 'o-',
                c=f'C{k + 1}', label=f'MDM ({run}), T steps')
        for r in mdm:
          ax.annotate(f'T={r["steps"]}', (r['tokens_per_s'], r['gen_ppl']), fontsize=7,
                      xytext=(3, 3), textcoords='offset points')
      for r in rs:
        if r['mode'] == 'ar' and name(r) == run:
          cached = r.get('kv_cache', True)
          ax.plot(r['tokens_per_s'], r['gen_ppl'], 's' if cached else 'D', c='C0',
                  mfc='C0' if cached else 'none',
                  label=f'AR ({run}), {"KV cache" if cached else "no cache"}')
    ax.set_xscale('log')
    ax.set_yscale('log')
    ax.set_xlabel('tokens / s')
    ax.set_ylabel('generative perplexity')
    ax.set_title(f'L = {L} ({rs[0]["device"]})')
    ax.legend(fontsize=7)
  return save(fig, out)


def read_jsonl(path):
  return [json.loads(line) for line in open(path, encoding='utf-8') if line.strip()]

