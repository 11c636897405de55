"""Experiment trackers: where a run's metrics go besides metrics.jsonl (`train.trackers`, a comma
list of TRACKERS' names). Each tracker receives the full resolved config once, every logged row
(training rows and `val/` validation rows, at their step) and the final summary:

  tensorboard  tensorboardX event files in tb/; the config as a text summary (`config`)
  wandb        Weights & Biases (`train.wandb_project`, `train.wandb_entity`); the run's id is kept
               in the run directory's trackers.json so a resumed run continues the same W&B run. WANDB_MODE=offline
               writes to wandb/ for a later `wandb sync`
  clu          clu.metric_writers as md4 and nanodo use them: TensorFlow event files in clu/ and
               absl log lines; the config as hparams

wandb and clu are optional packages (the [trackers] extra); their modules are loaded only when a
run asks for them, and check_config (run/setup.py, before any work) refuses a tracker whose
package is missing. Only process 0 writes. A tracker is a class here with its `name` and the
modules it `needs`, filed in TRACKERS by @registered.
"""
import importlib
import importlib.util
import json
import math
import os
import sys
import uuid

import jax

from dlm_jax.core.registry import need, registered
from dlm_jax.errors import ConfigError

TRACKERS = {}  # config.train.trackers: name -> tracker class (its `needs`: the [trackers] extra)

def run_name(workdir):
  """The name a run goes by outside its directory (trackers, lm-eval's output folder): its
  folder's name."""
  return os.path.basename(os.path.abspath(str(workdir)))


def _tensorboardx():
  """tensorboardX, loaded when a run writes TensorBoard files and without torch: its writer
  imports torch whenever torch is installed (3.5 s of every run's start on 2 cores), only to
  accept torch tensors, which dlm_jax never passes. A torch already imported is left alone."""
  if 'torch' in sys.modules or 'tensorboardX' in sys.modules:
    return importlib.import_module('tensorboardX')
  sys.modules['torch'] = None  # `import torch` raises ImportError, which tensorboardX handles
  try:
    return importlib.import_module('tensorboardX')
  finally:
    del sys.modules['torch']


def _flat(d, prefix=''):
  """{'train': {'lr': 3e-3}} -> {'train.lr': 3e-3}: hparams writers take one level."""
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f'{prefix}{k}.'))
    else:
      out[prefix + k] = v
  return out


def _finite(values):
  return {k: float(v) for k, v in values.items()
          if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


@registered(TRACKERS)
class TensorBoard:
  """tensorboardX event files in <workdir>/tb."""
  name, needs = 'tensorboard', ('tensorboardX',)

  def __init__(self, workdir, config, name, ids):
    del name, ids
    self.w = _tensorboardx().SummaryWriter(os.path.join(workdir, 'tb'))
    self.w.add_text('config', '```\n' + json.dumps(config, indent=2, sort_keys=True) + '\n```', 0)

  def scalars(self, step, values):
    for k, v in _finite(values).items():
      self.w.add_scalar(k, v, step)
    self.w.flush()

  def summary(self, summary):
    del summary  # the summary's numbers are the last rows' already

  def close(self):
    self.w.close()


@registered(TRACKERS)
class WandB:
  """A Weights & Biases run, resumed by the id recorded in trackers.json (`ids`, updated)."""
  name, needs = 'wandb', ('wandb',)

  def __init__(self, workdir, config, name, ids):
    wandb = importlib.import_module('wandb')  # optional: loaded only when asked for
    run_id = ids.get('wandb', {}).get('id') or uuid.uuid4().hex[:16]
    t = config['train']
    self.run = wandb.init(project=t['wandb_project'], entity=t['wandb_entity'] or None,
                          name=name, id=run_id, resume='allow', dir=workdir, config=config,
                          settings=wandb.Settings(console='off', silent=True))
    ids['wandb'] = dict(id=run_id, project=t['wandb_project'], entity=t['wandb_entity'],
                        url='' if self.run.offline else self.run.url or '')

  def scalars(self, step, values):
    self.run.log(_finite(values), step=step)

  def summary(self, summary):
    self.run.summary.update({k: v for k, v in _flat(summary).items()
                             if isinstance(v, (int, float, str))})

  def close(self):
    self.run.finish()


@registered(TRACKERS)
class Clu:
  """clu's default writer: TensorFlow summaries in <workdir>/clu plus absl log lines."""
  name, needs = 'clu', ('clu', 'tensorflow', 'tensorboard')

  def __init__(self, workdir, config, name, ids):
    del name, ids
    writers = importlib.import_module('clu.metric_writers')  # optional; needs tensorflow
    self.w = writers.create_default_writer(os.path.join(workdir, 'clu'))
    self.w.write_hparams({k: v if isinstance(v, (int, float, bool, str)) else str(v)
                          for k, v in _flat(config).items()})

  def scalars(self, step, values):
    self.w.write_scalars(step, _finite(values))
    self.w.flush()

  def summary(self, summary):
    del summary

  def close(self):
    self.w.close()


def tracker_names(spec: str) -> list[str]:
  return [t.strip() for t in spec.split(',') if t.strip()]


def check_config(cfg):
  """config.train.trackers: registered names, each once, whose packages are installed (checked
  by the run that opens them, not by evaluating or sampling it)."""
  spec = cfg.train.trackers
  names = tracker_names(spec)
  for t in names:
    need(t in TRACKERS, 'train.trackers', f'{t!r} is not one of {", ".join(TRACKERS)}')
    missing = [m for m in TRACKERS[t].needs if importlib.util.find_spec(m) is None]
    need(not missing, 'train.trackers', f'{t} needs the {", ".join(missing)} package(s) '
         '(pip install -e ".[trackers]")')
  need(len(set(names)) == len(names), 'train.trackers', f'{spec!r} names a tracker twice')


def open_trackers(workdir, config: dict, ids: dict):
  """The trackers `config['train']['trackers']` names (none on processes other than 0); `ids`
  (the run's trackers.json) gains what a resumed run needs to continue the same tracker runs."""
  if jax.process_index() != 0:
    return []
  name, opened = run_name(workdir), []
  for t in tracker_names(config['train']['trackers']):
    try:
      opened.append(TRACKERS[t](workdir, config, name, ids))
    except Exception as e:  # pylint: disable=broad-except  (e.g. wandb online, not logged in)
      for o in opened:
        o.close()
      msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      raise ConfigError(f'config.train.trackers: {t} could not start ({msg})'
                        + ('; log in (wandb login) or set WANDB_MODE=offline' if t == 'wandb'
                           else '')) from None
  return opened
