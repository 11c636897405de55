"""Trackers (train.trackers, run/trackers.py): every metrics.jsonl row, every validation row and the
full resolved config reach each tracker; a resumed run continues the same W&B run; an unknown or
uninstalled tracker is refused before any work. The files are read back with their own formats
(TFRecord event files, W&B's offline run log), not through the writers that wrote them."""
import glob
import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from dlm_jax import config as config_lib
from dlm_jax.errors import ConfigError
from dlm_jax.run import trackers

CONFIG = '''import sys
sys.path.insert(0, {tests!r})
from conftest import tiny_config
def get_config():
  c = tiny_config('dual')
  c.sample.num_samples = 0
  c.data.tokenizer = 'byte'
  c.train.lr_schedule = 'constant'  # so a rerun may extend train.num_steps
  c.train.eval_every = 4
  return c
'''


def _train(tmp_path, steps, trackers, env=None, ok=True):
  cfg = tmp_path / 'cfg.py'
  cfg.write_text(CONFIG.format(tests=os.path.join(ROOT, 'tests')))
  run = tmp_path / 'run'
  r = subprocess.run([sys.executable, '-m', 'dlm_jax.main', '--config', str(cfg), '--workdir',
                      str(run), f'--config.train.num_steps={steps}',
                      f'--config.train.trackers={trackers}'], capture_output=True, text=True,
                     env=dict(os.environ, PYTHONPATH=ROOT, **(env or {})), timeout=600)
  assert (r.returncode == 0) == ok, r.stderr[-3000:]
  return run, r


def _tfrecords(file):
  """The records of a TFRecord file (length, its CRC, data, its CRC)."""
  data, pos = open(file, 'rb').read(), 0
  while pos < len(data):
    (n,) = struct.unpack('<Q', data[pos:pos + 8])
    yield data[pos + 12:pos + 12 + n]
    pos += 12 + n + 4


