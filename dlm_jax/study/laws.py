"""The scaling laws and their fitters: Chinchilla (Approach 3), IsoFLOP (Approach 2),
data-constrained (Muennighoff et al.), pure power laws in compute, and the dual objective's
optimal AR weight. The driver, bootstrap and CLI are in study/scaling.py.

Chinchilla follows the published procedure exactly (Hoffmann et al. 2022, as replicated by
Besiroglu et al. 2024): minimise sum_i Huber_1e-3(LSE(a - alpha log N_i, b - beta log D_i, e)
- log L_i) with L-BFGS from every point of the grid alpha, beta in {0, 0.5, ..., 2},
e in {-1, -0.5, ..., 1}, a, b in {0, 5, ..., 25}, keeping the best; A = e^a, B = e^b, E = e^e.
Bootstrap refits (resampled runs) start from the 16 best grid starts of the full-data fit.
"""
import dataclasses
import itertools
import math
import warnings

import numpy as np
from scipy import optimize
from scipy import special

from dlm_jax.errors import FitError
from dlm_jax.study import optim


DELTA = 1e-3


GRID = dict(alpha=np.arange(0, 2.01, 0.5), beta=np.arange(0, 2.01, 0.5),
            e=np.arange(-1, 1.01, 0.5), a=np.arange(0, 25.1, 5), b=np.arange(0, 25.1, 5))


CHINCHILLA = ('E', 'A', 'B', 'alpha', 'beta')


def _need_runs(n, k, law):
  if n < k + 1:
    raise FitError(f'{law}: {n} runs cannot determine {k} parameters (need at least {k + 1})')


def _huber_lse(theta, logN, logD, logL, delta=DELTA):
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


@dataclasses.dataclass
class Fit:
  law: str
  params: dict
  objective: float
  n_runs: int
  converged: bool
  grad_norm: float = 0.0
  extra: dict = dataclasses.field(default_factory=dict)
  starts: list = dataclasses.field(default_factory=list)

  def to_json(self):
    d = dict(law=self.law, params=self.params, objective=self.objective, n_runs=self.n_runs,
             converged=self.converged, grad_norm=self.grad_norm, **self.extra)
    return d


def _free_mask(fix, names):
  return np.array([n not in fix for n in names])


TIGHT = dict(maxiter=2000, gtol=1e-12, ftol=1e-15)
POLISH = 4  # grid optima polished at TIGHT tolerances


def _lbfgs(fun, x0, free, fixed_vals, options=None):
  """L-BFGS-B over the free coordinates of x (fixed ones held at fixed_vals); scipy's default
  tolerances for the grid, TIGHT to polish the winner."""
  x0 = np.where(free, x0, fixed_vals)

  def f(z):
    x = x0.copy()
    x[free] = z
    o, g = fun(x)
    return o, g[free]
  res = optimize.minimize(f, x0[free], jac=True, method='L-BFGS-B',
                          options=options or dict(maxiter=1000))
  x = x0.copy()
  x[free] = res.x
  return x, float(res.fun), bool(res.success), float(np.linalg.norm(res.jac))


