"""Plots (PNG and SVG) of runs and sweeps; the analysis logic lives in study/laws.py, scaling.py
and sweep.py.

  python -m dlm_jax.plot curves RUN_DIR... [--metric mdm_nelbo] --out curves
  python -m dlm_jax.plot sweep RUNS.csv --out-dir docs/isoflop_micro [--bootstrap 100]
      [--isoflop-window 3]
  python -m dlm_jax.plot sample-bench BENCH.jsonl --out docs/sample_bench

`sweep` draws, per objective family: loss vs compute with the fitted power law, IsoFLOP curves
with their vertices, N_opt(C), fitted-vs-observed (Chinchilla), and the dual-ratio heat map when
the table has ratio x epochs runs; it writes the fits it drew as fits.json next to them.
"""
import argparse
import json
import os

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from dlm_jax import errors  # pylint: disable=wrong-import-position
from dlm_jax.core import objectives  # pylint: disable=wrong-import-position
from dlm_jax.errors import FitError  # pylint: disable=wrong-import-position
from dlm_jax.run import rundir  # pylint: disable=wrong-import-position
from dlm_jax.study import laws  # pylint: disable=wrong-import-position
from dlm_jax.study import scaling  # pylint: disable=wrong-import-position
from dlm_jax.study import sweep  # pylint: disable=wrong-import-position


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


PLOTS = ('compute', 'isoflop', 'chinchilla', 'dual')


def sweep_plots(rows, out_dir, bootstrap=0, seed=0, which=PLOTS, isoflop_window=0):
  """Sweep plots for a collected table (list of dicts); returns (files, fits). isoflop_window:
  sizes around each budget's minimum the IsoFLOP parabolas use (0: all; laws.fit_isoflop).
  Chinchilla fits also carry profile-likelihood intervals of alpha and beta."""
  fams = _families(rows)
  if not fams:  # before: exit 0 and empty plots
    raise FitError(f'no finished run with a finite loss among the {len(rows)} rows of the table: '
                   'nothing to plot (python -m dlm_jax.sweep list shows their status)')
  files, fits = [], {}
  os.makedirs(out_dir, exist_ok=True)
  colors = dict(zip(sorted(fams), plt.rcParams['axes.prop_cycle'].by_key()['color']))
  if 'compute' in which:
    files += _compute_plot(fams, colors, fits, out_dir, bootstrap, seed)
  if 'isoflop' in which:
    files += _isoflop_plot(fams, colors, fits, out_dir, bootstrap, seed, isoflop_window)
  if 'chinchilla' in which:
    files += _chinchilla_plot(fams, colors, fits, out_dir, bootstrap, seed)
  if 'dual' in which:
    files += _dual_plot(rows, fits, out_dir)
  with open(os.path.join(out_dir, 'fits.json'), 'w', encoding='utf-8') as fo:
    json.dump(fits, fo, indent=2, default=float)
  return files, fits


def _compute_plot(fams, colors, fits, out_dir, bootstrap, seed):
  """Loss vs compute, with the per-family power law on the lower envelope (frontier)."""
  fig, ax = plt.subplots(figsize=(6, 4))
  fr = {}
  for f, rs in sorted(fams.items()):
    C, L = _arr(rs, 'C'), _arr(rs, 'loss')
    ax.scatter(C, L, s=12, color=colors[f], alpha=0.6, label=f'{f} runs')
    budgets = laws.group_budgets(C)
    best = [int(np.flatnonzero(budgets == g)[np.argmin(L[budgets == g])])
            for g in sorted(set(budgets.tolist()))]
    fr[f] = (C[best], L[best])
    ax.plot(C[best], L[best], color=colors[f], lw=1.5, label=f'{f} frontier')
  if len(fr) >= 1 and all(len(v[0]) >= 2 for v in fr.values()):
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
              label=f'{f}: {p["k"]:.3g} C^{p["gamma"]:.3f}')
  ax.set_xscale('log')
  ax.set_xlabel('compute C (FLOPs)')
  ax.set_ylabel('validation loss (nats/token)')
  ax.legend(fontsize=7)
  return save(fig, os.path.join(out_dir, 'loss_vs_compute'))


def _isoflop_plot(fams, colors, fits, out_dir, bootstrap, seed, window=0):
  """IsoFLOP curves with their vertices, and N_opt(C)."""
  fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4))
  for f, rs in sorted(fams.items()):
    N, C, L = _arr(rs, 'N'), _arr(rs, 'C'), _arr(rs, 'loss')
    try:
      iso = scaling.fit('isoflop', dict(N=N, D=_arr(rs, 'D'), C=C, loss=L,
                                         run=np.array([r['run'] for r in rs], dtype=object)),
                        bootstrap=bootstrap, seed=seed, window=window)
    except FitError as e:
      print(f'isoflop ({f}): {e}')
      continue
    fits[f'isoflop_{f}'] = iso
    lab = laws.group_budgets(C)
    for g in sorted(set(lab.tolist())):
      m = lab == g
      o = np.argsort(N[m])
      ax.plot(N[m][o], L[m][o], marker='o', ms=3, color=colors[f], alpha=0.4 + 0.6 * g / max(lab))
    for b in iso['budgets']:
      ax.plot(b['N_opt'], b['loss_opt'], '*', ms=9, color=colors[f])
    cb = np.array([b['C'] for b in iso['budgets']])
    ax2.scatter(cb, [b['N_opt'] for b in iso['budgets']], color=colors[f], label=f)
    ax2.plot(cb, iso['params']['G'] * cb ** iso['params']['a'], '--', color=colors[f],
             label=f'{f}: N_opt ~ C^{iso["params"]["a"]:.2f}')
  ax.set_xscale('log')
  ax.set_xlabel('non-embedding parameters N')
  ax.set_ylabel('validation loss')
  ax.set_title('IsoFLOP curves (darker = more compute; * vertex' +
               (f' of the {window} sizes around the minimum)' if window else ')'), fontsize=9)
  ax2.set_xscale('log')
  ax2.set_yscale('log')
  ax2.set_xlabel('compute C')
  ax2.set_ylabel('N_opt')
  ax2.legend(fontsize=7)
  return save(fig, os.path.join(out_dir, 'isoflop'))


