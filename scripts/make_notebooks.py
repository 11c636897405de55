"""Writes the analysis notebooks (notebooks/*.ipynb) from the cells below, so they stay reviewable
as code, then executes them from notebooks/ in a fresh kernel and saves their outputs (the plots
included), so they read on GitHub as a finished analysis. The notebooks only call the library
(dlm_jax.study: sweep / laws / plot) on a runs table shipped with the package.

  python scripts/make_notebooks.py              # write and execute (about a minute on 2 cores)
  python scripts/make_notebooks.py --no-execute # write only, without outputs
"""
import argparse
import os

import nbclient
import nbformat
from nbformat import v4

REPO = 'https://github.com/<your-org>/dlm_jax'  # set to where this repository lives (the badges)
HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(HERE, 'notebooks')


def badge(name):
  return (f'[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]'
          f'(https://colab.research.google.com/github/{REPO.split("github.com/")[1]}/blob/main/'
          f'notebooks/{name})')


# Plain Python (no IPython magics), so a test can run it outside a kernel too.
INSTALL = """# Install dlm_jax when this kernel cannot import it, from the first of: DLM_JAX_SOURCE (anything
# pip installs: a wheel, a clone's directory, git+https://...), the clone this notebook sits in,
# a wheel uploaded next to it (Colab: the Files panel; build one with
# `python -m pip wheel --no-deps . -w dist`). A CPU runtime is enough for the analysis.
import glob, importlib.util, os, pathlib, subprocess, sys
HERE = pathlib.Path.cwd()  # Jupyter, nbclient and Colab run a notebook in its own folder
if importlib.util.find_spec('dlm_jax') is None:
  clone = next((p for p in (HERE, *HERE.parents)
                if (p / 'setup.py').is_file() and (p / 'dlm_jax').is_dir()), None)
  wheels = sorted(glob.glob(str(HERE / 'dlm_jax-*.whl')))
  source = os.environ.get('DLM_JAX_SOURCE') or (str(clone) if clone else None) or (
      wheels[-1] if wheels else None)
  if source is None:
    raise RuntimeError('dlm_jax is not installed: set DLM_JAX_SOURCE (a wheel, a clone or '
                       'git+https://...), open this notebook from a clone, or upload a wheel '
                       'next to it')
  subprocess.run([sys.executable, '-m', 'pip', 'install', '-q',
                  *os.environ.get('DLM_JAX_PIP_ARGS', '').split(), source], check=True)
  importlib.invalidate_caches()
  print('installed dlm_jax from', source)
"""

COMMON = '''import json
import numpy as np
from IPython.display import Image, display
from dlm_jax.study import laws
from dlm_jax.study import plot
from dlm_jax.study import sweep
# Parameters: a runs table (`python -m dlm_jax.sweep collect <sweep> --csv runs.csv`; relative
# paths are from this notebook's folder) or, by default, the one shipped with the package.
'''


def scaling_nb():
  return [
      v4.new_markdown_cell('# Scaling analysis of a sweep\n\n' + badge('scaling_analysis.ipynb') +
                           '\n\nReads the table written by `python -m dlm_jax.sweep collect '
                           '<sweep>` and fits IsoFLOP (Approach 2), Chinchilla (Approach 3) and '
                           'per-family power laws, with the MDM-vs-AR compute multiplier.'),
      v4.new_code_cell(INSTALL),
      v4.new_code_cell(COMMON + "RUNS_CSV = os.environ.get('DLM_JAX_RUNS_CSV') or "
                       "sweep.shipped_table('isoflop_micro')\nOUT_DIR = os.environ.get("
                       "'DLM_JAX_NB_OUT', str(HERE / 'notebook_out' / 'scaling'))\nBOOTSTRAP = int("
                       "os.environ.get('DLM_JAX_NB_BOOTSTRAP', '200'))  # resamples per fit\n"
                       "# IsoFLOP parabolas through the K sizes around each budget's minimum (0: all)\n"
                       "ISOFLOP_WINDOW = int(os.environ.get('DLM_JAX_NB_ISOFLOP_WINDOW', '3'))\n"
                       "# Chinchilla fits: 4,500 grid starts at once, seconds per family\n"
                       "CHINCHILLA = os.environ.get('DLM_JAX_NB_CHINCHILLA', '1') == '1'"),
      v4.new_markdown_cell('## The runs (missing and failed runs stay in the table)'),
      v4.new_code_cell("rows = sweep.read_csv(RUNS_CSV)\ndf = sweep.dataframe(rows)\n"
                       "print(df['status'].value_counts().to_string())\n"
                       "df[['run', 'status', 'objective', 'N', 'D', 'C', 'loss']].head(12)"),
      v4.new_markdown_cell('## Fits and plots'),
      v4.new_code_cell("files, fits = plot.sweep_plots(rows, OUT_DIR, bootstrap=BOOTSTRAP, "
                       "which=('compute', 'isoflop') + (('chinchilla',) if CHINCHILLA else ()), "
                       "isoflop_window=ISOFLOP_WINDOW)\n"
                       "for f in files:\n  if f.endswith('.png'):\n    display(Image(f))"),
      v4.new_code_cell("for name, fit in fits.items():\n"
                       "  print(name, json.dumps(fit['params'], default=float)[:300])\n"
                       "  if 'ci' in fit:\n    b = fit['bootstrap']\n"
                       "    print(f\"   95% bootstrap intervals ({b['used']} draws, {b['failed']} "
                       "failed):\", {k: [round(v, 4) for v in iv] for k, iv in fit['ci'].items() "
                       "if '@' not in k})\n"
                       "  for k, p in fit.get('profile', {}).items():\n"
                       "    print(f\"   95% profile-likelihood interval of {k}: "
                       "[{p['lo']:.3f}, {p['hi']:.3f}]\")"),
      v4.new_markdown_cell('## Compute multiplier and compute-optimal frontier'),
      v4.new_code_cell("pf = fits.get('power_frontier', {})\nif 'compute_multiplier' in pf:\n"
                       "  ci = pf.get('ci', {}).get('compute_multiplier')\n"
                       "  print(f\"{pf['multiplier_of']} compute for equal loss at L="
                       "{pf['at_loss']:.3f}: {pf['compute_multiplier']:.2f}x\", "
                       "f'(95% CI {ci[0]:.2f}-{ci[1]:.2f})' if ci else '')\n"
                       "for fam in ('ar', 'mdm'):\n  ch = fits.get(f'chinchilla_{fam}')\n"
                       "  if ch:\n    C = np.logspace(11, 13, 3)\n"
                       "    n, d = laws.compute_optimal(ch['params'], C)\n"
                       "    print(fam, [(f'{c:.0e}', int(a), int(b)) for c, a, b in zip(C, n, d)])"),
  ]


