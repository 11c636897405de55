"""Scaling-law fits recover the laws they are simulated from; intervals cover; bad input named."""
import csv
import itertools
import json
import math
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

from conftest import ROOT
from dlm_jax import errors
from dlm_jax.study import laws
from dlm_jax.study import plot
from dlm_jax.study import sweep
from dlm_jax.study import scaling

TRUE = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)  # Hoffmann et al.'s fit


def simulate(n=40, noise=0.003, seed=0, law=TRUE):
  rng = np.random.default_rng(seed)
  N = np.exp(rng.uniform(np.log(1e7), np.log(1e10), n))
  D = np.exp(rng.uniform(np.log(1e9), np.log(1e12), n))
  L = laws.chinchilla_loss(law, N, D) * np.exp(rng.normal(0, noise, n))
  return N, D, L


def test_chinchilla_full_grid_recovers_the_law():
  N, D, L = simulate()
  f = laws.fit_chinchilla(N, D, L)
  p = f.params
  assert f.converged and f.grad_norm < 1e-4
  assert p['alpha'] == pytest.approx(TRUE['alpha'], abs=0.03)
  assert p['beta'] == pytest.approx(TRUE['beta'], abs=0.03)
  assert p['E'] == pytest.approx(TRUE['E'], rel=0.03)
  n_opt, _ = laws.compute_optimal(p, 1e21)
  assert n_opt == pytest.approx(laws.compute_optimal(TRUE, 1e21)[0], rel=0.5)
  # the objective is the published one: summed Huber(1e-3) of log residuals
  r = np.log(laws.chinchilla_loss(p, N, D)) - np.log(L)
  from scipy import special
  assert f.objective == pytest.approx(special.huber(1e-3, r).sum(), rel=1e-6)
  # fixing a parameter holds it exactly
  g = laws.fit_chinchilla(N, D, L, fix={'alpha': 0.34}, starts=f.starts)
  assert g.params['alpha'] == 0.34


def test_isoflop_recovers_the_exponent():
  rows = []
  for C in (1e18, 1e19, 1e20, 1e21):
    n_opt = laws.compute_optimal(TRUE, C)[0]
    for k in np.linspace(-1.2, 1.2, 7):
      N = n_opt * np.exp(k)
      rows.append((N, C, laws.chinchilla_loss(TRUE, N, C / (6 * N))))
  N, C, L = map(np.array, zip(*rows))
  f = laws.fit_isoflop(N, C, L)
  assert f.params['a'] == pytest.approx(TRUE['beta'] / (TRUE['alpha'] + TRUE['beta']), abs=0.02)
  assert not f.extra['warnings']
  for b in f.extra['budgets']:  # 7 sizes per budget: a vertex interval around the vertex
    assert b['N_opt_ci'][0] <= b['N_opt'] <= b['N_opt_ci'][1]


def test_isoflop_window_ignores_a_plateau_past_the_optimum():
  """Undertrained large models flatten each profile into a plateau: a parabola through all sizes
  misplaces (or loses) the vertex; one through the sizes around the minimum recovers it."""
  rows = []
  for i, C in enumerate((1e18, 1e19, 1e20, 1e21)):
    n_opt = laws.compute_optimal(TRUE, C)[0]
    n_cap = n_opt * np.exp(0.8 + 0.6 * i)  # smaller budgets saturate closer to their optimum
    cap = laws.chinchilla_loss(TRUE, n_cap, C / (6 * n_cap))
    for k in np.linspace(-1.0, 3.0, 9):
      N = n_opt * np.exp(k)
      rows.append((N, C, min(laws.chinchilla_loss(TRUE, N, C / (6 * N)), cap)))
  N, C, L = map(np.array, zip(*rows))
  a_true = TRUE['beta'] / (TRUE['alpha'] + TRUE['beta'])
  f = laws.fit_isoflop(N, C, L, window=3)
  assert f.params['a'] == pytest.approx(a_true, abs=0.03) and f.extra['window'] == 3
  for b in f.extra['budgets']:
    assert b['n_runs'] == 3
  g = laws.fit_isoflop(N, C, L)  # every size: the plateau drags the vertex away
  assert abs(g.params['a'] - a_true) > 0.02
  np.testing.assert_array_equal(laws.window_around_min(np.arange(5.0), np.array([1, 0, 2, 3, 4.]), 3),
                                [0, 1, 2])
  np.testing.assert_array_equal(laws.window_around_min(np.arange(5.0), np.array([4, 3, 2, 1, 0.]), 3),
                                [2, 3, 4])


