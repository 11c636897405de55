"""Plots (PNG and SVG) of runs and sweeps (the drawing: dlm_jax/study/plot.py).

  python -m dlm_jax.plot curves RUN_DIR... [--metric mdm_nelbo] --out curves
  python -m dlm_jax.plot sweep RUNS.csv --out-dir docs/isoflop_micro [--bootstrap 100]
      [--isoflop-window 3] [--plots compute,isoflop,chinchilla,dual]
  python -m dlm_jax.plot sample-bench BENCH.jsonl --out docs/sample_bench

`sweep` draws, per objective family: loss vs compute with the fitted power law, IsoFLOP curves
with their vertices, N_opt(C), fitted-vs-observed (Chinchilla), and the dual-ratio heat map when
the table has ratio x epochs runs; it writes the fits it drew as fits.json next to them. Each
prints the files it wrote.
"""
import sys

from dlm_jax import cli
from dlm_jax import errors
from dlm_jax.study import plot
from dlm_jax.study import sweep


def parse(argv):
  ap = cli.parser('plot', __doc__)
  sub = ap.add_subparsers(dest='cmd', required=True)
  c = sub.add_parser('curves', help='validation curves of run directories')
  c.add_argument('runs', nargs='+')
  c.add_argument('--metric', default=None)
  c.add_argument('--out', default='curves')
  s = sub.add_parser('sweep', help='the scaling plots of a runs table')
  s.add_argument('table')
  s.add_argument('--out-dir', required=True)
  s.add_argument('--bootstrap', type=int, default=0)
  s.add_argument('--isoflop-window', type=int, default=0,
                 help='fit each IsoFLOP parabola to the K sizes around the budget minimum')
  s.add_argument('--plots', default=','.join(plot.PLOTS),
                 help=f'comma list of {", ".join(plot.PLOTS)} (default: all)')
  b = sub.add_parser('sample-bench', help='speed and quality of `bench sample` results')
  b.add_argument('results')
  b.add_argument('--out', default='sample_bench')
  return ap.parse_args(sys.argv[1:] if argv is None else argv)


@errors.cli
def main(argv=None):
  a = parse(argv)
  if a.cmd == 'curves':
    files = plot.loss_curves(a.runs, a.metric, a.out)
  elif a.cmd == 'sample-bench':
    files = plot.sample_bench(plot.read_jsonl(a.results), a.out)
  else:
    which = tuple(p.strip() for p in a.plots.split(',') if p.strip())
    if not which or any(p not in plot.PLOTS for p in which):
      raise errors.FitError(f'--plots {a.plots!r}: use a comma list of {", ".join(plot.PLOTS)}')
    files, _ = plot.sweep_plots(sweep.read_csv(a.table), a.out_dir, a.bootstrap, which=which,
                                isoflop_window=a.isoflop_window)
  print('\n'.join(files))


if __name__ == '__main__':
  main()