def _chinchilla_plot(fams, colors, fits, out_dir, bootstrap, seed):
  """Chinchilla fit per family: fitted vs observed."""
  fig, ax = plt.subplots(figsize=(5, 4))
  for f, rs in sorted(fams.items()):
    if len(rs) < 8:
      continue
    N, D, L = _arr(rs, 'N'), _arr(rs, 'D'), _arr(rs, 'loss')
    ch = scaling.fit('chinchilla', dict(N=N, D=D, loss=L), bootstrap=bootstrap, seed=seed,
                     profile=True)
    fits[f'chinchilla_{f}'] = ch
    ax.scatter(L, laws.chinchilla_loss(ch['params'], N, D), s=12, color=colors[f],
               label=f'{f}: alpha={ch["params"]["alpha"]:.2f} beta={ch["params"]["beta"]:.2f}')
  lo, hi = ax.get_xlim()
  ax.plot([lo, hi], [lo, hi], 'k:', lw=1)
  ax.set_xlabel('observed loss')
  ax.set_ylabel('fitted L(N, D)')
  ax.legend(fontsize=7)
  return save(fig, os.path.join(out_dir, 'fitted_vs_observed'))


def _dual_plot(rows, fits, out_dir):
  """Validation AR NLL over AR weight x repetition, with the optimal weight per R."""
  dual = [r for r in rows if r.get('status') == 'done' and r.get('ratio') not in (None, '')
          and r.get('epochs') not in (None, '')]
  ratios = sorted({float(r['ratio']) for r in dual})
  reps = sorted({round(float(r['epochs'])) for r in dual})
  if len(ratios) >= 3 and len(reps) >= 2:
    grid = np.full((len(reps), len(ratios)), np.nan)
    for r in dual:
      grid[reps.index(round(float(r['epochs']))), ratios.index(float(r['ratio']))] = float(
          r.get('final_ar_nll') or r['loss'])
    fig, ax = plt.subplots(figsize=(7, 3.5))
    im = ax.imshow(grid, aspect='auto', cmap='viridis_r')
    ax.set_xticks(range(len(ratios)), [f'{x:g}' for x in ratios])
    ax.set_yticks(range(len(reps)), [str(x) for x in reps])
    ax.set_xlabel('AR weight')
    ax.set_ylabel('epochs R')
    fig.colorbar(im, label='validation AR NLL')
    opt = laws.optimal_ratio([float(r['ratio']) for r in dual],
                                [float(r['epochs']) for r in dual],
                                [float(r.get('final_ar_nll') or r['loss']) for r in dual])
    fits['optimal_ratio'] = opt
    for j, R in enumerate(reps):
      best = opt[float(R)]['grid_best']
      ax.plot(ratios.index(best), j, 'r*', ms=12)
    ax.set_title('validation AR NLL (red star: best AR weight per R)')
    return save(fig, os.path.join(out_dir, 'dual_ratio'))
  return []


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


@errors.cli
def main(argv=None):
  ap = argparse.ArgumentParser(prog='python -m dlm_jax.plot', description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = ap.add_subparsers(dest='cmd', required=True)
  c = sub.add_parser('curves')
  c.add_argument('runs', nargs='+')
  c.add_argument('--metric', default=None)
  c.add_argument('--out', default='curves')
  s = sub.add_parser('sweep')
  s.add_argument('table')
  s.add_argument('--out-dir', required=True)
  s.add_argument('--bootstrap', type=int, default=0)
  s.add_argument('--isoflop-window', type=int, default=0,
                 help='fit each IsoFLOP parabola to the K sizes around the budget minimum')
  b = sub.add_parser('sample-bench')
  b.add_argument('results')
  b.add_argument('--out', default='sample_bench')
  a = ap.parse_args(argv)
  if a.cmd == 'curves':
    print('\n'.join(loss_curves(a.runs, a.metric, a.out)))
  elif a.cmd == 'sample-bench':
    print('\n'.join(sample_bench(read_jsonl(a.results), a.out)))
  else:
    files, _ = sweep_plots(sweep.read_csv(a.table), a.out_dir, a.bootstrap,
                           isoflop_window=a.isoflop_window)
    print('\n'.join(files))


if __name__ == '__main__':
  main()
