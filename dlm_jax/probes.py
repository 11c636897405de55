"""The SMDM probes, AR vs MDM (vs dual): the reversal curse and temporal shift (what each
measures: dlm_jax/study/probes.py).

  python -m dlm_jax.probes reversal --out runs/probes/reversal [--workers 2] [--steps N]
  python -m dlm_jax.probes shift    --out runs/probes/shift    [--workers 2] [--steps N]

Each writes its data under <out>/data, trains its runs with the sweep runner (finished runs are
skipped, so a rerun only re-evaluates), scores them and writes <out>/report.json and a table.
"""
import sys

from dlm_jax import cli
from dlm_jax import errors
from dlm_jax.study import probes


def parse(argv):
  ap = cli.parser('probes', __doc__)
  ap.add_argument('probe', choices=('reversal', 'shift'))
  ap.add_argument('--out', required=True, help='directory of the data, runs and report')
  ap.add_argument('--workers', type=int, default=2, help='runs trained at once')
  ap.add_argument('--steps', type=int, default=0, help='train.num_steps (0: the base config)')
  return ap.parse_args(sys.argv[1:] if argv is None else argv)


@errors.cli
def main(argv=None):
  a = parse(argv)
  report = (probes.reversal if a.probe == 'reversal' else probes.shift)(a.out, a.workers, a.steps)
  print(probes.format_report(report))
  print(f'wrote {report["path"]}')


if __name__ == '__main__':
  main()
