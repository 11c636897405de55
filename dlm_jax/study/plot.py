"""Plots (PNG and SVG) of runs and sweeps; the analysis logic lives in study/laws.py, scaling.py
and sweep.py.

  python -m dlm_jax.plot curves RUN_DIR... [--metric mdm_nelbo] --out curves
  python -m dlm_jax.plot sweep RUNS.csv --out-dir docs/isoflop_micro [--bootstrap 100]
      [--isoflop-window 3] [--plots compute,isoflop,chinchilla,dual]
  python -m dlm_jax.plot sample-bench BENCH.jsonl --out docs/sample_bench

`sweep` draws, per objective family: loss vs compute with the fitted power law, IsoFLOP curves
with their vertices, N_opt(C), fitted-vs-observed (Chinchilla), and the dual-ratio heat map when
the table has ratio x epochs runs; it writes the fits it drew as fits.json next to them.
"""
import json
import os
import sys
import textwrap

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position
from matplotlib import lines  # pylint: disable=wrong-import-position
from matplotlib import ticker  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from dlm_jax.core import objectives  # pylint: disable=wrong-import-position
from dlm_jax.errors import FitError  # pylint: disable=wrong-import-position
from dlm_jax.run import rundir  # pylint: disable=wrong-import-position
from dlm_jax.study import laws  # pylint: disable=wrong-import-position
from dlm_jax.study import scaling  # pylint: disable=wrong-import-position


plt.rcParams['svg.fonttype'] = 'none'  # SVG text stays text: searchable, smaller


def save(fig, out):
  """out without extension -> out.png and out.svg."""
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  fig.tight_layout()
  for ext in ('png', 'svg'):
    fig.savefig(f'{out}.{ext}', dpi=130)
  plt.close(fig)
  return [f'{out}.png', f'{out}.svg']


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


def _arr(rows, k):
  return np.array([float(r[k]) for r in rows])


def _note(ax, notes, what, text, where=0.5):
  """A warning drawn on the panel itself (a degenerate fit, a family without data, an empty
  panel), printed, and kept in fits.json's `warnings`: a reader of the PNG sees it too."""
  notes.append(f'{what}: {text}')
  print(f'warning: {what}: {text}', file=sys.stderr)
  ax.text(0.5, where, '\n'.join(textwrap.wrap(text, 60)), transform=ax.transAxes, ha='center',
          va='center', fontsize=7.5, color='#a00000', zorder=10,
          bbox=dict(boxstyle='round', fc='#fff0f0', ec='#a00000', alpha=0.9))


def _log_axis(ax, axis='x'):
  """Log scale with labels on the decades only (minor labels overlap on short ranges)."""
  getattr(ax, f'set_{axis}scale')('log')
  getattr(ax, f'{axis}axis').set_minor_formatter(ticker.NullFormatter())


def _ci_text(fit, key):
  iv = fit.get('ci', {}).get(key)
  return f' [{iv[0]:.2f}, {iv[1]:.2f}]' if iv else ''


PLOTS = ('compute', 'isoflop', 'chinchilla', 'dual')


def sweep_plots(rows, out_dir, bootstrap=0, seed=0, which=PLOTS, isoflop_window=0):
  """Sweep plots for a collected table (list of dicts); returns (files, fits). isoflop_window:
  sizes around each budget's minimum the IsoFLOP parabolas use (0: all; laws.fit_isoflop).
  Chinchilla fits also carry profile-likelihood intervals of alpha and beta. With bootstrap > 0
  every fitted number drawn carries its 95% interval (error bars, legend brackets); warnings
  (degenerate fits, families or panels without data) are drawn on the plots, printed and listed
  under `warnings` in fits.json (the returned dict holds the fits only)."""
  fams = _families(rows)
  if not fams:  # before: exit 0 and empty plots
    raise FitError(f'no finished run with a finite loss among the {len(rows)} rows of the table: '
                   'nothing to plot (python -m dlm_jax.sweep list shows their status)')
  files, fits, notes = [], {}, []
  os.makedirs(out_dir, exist_ok=True)
  colors = dict(zip(sorted(fams), plt.rcParams['axes.prop_cycle'].by_key()['color']))
  if 'compute' in which:
    files += _compute_plot(fams, colors, fits, notes, out_dir, bootstrap, seed)
  if 'isoflop' in which:
    files += _isoflop_plot(fams, colors, fits, notes, out_dir, bootstrap, seed, isoflop_window)
  if 'chinchilla' in which:
    files += _chinchilla_plot(fams, colors, fits, notes, out_dir, bootstrap, seed)
  if 'dual' in which:
    files += _dual_plot(rows, fits, notes, out_dir)
  with open(os.path.join(out_dir, 'fits.json'), 'w', encoding='utf-8') as fo:
    json.dump(dict(fits, warnings=notes) if notes else fits, fo, indent=2, default=float)
  return files, fits