def test_isoflop_needs_three_sizes_and_warns_outside():
  with pytest.raises(errors.FitError, match='budget C=1e\\+18 has 2 distinct sizes.*r1, r2'):
    laws.fit_isoflop([1e8, 2e8], [1e18, 1e18], [3.0, 2.9], runs=['r1', 'r2'])
  N = np.array([1e7, 2e7, 4e7] * 2)
  C = np.array([1e18] * 3 + [1e19] * 3)
  L = np.array([3.0, 2.9, 2.85, 2.8, 2.7, 2.65])  # still decreasing: vertex beyond the grid
  f = laws.fit_isoflop(N, C, L)
  assert any('outside the sampled sizes' in w for w in f.extra['warnings'])


def test_power_law_and_compute_multiplier():
  C = np.logspace(15, 19, 12)
  ar = 30 * C ** -0.05
  mdm = 30 * (C / 16) ** -0.05  # needs 16x the compute for the same loss
  f = laws.fit_power(np.r_[C, C], np.r_[ar, mdm], ['ar'] * 12 + ['mdm'] * 12)
  assert f.params['ar']['gamma'] == pytest.approx(-0.05, abs=1e-9)
  assert f.extra['compute_multiplier'] == pytest.approx(16, rel=1e-6)


DC_LAW = dict(TRUE, R_D_star=15.0, R_N_star=5.0)


def repeated_data_grid():
  """N, D, U of the data-constrained tests: 3 unique-token budgets x 4 sizes x 7 repetitions."""
  return map(np.array, zip(*[(N, U * R, U) for U in (1e9, 3e9, 1e10)
                             for N in (1e8, 3e8, 1e9, 3e9) for R in (1, 2, 4, 8, 16, 40, 100)]))


def test_data_constrained_recovers_r_star():
  rng = np.random.default_rng(1)
  N, D, U = repeated_data_grid()
  L = laws.data_constrained_loss(DC_LAW, N, D, U) * np.exp(rng.normal(0, 0.001, len(N)))
  f = laws.fit_data_constrained(N, D, U, L, fix={k: TRUE[k] for k in laws.CHINCHILLA})
  assert f.params['R_D_star'] == pytest.approx(15, rel=0.3)
  assert f.params['R_N_star'] == pytest.approx(5, rel=0.5)
  prof = f.extra['profile_R_D_star']
  i = int(np.argmin(prof['objective']))
  assert 5 < prof['R_D_star'][i] < 45  # the profile's minimum sits near the truth


