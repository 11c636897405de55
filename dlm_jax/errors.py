"""Every error the project raises on purpose, with the exit status the CLI gives it.

Each message names the key, file or argument at fault and reads as one line; main.py prints it
after `error: ` and exits with `exit_code`, without a traceback. 2: the input is wrong (fix the
command or config; a run that cannot fit in memory included); 1: the run could not go on (data, disk, a diverged loss); 3: the run directory
is held by another process; 128 + n: stopped by signal n after checkpointing.
"""
import functools
import signal
import sys


class Error(Exception):
  """Base of the project's errors."""
  exit_code = 1


class ConfigError(Error, ValueError):
  """An invalid config value; the message starts with the dotted key."""
  exit_code = 2


class MeshError(Error, ValueError):
  """A mesh that does not fit the devices, or a batch that does not fit the mesh."""
  exit_code = 2


class SampleError(Error, ValueError):
  """Bad sampling arguments or prompts; the message names the argument."""
  exit_code = 2


class FitError(Error, ValueError):
  """Input that cannot be fitted (too few runs, non-positive values...); names the rows."""
  exit_code = 2


class SweepError(Error, ValueError):
  """A sweep file or run name that cannot be used; names the file."""
  exit_code = 2


class InteropError(Error, ValueError):
  """A checkpoint that cannot be imported or exported (interop/); names the file or tensor."""
  exit_code = 2


class BusyError(Error, RuntimeError):
  """The run directory is held by another process (run/rundir.lock); names the holder."""
  exit_code = 3


class DataError(Error, ValueError):
  """Bad or missing input data; the message names the file and the problem."""


class DistributedError(Error, RuntimeError):
  """A multi-process launch that cannot start (coordinator unreachable, bad process ids)."""


class TrainingError(Error, RuntimeError):
  """A run that cannot go on (NaN loss, incompatible workdir); the message says where and why."""


class ResourceError(Error, RuntimeError):
  """A run that cannot fit in memory (run/memory.py); names the sizes and what to change."""
  exit_code = 2


MEMORY_ADVICE = ('a smaller model (model.size / d_model / num_layers), a smaller train.batch_size '
                 'or a larger train.grad_accum, model.remat=full, or more devices (mesh.fsdp)')


def out_of_memory(error):
  """A ResourceError for an allocation failure XLA reported (RESOURCE_EXHAUSTED), else None."""
  text = str(error)
  if 'RESOURCE_EXHAUSTED' not in text:
    return None
  first = next((l.strip() for l in text.splitlines() if l.strip()), text)[:300]
  return ResourceError(f'out of memory ({first}); use {MEMORY_ADVICE}')


class CheckpointWriteError(TrainingError):
  """A checkpoint could not be written (full disk, quota, permissions); earlier ones are kept."""


class Preempted(TrainingError):
  """SIGTERM / SIGINT: the run checkpointed its current step and stopped; rerun to resume."""

  def __init__(self, step, signum, message=''):
    self.step, self.signum = step, signum
    self.exit_code = 128 + signum
    super().__init__(message or f'preempted ({signal.Signals(signum).name}) at step {step}: '
                     'checkpoint saved; rerun the same command to resume')


def os_errors_as(kind, note=''):
  """Decorator: an OSError (a full disk, a read-only or vanished directory) raised by the wrapped
  entry point becomes `kind`, one line naming the file and the reason, plus `note`."""
  def wrap(fn):
    def run(*args, **kwargs):
      try:
        return fn(*args, **kwargs)
      except FileNotFoundError as e:  # says what is missing
        raise kind(str(e)) from None
      except OSError as e:
        raise kind(f'{type(e).__name__}: {e}{note}') from None
    run.__name__, run.__doc__ = fn.__name__, fn.__doc__
    return run
  return wrap


def cli(main):
  """Decorator for a command-line entry point: a project Error ends it as one `error:` line (a
  Preempted as its own message) and the error's exit status, never a traceback."""
  @functools.wraps(main)
  def run(*args, **kwargs):
    try:
      try:
        return main(*args, **kwargs)
      except Exception as e:  # an allocation failure anywhere: one line, not XLA's traceback
        oom = out_of_memory(e) if not isinstance(e, Error) else None
        if oom is None:
          raise
        raise oom from None
    except Error as e:
      print(e if isinstance(e, Preempted) else f'error: {e}', file=sys.stderr)
      sys.exit(e.exit_code)
  return run


class UsageError(Error, ValueError):
  """A command-line argument a command cannot use (an unknown flag, a missing or malformed
  argument); the message names it."""
  exit_code = 2
