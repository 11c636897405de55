"""What every scaling law shares: the Fit record, the Law interface and its registry (LAWS, found
by name by scaling.fit and plot sweep), and the numerical pieces several laws use (L-BFGS with
fixed coordinates, budget grouping, the residual bootstrap of a parabola's vertex).

A law is one Law subclass in one module, registered with @register: its name, the columns it
needs, its fit, and optionally its bootstrap draws, derived quantities, degeneracy check and plot
panel (the defaults suit a law fitted in closed form). tests/extending/toy_law.py is the example.
"""
import dataclasses
import math
import warnings

import numpy as np
from scipy import optimize

from dlm_jax.errors import FitError


DELTA = 1e-3  # Huber's delta for the log-loss residuals (Hoffmann et al.)
TIGHT = dict(maxiter=2000, gtol=1e-12, ftol=1e-15)
POLISH = 4  # grid optima polished at TIGHT tolerances


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


class Law:
  """One scaling law. Subclasses set `name`, `columns` and write `fit`; the other methods
  default to a law fitted in closed form: bootstrap draws refit the resampled table, the
  interval quantities are its scalar parameters, no degeneracy check, no panel."""
  name = ''
  columns = ('loss',)  # the runs table's columns it needs (C is 6 N D when the table has none)
  panel = ''  # its panel in `plot sweep --plots` ('': it draws none)
  panel_order = 100  # where that panel sits among the others (smaller first)
  profiled = False  # has profile-likelihood intervals (scaling.fit(profile=True) computes them)

  def fit(self, runs, fix, draw=False, **opts):
    """-> Fit for the runs table (dict of columns); fix: parameters held at given values; draw:
    a bootstrap refit (only its parameters are used); opts: options of the CLI (window)."""
    raise NotImplementedError

  def draws(self, runs, counts, main, fix, refit):
    """(a Fit or params dict per successful bootstrap draw, number of draws that failed) for
    run weights counts (K, n); refit(idx) fits the runs idx (with repeats)."""
    del runs, main, fix
    draws, failed = [], 0
    for c in counts:
      try:
        with warnings.catch_warnings():
          warnings.simplefilter('ignore')
          draws.append(refit(np.repeat(np.arange(len(c)), c)))
      except FitError:  # e.g. a resample with too few sizes in a budget
        failed += 1
    return draws, failed

  def flat(self, fit, Cs):
    """Scalar parameters and derived quantities of a Fit or params dict, by name, for the
    bootstrap intervals; Cs: the frontier budgets the FIT.json reports."""
    del Cs
    p = fit.params if isinstance(fit, Fit) else fit
    return {k: float(v) for k, v in p.items() if isinstance(v, (float, int))}

  def describe(self, main, runs, Cs, fix, profile=False):
    """Entries FIT.json gains beyond the fit itself (a frontier, profile intervals)."""
    del main, runs, Cs, fix, profile
    return {}

  def degenerate(self, params, runs) -> str:
    """Why the fit says nothing about scaling ('' when it does): reported in the fit and on
    its plot."""
    del params, runs
    return ''

  def draw(self, sheet):
    """Draws this law's panel (figures.Sheet: runs per family, fits, warnings); -> files."""
    del sheet
    return []


LAWS = {}  # name -> Law, in the order registered


def register(cls):
  """Class decorator: adds an instance of the Law subclass to LAWS under its name."""
  if not cls.name or cls.name in LAWS:
    raise ValueError(f'law name {cls.name!r} is empty or taken (have {", ".join(LAWS)})')
  LAWS[cls.name] = cls()
  return cls


def unregister(name):
  del LAWS[name]


def get(name):
  if name not in LAWS:
    raise FitError(f'unknown law {name!r}: use {", ".join(LAWS)}')
  return LAWS[name]


def panel_laws():
  """The registered laws that draw a panel, in panel order."""
  return sorted((law for law in LAWS.values() if law.panel), key=lambda law: law.panel_order)


def need_runs(n, k, law):
  if n < k + 1:
    raise FitError(f'{law}: {n} runs cannot determine {k} parameters (need at least {k + 1})')


def free_mask(fix, names):
  return np.array([n not in fix for n in names])


def lbfgs(fun, x0, free, fixed_vals, options=None):
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