def _compute_plot(fams, colors, fits, notes, out_dir, bootstrap, seed):
  """Loss vs compute, with the per-family power law on the lower envelope (frontier)."""
  fig, ax = plt.subplots(figsize=(6.5, 4.2))
  fr = {}
  for f, rs in sorted(fams.items()):
    C, L = _arr(rs, 'C'), _arr(rs, 'loss')
    ax.scatter(C, L, s=12, color=colors[f], alpha=0.5, label=f'{f} runs')
    budgets = laws.group_budgets(C)
    best = [int(np.flatnonzero(budgets == g)[np.argmin(L[budgets == g])])
            for g in sorted(set(budgets.tolist()))]
    fr[f] = (C[best], L[best])
    ax.plot(C[best], L[best], color=colors[f], lw=1.5, label=f'{f} frontier (best per budget)')
  title = 'loss vs compute'
  few = sorted(f for f, v in fr.items() if len(v[0]) < 2)
  if few:
    _note(ax, notes, 'loss_vs_compute', f'{", ".join(few)}: one compute budget only; no power law '
          'of loss in compute can be fitted', where=0.85)
  else:
    fam = sorted(fr)
    res = scaling.fit('power', dict(N=np.ones(sum(len(fr[f][0]) for f in fam)),
                                    D=np.concatenate([fr[f][0] for f in fam]) / 6,
                                    C=np.concatenate([fr[f][0] for f in fam]),
                                    loss=np.concatenate([fr[f][1] for f in fam]),
                                    family=np.array(sum([[f] * len(fr[f][0]) for f in fam], []),
                                                    dtype=object)),
                      bootstrap=bootstrap, seed=seed)
    fits['power_frontier'] = res
    for f in fam:
      cs = np.logspace(np.log10(fr[f][0].min()), np.log10(fr[f][0].max()), 50)
      p = res['params'][f]
      ax.plot(cs, p['k'] * cs ** p['gamma'], '--', color=colors[f], lw=1,
              label=f'{f}: {p["k"]:.3g} C^{p["gamma"]:.3f}{_ci_text(res, f + ".gamma")}')
    if res.get('degenerate'):
      _note(ax, notes, 'loss_vs_compute', f'degenerate fit: {res["degenerate"]}', where=0.85)
    if 'compute_multiplier' in res:
      title = (f'{res["multiplier_of"]} needs {res["compute_multiplier"]:.2f}x'
               f'{_ci_text(res, "compute_multiplier")} the compute for equal loss')
  _log_axis(ax, 'x')
  ax.set_xlabel('compute C (FLOPs)')
  ax.set_ylabel('validation loss (nats/token)')
  ax.set_title(title + (' (95% bootstrap intervals)' if bootstrap and 'ci' in fits.get(
      'power_frontier', {}) else ''), fontsize=9)
  ax.legend(fontsize=7)
  return save(fig, os.path.join(out_dir, 'loss_vs_compute'))


