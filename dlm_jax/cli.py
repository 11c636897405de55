"""What the command modules share (main.py, bench.py, flops.py, hf.py, lmeval.py, plot.py,
prepare.py, probes.py, scaling.py, sweep.py): one argument style, one error path. Each command's
`main(argv=None)` is wrapped in errors.cli, so a usage error, like any project error, ends as one
`error:` line and its exit status (2) instead of argparse's usage block."""
import argparse

from absl import flags

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


def absl_help(argv, doc, flag_values, module):
  """For the absl commands (main.py, bench.py, which take --config.KEY flags): True, with the
  command's docstring and its own flags printed, when argv asks for help."""
  if not any(a in ('-h', '--help', '-help', '--helpfull') for a in argv[1:]):
    return False
  print(doc.strip() + '\n\nflags:\n' + flag_values.module_help(module))
  return True


def absl_parse(argv, flag_values):
  """argv parsed into flag_values; the positional arguments left (argv[0] first). A bad flag or
  config value is one ConfigError line."""
  flag_values.unparse_flags()
  try:
    return flag_values(argv)
  except (flags.Error, KeyError, AttributeError, TypeError, ValueError, OSError, SyntaxError) as e:
    raise errors.ConfigError(str(e).strip().splitlines()[-1] if str(e).strip() else repr(e))
