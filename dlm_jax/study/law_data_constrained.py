"""The data-constrained law (Muennighoff et al. 2023): Chinchilla in effective parameters N' and
effective data D' that discount repeated epochs of U unique tokens, with the fitted constants
R_D* and R_N*. No panel of its own."""
import itertools
import math

import numpy as np
from scipy import special

from dlm_jax.errors import FitError
from dlm_jax.study import fitting
from dlm_jax.study import law_chinchilla
from dlm_jax.study import optim
from dlm_jax.study.fitting import DELTA
from dlm_jax.study.law_chinchilla import CHINCHILLA


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
  return law_chinchilla.chinchilla_loss(params,
                                        effective_params(N, U, params['R_N_star'], params),
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
  fitting.need_runs(len(N), int(free.sum()), 'data_constrained')
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
  return fitting.Fit('data_constrained', params, float(obj[0]), len(N), bool(ok[0]),
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
    return law_chinchilla.fit_chinchilla(N[single], D[single], loss[single], sub).params
  return law_chinchilla.fit_chinchilla_draws(N[single], D[single], loss[single],
                                             counts[:, single], starts, sub)[0]


def fit_data_constrained_draws(N, D, U, loss, counts, fix=None, base_starts=None):
  """Data-constrained fits of K bootstrap resamples at once; (params per draw, converged)."""
  fix = fix or {}
  N, D, U, loss = (np.asarray(x, float) for x in (N, D, U, loss))
  if base_starts is None:  # the best grid points of the full data's base fit
    single = D <= U * (1 + 1e-9)
    sub = {k: v for k, v in fix.items() if k in CHINCHILLA}
    base_starts = law_chinchilla.fit_chinchilla(N[single], D[single], loss[single], sub).starts
  bases = data_constrained_base(N, D, U, loss, fix, counts, base_starts)
  x, _, ok = _dc_stage(bases, N, D, U, np.log(loss), fix, counts)
  return ([dict(b, R_D_star=math.exp(r[0]), R_N_star=math.exp(r[1])) for b, r in zip(bases, x)],
          ok)


@fitting.register
class DataConstrained(fitting.Law):
  """Chinchilla's base law from the single-epoch runs (or --fix), then R_D*, R_N* on all runs;
  FIT.json adds the profile objective over R_D*."""
  name = 'data_constrained'
  columns = ('N', 'D', 'U', 'loss')

  def fit(self, runs, fix, draw=False, **opts):
    return fit_data_constrained(runs['N'], runs['D'], runs['U'], runs['loss'], fix)

  def draws(self, runs, counts, main, fix, refit):
    """Every draw at once (base laws from the full base fit's best grid starts)."""
    params, ok = fit_data_constrained_draws(runs['N'], runs['D'], runs['U'], runs['loss'],
                                            counts, fix)
    return [p for p, g in zip(params, ok) if g], int((~ok).sum())

  def flat(self, fit, Cs):
    out = super().flat(fit, Cs)
    out.update(law_chinchilla.frontier_quantities(
        fit.params if isinstance(fit, fitting.Fit) else fit, Cs))
    return out

  def degenerate(self, params, runs):
    return law_chinchilla.exponent_checks(params, runs)
