"""What the command modules share (main.py, bench.py, flops.py, hf.py, lmeval.py, plot.py,
prepare.py, probes.py, scaling.py, sweep.py): one argument style, one error path. Each command's
`main(argv=None)` is wrapped in errors.cli, so a usage error, like any project error, ends as one
`error:` line and its exit status (2) instead of argparse's usage block."""
import argparse

from dlm_jax import errors


class Parser(argparse.ArgumentParser):
  """argparse whose usage errors raise errors.UsageError (subcommand parsers inherit it);
  --help still prints the full help and exits 0."""

  def error(self, message):
    raise errors.UsageError(f'{self.prog}: {message} (--help for usage)')


def parser(command, doc):
  """The parser of `python -m dlm_jax.<command>`, its module docstring as the description."""
  return Parser(prog=f'python -m dlm_jax.{command}', description=doc,
                formatter_class=argparse.RawDescriptionHelpFormatter)
