"""The run directory: the contract between training and analysis. Every file a run writes and
every reader of them lives here:

  config.json        the fully resolved config          metrics.jsonl   one object per logged step
  tb/                TensorBoard events                  eval/*.json     validation, --mode eval
  checkpoints/       orbax (run/checkpoint.py)           samples.jsonl   decoded samples
  summary.json       the end of a run: sizes, tokens, FLOPs, final and best metrics, estimands,
                     wall time, status (done | failed: ... | preempted at step N | interrupted)
  .lock              who holds the directory: one writer at a time (`lock`)
  window.json        the metrics of a logging window cut by a checkpoint (so a resumed run's
                     next row averages the same steps as an uninterrupted run's)
  trackers.json      the ids of the run's tracker runs (W&B), so a resumed run continues them;
                     wandb/, clu/: those trackers' own files (run/trackers.py)
"""
import contextlib
import datetime
import fcntl
import json
import os
import socket
import sys

import jax

from dlm_jax import config as config_lib
from dlm_jax.core import model as model_lib
from dlm_jax.core import objectives
from dlm_jax.data import tokenizers
from dlm_jax.errors import BusyError, ConfigError, DataError, TrainingError
from dlm_jax.run import checkpoint
from dlm_jax.run import resume
from dlm_jax.run import trackers
from dlm_jax.run import validate


CONFIG, METRICS, SUMMARY, SAMPLES = 'config.json', 'metrics.jsonl', 'summary.json', 'samples.jsonl'
WINDOW, TRACKERS = 'window.json', 'trackers.json'


def path(workdir, *parts):
  """A file of the run directory: path(wd, SUMMARY), path(wd, 'eval', 'validation.json')."""
  return os.path.join(workdir, *parts)


def atomic_json(file, obj):
  """Writes a JSON file by rename (never half a file), from process 0 only."""
  if jax.process_index() != 0:
    return
  tmp = file + '.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    json.dump(obj, f, indent=2, sort_keys=True)
  os.replace(tmp, file)


LOCK = '.lock'


