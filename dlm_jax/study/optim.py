"""A batched L-BFGS: many small smooth problems minimised at once, in float64 numpy.

The scaling-law fits start L-BFGS from thousands of grid points (4,500 for Chinchilla), refit
hundreds of bootstrap resamples and profile parameters over grids. One problem costs a few
dot products of length n_runs per iteration, so a Python loop of scipy calls spends its time in
the interpreter (25 min for 63 runs); here every problem of a fit advances together, one
vectorised objective evaluation per line-search trial. Converged problems stop moving.
"""
import numpy as np


def minimize(fun, x0, free=None, lo=None, hi=None, maxiter=1000, gtol=1e-10, ftol=1e-14,
             memory=10):
  """Minimises S problems of D variables: fun(x_SxD, idx_S) -> (f_S, g_SxD), vectorised; idx
  are the problems' indices (rows of their own data weights, say).

  free: bool (D,) or (S, D); fixed coordinates keep their x0 value. lo, hi: optional bounds
  (scalars or (D,)), kept by projecting each step. A problem has converged when its largest free
  gradient entry is below gtol * (1 + |f|) or its objective changed by less than
  ftol * (1 + |f|) in an accepted step. Returns dict(x, f, grad_norm, converged, iters)."""
  x = np.array(x0, float)
  S, D = x.shape
  free = np.broadcast_to(np.ones(D, bool) if free is None else np.asarray(free, bool),
                         (S, D)).astype(float)
  clip = (lambda z: np.clip(z, lo, hi)) if lo is not None or hi is not None else (lambda z: z)
  x = clip(x)
  f, g = fun(x, np.arange(S))
  g = g * free
  s_hist, y_hist = np.zeros((memory, S, D)), np.zeros((memory, S, D))
  rho = np.zeros((memory, S))
  active = np.isfinite(f)
  converged = np.zeros(S, bool)
  iters = np.zeros(S, int)
  for it in range(maxiter):
    if not active.any():
      break
    # two-loop recursion: d = -H g, H the L-BFGS inverse-Hessian estimate of each problem
    q = g.copy()
    a = np.zeros((memory, S))
    for j in range(memory):  # newest first
      a[j] = rho[j] * np.sum(s_hist[j] * q, 1)
      q -= a[j][:, None] * y_hist[j]
    yy = np.sum(y_hist[0] ** 2, 1)
    gamma = np.where(yy > 0, np.sum(s_hist[0] * y_hist[0], 1) / np.where(yy > 0, yy, 1.0),
                     1.0 / np.maximum(np.sqrt(np.sum(g * g, 1)), 1e-12))
    r = gamma[:, None] * q
    for j in reversed(range(memory)):
      b = rho[j] * np.sum(y_hist[j] * r, 1)
      r += s_hist[j] * (a[j] - b)[:, None]
    d = -r * free
    slope = np.sum(d * g, 1)
    bad = ~(slope < 0)  # not a descent direction: steepest descent, history dropped
    d[bad], slope[bad] = -g[bad], -np.sum(g[bad] ** 2, 1)
    rho[:, bad] = 0.0
    # backtracking (Armijo) line search, all problems at once
    t = np.ones(S)
    done = ~active
    x_new, f_new, g_new = x.copy(), f.copy(), g.copy()
    for _ in range(60):
      trial = ~done
      if not trial.any():
        break
      xt = clip(x[trial] + t[trial, None] * d[trial])
      ft, gt = fun(xt, np.flatnonzero(trial))
      ok = np.isfinite(ft) & (ft <= f[trial] + 1e-4 * t[trial] * slope[trial])
      idx = np.flatnonzero(trial)
      acc = idx[ok]
      x_new[acc], f_new[acc], g_new[acc] = xt[ok], ft[ok], gt[ok] * free[acc]
      done[acc] = True
      t[idx[~ok]] *= 0.5
    moved = active & done
    stuck = active & ~done  # no acceptable step: at a (numerically) flat point
    s, y = x_new - x, g_new - g
    sy = np.sum(s * y, 1)
    s_hist, y_hist, rho = (np.roll(s_hist, 1, 0), np.roll(y_hist, 1, 0), np.roll(rho, 1, 0))
    s_hist[0], y_hist[0] = s, y
    rho[0] = np.where(moved & (sy > 1e-16), 1.0 / np.where(sy > 1e-16, sy, 1.0), 0.0)
    df = np.abs(f - f_new)
    x, f, g = x_new, f_new, g_new
    iters += active
    scale = 1.0 + np.abs(f)
    conv = moved & ((np.max(np.abs(g), 1) <= gtol * scale) | (df <= ftol * scale))
    converged |= conv | (stuck & (np.max(np.abs(g), 1) <= 1e-6 * scale))
    active &= ~(conv | stuck)
  return dict(x=x, f=f, grad_norm=np.sqrt(np.sum(g * g, 1)), converged=converged, iters=iters)
