"""AR vs MDM-from-scratch vs AR2Diff on the cloze task built from the embedded corpus.

  python scripts/ar2diff_experiment.py [--root runs/ar2diff] [--pretrain 250] [--cpt 50]
                                       [--finetune 150]

Stages (same model, seed, pretraining tokens; configs/experiments/ar2diff.py):
  pre_ar       AR pretraining                      pre_mdm     MDM pretraining from scratch
  cpt_ar2diff  pre_ar continued as MDM (bidirectional), fresh optimizer (AR2Diff step 2)
  ft_ar        pre_ar fine-tuned with AR on the task (loss on the target only)
  ft_prefix    pre_ar fine-tuned as a prefix-LM (prompt bidirectional)
  ft_mdm       pre_mdm fine-tuned with MDM (prompt never masked, target noised)
  ft_ar2diff   cpt_ar2diff fine-tuned with MDM (AR2Diff step 3)
Reports validation exact match (greedy decoding) and target NLL / NELBO per token.
"""
import argparse
import os
import sys

from dlm_jax.run import rundir
from dlm_jax.study import sweep


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--root', default='runs/ar2diff')
  p.add_argument('--pretrain', type=int, default=250)
  p.add_argument('--cpt', type=int, default=50)
  p.add_argument('--finetune', type=int, default=150)
  a = p.parse_args()
  root = os.path.abspath(a.root)
  cfg = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs',
                     'experiments', 'ar2diff.py')
  run = lambda d: os.path.join(root, d)
  ft = {'data.task': 'cloze', 'train.num_steps': a.finetune, 'train.lr': 1e-3,
        'train.warmup_steps': 10, 'train.eval_every': a.finetune}
  stages = {
      'pre_ar': {'objective': 'ar', 'train.num_steps': a.pretrain},
      'pre_mdm': {'objective': 'mdm', 'train.num_steps': a.pretrain},
      'cpt_ar2diff': {'objective': 'mdm', 'init_from': run('pre_ar'), 'train.num_steps': a.cpt,
                      'train.warmup_steps': 5, 'train.eval_every': a.cpt},
      'ft_ar': dict(ft, objective='ar', init_from=run('pre_ar')),
      'ft_prefix': dict(ft, objective='prefix', init_from=run('pre_ar')),
      'ft_mdm': dict(ft, objective='mdm', init_from=run('pre_mdm')),
      'ft_ar2diff': dict(ft, objective='mdm', init_from=run('cpt_ar2diff')),
  }
  status = sweep.run_local(cfg, root, stages)
  if any(s != 'done' for s in status.values()):
    sys.exit(f'stages failed: {status}')
  lines = ['| model | pretraining | fine-tuning | val exact match | val target NLL / NELBO |',
           '|---|---|---|---|---|']
  desc = {'ft_ar': ('AR', 'AR'), 'ft_prefix': ('AR', 'prefix-LM'),
          'ft_mdm': ('MDM (scratch)', 'MDM'),
          'ft_ar2diff': (f'AR, then {a.cpt} steps MDM', 'MDM')}
  for name, (pre, fine) in desc.items():
    f = rundir.read_summary(run(name))['final']
    mode = {'ft_ar': 'ar', 'ft_prefix': 'prefix'}.get(name, 'mdm')
    em = f[f'{mode}_exact_match']
    nll = f['mdm_nelbo' if mode == 'mdm' else f'{mode}_nll']
    lines.append(f'| {name} | {pre} | {fine} | {em:.3f} | {nll:.3f} |')
  for name in ('pre_ar', 'pre_mdm', 'cpt_ar2diff'):
    f = rundir.read_summary(run(name))['final']
    lines.append(f'| {name} (LM validation) | | | | {f.get("ar_nll", f.get("mdm_nelbo")):.3f} |')
  table = '\n'.join(lines)
  open(os.path.join(root, 'results.md'), 'w').write(table + '\n')
  print(table)


if __name__ == '__main__':
  main()