def _isoflop_plot(fams, colors, fits, notes, out_dir, bootstrap, seed, window=0):
  """IsoFLOP curves with their vertices, and N_opt(C) with its intervals."""
  fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.3))
  handles, vertices, wide = [], [], False
  for f, rs in sorted(fams.items()):
    N, C, L = _arr(rs, 'N'), _arr(rs, 'C'), _arr(rs, 'loss')
    try:
      iso = scaling.fit('isoflop', dict(N=N, D=_arr(rs, 'D'), C=C, loss=L,
                                         run=np.array([r['run'] for r in rs], dtype=object)),
                        bootstrap=bootstrap, seed=seed, window=window)
    except FitError as e:
      _note(ax, notes, f'isoflop ({f})', str(e), where=0.85 - 0.25 * len(handles))
      continue
    fits[f'isoflop_{f}'] = iso
    handles.append(lines.Line2D([], [], color=colors[f], marker='o', ms=3, label=f))
    lab = laws.group_budgets(C)
    for g in sorted(set(lab.tolist())):
      m = lab == g
      o = np.argsort(N[m])
      ax.plot(N[m][o], L[m][o], marker='o', ms=3, color=colors[f], alpha=0.4 + 0.6 * g / max(lab))
    inside = N.min() <= np.array([b['N_opt'] for b in iso['budgets']])
    inside &= np.array([b['N_opt'] for b in iso['budgets']]) <= N.max()
    for b, ok in zip(iso['budgets'], inside):
      ax.plot(b['N_opt'], b['loss_opt'], '*', ms=10, color=colors[f] if ok else 'none',
              markeredgecolor=colors[f])
    cb = np.array([b['C'] for b in iso['budgets']])
    n_opt = np.array([b['N_opt'] for b in iso['budgets']])
    ivs = [iso.get('ci', {}).get(f'N_opt@{b["C"]:.2g}') or b.get('N_opt_ci')
           for b in iso['budgets']]
    err = np.array([[n - iv[0], iv[1] - n] if iv else [0, 0] for n, iv in zip(n_opt, ivs)]).T
    ax2.errorbar(cb, n_opt, yerr=np.maximum(err, 0), fmt='o', color=colors[f], capsize=3,
                 label=f'{f} vertices' + (' (95% intervals)' if any(ivs) else ''))
    ax2.plot(cb, iso['params']['G'] * cb ** iso['params']['a'], '--', color=colors[f],
             label=f'{f}: N_opt ~ C^{iso["params"]["a"]:.2f}{_ci_text(iso, "a")}')
    if iso.get('degenerate'):
      _note(ax2, notes, f'isoflop ({f})', f'degenerate fit: {iso["degenerate"]}',
            where=0.85 - 0.25 * (len(handles) - 1))
    vertices.extend(n_opt.tolist())
    wide |= any(iv and (iv[0] < n_opt.min() / 4 or iv[1] > n_opt.max() * 4) for iv in ivs)
  if vertices:  # the panel shows the vertices; an interval past it is drawn clipped, and said
    ax2.set_ylim(min(vertices) / 4, max(vertices) * 4)
  if wide:
    _note(ax2, notes, 'isoflop', 'some 95% intervals of N_opt reach past this panel (drawn '
          'clipped; their values are in fits.json)', where=0.12)
  if not handles:
    _note(ax2, notes, 'isoflop', 'no family has an IsoFLOP fit (each budget needs >= 3 sizes, '
          'and >= 2 budgets are needed)')
  handles += [lines.Line2D([], [], ls='', marker='*', ms=9, color='gray', label='vertex'),
              lines.Line2D([], [], ls='', marker='*', ms=9, color='none', markeredgecolor='gray',
                           label='vertex outside the sampled sizes')]
  _log_axis(ax, 'x')
  ax.set_xlabel('non-embedding parameters N')
  ax.set_ylabel('validation loss (nats/token)')
  ax.set_title('IsoFLOP curves (darker = more compute' +
               (f';\nparabolas through the {window} sizes around each minimum)' if window else ')'),
               fontsize=8.5)
  ax.legend(handles=handles, fontsize=7)
  _log_axis(ax2, 'x')
  _log_axis(ax2, 'y')
  ax2.set_xlabel('compute C (FLOPs)')
  ax2.set_ylabel('N_opt')
  if ax2.lines or ax2.collections:
    ax2.legend(fontsize=7)
  return save(fig, os.path.join(out_dir, 'isoflop'))


def _chinchilla_plot(fams, colors, fits, notes, out_dir, bootstrap, seed):
  """Chinchilla fit per family: fitted vs observed."""
  fig, ax = plt.subplots(figsize=(5.5, 4.3))
  for i, (f, rs) in enumerate(sorted(fams.items())):
    if len(rs) < 8:
      _note(ax, notes, f'chinchilla ({f})', f'{len(rs)} finished runs; the fit needs >= 8',
            where=0.85 - 0.25 * i)
      continue
    N, D, L = _arr(rs, 'N'), _arr(rs, 'D'), _arr(rs, 'loss')
    ch = scaling.fit('chinchilla', dict(N=N, D=D, loss=L), bootstrap=bootstrap, seed=seed,
                     profile=True)
    fits[f'chinchilla_{f}'] = ch
    ax.scatter(L, laws.chinchilla_loss(ch['params'], N, D), s=12, color=colors[f],
               label=f'{f}: alpha={ch["params"]["alpha"]:.2f}{_ci_text(ch, "alpha")} '
                     f'beta={ch["params"]["beta"]:.2f}{_ci_text(ch, "beta")}')
    if ch.get('degenerate'):
      _note(ax, notes, f'chinchilla ({f})', f'degenerate fit: {ch["degenerate"]}',
            where=0.85 - 0.25 * i)
  if ax.collections:
    lo, hi = ax.get_xlim()
    ax.plot([lo, hi], [lo, hi], 'k:', lw=1, label='fitted = observed')
    ax.legend(fontsize=7, loc='lower right')
  ax.set_xlabel('observed loss')
  ax.set_ylabel('fitted L(N, D)')
  ax.set_title('Chinchilla L = E + A/N^alpha + B/D^beta' +
               (' (95% bootstrap intervals)' if bootstrap else ''), fontsize=9)
  return save(fig, os.path.join(out_dir, 'fitted_vs_observed'))


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

