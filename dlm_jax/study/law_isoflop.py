"""IsoFLOP (Approach 2, Hoffmann et al. 2022): per compute budget a parabola of loss in log N
and its vertex N_opt(C), then N_opt ~ G C^a by least squares. Panel: the IsoFLOP curves with
their vertices, and N_opt(C) with its intervals."""
import math

import numpy as np
from matplotlib import lines

from dlm_jax.errors import FitError
from dlm_jax.study import figures
from dlm_jax.study import fitting


def window_around_min(x, loss, window):
  """Indices of the `window` sizes nearest (in rank) to the smallest loss, shifted to stay inside
  the grid; all of them when window is 0 or covers the grid."""
  order = np.argsort(x)
  if not window or window >= len(x):
    return order
  k = int(np.argmin(loss[order]))
  lo = min(max(k - window // 2, 0), len(x) - window)
  return order[lo:lo + window]


def fit_isoflop(N, C, loss, runs=None, window=0, vertex_ci=True):
  """Approach 2: per budget a parabola of loss in log N, its vertex N_opt(C) with a 95% residual
  bootstrap interval (budgets with > 3 sizes); then log N_opt = log G + a log C by least squares.
  A budget needs >= 3 sizes. window > 0 fits each parabola to the `window` sizes around the
  budget's smallest loss only (for grids reaching far past the optimum, where undertrained large
  models flatten the profile into a non-parabolic plateau); 0 uses every size, as published."""
  N, C, loss = (np.asarray(x, float) for x in (N, C, loss))
  lab = fitting.group_budgets(C)
  budgets, warn = [], []
  for g in sorted(set(lab.tolist())):
    m = lab == g
    cb = float(np.exp(np.mean(np.log(C[m]))))
    if len(set(N[m].tolist())) < 3:
      names = ', '.join(str(r) for r in (np.asarray(runs)[m] if runs is not None else N[m]))
      raise FitError(f'isoflop: budget C={cb:.3g} has {len(set(N[m].tolist()))} distinct sizes '
                     f'(runs: {names}); a parabola needs at least 3')
    idx = np.flatnonzero(m)
    idx = idx[window_around_min(np.log(N[idx]), loss[idx], window)]
    x, y = np.log(N[idx]), loss[idx]
    c2, c1, c0 = np.polyfit(x, y, 2)
    if c2 <= 0:
      warn.append(f'budget C={cb:.3g}: loss is not convex in log N; vertex undefined')
      continue
    xv = -c1 / (2 * c2)
    with np.errstate(over='ignore'):
      n_opt = float(np.exp(xv))
    if not 0 < n_opt < np.inf:  # an almost flat parabola: the vertex is out of reach
      warn.append(f'budget C={cb:.3g}: loss is almost flat in log N; vertex undefined')
      continue
    if not x.min() <= xv <= x.max():
      warn.append(f'budget C={cb:.3g}: vertex N={n_opt:.3g} lies outside the sampled '
                  f'sizes [{math.exp(x.min()):.3g}, {math.exp(x.max()):.3g}]')
    ci = (fitting.vertex_interval(x, y, (c2, c1, c0), 500, np.random.default_rng(0))
          if vertex_ci else None)
    budgets.append(dict(C=cb, N_opt=n_opt, loss_opt=float(c0 + c1 * xv + c2 * xv**2),
                        D_opt=float(cb / (6 * n_opt)), n_runs=int(len(idx)),
                        N_opt_ci=[float(np.exp(v)) for v in ci] if ci else None))
  if len(budgets) < 2:
    raise FitError(f'isoflop: {len(budgets)} budgets with a vertex; need at least 2 to fit '
                   'N_opt ~ C^a')
  lc = np.log([b['C'] for b in budgets])
  a, logG = np.polyfit(lc, np.log([b['N_opt'] for b in budgets]), 1)
  return fitting.Fit('isoflop', dict(a=float(a), G=float(np.exp(logG)), b=float(1 - a)), 0.0,
                     len(N), True, extra=dict(budgets=budgets, warnings=warn, window=int(window)))


@fitting.register
class Isoflop(fitting.Law):
  """N_opt ~ G C^a from the budgets' parabola vertices; opts window: the sizes around each
  budget's minimum its parabola uses (0: all, as published)."""
  name = 'isoflop'
  columns = ('N', 'loss')
  panel = 'isoflop'
  panel_order = 20

  def fit(self, runs, fix, draw=False, **opts):
    return fit_isoflop(runs['N'], runs['C'], runs['loss'], runs.get('run'),
                       opts.get('window', 0), vertex_ci=not draw)

  def flat(self, fit, Cs):
    """The parameters and each budget's vertex N_opt@C (C to 2 digits)."""
    out = super().flat(fit, Cs)
    if isinstance(fit, fitting.Fit):
      out.update({f'N_opt@{b["C"]:.2g}': b['N_opt'] for b in fit.extra['budgets']})
    return out

  def degenerate(self, params, runs):
    if not 0 < params['a'] < 1:
      return (f'a = {params["a"]:.3g} outside (0, 1) (N_opt ~ C^a: N_opt or D_opt would '
              'shrink as compute grows)')
    return ''

  def draw(self, sheet):
    """IsoFLOP curves with their vertices, and N_opt(C) with its intervals."""
    fig, (ax, ax2) = figures.plt.subplots(1, 2, figsize=(11, 4.3))
    handles, vertices, wide = [], [], False
    colors, window = sheet.colors, sheet.window
    for f, rs in sorted(sheet.fams.items()):
      N, C, L = (figures.column(rs, k) for k in ('N', 'C', 'loss'))
      try:
        iso = sheet.fit(self.name, dict(N=N, D=figures.column(rs, 'D'), C=C, loss=L,
                                        run=np.array([r['run'] for r in rs], dtype=object)),
                        window=window)
      except FitError as e:
        sheet.note(ax, f'isoflop ({f})', str(e), where=0.85 - 0.25 * len(handles))
        continue
      sheet.fits[f'isoflop_{f}'] = iso
      handles.append(lines.Line2D([], [], color=colors[f], marker='o', ms=3, label=f))
      lab = fitting.group_budgets(C)
      for g in sorted(set(lab.tolist())):
        m = lab == g
        o = np.argsort(N[m])
        ax.plot(N[m][o], L[m][o], marker='o', ms=3, color=colors[f],
                alpha=0.4 + 0.6 * g / max(lab))
      n_opt = np.array([b['N_opt'] for b in iso['budgets']])
      inside = (N.min() <= n_opt) & (n_opt <= N.max())
      for b, ok in zip(iso['budgets'], inside):
        ax.plot(b['N_opt'], b['loss_opt'], '*', ms=10, color=colors[f] if ok else 'none',
                markeredgecolor=colors[f])
      cb = np.array([b['C'] for b in iso['budgets']])
      ivs = [iso.get('ci', {}).get(f'N_opt@{b["C"]:.2g}') or b.get('N_opt_ci')
             for b in iso['budgets']]
      err = np.array([[n - iv[0], iv[1] - n] if iv else [0, 0] for n, iv in zip(n_opt, ivs)]).T
      ax2.errorbar(cb, n_opt, yerr=np.maximum(err, 0), fmt='o', color=colors[f], capsize=3,
                   label=f'{f} vertices' + (' (95% intervals)' if any(ivs) else ''))
      ax2.plot(cb, iso['params']['G'] * cb ** iso['params']['a'], '--', color=colors[f],
               label=f'{f}: N_opt ~ C^{iso["params"]["a"]:.2f}{figures.ci_text(iso, "a")}')
      if iso.get('degenerate'):
        sheet.note(ax2, f'isoflop ({f})', f'degenerate fit: {iso["degenerate"]}',
                   where=0.85 - 0.25 * (len(handles) - 1))
      vertices.extend(n_opt.tolist())
      wide |= any(iv and (iv[0] < n_opt.min() / 4 or iv[1] > n_opt.max() * 4) for iv in ivs)
    if vertices:  # the panel shows the vertices; an interval past it is drawn clipped, and said
      ax2.set_ylim(min(vertices) / 4, max(vertices) * 4)
    if wide:
      sheet.note(ax2, 'isoflop', 'some 95% intervals of N_opt reach past this panel (drawn '
                 'clipped; their values are in fits.json)', where=0.12)
    if not handles:
      sheet.note(ax2, 'isoflop', 'no family has an IsoFLOP fit (each budget needs >= 3 sizes, '
                 'and >= 2 budgets are needed)')
    handles += [lines.Line2D([], [], ls='', marker='*', ms=9, color='gray', label='vertex'),
                lines.Line2D([], [], ls='', marker='*', ms=9, color='none',
                             markeredgecolor='gray', label='vertex outside the sampled sizes')]
    figures.log_axis(ax, 'x')
    ax.set_xlabel('non-embedding parameters N')
    ax.set_ylabel('validation loss (nats/token)')
    ax.set_title('IsoFLOP curves (darker = more compute' +
                 (f';\nparabolas through the {window} sizes around each minimum)' if window
                  else ')'), fontsize=8.5)
    ax.legend(handles=handles, fontsize=7)
    figures.log_axis(ax2, 'x')
    figures.log_axis(ax2, 'y')
    ax2.set_xlabel('compute C (FLOPs)')
    ax2.set_ylabel('N_opt')
    if ax2.lines or ax2.collections:
      ax2.legend(fontsize=7)
    return sheet.save(fig, 'isoflop')