def _events(directory):
  """{tag: {step: value}} of the scalar and text summaries of a directory's event files (both
  tensorboardX's simple values and TF2's tensors)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  out = {}
  for file in glob.glob(os.path.join(directory, 'events.out.tfevents.*')):
    for rec in _tfrecords(file):
      e = event_pb2.Event()
      e.ParseFromString(rec)
      for v in e.summary.value:
        if v.HasField('tensor'):
          t = v.tensor
          if t.string_val:
            value = t.string_val[0].decode()
          elif t.tensor_content:
            value = float(np.frombuffer(t.tensor_content, {1: np.float32, 2: np.float64}[t.dtype])[0])
          else:  # a value in float_val / double_val, or none (a plugin's metadata, e.g. hparams)
            values = list(t.float_val) or list(t.double_val)
            value = float(values[0]) if values else None
        else:
          value = v.simple_value
        out.setdefault(v.tag, {})[e.step] = value
  return out


def _metrics(run):
  return [json.loads(l) for l in open(run / 'metrics.jsonl')]


def _check_rows(scalars, run):
  """Every number of every metrics.jsonl row and every validation row, at its step."""
  rows = _metrics(run)
  assert len(rows) >= 4
  for row in rows:
    for k, v in row.items():
      if k != 'step':
        assert scalars[k][row['step']] == pytest.approx(v, rel=1e-6), (k, row['step'])
  val = json.load(open(run / 'eval' / 'validation.json'))
  assert val
  for res in val:
    for k, v in res.items():
      if k != 'step' and isinstance(v, float):
        assert scalars[f'val/{k}'][res['step']] == pytest.approx(v, rel=1e-6), k


def test_tensorboard_gets_every_row_and_the_resolved_config(tmp_path):
  run, _ = _train(tmp_path, 4, 'tensorboard')
  ev = _events(run / 'tb')
  _check_rows(ev, run)
  text = ev['config/text_summary'][0]
  assert json.loads(text.strip('`\n')) == json.load(open(run / 'config.json'))


def test_no_tracker_writes_only_metrics_jsonl(tmp_path):
  run, _ = _train(tmp_path, 2, '')
  assert len(_metrics(run)) == 2
  assert not any(os.path.exists(run / d) for d in ('tb', 'wandb', 'clu', 'trackers.json'))


@pytest.mark.parametrize('spec,message', [
    ('tensorboard,mlflow', "'mlflow' is not one of tensorboard, wandb, clu"),
    ('wandb,wandb', "'wandb,wandb' names a tracker twice"),
])
def test_a_bad_tracker_is_refused_before_any_work(tmp_path, spec, message):
  run, r = _train(tmp_path, 2, spec, ok=False)
  assert r.returncode == 2
  assert r.stderr.strip().splitlines() == [f'error: config.train.trackers: {message}']
  assert not os.path.exists(run)


def test_a_tracker_whose_package_is_missing_names_it_and_the_extra(monkeypatch):
  monkeypatch.setattr(trackers.WandB, 'needs', ('wandb_is_not_installed_here',))
  cfg = config_lib.base()
  cfg.train.trackers = 'tensorboard,wandb'
  with pytest.raises(ConfigError, match=r'config\.train\.trackers: wandb needs the '
                     r'wandb_is_not_installed_here package\(s\) \(pip install -e "\.\[trackers\]"\)'):
    trackers.check_config(cfg)  # the run checks it (run/setup.py) before any work
  config_lib.validate(cfg)  # the config alone is valid: evaluating or sampling opens no tracker


def _wandb_records(file):
  """The records of a W&B offline run file (a LevelDB-style log after a 7-byte header)."""
  from wandb.proto import wandb_internal_pb2 as pb  # pylint: disable=g-import-not-at-top
  data = open(file, 'rb').read()
  assert data[:4] == b':W&B', file
  pos, block, buf = 7, 32768, b''
  while pos + 7 <= len(data):
    left = block - pos % block
    _, n, kind = struct.unpack('<IHB', data[pos:pos + 7]) if left >= 7 else (0, 0, 0)
    if n == 0 and kind == 0:  # block trailer padding
      pos += left
      continue
    buf, pos = buf + data[pos + 7:pos + 7 + n], pos + 7 + n
    if kind in (1, 4):  # a full record, or the last fragment of one
      r = pb.Record()
      r.ParseFromString(buf)
      buf = b''
      yield r


def _key(item):
  return item.key or '/'.join(item.nested_key)


@pytest.mark.extras
def test_wandb_offline_and_clu_get_every_row_and_a_resume_continues_the_same_run(tmp_path):
  pytest.importorskip('wandb', reason='needs the [trackers] extra')
  pytest.importorskip('clu', reason='needs the [trackers] extra')
  pytest.importorskip('tensorflow', reason='needs the [trackers] extra (clu writes TF events)')
  env = dict(WANDB_MODE='offline', WANDB_SILENT='true')
  run, _ = _train(tmp_path, 4, 'tensorboard,wandb,clu', env)
  first = json.load(open(run / 'trackers.json'))['wandb']['id']
  run, _ = _train(tmp_path, 6, 'wandb,clu', env)  # resumed from step 4, to step 6
  assert json.load(open(run / 'trackers.json'))['wandb'] == dict(
      id=first, project='dlm_jax', entity='', url='')
  files = sorted(glob.glob(str(run / 'wandb' / 'offline-run-*' / f'run-{first}.wandb')))
  assert len(files) == 2, files  # one W&B run id, logged by two processes

  history, config, summary = {}, {}, {}
  for f in files:
    for r in _wandb_records(f):
      kind = r.WhichOneof('record_type')
      if kind == 'history':
        items = {_key(i): json.loads(i.value_json) for i in r.history.item}
        step = items.get('_step', r.history.step.num)
        history.setdefault(step, {}).update(items)
      elif kind == 'run':
        config.update({_key(i): json.loads(i.value_json) for i in r.run.config.update})
      elif kind == 'summary':
        summary.update({_key(i): json.loads(i.value_json) for i in r.summary.update})
  scalars = {}
  for step, items in history.items():
    for k, v in items.items():
      scalars.setdefault(k, {})[step] = v
  _check_rows(scalars, run)
  assert [r['step'] for r in _metrics(run)] == [1, 2, 3, 4, 5, 6]
  resolved = json.load(open(run / 'config.json'))
  assert {k: v for k, v in config.items() if k != '_wandb'} == resolved
  assert summary['N_total'] == json.load(open(run / 'summary.json'))['N_total']
  assert summary['status'] == 'done'

  clu = _events(run / 'clu')
  _check_rows(clu, run)
  assert any(k.startswith('_hparams_') for k in clu), sorted(clu)[:5]


@pytest.mark.extras
def test_wandb_that_cannot_start_is_one_line_before_training(tmp_path):
  """W&B online without credentials (no network here either): one line naming the tracker and
  the two ways out, exit 2, before the first step; what was written is kept."""
  pytest.importorskip('wandb', reason='needs the [trackers] extra')
  env = {k: v for k, v in os.environ.items() if not k.startswith('WANDB_')}
  cfg = tmp_path / 'cfg.py'
  cfg.write_text(CONFIG.format(tests=os.path.join(ROOT, 'tests')))
  r = subprocess.run([sys.executable, '-m', 'dlm_jax.main', '--config', str(cfg), '--workdir',
                      str(tmp_path / 'run'), '--config.train.trackers=tensorboard,wandb'],
                     capture_output=True, text=True, timeout=300,
                     env=dict(env, PYTHONPATH=ROOT, WANDB_API_KEY='', HOME=str(tmp_path)))
  assert r.returncode == 2, r.stderr[-2000:]
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith('error: config.train.trackers: wandb could not start (')
  assert last.endswith('; log in (wandb login) or set WANDB_MODE=offline')
  assert open(tmp_path / 'run' / 'metrics.jsonl').read() == ''  # no step was trained


@pytest.mark.extras
def test_tensorboard_writing_never_imports_torch(tmp_path):
  """tensorboardX imports torch whenever it is installed (seconds of every run's start);
  trackers._tensorboardx keeps it out. Meaningful only where torch is installed: extras."""
  pytest.importorskip('torch', reason='needs torch installed (the [hf] / [lmeval] extras)')
  code = ('import sys\nfrom dlm_jax.run import trackers\n'
          f't = trackers.TensorBoard({str(tmp_path)!r}, {{"a": 1}}, "n", {{}})\n'
          't.scalars(1, {"loss": 2.0})\nt.close()\n'
          'assert "torch" not in sys.modules, "torch was imported"\n'
          'import torch\nprint(torch.ones(2).sum().item())\n')
  r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                     env=dict(os.environ, PYTHONPATH=ROOT), check=False)
  assert r.returncode == 0 and r.stdout.strip() == '2.0', r.stderr[-2000:]
  assert glob.glob(str(tmp_path / 'tb' / 'events.out.tfevents.*'))