def _chinchilla_fixed(fix):
  """Fixed values in the optimiser's coordinates (a, b, e, alpha, beta)."""
  names = ('A', 'B', 'E', 'alpha', 'beta')
  vals = np.zeros(5)
  for i, n in enumerate(names):
    if n in fix:
      vals[i] = math.log(fix[n]) if n in ('A', 'B', 'E') else fix[n]
  return _free_mask(fix, names), vals


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
  free, fixed_vals = _chinchilla_fixed(fix)
  _need_runs(len(N), int(free.sum()), 'chinchilla')
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
    polished = [_lbfgs(fun, res['x'][i], free, fixed_vals, TIGHT) for i in order[:POLISH]]
  x, obj, ok, gn = min(polished, key=lambda r: r[1] if np.isfinite(r[1]) else np.inf)
  return Fit('chinchilla', chinchilla_params(x), obj, len(N), ok, gn,
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
  free, fixed_vals = _chinchilla_fixed(fix)
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
  free, fixed_vals = _chinchilla_fixed(fix)
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


def effective_data(U_D, D, R_D_star):
  """D' = U_D + U_D R_D* (1 - exp(-R_D / R_D*)), R_D = D/U_D - 1 (repeated epochs)."""
  R_D = np.maximum(np.asarray(D, float) / U_D - 1, 0)
  return U_D + U_D * R_D_star * (1 - np.exp(-R_D / R_D_star))


def effective_params(N, U_D, R_N_star, base):
  """N' = U_N + U_N R_N* (1 - exp(-R_N / R_N*)), U_N = min(N, N_opt(U_D)), R_N = N/U_N - 1;
  N_opt(U_D) is the compute-optimal size of the budget whose D_opt equals U_D."""
  A, B, al, be = base['A'], base['B'], base['alpha'], base['beta']
  G = (al * A / (be * B)) ** (1 / (al + be))
  n_opt = G * (U_D * G) ** (be / al)
  U_N = np.minimum(N, n_opt)
  R_N = np.maximum(np.asarray(N, float) / U_N - 1, 0)
  return U_N + U_N * R_N_star * (1 - np.exp(-R_N / R_N_star))


def data_constrained_loss(params, N, D, U):
  return chinchilla_loss(params, effective_params(N, U, params['R_N_star'], params),
                         effective_data(U, D, params['R_D_star']))


def _dc_batch(log_r, base, N, D, U, logL, weights=None, delta=DELTA):
  """Objectives (S,) and central-difference gradients (S, 2) of the data-constrained stage for S
  points log (R_D*, R_N*), each with its own base law (dict of (S, 1) arrays) and run weights."""
  def obj(lr):
    p = dict(base, R_D_star=np.exp(lr[:, :1]), R_N_star=np.exp(lr[:, 1:]))
    with np.errstate(all='ignore'):
      r = np.log(data_constrained_loss(p, N, D, U)) - logL
    h = special.huber(delta, r)
    return np.sum(h if weights is None else h * weights, 1)
  f = obj(log_r)
  eps = 1e-6
  g = np.stack([(obj(log_r + eps * e) - obj(log_r - eps * e)) / (2 * eps)
                for e in np.eye(2)], 1)
  return f, g


R_GRID = np.log([1, 3, 10, 30, 100, 300, 1000])
R_BOUNDS = (-5.0, 12.0)


def _dc_stage(base_list, N, D, U, logL, fix, weights=None):
  """log (R_D*, R_N*) minimising the Huber objective for each base law in base_list (one problem
  per base, each started from the whole 7 x 7 grid at once); returns (log R (K, 2), objective
  (K,), converged (K,))."""
  free = np.array(['R_D_star' not in fix, 'R_N_star' not in fix])
  fixed = np.array([math.log(fix.get('R_D_star', 1.0)), math.log(fix.get('R_N_star', 1.0))])
  starts = np.unique(np.where(free, np.array(list(itertools.product(R_GRID, R_GRID))), fixed),
                     axis=0)
  K, m = len(base_list), len(starts)
  base = {k: np.repeat(np.array([[b[k]] for b in base_list], float), m, 0) for k in CHINCHILLA}
  w = None if weights is None else np.repeat(np.asarray(weights, float), m, 0)
  fun = lambda x, idx: _dc_batch(x, {k: v[idx] for k, v in base.items()}, N, D, U, logL,
                                 None if w is None else w[idx])
  res = optim.minimize(fun, np.tile(starts, (K, 1)), free, *R_BOUNDS, maxiter=500, gtol=1e-9,
                       ftol=1e-13)
  f = np.where(np.isfinite(res['f']), res['f'], np.inf).reshape(K, m)
  pick = np.arange(K) * m + np.argmin(f, 1)
  return res['x'][pick], f.min(1), res['converged'][pick]


def fit_data_constrained(N, D, U, loss, fix=None, base_fit=None):
  """Muennighoff et al.: the base law (E, A, B, alpha, beta) from the runs that see each token
  at most once (or fixed with --fix), then R_D*, R_N* on all runs by the same Huber objective in
  log space, L-BFGS in log R* from a grid (every start at once); plus the profile objective over
  R_D*."""
  fix = fix or {}
  N, D, U, loss = (np.asarray(x, float) for x in (N, D, U, loss))
  base = base_fit.params if base_fit else data_constrained_base(N, D, U, loss, fix)
  logL = np.log(loss)
  free = np.array(['R_D_star' not in fix, 'R_N_star' not in fix])
  _need_runs(len(N), int(free.sum()), 'data_constrained')
  x, obj, ok = _dc_stage([base], N, D, U, logL, fix)
  params = dict(base, R_D_star=math.exp(x[0, 0]), R_N_star=math.exp(x[0, 1]))
  # the profile over R_D*: R_N* minimised with R_D* held, every (R_D*, R_N* start) at once
  prof_r = np.exp(np.linspace(math.log(1), math.log(3000), 25))
  starts = np.array([(math.log(r), g) for r in prof_r for g in (
      R_GRID if 'R_N_star' not in fix else [math.log(fix['R_N_star'])])])
  b = {k: np.full((len(starts), 1), float(base[k])) for k in CHINCHILLA}
  res = optim.minimize(lambda z, idx: _dc_batch(z, {k: v[idx] for k, v in b.items()}, N, D, U,
                                                logL), starts, [False, True], *R_BOUNDS,
                       maxiter=500, gtol=1e-9, ftol=1e-13)
  prof = np.min(res['f'].reshape(len(prof_r), -1), 1)
  return Fit('data_constrained', params, float(obj[0]), len(N), bool(ok[0]),
             extra=dict(base_from='fixed' if all(k in fix for k in CHINCHILLA) else
                        f'{int((D <= U * (1 + 1e-9)).sum())} single-epoch runs',
                        profile_R_D_star=dict(R_D_star=prof_r.tolist(),
                                              objective=[float(p) for p in prof])))


def data_constrained_base(N, D, U, loss, fix, counts=None, starts=None):
  """The base law of the data-constrained fit: fixed, or Chinchilla on the single-epoch runs
  (of each bootstrap draw when counts are given: a list of params per draw)."""
  single = D <= U * (1 + 1e-9)
  if all(k in fix for k in CHINCHILLA):
    base = {k: float(fix[k]) for k in CHINCHILLA}
    return base if counts is None else [base] * len(counts)
  if single.sum() < 6 - sum(k in fix for k in CHINCHILLA):
    raise FitError(f'data_constrained: {int(single.sum())} single-epoch runs (D <= U) cannot '
                   'fit the base law; add such runs or --fix E=...,A=...,B=...,alpha=...,'
                   'beta=...')
  sub = {k: v for k, v in fix.items() if k in CHINCHILLA}
  if counts is None:
    return fit_chinchilla(N[single], D[single], loss[single], sub).params
  return fit_chinchilla_draws(N[single], D[single], loss[single], counts[:, single], starts,
                              sub)[0]


def fit_data_constrained_draws(N, D, U, loss, counts, fix=None, base_starts=None):
  """Data-constrained fits of K bootstrap resamples at once; (params per draw, converged)."""
  fix = fix or {}
  N, D, U, loss = (np.asarray(x, float) for x in (N, D, U, loss))
  if base_starts is None:  # the best grid points of the full data's base fit
    single = D <= U * (1 + 1e-9)
    base_starts = fit_chinchilla(N[single], D[single], loss[single],
                                 {k: v for k, v in fix.items() if k in CHINCHILLA}).starts
  bases = data_constrained_base(N, D, U, loss, fix, counts, base_starts)
  x, _, ok = _dc_stage(bases, N, D, U, np.log(loss), fix, counts)
  return ([dict(b, R_D_star=math.exp(r[0]), R_N_star=math.exp(r[1])) for b, r in zip(bases, x)],
          ok)


def fit_power(C, loss, family=None):
  """log L = log k + gamma log C per family (least squares); with two families, the compute
  multiplier C_2/C_1 needed by the second for the first's loss at the geometric-mean loss."""
  C, loss = np.asarray(C, float), np.asarray(loss, float)
  family = np.asarray(family if family is not None else ['all'] * len(C), dtype=object)
  params, fams = {}, sorted(set(family.tolist()))
  for f in fams:
    m = family == f
    _need_runs(int(m.sum()), 2, f'power ({f})')
    gamma, logk = np.polyfit(np.log(C[m]), np.log(loss[m]), 1)
    params[f] = dict(k=float(math.exp(logk)), gamma=float(gamma))
  extra = {}
  if len(fams) == 2:
    L_ref = float(math.exp(np.mean(np.log(loss))))
    extra = dict(compute_multiplier=compute_multiplier(params, fams, L_ref), multiplier_of=f'{fams[1]} / {fams[0]}',
                 at_loss=L_ref)
  resid = sum(float(((np.log(loss[family == f]) - np.log(params[f]['k']) -
                      params[f]['gamma'] * np.log(C[family == f])) ** 2).sum()) for f in fams)
  return Fit('power', params, resid, len(C), True, extra=extra)


def compute_multiplier(params, fams, L):
  """C_2 / C_1: compute family fams[1] needs to reach loss L, relative to fams[0]."""
  c = [(L / params[f]['k']) ** (1 / params[f]['gamma']) for f in fams]
  return c[1] / c[0]


def group_budgets(C, rel=0.25):
  """Budget labels: runs whose C agree within a factor 1 + rel share a budget (sweeps space
  budgets by 2x or more; rounding D to whole batches moves C by a few percent)."""
  order = np.argsort(C)
  labels, cur, ref = np.zeros(len(C), int), -1, None
  for i in order:
    if ref is None or C[i] > ref * (1 + rel):
      cur, ref = cur + 1, C[i]
    labels[i] = cur
  return labels


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
  lab = group_budgets(C)
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
    ci = vertex_interval(x, y, (c2, c1, c0), 500, np.random.default_rng(0)) if vertex_ci else None
    budgets.append(dict(C=cb, N_opt=n_opt, loss_opt=float(c0 + c1 * xv + c2 * xv**2),
                        D_opt=float(cb / (6 * n_opt)), n_runs=int(len(idx)),
                        N_opt_ci=[float(np.exp(v)) for v in ci] if ci else None))
  if len(budgets) < 2:
    raise FitError(f'isoflop: {len(budgets)} budgets with a vertex; need at least 2 to fit '
                   'N_opt ~ C^a')
  lc = np.log([b['C'] for b in budgets])
  a, logG = np.polyfit(lc, np.log([b['N_opt'] for b in budgets]), 1)
  return Fit('isoflop', dict(a=float(a), G=float(np.exp(logG)), b=float(1 - a)), 0.0, len(N),
             True, extra=dict(budgets=budgets, warnings=warn, window=int(window)))


def vertex_interval(x, y, coeffs, n_boot, rng, clip=False, level=95):
  """Percentile interval of a fitted parabola's vertex by residual bootstrap (residuals scaled
  by sqrt(n / (n - 3)) for the three fitted coefficients); None without residual freedom."""
  if len(x) <= 3:
    return None
  fitted = np.polyval(coeffs, x)
  resid = (y - fitted) * math.sqrt(len(y) / (len(y) - 3))
  boots = []
  for _ in range(n_boot):
    b2, b1, _ = np.polyfit(x, fitted + rng.choice(resid, len(resid)), 2)
    if b2 > 0:
      v = -b1 / (2 * b2)
      boots.append(float(np.clip(v, x.min(), x.max())) if clip else float(v))
  if not boots:
    return None
  a = (100 - level) / 2
  return [float(np.percentile(boots, a)), float(np.percentile(boots, 100 - a))]


def degenerate(law, params, runs) -> str:
  """Why a fit says nothing about scaling ('' when it does): its exponents have the wrong sign
  (loss not falling with N, D or compute; N_opt not growing with compute, or faster than it), or
  the runs do not vary what the exponent measures. Reported in the fit and on its plot."""
  def distinct(c):
    return len(np.unique(np.round(np.log(np.asarray(runs[c], float)), 6))) if c in runs else 0

  why = []
  if law in ('chinchilla', 'data_constrained'):
    for col, exp, of in (('N', 'alpha', 'parameters'), ('D', 'beta', 'data')):
      if distinct(col) < 2:
        why.append(f'every run has the same {col}: {exp} is not identified')
      elif exp in params and params[exp] <= 0:
        why.append(f'{exp} = {params[exp]:.3g} <= 0 (loss does not fall with {of})')
  elif law == 'isoflop':
    if not 0 < params['a'] < 1:
      why.append(f'a = {params["a"]:.3g} outside (0, 1) (N_opt ~ C^a: N_opt or D_opt would '
                 'shrink as compute grows)')
  elif law == 'power':
    for fam, p in sorted(params.items()):
      if isinstance(p, dict) and p.get('gamma', -1) >= 0:
        why.append(f'{fam}: gamma = {p["gamma"]:.3g} >= 0 (loss does not fall with compute)')
  return '; '.join(why)


def logit(p):
  p = np.clip(np.asarray(p, float), 1 / 256, 255 / 256)  # 0 and 1 sit one grid step outside
  return np.log(p / (1 - p))


def optimal_ratio(ratio, epochs, loss, n_boot=500, seed=0):
  """The loss-minimising AR weight per repetition level R: the grid argmin, and the vertex of a
  parabola in logit(weight) through the argmin and its neighbours (up to 5 points), with a 95%
  interval from a residual bootstrap of that parabola (with 5 points it undercovers: 79% measured
  for the nominal 95% on simulated data, tests/test_scaling.py). Returns {R: {...}}."""
  ratio, epochs, loss = (np.asarray(x, float) for x in (ratio, epochs, loss))
  rng = np.random.default_rng(seed)
  out = {}
  for R in sorted(set(np.round(epochs).tolist())):
    m = np.round(epochs) == R
    order = np.argsort(ratio[m])
    w, L = ratio[m][order], loss[m][order]
    if len(w) < 3:
      raise FitError(f'optimal_ratio: R={R:g} has {len(w)} ratios; need at least 3')
    i = int(np.argmin(L))
    lo, hi = max(0, min(i - 2, len(w) - 5)), min(len(w), max(i + 3, 5))
    x, y = logit(w[lo:hi]), L[lo:hi]
    res = dict(grid_best=float(w[i]), grid_loss=float(L[i]))
    c2, c1, c0 = np.polyfit(x, y, 2)
    if c2 > 0:
      vertex = float(np.clip(-c1 / (2 * c2), x.min(), x.max()))
      ci = vertex_interval(x, y, (c2, c1, c0), n_boot, rng, clip=True)
      sig = lambda z: float(1 / (1 + np.exp(-z)))
      res.update(vertex=sig(vertex), ci=[sig(z) for z in ci] if ci else None)
    out[float(R)] = res
  return out
