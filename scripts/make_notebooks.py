"""Writes the analysis notebooks (notebooks/*.ipynb) from the cells below, so they stay reviewable
as code. The notebooks only call the library (dlm_jax.sweep / scaling / plot).

  python scripts/make_notebooks.py
"""
import os

import nbformat
from nbformat import v4

REPO = 'https://github.com/<your-org>/dlm_jax'  # set to where this repository lives
HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def badge(name):
  return (f'[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]'
          f'(https://colab.research.google.com/github/{REPO.split("github.com/")[1]}/blob/main/'
          f'notebooks/{name})')


INSTALL = f'''# Colab: install dlm_jax (CPU is enough for the analysis). Locally this cell does nothing.
import os, sys
if 'google.colab' in sys.modules:
  !pip -q install "git+{REPO}"
  # upload your sweep's runs.csv (python -m dlm_jax.sweep collect ...) or mount Drive
'''

COMMON = '''import json
import numpy as np
from IPython.display import Image, display
from dlm_jax.study import laws
from dlm_jax.study import plot
from dlm_jax.study import sweep
'''


def scaling_nb():
  return [
      v4.new_markdown_cell('# Scaling analysis of a sweep\n\n' + badge('scaling_analysis.ipynb') +
                           '\n\nReads the table written by `python -m dlm_jax.sweep collect '
                           '<sweep>` and fits IsoFLOP (Approach 2), Chinchilla (Approach 3) and '
                           'per-family power laws, with the MDM-vs-AR compute multiplier.'),
      v4.new_code_cell(INSTALL),
      v4.new_code_cell(COMMON + "RUNS_CSV = os.environ.get('DLM_JAX_RUNS_CSV', "
                       "'docs/isoflop_micro/runs.csv')\nOUT_DIR = os.environ.get("
                       "'DLM_JAX_NB_OUT', 'notebook_out/scaling')\nBOOTSTRAP = int("
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
      v4.new_code_cell(COMMON + "RUNS_CSV = os.environ.get('DLM_JAX_RUNS_CSV', "
                       "'docs/dual_ratio_micro/runs.csv')\nOUT_DIR = os.environ.get("
                       "'DLM_JAX_NB_OUT', 'notebook_out/dual')"),
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


def main():
  for name, cells in (('scaling_analysis.ipynb', scaling_nb()),
                      ('dual_ratio_analysis.ipynb', dual_nb())):
    nb = v4.new_notebook(cells=cells, metadata={'kernelspec': {
        'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}})
    nbformat.write(nb, os.path.join(HERE, 'notebooks', name))
    print('wrote', name)


if __name__ == '__main__':
  main()
