"""lm-eval-harness with the dlm_jax model (the adapter: dlm_jax/infer/lmeval.py; needs the
[lmeval] extra: pip install 'dlm_jax[lmeval]').

  python -m dlm_jax.lmeval --model_args workdir=runs/x,estimator=nelbo --tasks piqa [lm_eval flags]

lm_eval's own command line with the model `dlm_jax` registered: --model defaults to dlm_jax, and
model_args gains `pretrained=<run name>` (what lm-eval names its output folder after) unless
given. Every other flag is lm_eval's (their help follows this text when lm_eval is installed).
"""
import json
import sys

from dlm_jax import cli
from dlm_jax import errors
from dlm_jax.run.trackers import run_name

try:  # the [lmeval] extra
  from lm_eval._cli.utils import MergeDictAction
  from dlm_jax.infer import lmeval  # pylint: disable=unused-import  # registers 'dlm_jax'
  MISSING = None
except ModuleNotFoundError as e:
  if (e.name or '').startswith('dlm_jax'):
    raise
  MISSING = e


class _ModelArgs(cli.Parser):
  """The lm_eval flags with_run_name reads; a malformed one is refused in lm_eval's words."""

  def error(self, message):
    raise errors.UsageError(message)


def with_run_name(argv):
  """argv with --model dlm_jax unless another model is named, and, for dlm_jax, the model_args
  key `pretrained` (what lm-eval names the output folder after) set to the run's name."""
  if argv and argv[0] in ('ls', 'validate'):  # lm_eval's other subcommands take no model
    return list(argv)
  argv = argv[1:] if argv and argv[0] == 'run' else argv
  p = _ModelArgs(prog='python -m dlm_jax.lmeval', add_help=False, allow_abbrev=False)
  p.add_argument('--model', '-M')
  p.add_argument('--model_args', '-a', nargs='+', action=MergeDictAction)  # as lm_eval parses
  known, _ = p.parse_known_args(argv)
  argv = list(argv) if known.model else ['--model', 'dlm_jax'] + list(argv)
  args = known.model_args or {}
  if known.model in (None, 'dlm_jax') and args.get('workdir') and 'pretrained' not in args:
    argv += ['--model_args', json.dumps(dict(pretrained=run_name(args['workdir'])))]
  return argv


@errors.cli
def main(argv=None):
  argv = list(sys.argv[1:] if argv is None else argv)
  if any(a in ('-h', '--help') for a in argv):
    print(__doc__.strip() + ('\n' if MISSING is None else f'\n\n(lm_eval: {MISSING})'),
          flush=True)
    if MISSING is not None:
      return
  if MISSING is not None:
    raise errors.Error(f"python -m dlm_jax.lmeval needs lm_eval: pip install 'dlm_jax[lmeval]' "
                       f'({MISSING})')
  from lm_eval.__main__ import cli_evaluate  # pylint: disable=g-import-not-at-top
  saved, sys.argv = sys.argv, ['lm_eval'] + with_run_name(argv)
  try:
    cli_evaluate()
  finally:
    sys.argv = saved


if __name__ == '__main__':
  main()
