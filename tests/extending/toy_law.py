"""A toy scaling law, L = E + A / C^a in compute alone: the README's "Extending it: a law".
tests/test_laws_extending.py registers it (by running this file), fits it through scaling.fit,
draws its panel with plot sweep's machinery, and removes it again."""
import numpy as np

from dlm_jax.study import figures
from dlm_jax.study import fitting


@fitting.register
class Toy(fitting.Law):
  """L = E + A / C^a: a power law in compute above an irreducible loss E."""
  name = 'toy'
  columns = ('C', 'loss')
  panel = 'toy'  # `plot sweep --plots toy`

  def fit(self, runs, fix, draw=False, **opts):
    """E on a grid below the smallest loss; A and a by least squares in log space."""
    C, L = np.asarray(runs['C'], float), np.asarray(runs['loss'], float)
    fitting.need_runs(len(C), 3, self.name)
    best = (np.inf, None)
    for E in L.min() * np.linspace(0, 0.995, 200):
      slope, logA = np.polyfit(np.log(C), np.log(L - E), 1)
      r = np.log(L) - np.log(E + np.exp(logA) * C ** slope)
      best = min(best, (float(r @ r), dict(E=E, A=np.exp(logA), a=-slope)), key=lambda b: b[0])
    params = {k: float(v) for k, v in best[1].items()}
    return fitting.Fit(self.name, params, best[0], len(C), True)

  def degenerate(self, params, runs):
    return f'a = {params["a"]:.3g} <= 0 (loss does not fall)' if params['a'] <= 0 else ''

  def draw(self, sheet):
    fig, ax = figures.plt.subplots(figsize=(5, 4))
    for fam, rows in sorted(sheet.fams.items()):
      C, L = figures.column(rows, 'C'), figures.column(rows, 'loss')
      res = sheet.fit(self.name, dict(C=C, loss=L))
      sheet.fits[f'toy_{fam}'] = res
      p, c = res['params'], np.sort(C)
      ax.scatter(C, L, s=12, color=sheet.colors[fam])
      ax.plot(c, p['E'] + p['A'] / c ** p['a'], color=sheet.colors[fam],
              label=f'{fam}: a = {p["a"]:.2f}{figures.ci_text(res, "a")}')
    figures.log_axis(ax, 'x')
    ax.legend(fontsize=7)
    return sheet.save(fig, 'toy')