def dual_nb():
  return [
      v4.new_markdown_cell('# Dual-objective ratio vs data repetition\n\n' +
                           badge('dual_ratio_analysis.ipynb') + '\n\nReads a collected '
                           '`configs/sweeps/dual_ratio.py` sweep and finds the best AR weight '
                           'for each number of epochs R, with a bootstrap interval.'),
      v4.new_code_cell(INSTALL),
      v4.new_code_cell(COMMON + "RUNS_CSV = os.environ.get('DLM_JAX_RUNS_CSV') or "
                       "sweep.shipped_table('dual_ratio_micro')\nOUT_DIR = os.environ.get("
                       "'DLM_JAX_NB_OUT', str(HERE / 'notebook_out' / 'dual'))"),
      v4.new_code_cell("rows = [r for r in sweep.read_csv(RUNS_CSV) if r['status'] == 'done']\n"
                       "df = sweep.dataframe(rows)\n"
                       "df['ratio'] = df['ratio'].astype(float)\n"
                       "df['R'] = df['epochs'].astype(float).round()\n"
                       "df.pivot_table(index='R', columns='ratio', values='final_ar_nll')"),
      v4.new_code_cell("df.pivot_table(index='R', columns='ratio', values='final_mdm_nelbo')"),
      v4.new_code_cell("opt = laws.optimal_ratio(df['ratio'], df['R'], "
                       "df['final_ar_nll'].astype(float))\nfor R, o in opt.items():\n"
                       "  print(f'R={R:g}: best grid AR weight {o[\"grid_best\"]:g} "
                       "(NLL {o[\"grid_loss\"]:.3f}); parabola vertex {o.get(\"vertex\")}, "
                       "95% CI {o.get(\"ci\")}')"),
      v4.new_code_cell("files, fits = plot.sweep_plots(rows, OUT_DIR, which=('dual',))\n"
                       "for f in files:\n  if f.endswith('.png'):\n    display(Image(f))"),
  ]


def execute(nb):
  """Runs `nb` top to bottom in a fresh kernel with notebooks/ as its working directory (as
  Jupyter and Colab do), keeping the outputs."""
  nbclient.NotebookClient(nb, timeout=600, kernel_name='python3',
                          resources={'metadata': {'path': NOTEBOOKS}}).execute()
  return nb


NOTEBOOK_CELLS = {'scaling_analysis.ipynb': scaling_nb, 'dual_ratio_analysis.ipynb': dual_nb}


def build(name):
  return v4.new_notebook(cells=NOTEBOOK_CELLS[name](), metadata={'kernelspec': {
      'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}})


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--no-execute', action='store_true', help='write the cells without outputs')
  a = ap.parse_args()
  # the kernels import this checkout (the install cell finds it importable and does nothing)
  os.environ['PYTHONPATH'] = os.pathsep.join(p for p in (HERE, os.environ.get('PYTHONPATH')) if p)
  for name in NOTEBOOK_CELLS:
    nb = build(name) if a.no_execute else execute(build(name))
    nbformat.write(nb, os.path.join(NOTEBOOKS, name))
    print('wrote', name, '' if a.no_execute else '(executed, outputs saved)')


if __name__ == '__main__':
  main()