@contextlib.contextmanager
def lock(workdir, mode):
  """Holds an exclusive OS lock (flock) on the run directory for the whole run: a second
  train / eval / sample on the same workdir is refused at once, naming the holder. The kernel
  releases the lock when the holder dies, however it dies. Multi-process runs: process 0 holds
  it. flock is not reliable on every network filesystem (older NFS): there, keep one writer by
  hand."""
  if jax.process_index() != 0:
    yield
    return
  created = False
  if mode == 'train':
    created = not os.path.exists(workdir)
    os.makedirs(workdir, exist_ok=True)
  elif not os.path.isdir(workdir):
    yield  # nothing to hold: the mode reports the missing run
    return
  file = path(workdir, LOCK)
  try:
    fd = os.open(file, os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as e:  # checked before any work, so no result is computed and then lost
    raise ConfigError(f'--workdir {workdir}: cannot write {file} ({e.strerror or e})') from None
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      holder = os.pread(fd, 512, 0).decode('utf-8', 'replace').strip() or 'another process'
      raise BusyError(f'{workdir} is in use ({holder}); wait for it to end or use another '
                      '--workdir') from None
    os.ftruncate(fd, 0)
    now = datetime.datetime.now().isoformat(timespec='seconds')
    os.pwrite(fd, f'{mode} by pid {os.getpid()} on {socket.gethostname()} since {now}'.encode(), 0)
    yield
  finally:
    if created and os.listdir(workdir) == [LOCK]:  # failed before writing: leave nothing behind
      os.remove(file)
      os.rmdir(workdir)
    os.close(fd)  # releases the lock; the file stays (removing it would race a new holder)


def check_writable(*files):
  """Before any work: each file (or, ending in '/', directory) of the results can be written, so
  nothing is computed and then lost to a read-only or mistyped path."""
  for f in files:
    d = f.rstrip('/') if f.endswith('/') else os.path.dirname(f)
    try:
      os.makedirs(d, exist_ok=True)
      if not f.endswith('/') and os.path.lexists(f):
        if os.path.isdir(f):
          raise IsADirectoryError(21, 'Is a directory', f)
        open(f, 'a', encoding='utf-8').close()  # appends nothing; fails where writing would
      probe = os.path.join(d, f'.write_probe.{os.getpid()}')
      open(probe, 'w', encoding='utf-8').close()
      os.remove(probe)
    except OSError as e:
      raise TrainingError(f'cannot write {e.filename or f} ({e.strerror or e}); nothing was '
                          'computed') from None


def read_json(file, default=None, kind=None):
  """A run file; a torn or non-UTF-8 one (a process killed mid-write outside atomic_json, a
  disk error) or one of the wrong kind (dict / list) is a DataError naming the file."""
  if default is not None and not os.path.exists(file):
    return default
  try:
    with open(file, encoding='utf-8') as f:
      obj = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise DataError(f'{file}: damaged ({type(e).__name__}: {getattr(e, "msg", None) or e.reason}'
                    '); restore it or remove the run') from None
  kind = kind or (type(default) if default is not None else None)
  if kind is not None and not isinstance(obj, kind):
    raise DataError(f'{file}: damaged (a JSON {type(obj).__name__}, expected a {kind.__name__}); '
                    'restore it or remove the run')
  return obj


class MetricWriter:
  """metrics.jsonl (one object per logged step) and the run's trackers (`train.trackers`:
  TensorBoard, W&B, clu), from process 0 only."""

  def __init__(self, workdir, config: dict):
    self.active = jax.process_index() == 0
    if self.active:
      self.f = open(path(workdir, METRICS), 'a', encoding='utf-8')
      ids = read_json(path(workdir, TRACKERS), default={}, kind=dict)
      self.trackers = trackers.open_trackers(workdir, config, ids)
      if ids:
        atomic_json(path(workdir, TRACKERS), ids)

  def write(self, step, values, prefix='', jsonl=True):
    if not self.active:
      return
    if jsonl:
      row = dict(step=int(step), **{prefix + k: v for k, v in values.items()})
      self.f.write(json.dumps(row) + '\n')
      self.f.flush()
    for t in self.trackers:
      t.scalars(int(step), {prefix + k: v for k, v in values.items()})

  def close(self, summary=None):
    """Closes every writer (the trackers get the run's summary first, when there is one)."""
    if not self.active:
      return
    self.active = False
    self.f.close()
    for t in self.trackers:
      if summary is not None:
        t.summary(summary)
      t.close()


def read_metrics(workdir):
  """The rows of metrics.jsonl. A torn last line (a killed process) is skipped quietly; any
  other line that is not a JSON object (or not UTF-8) is skipped with a warning naming the file
  and line, so every readable row is kept."""
  rows = []
  file = path(workdir, METRICS)
  if not os.path.exists(file):
    return rows
  with open(file, 'rb') as f:
    lines = f.read().split(b'\n')
  last = max((i for i, l in enumerate(lines) if l.strip()), default=-1)
  for i, raw in enumerate(lines):
    if not raw.strip():
      continue
    try:
      row = json.loads(raw.decode('utf-8'))
      if not isinstance(row, dict):
        raise ValueError(f'a JSON {type(row).__name__}, not an object')
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
      if i != last or raw.rstrip().endswith(b'}'):
        print(f'warning: {file}:{i + 1}: skipped a damaged row ({type(e).__name__}: '
              f'{str(e)[:80]})', file=sys.stderr)
      continue
    rows.append(row)
  return rows


def save_window(workdir, step, window, last_logged, keep=8):
  """Records the not-yet-logged metrics of the window at checkpoint `step` (the newest `keep`
  checkpoints' windows are kept)."""
  if jax.process_index() != 0:
    return
  saved = read_json(path(workdir, WINDOW), default={})
  saved[str(step)] = dict(last_logged=int(last_logged),
                          window=[{k: float(v) for k, v in m.items()} for m in window])
  atomic_json(path(workdir, WINDOW), {k: saved[k] for k in sorted(saved, key=int)[-keep:]})


def read_window(workdir, step):
  """(window, last_logged) saved at checkpoint `step`, or None."""
  saved = read_json(path(workdir, WINDOW), default={}).get(str(step))
  return (saved['window'], saved['last_logged']) if saved else None


def wall_time_before(workdir):
  """Seconds the earlier processes of a resumed run spent, as of the last metrics row kept."""
  rows = [x for x in read_metrics(workdir) if 'wall_time_s' in x]
  return float(rows[-1]['wall_time_s']) if rows else 0.0


def truncate_metrics(workdir, step):
  """On resume, drop rows logged after the restored checkpoint so each step appears once."""
  file = path(workdir, METRICS)
  if jax.process_index() != 0 or not os.path.exists(file):
    return
  keep = [json.dumps(r) + '\n' for r in read_metrics(workdir) if r.get('step', step + 1) <= step]
  with open(file + '.tmp', 'w', encoding='utf-8') as f:
    f.writelines(keep)
  os.replace(file + '.tmp', file)


def read_validation(workdir, up_to=None):
  """eval/validation.json: one dict per validation (step, tokens, metrics)."""
  file = path(workdir, 'eval', 'validation.json')
  rows = read_json(file, default=[])
  if not all(isinstance(r, dict) and isinstance(r.get('step'), int) for r in rows):
    raise DataError(f'{file}: damaged (an entry without a step); restore it or remove the run')
  return [r for r in rows if up_to is None or r['step'] <= up_to]


def write_validation(workdir, history):
  atomic_json(path(workdir, 'eval', 'validation.json'), history)


def validation_curve(workdir, key):
  """(tokens, values) of a run's validation metric `key`."""
  rows = [r for r in read_validation(workdir) if key in r]
  return [r['tokens'] for r in rows], [r[key] for r in rows]


def read_summary(workdir):
  return read_json(path(workdir, SUMMARY), kind=dict)


def status_of(workdir) -> str:
  """done | failed: ... | partial | missing (from summary.json and checkpoints)."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    return f'failed: {workdir} exists and is not a directory'
  if os.path.exists(path(workdir, SUMMARY)):
    try:
      return read_summary(workdir).get('status', 'unknown')
    except DataError as e:
      return f'failed: {e}'
  if os.path.isdir(path(workdir, 'checkpoints')):
    return 'partial'
  return 'missing'


def is_done(workdir) -> bool:
  return status_of(workdir) == 'done'


def check_workdir(workdir, cfg):
  """Refuses a workdir whose config.json belongs to a different run (nothing is written)."""
  file = path(workdir, CONFIG)
  if not os.path.exists(file):
    ckpt = path(workdir, 'checkpoints')
    if os.path.isdir(ckpt) and os.listdir(ckpt):
      raise TrainingError(f'{workdir} holds checkpoints but no config.json; refusing to mix runs')
    return False
  diffs = resume.diff_for_resume(read_json(file, kind=dict), cfg.to_dict())
  if diffs:
    raise TrainingError(f'{workdir} holds a different run (config.json differs: '
                        f'{"; ".join(diffs[:5])}); use a new --workdir')
  return True


COUNTS = ('D: the non-PAD target tokens of the rows trained on (a task prompt included, as in U); '
          'U: the non-PAD tokens of the training rows; epochs = D / U; D_slots: the batch '
          'positions computed on (steps x batch_size x seq_len, PAD included); '
          'C = flops_per_token x D_slots, the compute spent')


def make_summary(setup, step, history, final, wall, status, trained_tokens):
  """trained_tokens: D, the non-PAD tokens of the first `step` batches (pipeline.TrainedTokens)."""
  cfg = setup.cfg
  D, D_slots = int(trained_tokens), step * cfg.train.batch_size * cfg.data.seq_len
  U = int(setup.data_info['unique_tokens'])
  metric_keys = [k for k in final if k.endswith(('nll', 'nelbo', 'ppl', 'bpb', 'exact_match'))]
  best = {k: (max if k.endswith('exact_match') else min)(h[k] for h in history if k in h)
          for k in metric_keys}
  return dict(
      objective=cfg.objective,
      ratio=float(1 - objectives.mdm_fraction(cfg)),  # the AR weight, as in the dual-LM sweep
      mdm_fraction=float(objectives.mdm_fraction(cfg)),
      size=cfg.model.size or f'd{cfg.model.d_model}_l{cfg.model.num_layers}',
      N_total=setup.counts['N_total'], N_nonembed=setup.counts['N_nonembed'],
      flops_per_token=setup.counts['flops_per_token'],
      D=D, D_slots=D_slots, U=U, epochs=D / U, C=setup.counts['flops_per_token'] * D_slots,
      counts=COUNTS, steps=step,
      final={k: final[k] for k in metric_keys}, best=best,
      unigram_entropy=setup.data_info['unigram_entropy'],
      estimands=validate.estimands(cfg),
      wall_time_s=wall, status=status)


def load_config(run_dir, overrides=None):
  """A run's config from its config.json, with dotted overrides ({'eval.nelbo_samples': 64})."""
  file = path(run_dir, CONFIG)
  if not os.path.exists(file):
    raise TrainingError(f'{run_dir}: not a run directory (no config.json)')
  cfg = resume.from_run(read_json(file, kind=dict))
  cfg.update_from_flattened_dict(dict(overrides or {}))
  return config_lib.validate(cfg, training=False)


def load_run(run_dir, overrides=None):
  """(cfg, tokenizer, model, params, step) of a trained run, from its config.json and latest
  checkpoint, without loading its data: what a sampler, a notebook or lm-eval needs.
  overrides: {dotted key: value} applied to the run's config (e.g. {'eval.nelbo_samples': 64})."""
  cfg = load_config(run_dir, overrides)
  tok = tokenizers.get_tokenizer(cfg.data.tokenizer)
  params, step = checkpoint.load_params(run_dir, cfg, what=run_dir)
  return cfg, tok, model_lib.Transformer(cfg.model), params, step


def format_summary(summary, workdir):
  """The end of a run for people: final validation metrics, what each estimates, tokens, time."""
  lines = ['', 'final validation (nats/token):']
  lines += [f'  {k:12s} {v:8.4f}' for k, v in summary['final'].items()]
  lines.append(f'  {"unigram":12s} {summary["unigram_entropy"]:8.4f}  (validation tokens under '
               'the train unigram distribution)')
  lines += [f'  {k}: {what}' for k, what in summary.get('estimands', {}).items()
            if k in summary['final']]
  lines.append(f'trained {summary["D"]:,} tokens ({summary["epochs"]:.2f} epochs) in '
               f'{summary["wall_time_s"]:.0f} s; N_total={summary["N_total"]:,}')
  lines.append(f'outputs: {os.path.abspath(workdir)}')
  return '\n'.join(lines)
