"""The scaling laws, by name and by function: importing this module registers the built-in
laws (chinchilla, isoflop, data_constrained, power: fitting.LAWS, in that order) and gives their
fitters one namespace; plus the dual objective's optimal AR weight per repetition level (an
analysis of the dual-ratio sweep, not a law). The driver, bootstrap and CLI are in
study/scaling.py; the shared machinery in study/fitting.py; each law in study/law_<name>.py.

To add a law: one fitting.Law subclass in its own module, decorated with @fitting.register, its
import below, and its test (tests/test_laws_extending.py shows one added and removed).
"""
import numpy as np

from dlm_jax.errors import FitError
from dlm_jax.study import fitting
# imported in the order fitting.LAWS lists them (and --law offers them)
from dlm_jax.study import law_chinchilla
from dlm_jax.study import law_isoflop
from dlm_jax.study import law_data_constrained
from dlm_jax.study import law_power

# the laws' functions, where tests, notebooks and scripts import them from
Fit, DELTA, TIGHT = fitting.Fit, fitting.DELTA, fitting.TIGHT
group_budgets, vertex_interval = fitting.group_budgets, fitting.vertex_interval
CHINCHILLA = law_chinchilla.CHINCHILLA
chinchilla_loss = law_chinchilla.chinchilla_loss
chinchilla_params = law_chinchilla.chinchilla_params
compute_optimal, grid_starts = law_chinchilla.compute_optimal, law_chinchilla.grid_starts
fit_chinchilla = law_chinchilla.fit_chinchilla
fit_chinchilla_draws = law_chinchilla.fit_chinchilla_draws
huber_lse_batch, profile_interval = law_chinchilla.huber_lse_batch, law_chinchilla.profile_interval
data_constrained_loss = law_data_constrained.data_constrained_loss
fit_data_constrained = law_data_constrained.fit_data_constrained
fit_isoflop, window_around_min = law_isoflop.fit_isoflop, law_isoflop.window_around_min
fit_power = law_power.fit_power
# the names tests/test_scaling.py checks the batched fitter against
_huber_lse, _lbfgs = law_chinchilla.huber_lse, fitting.lbfgs


def degenerate(law, params, runs) -> str:
  """Why a fit of the named law says nothing about scaling ('' when it does): its exponents
  have the wrong sign (loss not falling with N, D or compute; N_opt not growing with compute,
  or faster than it), or the runs do not vary what the exponent measures (fitting.Law)."""
  return fitting.get(law).degenerate(params, runs)


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
      ci = fitting.vertex_interval(x, y, (c2, c1, c0), n_boot, rng, clip=True)
      sig = lambda z: float(1 / (1 + np.exp(-z)))
      res.update(vertex=sig(vertex), ci=[sig(z) for z in ci] if ci else None)
    out[float(R)] = res
  return out
