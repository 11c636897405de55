"""The config schema: base() assembles each section's defaults from the module that owns it, and
`validate` asks each owner to check its keys; this module loads config files and checks the CLI.

Every config file in configs/ starts from `base()` (a locked ConfigDict: ml_collections refuses a
misspelled key or a wrong type as the file sets it) and changes values; `validate` then checks that
a config's keys and types are the schema's (also for a config not built from base()) and that every
value is possible. Owners: model (core/model_config.py), diffusion (core/noise.py, its schedules and
time samplers core/schedules.py), objective / dual (core/objectives.py), the optimizer keys of
train (core/optim.py), sample (core/sampling.py), mesh (core/sharding.py), data.tokenizer
(data/tokenizers.py); train.trackers is checked by the run (run/trackers.py); the keys no lower
module reads are written and checked here. Errors are `ConfigError`s whose one-line message names
the key (main.py prints it and exits 2). Imports only core/, data/ and below.
"""
import difflib
import importlib.util
import math

import ml_collections

from dlm_jax import configs as shipped
from dlm_jax.core import model_config
from dlm_jax.core import noise
from dlm_jax.core import objectives
from dlm_jax.core import optim
from dlm_jax.core import sampling
from dlm_jax.core import sharding
from dlm_jax.core.registry import choice, need
from dlm_jax.data import tokenizers
from dlm_jax.errors import ConfigError, SampleError

check_window = model_config.check_window  # model.sliding_window against data.seq_len (hf.py)


