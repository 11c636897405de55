"""Chinchilla (Approach 3, Hoffmann et al. 2022): L = E + A/N^alpha + B/D^beta, as replicated by
Besiroglu et al. 2024: minimise sum_i Huber_1e-3(LSE(a - alpha log N_i, b - beta log D_i, e)
- log L_i) with L-BFGS from every point of the grid alpha, beta in {0, 0.5, ..., 2},
e in {-1, -0.5, ..., 1}, a, b in {0, 5, ..., 25}, keeping the best; A = e^a, B = e^b, E = e^e.
Bootstrap refits (resampled runs) start from the 16 best grid starts of the full-data fit;
alpha and beta also get profile-likelihood intervals. Panel: fitted vs observed loss.
"""
import itertools
import math
import warnings

import numpy as np
from scipy import special

from dlm_jax.study import figures
from dlm_jax.study import fitting
from dlm_jax.study import optim
from dlm_jax.study.fitting import DELTA
from dlm_jax.study.fitting import TIGHT


GRID = dict(alpha=np.arange(0, 2.01, 0.5), beta=np.arange(0, 2.01, 0.5),
            e=np.arange(-1, 1.01, 0.5), a=np.arange(0, 25.1, 5), b=np.arange(0, 25.1, 5))


CHINCHILLA = ('E', 'A', 'B', 'alpha', 'beta')


def huber_lse(theta, logN, logD, logL, delta=DELTA):
  """Objective and gradient of the Chinchilla fit for theta = (a, b, e, alpha, beta)."""
  a, b, e, al, be = theta
  t = np.stack([a - al * logN, b - be * logD, np.full_like(logN, e)])
  lse = special.logsumexp(t, axis=0)
  r = lse - logL
  obj = special.huber(delta, r).sum()
  dr = np.clip(r, -delta, delta)  # d huber / d r
  w = np.exp(t - lse) * dr  # softmax weights times residual derivative
  grad = np.array([w[0].sum(), w[1].sum(), w[2].sum(), -(w[0] * logN).sum(),
                   -(w[1] * logD).sum()])
  return obj, grad


def chinchilla_fixed(fix):
  """Fixed values in the optimiser's coordinates (a, b, e, alpha, beta)."""
  names = ('A', 'B', 'E', 'alpha', 'beta')
  vals = np.zeros(5)
  for i, n in enumerate(names):
    if n in fix:
      vals[i] = math.log(fix[n]) if n in ('A', 'B', 'E') else fix[n]
  return fitting.free_mask(fix, names), vals


def huber_lse_batch(theta, logN, logD, logL, weights=None, delta=DELTA):
  """Objectives (S,) and gradients (S, 5) of the Chinchilla fit for S parameter vectors
  theta = (a, b, e, alpha, beta) at once; weights: (S, n) run weights (bootstrap counts)."""
  a, b, e, al, be = (theta[:, i:i + 1] for i in range(5))
  t0, t1 = a - al * logN, b - be * logD
  m = np.maximum(np.maximum(t0, t1), e)
  p0, p1, p2 = np.exp(t0 - m), np.exp(t1 - m), np.exp(e - m)
  z = p0 + p1 + p2
  r = m + np.log(z) - logL
  ar = np.abs(r)
  hub = np.where(ar <= delta, 0.5 * r * r, delta * (ar - 0.5 * delta))
  dr = np.clip(r, -delta, delta) / z
  if weights is not None:
    hub, dr = hub * weights, dr * weights
  q0, q1 = p0 * dr, p1 * dr
  grad = np.stack([q0.sum(1), q1.sum(1), (p2 * dr).sum(1), -(q0 @ logN), -(q1 @ logD)], 1)
  return hub.sum(1), grad


def grid_starts():
  """The published grid of starting points (optimiser coordinates a, b, e, alpha, beta)."""
  return np.array(list(itertools.product(GRID['a'], GRID['b'], GRID['e'], GRID['alpha'],
                                         GRID['beta'])), float)


