"""Data-repetition ablations (issue 4, item 6) on the embedded corpus, CPU scale.

  python scripts/recipes_experiment.py [--root runs/recipes] [--plot docs/recipes.png]

(a) AR, MDM and dual (AR weight 1/2 and 63/64) at R in {1, 4, 16, 64} epochs of U = D / R unique
    tokens, D = 512k tokens for every run (configs/experiments/recipes.py);
(b) at R = 64: AR + token dropout 0.3, AR + MLP dropout 0.3, AR + weight decay 0.5 vs AR and MDM;
(c) at R = 16: dual 1/2 with causal vs prefix-LM masking of the AR share.
Reports the best (min over evaluations) and final validation AR NLL / MDM NELBO per run.
"""
import argparse
import os
import sys

from dlm_jax.run import rundir
from dlm_jax.study import sweep

D = 125 * 32 * 128
REPEATS = (1, 4, 16, 64)
OBJECTIVES = {'ar': {'objective': 'ar'}, 'mdm': {'objective': 'mdm'},
              'dual_1-2': {'objective': 'dual', 'dual.ar_weight': '1/2'},
              'dual_63-64': {'objective': 'dual', 'dual.ar_weight': '63/64'}}


def repeat(R):
  return {'data.unique_tokens': D // R, 'train.epochs': float(R)}


def settings():
  out = {}
  for R in REPEATS:
    for name, s in OBJECTIVES.items():
      out[f'{name}_R{R}'] = dict(s, **repeat(R))
  for name, s in {'ar+tokdrop0.3': {'train.token_dropout': 0.3},
                  'ar+mlpdrop0.3': {'model.mlp_dropout': 0.3},
                  'ar+wd0.5': {'train.weight_decay': 0.5}}.items():
    out[f'{name}_R64'] = dict(s, objective='ar', **repeat(64))
  out['dual_1-2_prefix_R16'] = dict(OBJECTIVES['dual_1-2'], **repeat(16),
                                    **{'dual.ar_attention': 'prefix'})
  return out


def metrics(root, name):
  s = rundir.read_summary(os.path.join(root, name))
  return s, {k: (s['best'].get(k), s['final'].get(k)) for k in ('ar_nll', 'mdm_nelbo')}


def fmt(pair):
  return '-' if pair[0] is None else f'{pair[0]:.3f} ({pair[1]:.3f})'


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--root', default='runs/recipes')
  p.add_argument('--plot', default='docs/recipes.png')
  a = p.parse_args()
  root = os.path.abspath(a.root)
  cfg = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs',
                     'experiments', 'recipes.py')
  st = settings()
  status = sweep.run_local(cfg, root, st)
  if any(s != 'done' for s in status.values()):
    sys.exit(f'runs failed: {status}')
  lines = ['| run | U (tokens) | epochs | val AR NLL best (final) | val MDM NELBO best (final) | '
           'wall s |', '|---|---|---|---|---|---|']
  for name in st:
    s, m = metrics(root, name)
    lines.append(f'| {name} | {s["U"]:,} | {s["epochs"]:.1f} | {fmt(m["ar_nll"])} | '
                 f'{fmt(m["mdm_nelbo"])} | {s["wall_time_s"]:.0f} |')
  table = '\n'.join(lines)
  open(os.path.join(root, 'results.md'), 'w').write(table + '\n')
  print(table)

  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for ax, key, title in ((axes[0], 'ar_nll', 'AR NLL (causal)'),
                         (axes[1], 'mdm_nelbo', 'MDM NELBO')):
    for name in OBJECTIVES:
      ys = [metrics(root, f'{name}_R{R}')[1][key][0] for R in REPEATS]
      if ys[0] is not None:
        ax.plot(REPEATS, ys, marker='o', label=name)
    ax.set_xscale('log', base=2)
    ax.set_xlabel('epochs R (D fixed, U = D / R)')
    ax.set_ylabel(f'best validation {title} (nats/token)')
    ax.legend(fontsize=8)
  fig.suptitle('Data repetition at fixed compute (d=64, 2 layers, D=512k tokens)')
  fig.tight_layout()
  os.makedirs(os.path.dirname(a.plot) or '.', exist_ok=True)
  fig.savefig(a.plot, dpi=120)
  print(f'plot: {a.plot}')


if __name__ == '__main__':
  main()
