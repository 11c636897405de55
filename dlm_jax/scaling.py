r"""Scaling-law fits of a runs table (the fitting: dlm_jax/study/scaling.py and laws.py).

  python -m dlm_jax.scaling fit --runs RUNS.csv --law chinchilla|isoflop|data_constrained|power \
      [--bootstrap K (200)] [--no-profile] [--fix NAME=VALUE,...] [--seed S] --out FIT.json

RUNS.csv columns: N, D, loss; optional U (unique tokens), C (FLOPs; default 6 N D), family, run
(python -m dlm_jax.sweep collect writes one). Prints the fitted parameters and their intervals.
"""
import json
import sys

from dlm_jax import cli
from dlm_jax import errors
from dlm_jax.study import scaling


def parse(argv):
  ap = cli.parser('scaling', __doc__)
  sub = ap.add_subparsers(dest='cmd', required=True)
  f = sub.add_parser('fit', help='fit a law to a runs table')
  f.add_argument('--runs', required=True)
  f.add_argument('--law', required=True, choices=list(scaling.LAWS))
  f.add_argument('--bootstrap', type=int, default=200,
                 help='resamples for percentile intervals (0: none)')
  f.add_argument('--no-profile', action='store_true',
                 help='chinchilla: skip the profile-likelihood intervals of alpha and beta')
  f.add_argument('--fix', default='')
  f.add_argument('--seed', type=int, default=0)
  f.add_argument('--window', type=int, default=0,
                 help='isoflop: fit each parabola to the K sizes around the budget minimum '
                 '(0: every size, the published procedure)')
  f.add_argument('--out', required=True)
  return ap.parse_args(sys.argv[1:] if argv is None else argv)


@errors.cli
def main(argv=None):
  a = parse(argv)
  res = scaling.fit(a.law, scaling.read_runs(a.runs), scaling.parse_fix(a.fix), a.seed,
                    a.bootstrap, a.window, profile=not a.no_profile)
  with open(a.out, 'w', encoding='utf-8') as fo:
    json.dump(res, fo, indent=2)
  print(json.dumps({k: res[k] for k in ('law', 'params', 'objective', 'n_runs', 'converged')},
                   default=str))
  for k, (lo, hi) in res.get('ci', {}).items():
    print(f'  {k:24s} [{lo:.4g}, {hi:.4g}]')


if __name__ == '__main__':
  main()