def fit_chinchilla(N, D, loss, fix=None, starts=None, delta=DELTA):
  """The Approach-3 fit; `starts` (optimiser coordinates) replaces the full grid. Every start
  runs at once (optim.minimize); the best is polished with scipy's L-BFGS-B at tight tolerances,
  as the published procedure's best run is."""
  fix = fix or {}
  N, D, loss = (np.asarray(x, float) for x in (N, D, loss))
  free, fixed_vals = chinchilla_fixed(fix)
  fitting.need_runs(len(N), int(free.sum()), 'chinchilla')
  logN, logD, logL = np.log(N), np.log(D), np.log(loss)
  starts = grid_starts() if starts is None else np.asarray(starts, float).reshape(-1, 5)
  # a fixed coordinate makes its grid dimension redundant: start once per distinct point
  starts = np.unique(np.where(free, starts, fixed_vals), axis=0)
  with np.errstate(all='ignore'):
    res = optim.minimize(lambda th, idx: huber_lse_batch(th, logN, logD, logL, delta=delta),
                         starts, free, maxiter=300, gtol=1e-6, ftol=1e-10)
  order = np.argsort(np.where(np.isfinite(res['f']), res['f'], np.inf))
  fun = lambda th: tuple(v[0] for v in huber_lse_batch(th[None], logN, logD, logL, delta=delta))
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', RuntimeWarning)
    # near-ties among the loose grid optima are ranked only after polishing
    polished = [fitting.lbfgs(fun, res['x'][i], free, fixed_vals, TIGHT)
                for i in order[:fitting.POLISH]]
  x, obj, ok, gn = min(polished, key=lambda r: r[1] if np.isfinite(r[1]) else np.inf)
  return fitting.Fit('chinchilla', chinchilla_params(x), obj, len(N), ok, gn,
             starts=[starts[i] for i in order[:16]])


def chinchilla_params(x):
  a, b, e, al, be = x
  with np.errstate(over='ignore'):  # a diverged draw: inf, and counted as failed
    return dict(E=float(np.exp(e)), A=float(np.exp(a)), B=float(np.exp(b)), alpha=float(al),
                beta=float(be))


