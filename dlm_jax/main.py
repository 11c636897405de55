"""Entry point: python -m dlm_jax.main --config configs/default.py --workdir runs/x
[--mode train|eval|sample].

Config errors print one line naming the key and exit with status 2 before anything is written.
"""
import os
import sys

from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (get_config()).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (created; rerun resumes).')
_MODE = flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'sample'],
                          'train: train (or resume) the run; eval: likelihood estimators and '
                          "zero-shot tasks (config.eval) on the run's latest checkpoint, written "
                          'to eval/<eval.name>.json; sample: samples (config.sample) from it, '
                          'with generative perplexity, appended to samples.jsonl.')
_COORD = flags.DEFINE_string('coordinator_address', '', 'Multi-process: host:port of process 0 '
                             '(automatic on TPU pods and under SLURM srun).')
_NPROC = flags.DEFINE_integer('num_processes', 0, 'Multi-process: number of processes.')
_PID = flags.DEFINE_integer('process_id', -1, 'Multi-process: this process (0 = coordinator).')
_DIST = flags.DEFINE_bool('distributed', False, 'Multi-process: jax.distributed.initialize() '
                          'with the cluster detected from the environment (TPU VM slices, SLURM); '
                          'the launch scripts pass it.')
_DIST_TIMEOUT = flags.DEFINE_integer('distributed_timeout', 300,
                                     'Seconds to wait for the coordinator and the other '
                                     'processes.')


def fail(msg, code=2):
  print(f'error: {msg}', file=sys.stderr)
  sys.exit(code)


def main(argv=None):
  argv = sys.argv if argv is None else argv
  try:
    rest = flags.FLAGS(argv)
  except (flags.Error, KeyError, AttributeError, TypeError, ValueError, FileNotFoundError,
          OSError, SyntaxError) as e:
    fail(str(e).strip().splitlines()[-1] if str(e).strip() else repr(e))
  if len(rest) > 1:
    fail(f'unexpected arguments: {" ".join(rest[1:])}')
  if _CONFIG.value is None:
    fail('--config is required (e.g. --config configs/default.py)')
  if not _WORKDIR.value:
    fail('--workdir is required')

  from dlm_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from dlm_jax import sharding  # pylint: disable=g-import-not-at-top
  from dlm_jax import train  # pylint: disable=g-import-not-at-top
  from dlm_jax.data.corpus import DataError  # pylint: disable=g-import-not-at-top
  try:
    cfg = config_lib.validate(_CONFIG.value, training=_MODE.value == 'train')
  except config_lib.ConfigError as e:
    fail(str(e))
  try:  # before any other JAX call
    sharding.initialize_distributed(_COORD.value, _NPROC.value, _PID.value, _DIST_TIMEOUT.value,
                                    force=_DIST.value)
  except sharding.DistributedError as e:
    fail(str(e), 1)
  if _MODE.value == 'eval':
    return _eval(cfg, DataError)
  if _MODE.value == 'sample':
    return _sample(cfg, DataError)
  try:
    summary = train.train_and_evaluate(cfg, _WORKDIR.value)
  except (config_lib.ConfigError, sharding.MeshError) as e:
    fail(str(e))
  except (DataError, FileNotFoundError) as e:
    fail(str(e), 1)
  except train.Preempted as e:
    print(str(e), file=sys.stderr)
    sys.exit(128 + e.signum)
  except train.TrainingError as e:
    fail(str(e), 1)
  except OSError as e:  # a full disk, a read-only or vanished workdir: name the file
    fail(f'{type(e).__name__}: {e}; the checkpoints already written are kept', 1)
  workdir = os.path.abspath(_WORKDIR.value)
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_index() != 0:
    return
  print('\nfinal validation (nats/token):')
  for k, v in summary['final'].items():
    print(f'  {k:12s} {v:8.4f}')
  print(f'  {"unigram":12s} {summary["unigram_entropy"]:8.4f}  (validation tokens under the '
        'train unigram distribution)')
  for k, what in summary.get('estimands', {}).items():
    if k in summary['final']:
      print(f'  {k}: {what}')
  print(f'trained {summary["D"]:,} tokens ({summary["epochs"]:.2f} epochs) in '
        f'{summary["wall_time_s"]:.0f} s; N_total={summary["N_total"]:,}')
  print(f'outputs: {workdir}')


def _eval(cfg, data_error):
  from dlm_jax import evaluate  # pylint: disable=g-import-not-at-top
  from dlm_jax import train  # pylint: disable=g-import-not-at-top
  try:
    res = evaluate.run(cfg, _WORKDIR.value)
  except (data_error, FileNotFoundError, train.TrainingError) as e:
    fail(str(e), 1)
  print(evaluate.format_table(res))
  print(f'wrote {os.path.join(os.path.abspath(_WORKDIR.value), "eval", cfg.eval.name + ".json")}')


def _sample(cfg, data_error):
  from dlm_jax import sample  # pylint: disable=g-import-not-at-top
  from dlm_jax import train  # pylint: disable=g-import-not-at-top
  try:
    rows, summary = sample.run(cfg, _WORKDIR.value)
  except sample.SampleError as e:
    fail(str(e))
  except (data_error, FileNotFoundError, train.TrainingError) as e:
    fail(str(e), 1)
  print(sample.format_summary(summary))
  print(f'wrote {len(rows)} samples to '
        f'{os.path.join(os.path.abspath(_WORKDIR.value), "samples.jsonl")}')


if __name__ == '__main__':
  main()