def _write(path, rows, cols):
  with open(path, 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(cols)
    w.writerows(rows)


def test_cli_contract(tmp_path):
  N, D, L = simulate(n=30)
  _write(tmp_path / 'runs.csv', zip(N, D, L, [f'r{i}' for i in range(30)]),
         ['N', 'D', 'loss', 'run'])
  p = subprocess.run([sys.executable, '-m', 'dlm_jax.scaling', 'fit', '--runs',
                      str(tmp_path / 'runs.csv'), '--law', 'chinchilla', '--fix', 'E=1.69',
                      '--bootstrap', '4', '--seed', '3', '--out', str(tmp_path / 'fit.json')],
                     cwd=ROOT, capture_output=True, text=True, check=False)
  assert p.returncode == 0, p.stderr
  fit = json.load(open(tmp_path / 'fit.json'))
  assert fit['law'] == 'chinchilla' and fit['n_runs'] == 30 and fit['converged']
  assert set(fit['params']) == {'E', 'A', 'B', 'alpha', 'beta'} and fit['params']['E'] == 1.69
  assert set(fit['ci']) >= {'A', 'B', 'alpha', 'beta'}
  assert fit['ci']['alpha'][0] <= fit['ci']['alpha'][1]
  assert fit['params']['alpha'] == pytest.approx(TRUE['alpha'], abs=0.03)
  assert fit['params']['beta'] == pytest.approx(TRUE['beta'], abs=0.03)
  assert fit['profile']['beta']['lo'] < fit['params']['beta'] < fit['profile']['beta']['hi']


@pytest.mark.parametrize('rows,law,msg', [
    ([(1e8, 1e9, 3.0)] * 4, 'chinchilla', '4 runs cannot determine 5 parameters'),
    ([(1e8, 1e9, 3.0), (-1, 1e9, 3.0)] * 5, 'chinchilla', 'column N: non-positive or NaN values '
                                                          'in runs row 3'),
    ([(1e8, 1e9, float('nan'))] * 8, 'power', 'column loss'),
    ([(1e8, 1e9, 3.0)] * 3 + [(1e8, 'lots', 3.0)] + [(1e8, 1e9, 3.0)] * 6, 'chinchilla',
     "column D, row 5: 'lots' is not a number"),
    ([(1e8, 1e9, 3.0)] * 10, 'data_constrained', "needs a column 'U'"),
])
def test_bad_input_is_named(tmp_path, rows, law, msg):
  _write(tmp_path / 'r.csv', rows, ['N', 'D', 'loss'])
  p = subprocess.run([sys.executable, '-m', 'dlm_jax.scaling', 'fit', '--runs',
                      str(tmp_path / 'r.csv'), '--law', law, '--out', str(tmp_path / 'f.json')],
                     cwd=ROOT, capture_output=True, text=True, check=False)
  assert p.returncode == 2 and msg in p.stderr, p.stderr
  assert 'Traceback' not in p.stderr and len(p.stderr.strip().splitlines()) == 1
  assert not (tmp_path / 'f.json').exists()


def test_optimal_ratio_finds_the_vertex_and_covers():
  w = np.array([0, 1/64, 1/16, 1/4, 1/2, 3/4, 15/16, 63/64, 1] * 2)
  R = np.array([1] * 9 + [16] * 9)
  x = laws.logit(w)
  truth = {1.0: 1 / (1 + np.exp(-1.5)), 16.0: 1 / (1 + np.exp(0.5))}
  rng = np.random.default_rng(0)
  hits, n = 0, 100
  for s in range(n):
    L = 3 + 0.02 * (x - np.where(R == 1, 1.5, -0.5)) ** 2 + rng.normal(0, 1e-3, len(w))
    opt = laws.optimal_ratio(w, R, L, n_boot=200, seed=s)
    for r, t in truth.items():
      assert opt[r]['vertex'] == pytest.approx(t, abs=0.02)
      hits += opt[r]['ci'][0] <= t <= opt[r]['ci'][1]
  assert 0.75 <= hits / (2 * n) <= 1.0
  with pytest.raises(errors.FitError, match='R=4 has 2 ratios'):
    laws.optimal_ratio([0.5, 1.0], [4, 4], [3.0, 3.1])


def _cli_fit(tmp_path, law, rows, cols, *extra):
  _write(tmp_path / f'{law}.csv', rows, cols)
  p = subprocess.run([sys.executable, '-m', 'dlm_jax.scaling', 'fit', '--runs',
                      str(tmp_path / f'{law}.csv'), '--law', law, '--out',
                      str(tmp_path / f'{law}.json'), *extra],
                     cwd=ROOT, capture_output=True, text=True, check=False)
  assert p.returncode == 0, p.stderr
  assert 'Traceback' not in p.stderr
  return json.load(open(tmp_path / f'{law}.json'))


def test_cli_isoflop_law(tmp_path):
  """The isoflop law through the CLI (it once crashed: code placed after the main guard)."""
  rows = []
  for C in (1e18, 1e19, 1e20, 1e21):
    n_opt = laws.compute_optimal(TRUE, C)[0]
    for k in np.linspace(-1.2, 1.2, 7):
      N = n_opt * np.exp(k)
      rows.append((N, C / (6 * N), C, laws.chinchilla_loss(TRUE, N, C / (6 * N))))
  fit = _cli_fit(tmp_path, 'isoflop', rows, ['N', 'D', 'C', 'loss'], '--bootstrap', '8')
  assert fit['law'] == 'isoflop'
  assert fit['params']['a'] == pytest.approx(TRUE['beta'] / (TRUE['alpha'] + TRUE['beta']),
                                             abs=0.02)
  assert 'ci' in fit and fit['bootstrap']['used'] > 0


def test_cli_power_law(tmp_path):
  """Two families on pure power laws, the second needing 8x the compute: the CLI recovers both
  exponents and the multiplier, with an interval."""
  rng = np.random.default_rng(0)
  C = np.logspace(17, 21, 12)
  rows = [(c, 1e8, c / 6e8, k * (c / m) ** -0.08 * math.exp(rng.normal(0, 0.002)), fam)
          for fam, k, m in (('ar', 40.0, 1.0), ('mdm', 40.0, 8.0)) for c in C]
  fit = _cli_fit(tmp_path, 'power', rows, ['C', 'N', 'D', 'loss', 'family'])
  assert fit['law'] == 'power'
  for fam in ('ar', 'mdm'):
    assert fit['params'][fam]['gamma'] == pytest.approx(-0.08, abs=0.002)
  assert fit['compute_multiplier'] == pytest.approx(8, rel=0.15)
  lo, hi = fit['ci']['compute_multiplier']
  assert lo < fit['compute_multiplier'] < hi and fit['bootstrap']['requested'] == 200


REDUCED_GRID = np.array(list(itertools.product([0, 10, 20], [0, 10, 20], [-1, 0, 1], [0, 1, 2],
                                               [0, 1, 2])), float)


def _reference_chinchilla(N, D, L, starts):
  """The published procedure one start at a time (scipy L-BFGS-B from every start, the best
  polished at tight tolerances), then a derivative-free Nelder-Mead polish to full precision:
  an independent path to the optimum."""
  from scipy import optimize
  logN, logD, logL = np.log(N), np.log(D), np.log(L)
  fun = lambda th: laws._huber_lse(th, logN, logD, logL)
  free, fixed = np.ones(5, bool), np.zeros(5)
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    runs = [laws._lbfgs(fun, x0, free, fixed) for x0 in starts]
    best = min(runs, key=lambda r: r[1] if np.isfinite(r[1]) else np.inf)
    x = laws._lbfgs(fun, best[0], free, fixed, laws.TIGHT)[0]
  r = optimize.minimize(lambda th: fun(th)[0], x, method='Nelder-Mead',
                        options=dict(xatol=1e-12, fatol=1e-22, maxiter=200_000, maxfev=200_000))
  return r.fun, laws.chinchilla_params(r.x)


@pytest.mark.parametrize('full', [False, pytest.param(True, marks=pytest.mark.slow)],
                         ids=['243_starts', 'full_grid'])
def test_batched_fitter_finds_the_reference_optimum(full):
  """Every start at once (optim.minimize) reaches the optimum the one-start-at-a-time procedure
  reaches: objective to 1e-9 relative, parameters to 1e-5."""
  N, D, L = simulate()
  starts = None if full else REDUCED_GRID
  f = scaling_laws_fit(N, D, L, starts)
  ref_obj, ref = _reference_chinchilla(N, D, L, laws.grid_starts() if full else REDUCED_GRID)
  assert abs(f.objective - ref_obj) <= 1e-9 * ref_obj, (f.objective, ref_obj)
  for k in ref:
    assert f.params[k] == pytest.approx(ref[k], rel=1e-5), k


def scaling_laws_fit(N, D, L, starts):
  return laws.fit_chinchilla(N, D, L, starts=starts)


def test_bootstrap_draws_at_once_equal_one_at_a_time():
  """fit_chinchilla_draws (all draws and starts together) gives each resample the fit that
  fitting it alone from the same starts gives."""
  N, D, L = simulate(n=30)
  main = laws.fit_chinchilla(N, D, L)
  rng = np.random.default_rng(4)
  counts = scaling.resample_counts(dict(loss=L), 4, rng)
  params, ok = laws.fit_chinchilla_draws(N, D, L, counts, main.starts)
  assert ok.all()
  for c, p in zip(counts, params):
    idx = np.repeat(np.arange(len(c)), c)
    alone = laws.fit_chinchilla(N[idx], D[idx], L[idx], starts=main.starts)
    obj = [laws.huber_lse_batch(_theta(q)[None], *np.log([N, D, L]), c[None].astype(float))[0][0]
           for q in (p, alone.params)]
    assert obj[0] <= obj[1] * (1 + 1e-9), obj
    for k in p:
      assert p[k] == pytest.approx(alone.params[k], rel=1e-3), k


def _theta(p):
  return np.array([np.log(p['A']), np.log(p['B']), np.log(p['E']), p['alpha'], p['beta']])


def test_seeds_are_resampled_within_their_cells():
  runs = dict(N=np.repeat([1e7, 1e8, 1e9], 4), D=np.full(12, 1e10), loss=np.ones(12),
              seed=np.tile(np.arange(4), 3))
  counts = scaling.resample_counts(runs, 50, np.random.default_rng(0))
  assert np.all(counts.reshape(50, 3, 4).sum(2) == 4)  # every cell keeps its size
  assert counts.std() > 0


def test_profile_interval_brackets_the_estimate_and_bootstrap_reports_failures(tmp_path):
  N, D, L = simulate(n=40, noise=0.01, seed=3)
  out = scaling.fit('chinchilla', dict(N=N, D=D, loss=L), bootstrap=50, profile=True)
  for k in ('alpha', 'beta'):
    prof = out['profile'][k]
    assert prof['lo'] < out['params'][k] < prof['hi'] and not prof['open']
    # the profile is at the threshold at both ends (the crossing is interpolated)
    assert prof['hi'] - prof['lo'] < 0.3
  b = out['bootstrap']
  assert b['used'] + b['failed'] == 50 and b['resampled'] == 'runs'
  for k in ('alpha', 'beta', 'a_opt', f'N_opt@{out["frontier"]["C"][0]:.3g}'):
    lo, hi = out['ci'][k]
    assert lo < hi


def test_cli_data_constrained_law(tmp_path):
  rng = np.random.default_rng(1)
  N, D, U = repeated_data_grid()
  L = laws.data_constrained_loss(DC_LAW, N, D, U) * np.exp(rng.normal(0, 0.001, len(N)))
  rows = list(zip(N, D, U, L))
  fix = ','.join(f'{k}={TRUE[k]}' for k in laws.CHINCHILLA)
  fit = _cli_fit(tmp_path, 'data_constrained', rows, ['N', 'D', 'U', 'loss'], '--fix', fix,
                 '--bootstrap', '20')
  assert fit['params']['R_D_star'] == pytest.approx(15, rel=0.3)
  lo, hi = fit['ci']['R_D_star']
  assert lo <= fit['params']['R_D_star'] <= hi
  assert fit['bootstrap']['used'] >= 18


def _coverage_chinchilla(seed):
  N, D, L = simulate(n=40, noise=0.01, seed=seed)
  out = scaling.fit('chinchilla', dict(N=N, D=D, loss=L), bootstrap=100, seed=seed, profile=True)
  hits = {f'bootstrap {k}': out['ci'][k][0] <= TRUE[k] <= out['ci'][k][1] for k in ('alpha', 'beta')}
  hits.update({f'profile {k}': out['profile'][k]['lo'] <= TRUE[k] <= out['profile'][k]['hi']
               for k in ('alpha', 'beta')})
  return hits


def _coverage_isoflop(seed):
  rng = np.random.default_rng(seed)
  rows = []
  for C in (1e18, 1e19, 1e20, 1e21):
    n_opt = laws.compute_optimal(TRUE, C)[0]
    for k in np.linspace(-1.2, 1.2, 7):
      N = n_opt * np.exp(k)
      rows.append((N, C, laws.chinchilla_loss(TRUE, N, C / (6 * N)) * np.exp(rng.normal(0, 0.01))))
  N, C, L = map(np.array, zip(*rows))
  out = scaling.fit('isoflop', dict(N=N, D=C / (6 * N), C=C, loss=L), bootstrap=200, seed=seed)
  # the parabolas' own estimand: the exponent of the vertices of the noise-free profiles
  ref = laws.fit_isoflop(N, C, laws.chinchilla_loss(TRUE, N, C / (6 * N))).params['a']
  return {'bootstrap a': out['ci']['a'][0] <= ref <= out['ci']['a'][1]}


def _coverage_data_constrained(seed):
  rng = np.random.default_rng(seed)
  N, D, U = repeated_data_grid()
  L = laws.data_constrained_loss(DC_LAW, N, D, U) * np.exp(rng.normal(0, 0.003, len(N)))
  out = scaling.fit('data_constrained', dict(N=N, D=D, U=U, loss=L), bootstrap=100, seed=seed,
                    fix={k: TRUE[k] for k in laws.CHINCHILLA})
  return {'bootstrap R_D_star': out['ci']['R_D_star'][0] <= 15 <= out['ci']['R_D_star'][1]}


def _coverage_power(seed):
  rng = np.random.default_rng(seed)
  C = np.logspace(15, 19, 15)
  L = 30 * C ** -0.05 * np.exp(rng.normal(0, 0.01, 15))
  out = scaling.fit('power', dict(N=np.ones(15), D=C / 6, C=C, loss=L), bootstrap=200, seed=seed)
  return {'bootstrap gamma': out['ci']['all.gamma'][0] <= -0.05 <= out['ci']['all.gamma'][1]}


# law -> (one simulated dataset's hits, datasets, the least coverage accepted for a nominal 95%)
COVERAGE = {'chinchilla': (_coverage_chinchilla, 40, 0.8), 'isoflop': (_coverage_isoflop, 40, 0.8),
            'data_constrained': (_coverage_data_constrained, 30, 0.75),
            'power': (_coverage_power, 60, 0.85)}


@pytest.mark.parametrize('law', [pytest.param(law, marks=[pytest.mark.slow] if law != 'power' else [])
                                 for law in sorted(COVERAGE)])
def test_interval_coverage(law):
  """Nominal 95% intervals of each law on simulated data with known parameters: the fraction of
  datasets whose interval holds the truth (printed; recorded in BENCHMARKS.md)."""
  one, reps, floor = COVERAGE[law]
  hits = [one(s) for s in range(reps)]
  rates = {k: float(np.mean([h[k] for h in hits])) for k in hits[0]}
  print(law, reps, rates)
  for k, r in rates.items():
    assert r >= floor, (k, r)


@pytest.mark.parametrize('law,params,runs,expected', [
    ('chinchilla', dict(E=1.7, A=400, B=400, alpha=0.34, beta=0.28),
     dict(N=[1e6, 2e6], D=[1e9, 3e9]), ''),
    ('chinchilla', dict(E=0.37, A=1.0, B=1.0, alpha=-0.09, beta=-0.11),  # docs/dual_ratio_micro
     dict(N=[1e6, 2e6], D=[1e9, 3e9]),
     'alpha = -0.09 <= 0 (loss does not fall with parameters); beta = -0.11 <= 0 '
     '(loss does not fall with data)'),
    ('chinchilla', dict(E=1.7, A=400, B=400, alpha=0.34, beta=0.28),
     dict(N=[1e6, 1e6], D=[1e9, 3e9]), 'every run has the same N: alpha is not identified'),
    ('isoflop', dict(a=0.5, G=1.0, b=0.5), dict(N=[1, 2]), ''),
    ('isoflop', dict(a=1.3, G=1.0, b=-0.3), dict(N=[1, 2]),
     'a = 1.3 outside (0, 1) (N_opt ~ C^a: N_opt or D_opt would shrink as compute grows)'),
    ('power', dict(ar=dict(k=10.0, gamma=-0.1), mdm=dict(k=1.0, gamma=0.02)), dict(C=[1, 2]),
     'mdm: gamma = 0.02 >= 0 (loss does not fall with compute)'),
])
def test_a_degenerate_fit_says_why(law, params, runs, expected):
  assert laws.degenerate(law, params, runs) == expected


def test_sweep_plots_say_on_the_plot_what_they_cannot_show(tmp_path, capsys):
  """The shipped dual-ratio table (one model size, one compute budget) through every plot: each
  panel that cannot show a law says why on the plot itself (SVG text), on stderr and in
  fits.json; the Chinchilla fit to it is marked degenerate (before: plots with a silent
  alpha = -0.09, beta = -0.11, and an empty IsoFLOP panel)."""
  rows = sweep.read_csv(sweep.shipped_table('dual_ratio_micro'))
  files, fits = plot.sweep_plots(rows, str(tmp_path))
  svg = {os.path.basename(f)[:-4]: open(f).read() for f in files if f.endswith('.svg')}
  assert set(svg) == {'loss_vs_compute', 'isoflop', 'fitted_vs_observed', 'dual_ratio'}
  assert 'one compute budget only' in svg['loss_vs_compute']
  assert 'no family has an IsoFLOP fit' in svg['isoflop']
  assert 'degenerate fit: every run has the same N' in svg['fitted_vs_observed']
  assert fits['chinchilla_dual']['degenerate'].startswith('every run has the same N')
  saved = json.load(open(tmp_path / 'fits.json'))
  assert len(saved['warnings']) == 4 and 'warnings' not in fits
  err = capsys.readouterr().err
  assert all(f'warning: {w}' in err for w in saved['warnings'])
  # the dual-ratio panel draws each R's fitted optimum with its bootstrap interval
  assert 'fitted optimum, 95% bootstrap interval' in svg['dual_ratio']
  # a table with no finished run is refused, nothing drawn (before: empty plots, exit 0)
  with pytest.raises(errors.FitError, match='no finished run with a finite loss among the 2 rows'):
    plot.sweep_plots([dict(r, status='failed') for r in rows[:2]], str(tmp_path / 'none'))
  assert not os.path.exists(tmp_path / 'none')


def test_sweep_plots_draw_intervals_and_readable_log_ticks(tmp_path):
  """With bootstrap draws every fitted number on a plot carries its 95% interval; log axes label
  decades only (minor labels overlapped); the IsoFLOP panel has a legend per family."""
  rows = sweep.read_csv(sweep.shipped_table('isoflop_micro'))
  files, fits = plot.sweep_plots(rows, str(tmp_path), bootstrap=20,
                                 which=('compute', 'isoflop'), isoflop_window=3)
  svg = {os.path.basename(f)[:-4]: open(f).read() for f in files if f.endswith('.svg')}
  pf = fits['power_frontier']
  lo, hi = pf['ci']['compute_multiplier']
  assert f'{pf["compute_multiplier"]:.2f}x [{lo:.2f}, {hi:.2f}]' in svg['loss_vs_compute']
  lo, hi = pf['ci']['ar.gamma']
  assert f'C^{pf["params"]["ar"]["gamma"]:.3f} [{lo:.2f}, {hi:.2f}]' in svg['loss_vs_compute']
  assert 'ar vertices (95% intervals)' in svg['isoflop']
  for label in ('>ar<', '>mdm<', '>vertex<', 'vertex outside the sampled sizes'):
    assert label in svg['isoflop'], label
  fig, ax = plot.plt.subplots()
  ax.plot([5e10, 8e11], [1, 2])
  plot._log_axis(ax, 'x')  # pylint: disable=protected-access
  fig.canvas.draw()
  assert not [t.get_text() for t in ax.xaxis.get_minorticklabels() if t.get_text()]
  assert [t.get_text() for t in ax.xaxis.get_majorticklabels() if t.get_text()]
  plot.plt.close(fig)


def test_plot_sweep_cli_draws_the_plots_asked_for(tmp_path):
  """`plot sweep RUNS.csv --out-dir DIR --plots dual` draws only those; a bad --plots value is one
  line, exit 2, nothing drawn."""
  table = sweep.shipped_table('dual_ratio_micro')
  r = subprocess.run([sys.executable, '-m', 'dlm_jax.plot', 'sweep', table, '--out-dir',
                      str(tmp_path / 'p'), '--plots', 'dual'], capture_output=True, text=True,
                     env=dict(os.environ, PYTHONPATH=ROOT))
  assert r.returncode == 0, r.stderr
  assert sorted(os.listdir(tmp_path / 'p')) == ['dual_ratio.png', 'dual_ratio.svg', 'fits.json']
  r = subprocess.run([sys.executable, '-m', 'dlm_jax.plot', 'sweep', table, '--out-dir',
                      str(tmp_path / 'q'), '--plots', 'dual,heatmap'], capture_output=True,
                     text=True, env=dict(os.environ, PYTHONPATH=ROOT))
  assert r.returncode == 2 and r.stderr.strip() == (
      "error: --plots 'dual,heatmap': use a comma list of compute, isoflop, chinchilla, dual")
  assert not os.path.exists(tmp_path / 'q')
