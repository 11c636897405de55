r"""Benchmarks (no test asserts a time; results go to BENCHMARKS.md).

  python -m dlm_jax.bench train --size small --seq 512 --batch 8 --objective ar|mdm|dual
      [--dtype bf16] [--peak_tflops P] [--steps 20] [--config.KEY=V ...]

  python -m dlm_jax.bench step --config configs/default.py [--config.mesh.fsdp=4] [--steps 20]

  python -m dlm_jax.bench eval --config configs/default.py [--rows 32] [--estimators ar,nelbo,pll]

  python -m dlm_jax.bench sample --runs ar=RUN_A,mdm=RUN_B --scorer RUN_S --length 128 \
      --sample_steps 16,64,256,L [--num 8] [--strategy ancestral] [--out F]

  python -m dlm_jax.bench fit --law chinchilla|isoflop|data_constrained|power \
      (--table RUNS.csv | --simulate 240) [--bootstrap 200] [--out F]

`train`: `step` for a named size / length / batch / objective / dtype over configs/default.py,
with MFU against --peak_tflops, else the vendor peak on GPU/TPU, else an in-process matmul of the
run's dtype (the achievable peak on CPU), peak device memory where the backend reports it, and a
table. `step`: the compiled train step of the configured run on its mesh, fed real batches from the
run's pipeline; reports compile time, median step time, tokens/s, model FLOP/s and, when the
device's peak is known, MFU; compile time is ahead-of-time (lower + compile, no execution), and
xla_flops_per_token is XLA's cost analysis (it counts a scanned layer once: compare with
flops_per_token only for scan_layers=False). `eval`: sequences (validation windows of data.seq_len tokens) per
second of each likelihood estimator at eval.chunk rows per pass, after a warm-up call that
compiles. `sample`: unconditional samples of --length tokens from trained runs (each mode from
its run; a dual run may serve both), AR with the KV cache (and without, for reference) and MDM at
each T; reports tokens/s after a compiling call, model passes, generative perplexity under the
--scorer run and unigram entropy. `fit`: wall time of one fit of the law (with profile intervals
for chinchilla) and of --bootstrap resamples, on a runs table or a simulated one
(study/scaling.simulated_runs). Each prints JSON lines (append them to a results file with --out).
The config defaults to the shipped `default` (--config takes a file or a shipped name); the
measurements themselves: dlm_jax/study/perf.py.
"""
import json
import sys

import jax
from absl import flags
from ml_collections import config_flags

from dlm_jax import cli
from dlm_jax import config as config_lib
from dlm_jax import errors
from dlm_jax.study import perf
from dlm_jax.study import scaling

COMMANDS = ('train', 'step', 'eval', 'sample', 'fit')
FLAGS = flags.FlagValues()  # this command's own: main.py's --config lives in absl's global set
_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file or shipped config name '
                                          '(default: the shipped `default`).', flag_values=FLAGS)
_STEPS = flags.DEFINE_integer('steps', 20, 'Timed steps (after 2 warm-up steps).',
                              flag_values=FLAGS)
_OUT = flags.DEFINE_string('out', '', 'Append the JSON result to this file.', flag_values=FLAGS)
_ROWS = flags.DEFINE_integer('rows', 32, 'eval: validation windows scored per estimator.',
                             flag_values=FLAGS)
_EST = flags.DEFINE_string('estimators', 'ar,nelbo,chain,pll,pll_word_l2r,pll_mix,fused',
                           'eval: comma list of likelihood estimators.', flag_values=FLAGS)
_RUNS = flags.DEFINE_string('runs', '', 'sample: mode=run_dir pairs, e.g. ar=runs/a,mdm=runs/b.',
                            flag_values=FLAGS)
_SCORER = flags.DEFINE_string('scorer', '', 'sample: AR-capable run for generative perplexity.',
                              flag_values=FLAGS)
_LENGTH = flags.DEFINE_integer('length', 128, 'sample: tokens per sample.', flag_values=FLAGS)
_SSTEPS = flags.DEFINE_string('sample_steps', '16,64,256,L', 'sample: MDM T values (L: length).',
                              flag_values=FLAGS)
_NUM = flags.DEFINE_integer('num', 8, 'sample: samples per setting (one batch).',
                            flag_values=FLAGS)
_STRATEGY = flags.DEFINE_string('strategy', 'ancestral', 'sample: MDM strategy.',
                                flag_values=FLAGS)
_NOCACHE = flags.DEFINE_bool('ar_nocache', True, 'sample: also time AR without the KV cache.',
                             flag_values=FLAGS)