def base() -> ml_collections.ConfigDict:
  """Every key a config may set, with defaults suited to a small CPU run."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.init_from = ''             # AR2Diff: start from this run directory's latest params
  c.objective = 'mdm'          # a name in objectives.OBJECTIVES: ar | mdm | dual | prefix
  c.dual = ml_collections.ConfigDict(dict(
      ar_weight='1/2',         # AR share of each batch's sequences, as in the paper: '63/64', '0.75'
      ar_attention='causal',   # causal | prefix: attention (and loss) of the AR share
  ))
  c.model = ml_collections.ConfigDict(model_config.defaults())
  c.data = ml_collections.ConfigDict(dict(
      corpus='embedded',       # embedded | .txt/.jsonl(.xz) file or directory | a directory
                               # written by `python -m dlm_jax.prepare` (array_record shards)
      task='',                 # prompt->target fine-tuning: cloze | dir with train/validation.jsonl
      tokenizer='bpe',         # bpe | gpt2 | byte | path to a HF tokenizers .json
      packing='wrap',          # wrap: documents + EOS concatenated and cut (MDLM/OWT) |
                               # pad: one document per example, padded/truncated (LM1B)
      seq_len=128,
      val_fraction=0.04,
      segment_ids=False,       # True: packed documents never attend across EOS boundaries
      unique_tokens=0,         # U: train on the first U tokens of the split only (0: all of it)
      cache_dir='',            # '' : ~/.cache/dlm_jax
      prefetch=2,
  ))
  c.diffusion = noise.defaults()
  c.train = ml_collections.ConfigDict(dict(
      batch_size=32,
      num_steps=1000,
      epochs=0.0,              # R > 0: num_steps = R * (U / seq_len windows) / batch_size
      **optim.defaults(),      # lr, its schedule, AdamW, clipping, grad_accum
      token_dropout=0.0,       # AR/prefix inputs replaced by [MASK] at this rate (targets kept)
      ema_decay=0.0,           # 0: no EMA
      log_every=10,
      eval_every=200,
      checkpoint_every=200,
      max_to_keep=3,           # newest checkpoints kept ...
      keep_period=0,           # ... plus every step divisible by this (0: none), never deleted
      compile_cache='auto',    # persistent XLA compilation cache dir; auto: $JAX_COMPILATION_CACHE_DIR
                               # (sweeps set <root>/.xla_cache) or ~/.cache/dlm_jax/xla; '': off
      nan_policy='stop',       # non-finite loss/gradient: stop (error) | skip (the update)
      nan_max_skips=10,        # skip: stop once more than this many updates were skipped
      preempt_timeout=60.0,    # SIGTERM/SIGINT: checkpoint the current step and exit within this
      trackers='tensorboard',  # comma list of run/trackers.TRACKERS; '' : metrics.jsonl only
      wandb_project='dlm_jax',
      wandb_entity='',         # '' : the W&B default entity
  ))
  c.eval = ml_collections.ConfigDict(dict(
      num_batches=8,           # validation during training: batches x batch_size windows
      batch_size=32,
      seed=1234,
      # --mode eval (evaluate.py): likelihood estimators on validation windows + zero-shot tasks
      name='scores',           # writes <workdir>/eval/<name>.json
      estimators='auto',       # comma list of likelihood.ESTIMATORS; auto: by objective
      likelihood_rows=32,      # validation windows scored by each estimator (0: none)
      corpus='',               # score another source's validation windows ('' : the run's own)
      nelbo_samples=16,        # K Monte Carlo samples per row for `nelbo`
      pll_span=2,              # masked span of `pll_span`
      chunk=64,                # rows per compiled forward pass of the estimators
      tasks='',                # comma list: benchmark names (files in tasks_dir) or .jsonl paths
      tasks_dir='data/zeroshot',  # python -m dlm_jax.prepare --tasks all --out data/zeroshot
      task_estimator='auto',   # log-likelihood of an option; auto: ar for AR runs, else nelbo
      task_limit=0,            # the first N items of each task (0: all)
  ))
  c.sample = ml_collections.ConfigDict(sampling.defaults())  # sample.py; --mode sample
  c.mesh = ml_collections.ConfigDict(sharding.defaults())  # device mesh; -1: the remaining devices
  c.lock()
  return c


def walk(d, prefix=''):
  """(dotted key, value) of every leaf of a ConfigDict."""
  for k, v in d.items():
    key = f'{prefix}{k}'
    if isinstance(v, ml_collections.ConfigDict):
      yield from walk(v, key + '.')
    else:
      yield key, v


def _check_keys(cfg):
  """Every key of cfg is the schema's, with the schema's type: ml_collections' own checks, run by
  setting each value on a fresh locked base()."""
  schema = base()
  for key, value in walk(cfg):
    try:
      schema.update_from_flattened_dict({key: value})
    except (KeyError, AttributeError):
      raise ConfigError(f'config.{key}: unknown key') from None
    except TypeError:
      want = type(dict(walk(base())).get(key, None)).__name__
      raise ConfigError(f'config.{key}: expected {want}, got {type(value).__name__} '
                        f'{value!r}') from None


def load_file(path):
  """Runs a config file's get_config() (config files are Python executed as code: run only
  those you trust) and returns its ConfigDict; anything wrong is one ConfigError naming the
  file."""
  found = shipped.find(path)
  if found is None:
    raise ConfigError(f'--config {path}: no such file (nor a shipped config name: '
                      f'{", ".join(shipped.names())})')
  path = found
  try:
    spec = importlib.util.spec_from_file_location('dlm_jax_user_config', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
  except Exception as e:  # pylint: disable=broad-except  # any error of user code, named
    raise ConfigError(f'--config {path}: {type(e).__name__}: {_first_line(e)}') from None
  if not callable(getattr(module, 'get_config', None)):
    raise ConfigError(f'--config {path}: defines no get_config()')
  try:
    cfg = module.get_config()
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(f'--config {path}: get_config() raised {type(e).__name__}: '
                      f'{_first_line(e)}') from None
  if not isinstance(cfg, ml_collections.ConfigDict):
    raise ConfigError(f'--config {path}: get_config() returned a {type(cfg).__name__}, not an '
                      'ml_collections.ConfigDict (start from dlm_jax.config.base())')
  return cfg


def _first_line(e):
  text = str(e).strip()
  return text.splitlines()[0].strip("'\"") if text else type(e).__name__


def check_override(cfg, key):
  """A --config.KEY=VALUE override names a key of cfg; else one line with the closest keys."""
  node = cfg
  for i, part in enumerate(key.split('.')):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      here = '.'.join(key.split('.')[:i])
      options = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
      close = difflib.get_close_matches(part, options, n=1)
      hint = f' (did you mean config.{here + "." if here else ""}{close[0]}?)' if close else ''
      raise ConfigError(f'--config.{key}: unknown key{hint}')
    node = node[part]


def check_cli(argv):
  """The --config file and each --config.KEY override, checked before absl loads them, so a
  missing file, a broken get_config() or a misspelled key is one line naming it. Returns argv
  with the config argument as the file it names (a shipped config's name -> its path)."""
  args = list(argv[1:])
  for i, a in enumerate(args):
    if a in ('--config', '-config') and i + 1 < len(args):
      path, where = args[i + 1], i + 1
    elif a.startswith(('--config=', '-config=')):
      path, where = a.split('=', 1)[1], i
    else:
      continue
    cfg = load_file(path)
    for b in args:
      if b.startswith('--config.'):
        check_override(cfg, b[len('--config.'):].split('=', 1)[0])
    args[where] = (shipped.find(path) if where == i + 1 else
                   f'{a.split("=", 1)[0]}={shipped.find(path)}')
    break
  return [argv[0]] + args


def validate(cfg: ml_collections.ConfigDict, training=True) -> ml_collections.ConfigDict:
  """Checks keys, types and values against the schema, asking each section's owner; returns cfg,
  raises ConfigError. training=False (evaluating or sampling a run) skips what only training
  uses: whether the time sampler's NELBO weights can be unbiased."""
  _check_keys(cfg)
  present = dict(walk(cfg))
  for key, _ in walk(base()):
    need(key in present, key, 'missing (build the config from dlm_jax.config.base())')
  for key, v in walk(cfg):  # inf / nan pass every comparison below that is written as a refusal
    need(not isinstance(v, float) or math.isfinite(v), key, f'{v} is not a finite number')
  d, t, e = cfg.data, cfg.train, cfg.eval
  tokenizers.check_config(cfg)
  sampling.check_prompts(cfg.sample.prompts.strip())
  objectives.check_config(cfg)
  need(d.unique_tokens >= 0, 'data.unique_tokens', f'must be >= 0, got {d.unique_tokens}')
  need(t.epochs >= 0, 'train.epochs', f'must be >= 0, got {t.epochs}')
  need(0.0 <= t.token_dropout < 1.0, 'train.token_dropout', f'{t.token_dropout} is outside [0, 1)')
  model_config.check_config(cfg)
  need(d.seq_len >= 2, 'data.seq_len', f'must be >= 2, got {d.seq_len}')
  need(0.0 < d.val_fraction < 1.0, 'data.val_fraction', f'{d.val_fraction} is outside (0, 1)')
  need(d.prefetch >= 0, 'data.prefetch', 'must be >= 0')
  choice(d, 'packing', ('wrap', 'pad'), 'data.')
  noise.check_config(cfg, training)
  need(t.batch_size > 0, 'train.batch_size', f'must be positive, got {t.batch_size}')
  need(t.num_steps >= 0, 'train.num_steps', f'must be >= 0, got {t.num_steps}')
  optim.check_config(cfg)
  need(0.0 <= t.ema_decay < 1.0, 'train.ema_decay', 'must be in [0, 1)')
  for k in ('log_every', 'eval_every', 'checkpoint_every', 'max_to_keep'):
    need(t[k] > 0, f'train.{k}', f'must be positive, got {t[k]}')
  choice(t, 'nan_policy', ('stop', 'skip'), 'train.')
  need(t.nan_max_skips >= 0, 'train.nan_max_skips', f'must be >= 0, got {t.nan_max_skips}')
  need(t.keep_period >= 0, 'train.keep_period', f'must be >= 0 (0: none), got {t.keep_period}')
  need(t.preempt_timeout > 0, 'train.preempt_timeout', f'must be > 0, got {t.preempt_timeout}')
  need(e.num_batches > 0 and e.batch_size > 0, 'eval.num_batches', 'must be positive')
  names = ', '.join(objectives.ESTIMATORS)
  for est in [x.strip() for x in e.estimators.split(',') if x.strip()]:
    need(est == 'auto' or est in objectives.ESTIMATORS, 'eval.estimators',
         f'{est!r} is not one of auto, {names}')
  need(e.task_estimator == 'auto' or e.task_estimator in objectives.ESTIMATORS,
       'eval.task_estimator', f'{e.task_estimator!r} is not one of auto, {names}')
  for k in ('likelihood_rows', 'task_limit'):
    need(e[k] >= 0, f'eval.{k}', f'must be >= 0, got {e[k]}')
  for k in ('nelbo_samples', 'pll_span', 'chunk'):
    need(e[k] >= 1, f'eval.{k}', f'must be >= 1, got {e[k]}')
  need(bool(e.name) and '/' not in e.name, 'eval.name', f'{e.name!r} is not a file name')
  try:
    sampling.check_config(cfg)
  except SampleError as err:
    raise ConfigError(f'config.{err}') from None
  sharding.check_config(cfg)
  return cfg


def resolve(cfg: ml_collections.ConfigDict, vocab_size: int, training=True,
            vocab_real=0) -> ml_collections.ConfigDict:
  """Fills derived values (model_config.resolve: named size, vocab, mlp width) so config.json
  records what ran; vocab_real: the tokenizer's ids in use when it pads its vocabulary."""
  cfg = ml_collections.ConfigDict(cfg.to_dict())
  model_config.resolve(cfg.model, vocab_size, vocab_real)
  validate(cfg, training)
  return cfg