def fit_chinchilla_draws(N, D, loss, counts, starts, fix=None, delta=DELTA):
  """Chinchilla fits of K bootstrap resamples at once: run weights counts (K, n), each draw
  started from `starts` (the full fit's best grid points). Returns (params per draw, converged
  per draw)."""
  fix = fix or {}
  logN, logD, logL = (np.log(np.asarray(x, float)) for x in (N, D, loss))
  free, fixed_vals = chinchilla_fixed(fix)
  starts = np.where(free, np.asarray(starts, float).reshape(-1, 5), fixed_vals)
  K, m = len(counts), len(starts)
  x0 = np.tile(starts, (K, 1))
  w = np.asarray(counts, float)

  def fun(th, idx):
    return huber_lse_batch(th, logN, logD, logL, w[idx // m], delta)
  with np.errstate(all='ignore'):
    res = optim.minimize(fun, x0, free, maxiter=2000, gtol=1e-10, ftol=1e-14)
  f = np.where(np.isfinite(res['f']), res['f'], np.inf).reshape(K, m)
  best = np.argmin(f, 1)
  pick = np.arange(K) * m + best
  params = [chinchilla_params(res['x'][i]) for i in pick]
  finite = np.array([all(np.isfinite(v) for v in p.values()) for p in params], bool)
  return params, res['converged'][pick] & np.isfinite(f[np.arange(K), best]) & finite


def huber_scale(r, p, delta=DELTA):
  """E[psi^2] / E[psi'] for Huber's psi under a Gaussian reference with sigma^2 = sum r^2 /
  (n - p) (see profile_interval). Read off the fitted residuals directly, both moments come out
  too small: the fit pins about p residuals inside +-delta."""
  r = np.asarray(r, float)
  sigma = math.sqrt(float(np.sum(r * r)) / max(len(r) - p, 1))
  c = delta / sigma
  inside = math.erf(c / math.sqrt(2))  # E[psi'] = P(|r| < delta)
  psi2 = sigma ** 2 * (inside - 2 * c * math.exp(-c * c / 2) / math.sqrt(2 * math.pi)) + (
      delta ** 2 * (1 - inside))
  return psi2 / inside


def profile_interval(N, D, loss, main, which, fix=None, delta=DELTA, half_width=0.5,
                     points=41, chi2=3.841):
  """Profile-likelihood 95% interval of alpha or beta: the Huber objective minimised over the
  other parameters with `which` held, on a grid around the estimate (every grid value and start
  at once), then on a finer grid across each crossing, interpolated linearly. The interval
  holds the values whose profile rises less than chi2_1(0.95) s / 2 above the minimum, with
  s = E[psi^2] / E[psi'] the M-estimator's sandwich scale for Huber's psi = clip(r, +-delta)
  (sigma^2 when every residual sits in the quadratic part; delta / (2 f(0)) in the linear part,
  the least-absolute-deviation case), with a Gaussian reference for the residuals. It does not
  rely on resampling the runs. `open` says the interval reached the edge of the searched range.
  Coverage on simulated data: tests/test_scaling.py::test_interval_coverage."""
  fix = fix or {}
  k = {'alpha': 3, 'beta': 4}[which]
  logN, logD, logL = (np.log(np.asarray(x, float)) for x in (N, D, loss))
  p = main.params
  tiny = np.finfo(float).tiny  # E = e^e underflows to 0 where the fit drives it away
  x_hat = np.array([math.log(max(p['A'], tiny)), math.log(max(p['B'], tiny)),
                    math.log(max(p['E'], tiny)), p['alpha'], p['beta']])
  r = np.log(chinchilla_loss(p, N, D)) - logL
  free, fixed_vals = chinchilla_fixed(fix)
  thr = 0.5 * chi2 * huber_scale(r, int(free.sum()), delta)
  starts = np.concatenate([x_hat[None], np.where(free, np.asarray(main.starts), fixed_vals)])
  free_k = free.copy()
  free_k[k] = False

  def profile(values):
    x0 = np.repeat(starts[None], len(values), 0)
    x0[:, :, k] = values[:, None]
    with np.errstate(all='ignore'):
      res = optim.minimize(lambda th, idx: huber_lse_batch(th, logN, logD, logL, delta=delta),
                           x0.reshape(-1, 5), free_k, maxiter=1000, gtol=1e-9, ftol=1e-13)
    f = np.where(np.isfinite(res['f']), res['f'], np.inf).reshape(len(values), -1)
    return f.min(1) - main.objective - thr  # <= 0 inside

  def crossing(a, b):
    """The value between a (inside) and b (outside) where the profile crosses the threshold."""
    v = np.linspace(a, b, 11)
    g = profile(v)
    i = int(np.argmax(g > 0))
    return float(v[i - 1] + (v[i] - v[i - 1]) * -g[i - 1] / (g[i] - g[i - 1]))

  lo_edge = max(x_hat[k] - half_width, 0.0)
  values = np.linspace(lo_edge, x_hat[k] + half_width, points)
  values = np.unique(np.append(values, x_hat[k]))
  g = profile(values)
  c = int(np.searchsorted(values, x_hat[k]))
  inside = g <= 0
  inside[c] = True
  lo_i = c
  while lo_i > 0 and inside[lo_i - 1]:
    lo_i -= 1
  hi_i = c
  while hi_i < len(values) - 1 and inside[hi_i + 1]:
    hi_i += 1
  lo = values[0] if lo_i == 0 else crossing(values[lo_i], values[lo_i - 1])
  hi = values[-1] if hi_i == len(values) - 1 else crossing(values[hi_i], values[hi_i + 1])
  return dict(lo=float(lo), hi=float(hi),
              open=bool((lo_i == 0 and lo_edge > 0) or hi_i == len(values) - 1),
              threshold=thr, values=values.tolist(), profile=(g + thr).tolist())


def compute_optimal(params, C):
  """N_opt(C), D_opt(C) for L = E + A/N^alpha + B/D^beta with C = 6 N D."""
  A, B, al, be = params['A'], params['B'], params['alpha'], params['beta']
  G = (al * A / (be * B)) ** (1 / (al + be))
  C = np.asarray(C, float)
  return G * (C / 6) ** (be / (al + be)), (C / 6) ** (al / (al + be)) / G


def chinchilla_loss(params, N, D):
  return params['E'] + params['A'] / np.asarray(N, float) ** params['alpha'] + \
      params['B'] / np.asarray(D, float) ** params['beta']


def exponent_checks(params, runs):
  """Degeneracy of a law in N and D (Chinchilla, data-constrained): an exponent <= 0, or runs
  that do not vary what it measures."""
  def distinct(c):
    return len(np.unique(np.round(np.log(np.asarray(runs[c], float)), 6))) if c in runs else 0

  why = []
  for col, exp, of in (('N', 'alpha', 'parameters'), ('D', 'beta', 'data')):
    if distinct(col) < 2:
      why.append(f'every run has the same {col}: {exp} is not identified')
    elif exp in params and params[exp] <= 0:
      why.append(f'{exp} = {params[exp]:.3g} <= 0 (loss does not fall with {of})')
  return '; '.join(why)


def frontier_quantities(p, Cs):
  """The exponent a of N_opt ~ C^a and N_opt, D_opt at the budgets Cs, by name."""
  out = {'a_opt': p['beta'] / (p['alpha'] + p['beta'])}
  n_opt, d_opt = compute_optimal(p, Cs)
  for C, nn, dd in zip(Cs, n_opt, d_opt):
    out[f'N_opt@{C:.3g}'], out[f'D_opt@{C:.3g}'] = float(nn), float(dd)
  return out


@fitting.register
class Chinchilla(fitting.Law):
  """L = E + A/N^alpha + B/D^beta; FIT.json adds the compute-optimal frontier and (profile)
  profile-likelihood intervals of alpha and beta."""
  name = 'chinchilla'
  profiled = True
  columns = ('N', 'D', 'loss')
  panel = 'chinchilla'
  panel_order = 30

  def fit(self, runs, fix, draw=False, **opts):
    return fit_chinchilla(runs['N'], runs['D'], runs['loss'], fix)

  def draws(self, runs, counts, main, fix, refit):
    """Every draw at once, from the full fit's best grid starts."""
    params, ok = fit_chinchilla_draws(runs['N'], runs['D'], runs['loss'], counts, main.starts,
                                      fix)
    return [p for p, g in zip(params, ok) if g], int((~ok).sum())

  def flat(self, fit, Cs):
    out = super().flat(fit, Cs)
    out.update(frontier_quantities(fit.params if isinstance(fit, fitting.Fit) else fit, Cs))
    return out

  def describe(self, main, runs, Cs, fix, profile=False):
    n_opt, d_opt = compute_optimal(main.params, Cs)
    out = dict(frontier=dict(C=Cs.tolist(), N_opt=n_opt.tolist(), D_opt=d_opt.tolist()))
    if profile:
      out['profile'] = {k: profile_interval(runs['N'], runs['D'], runs['loss'], main, k, fix)
                        for k in ('alpha', 'beta') if k not in fix}
    return out

  def degenerate(self, params, runs):
    return exponent_checks(params, runs)

  def draw(self, sheet):
    """Fitted vs observed loss per family."""
    fig, ax = figures.plt.subplots(figsize=(5.5, 4.3))
    for i, (f, rs) in enumerate(sorted(sheet.fams.items())):
      if len(rs) < 8:
        sheet.note(ax, f'chinchilla ({f})', f'{len(rs)} finished runs; the fit needs >= 8',
                   where=0.85 - 0.25 * i)
        continue
      N, D, L = (figures.column(rs, k) for k in ('N', 'D', 'loss'))
      ch = sheet.fit(self.name, dict(N=N, D=D, loss=L), profile=True)
      sheet.fits[f'chinchilla_{f}'] = ch
      ax.scatter(L, chinchilla_loss(ch['params'], N, D), s=12, color=sheet.colors[f],
                 label=f'{f}: alpha={ch["params"]["alpha"]:.2f}{figures.ci_text(ch, "alpha")} '
                       f'beta={ch["params"]["beta"]:.2f}{figures.ci_text(ch, "beta")}')
      if ch.get('degenerate'):
        sheet.note(ax, f'chinchilla ({f})', f'degenerate fit: {ch["degenerate"]}',
                   where=0.85 - 0.25 * i)
    if ax.collections:
      lo, hi = ax.get_xlim()
      ax.plot([lo, hi], [lo, hi], 'k:', lw=1, label='fitted = observed')
      ax.legend(fontsize=7, loc='lower right')
    ax.set_xlabel('observed loss')
    ax.set_ylabel('fitted L(N, D)')
    ax.set_title('Chinchilla L = E + A/N^alpha + B/D^beta' +
                 (' (95% bootstrap intervals)' if sheet.bootstrap else ''), fontsize=9)
    return sheet.save(fig, 'fitted_vs_observed')