_SIZE = flags.DEFINE_string('size', '', 'train: a named size (python -m dlm_jax.flops).',
                            flag_values=FLAGS)
_SEQ = flags.DEFINE_integer('seq', 0, 'train: sequence length (0: the config\'s).',
                            flag_values=FLAGS)
_BATCH = flags.DEFINE_integer('batch', 0, 'train: global batch (0: the config\'s).',
                              flag_values=FLAGS)
_OBJ = flags.DEFINE_string('objective', '', 'train: ar | mdm | dual | prefix (default: config).',
                           flag_values=FLAGS)
_DTYPE = flags.DEFINE_string('dtype', '', 'train: compute dtype f32 | bf16 (params stay f32).',
                             flag_values=FLAGS)
_PEAK = flags.DEFINE_float('peak_tflops', 0.0, 'train: peak TFLOP/s per device for MFU; 0: the '
                           'vendor figure on GPU/TPU, else an in-process matmul of the dtype.',
                           flag_values=FLAGS)
_LAW = flags.DEFINE_string('law', 'chinchilla', 'fit: the law (study/scaling.LAWS).',
                           flag_values=FLAGS)
_TABLE = flags.DEFINE_string('table', '', 'fit: a runs table (python -m dlm_jax.sweep collect).',
                             flag_values=FLAGS)
_SIMULATE = flags.DEFINE_integer('simulate', 0, 'fit: a simulated table of this many runs.',
                                 flag_values=FLAGS)
_BOOT = flags.DEFINE_integer('bootstrap', 200, 'fit: bootstrap resamples to time.',
                             flag_values=FLAGS)


def parse(argv):
  """The subcommand, with FLAGS parsed; the config defaults to the shipped `default`, and a
  missing file, a misspelled --config.KEY or an unknown flag is one ConfigError line."""
  argv = list(argv)
  if not any(a in ('--config', '-config') or a.startswith(('--config=', '-config='))
             for a in argv[1:]):
    argv.insert(1, '--config=default')
  rest = cli.absl_parse(config_lib.check_cli(argv), FLAGS)
  if len(rest) != 2 or rest[1] not in COMMANDS:
    raise errors.UsageError(f'python -m dlm_jax.bench: name one command of {", ".join(COMMANDS)}'
                            f'{", not " + " ".join(rest[1:]) if len(rest) > 1 else ""} '
                            '(--help for the flags)')
  return rest[1]


def emit(row):
  """One result: a JSON line on stdout, appended to --out if given."""
  line = json.dumps(row)
  print(line, flush=True)
  if _OUT.value:
    with open(_OUT.value, 'a', encoding='utf-8') as f:
      f.write(line + '\n')


def sample_runs(spec):
  runs = [tuple(p.split('=', 1)) for p in spec.split(',') if p.strip()]
  if not runs or any(len(r) != 2 or r[0] not in ('ar', 'mdm') for r in runs):
    raise errors.UsageError('--runs takes mode=run_dir pairs (modes ar, mdm)')
  return runs


@errors.cli
def main(argv=None):
  argv = sys.argv if argv is None else argv
  if cli.absl_help(argv, __doc__, FLAGS, sys.modules[__name__]):
    return
  cmd = parse(argv)
  if cmd == 'fit':
    runs = (scaling.simulated_runs(_SIMULATE.value) if _SIMULATE.value
            else scaling.read_runs(_TABLE.value))
    emit(perf.bench_fit(_LAW.value, runs, _BOOT.value))
  elif cmd == 'sample':
    perf.bench_sample(sample_runs(_RUNS.value), _SCORER.value, _LENGTH.value,
                      [x.strip() for x in _SSTEPS.value.split(',') if x.strip()], _NUM.value,
                      _STRATEGY.value, _NOCACHE.value, on_row=emit)
  elif cmd == 'train':
    cfg = config_lib.validate(perf.train_config(_CONFIG.value, _SIZE.value, _SEQ.value,
                                                _BATCH.value, _OBJ.value, _DTYPE.value))
    res = perf.bench_step(cfg, _STEPS.value, _PEAK.value,
                          measure_peak=perf.peak_flops(jax.devices()[0]) is None)
    print(perf.format_train(res))
    emit(res)
  elif cmd == 'step':
    emit(perf.bench_step(config_lib.validate(_CONFIG.value), _STEPS.value))
  else:
    for res in perf.bench_eval(config_lib.validate(_CONFIG.value), _ROWS.value,
                               [x.strip() for x in _EST.value.split(',') if x.strip()]):
      emit(res)


if __name__ == '__main__':
  main()
