"""python -m dlm_jax.main --config configs/default.py --workdir runs/x [--mode train|eval|sample]
Config files are Python executed as code (the ml_collections convention): run only configs you
trust. Every error is one `error:` line and the error's exit status (errors.py): 2 for bad input,
before anything is written; 1 when a run cannot go on; 3 when another process holds the run
directory (one writer per run: run/rundir.lock); 128 + n when stopped by signal n.
"""
import sys

import jax
from absl import flags
from ml_collections import config_flags

from dlm_jax import cli
from dlm_jax import config as config_lib
from dlm_jax import configs as shipped
from dlm_jax import errors
from dlm_jax.core import sharding
from dlm_jax.infer import evaluate, sample
from dlm_jax.run import loop, rundir

_CONFIG = config_flags.DEFINE_config_file('config', None, 'get_config() file, or a shipped config '
                                          'name (default, lm1b, sweeps/...)', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (created; rerun resumes).')
_MODE = flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'sample'], 'train (or resume), or '
                          'eval / sample the latest checkpoint (eval/*.json, samples.jsonl).')
_COORD = flags.DEFINE_string('coordinator_address', '', 'Multi-process: host:port of process 0.')
_NPROC = flags.DEFINE_integer('num_processes', 0, 'Multi-process: processes (and --process_id).')
_PID = flags.DEFINE_integer('process_id', -1, 'Multi-process: this process (0 = coordinator).')
_DIST = flags.DEFINE_bool('distributed', False, 'Multi-process: the cluster from the environment.')
_TIMEOUT = flags.DEFINE_integer('distributed_timeout', 300, 'Seconds to wait for the others.')


@errors.cli
def main(argv=None):
  argv = sys.argv if argv is None else argv
  if cli.absl_help(argv, f'{__doc__}\nshipped configs (--config NAME): '
                   f'{", ".join(shipped.names())}', flags.FLAGS, sys.modules[__name__]):
    return
  rest = cli.absl_parse(config_lib.check_cli(argv), flags.FLAGS)
  if len(rest) > 1 or _CONFIG.value is None or not _WORKDIR.value:
    raise errors.ConfigError(f'unexpected arguments: {" ".join(rest[1:])}' if len(rest) > 1 else
                             '--config is required (e.g. --config configs/default.py)'
                             if _CONFIG.value is None else '--workdir is required')
  cfg = config_lib.validate(_CONFIG.value, training=_MODE.value == 'train')
  sharding.initialize_distributed(_COORD.value, _NPROC.value, _PID.value, _TIMEOUT.value,
                                  force=_DIST.value)  # before any other JAX call
  with rundir.lock(_WORKDIR.value, _MODE.value):  # one writer per run directory
    if _MODE.value == 'eval':
      print(evaluate.format_table(evaluate.run(cfg, _WORKDIR.value)))
    elif _MODE.value == 'sample':
      print(sample.format_summary(sample.run(cfg, _WORKDIR.value)[1]))
    else:
      summary = loop.train_and_evaluate(cfg, _WORKDIR.value)
      if jax.process_index() == 0:
        print(rundir.format_summary(summary, _WORKDIR.value))


if __name__ == '__main__':
  main()
