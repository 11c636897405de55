"""Pure power laws in compute, log L = log k + gamma log C per objective family, and the compute
multiplier between two families. Panel: loss vs compute with each family's power law fitted to
its frontier (best run per budget)."""
import math

import numpy as np

from dlm_jax.study import figures
from dlm_jax.study import fitting


def fit_power(C, loss, family=None):
  """log L = log k + gamma log C per family (least squares); with two families, the compute
  multiplier C_2/C_1 needed by the second for the first's loss at the geometric-mean loss."""
  C, loss = np.asarray(C, float), np.asarray(loss, float)
  family = np.asarray(family if family is not None else ['all'] * len(C), dtype=object)
  params, fams = {}, sorted(set(family.tolist()))
  for f in fams:
    m = family == f
    fitting.need_runs(int(m.sum()), 2, f'power ({f})')
    gamma, logk = np.polyfit(np.log(C[m]), np.log(loss[m]), 1)
    params[f] = dict(k=float(math.exp(logk)), gamma=float(gamma))
  extra = {}
  if len(fams) == 2:
    L_ref = float(math.exp(np.mean(np.log(loss))))
    extra = dict(compute_multiplier=compute_multiplier(params, fams, L_ref),
                 multiplier_of=f'{fams[1]} / {fams[0]}', at_loss=L_ref)
  resid = sum(float(((np.log(loss[family == f]) - np.log(params[f]['k']) -
                      params[f]['gamma'] * np.log(C[family == f])) ** 2).sum()) for f in fams)
  return fitting.Fit('power', params, resid, len(C), True, extra=extra)


def compute_multiplier(params, fams, L):
  """C_2 / C_1: compute family fams[1] needs to reach loss L, relative to fams[0]."""
  c = [(L / params[f]['k']) ** (1 / params[f]['gamma']) for f in fams]
  return c[1] / c[0]


@fitting.register
class Power(fitting.Law):
  """k C^gamma per family (column family, optional); with two families, the compute multiplier
  of the second over the first at their geometric-mean loss."""
  name = 'power'
  columns = ('loss',)
  panel = 'compute'
  panel_order = 10

  def fit(self, runs, fix, draw=False, **opts):
    return fit_power(runs['C'], runs['loss'], runs.get('family'))

  def flat(self, fit, Cs):
    out = {}
    for fam, q in fit.params.items():
      out[f'{fam}.k'], out[f'{fam}.gamma'] = q['k'], q['gamma']
    if 'compute_multiplier' in fit.extra:
      out['compute_multiplier'] = fit.extra['compute_multiplier']
    return out

  def degenerate(self, params, runs):
    return '; '.join(f'{fam}: gamma = {p["gamma"]:.3g} >= 0 (loss does not fall with compute)'
                     for fam, p in sorted(params.items())
                     if isinstance(p, dict) and p.get('gamma', -1) >= 0)

  def draw(self, sheet):
    """Loss vs compute, with the per-family power law on the lower envelope (frontier)."""
    fig, ax = figures.plt.subplots(figsize=(6.5, 4.2))
    fr, colors = {}, sheet.colors
    for f, rs in sorted(sheet.fams.items()):
      C, L = figures.column(rs, 'C'), figures.column(rs, 'loss')
      ax.scatter(C, L, s=12, color=colors[f], alpha=0.5, label=f'{f} runs')
      budgets = fitting.group_budgets(C)
      best = [int(np.flatnonzero(budgets == g)[np.argmin(L[budgets == g])])
              for g in sorted(set(budgets.tolist()))]
      fr[f] = (C[best], L[best])
      ax.plot(C[best], L[best], color=colors[f], lw=1.5, label=f'{f} frontier (best per budget)')
    title = 'loss vs compute'
    few = sorted(f for f, v in fr.items() if len(v[0]) < 2)
    if few:
      sheet.note(ax, 'loss_vs_compute', f'{", ".join(few)}: one compute budget only; no power '
                 'law of loss in compute can be fitted', where=0.85)
    else:
      fam = sorted(fr)
      C = np.concatenate([fr[f][0] for f in fam])
      res = sheet.fit(self.name, dict(N=np.ones(len(C)), D=C / 6, C=C,
                                      loss=np.concatenate([fr[f][1] for f in fam]),
                                      family=np.array(sum([[f] * len(fr[f][0]) for f in fam], []),
                                                      dtype=object)))
      sheet.fits['power_frontier'] = res
      for f in fam:
        cs = np.logspace(np.log10(fr[f][0].min()), np.log10(fr[f][0].max()), 50)
        p = res['params'][f]
        ax.plot(cs, p['k'] * cs ** p['gamma'], '--', color=colors[f], lw=1,
                label=f'{f}: {p["k"]:.3g} C^{p["gamma"]:.3f}'
                      f'{figures.ci_text(res, f + ".gamma")}')
      if res.get('degenerate'):
        sheet.note(ax, 'loss_vs_compute', f'degenerate fit: {res["degenerate"]}', where=0.85)
      if 'compute_multiplier' in res:
        title = (f'{res["multiplier_of"]} needs {res["compute_multiplier"]:.2f}x'
                 f'{figures.ci_text(res, "compute_multiplier")} the compute for equal loss')
    figures.log_axis(ax, 'x')
    ax.set_xlabel('compute C (FLOPs)')
    ax.set_ylabel('validation loss (nats/token)')
    ax.set_title(title + (' (95% bootstrap intervals)' if sheet.bootstrap and 'ci' in
                          sheet.fits.get('power_frontier', {}) else ''), fontsize=9)
    ax.legend(fontsize=7)
    return sheet.save(fig, 'loss_vs_compute')
