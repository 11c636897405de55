"""The config schema: base() assembles each section's defaults from the module that owns it and
`validate` asks each owner to check its keys; this module loads config files and checks the CLI.

Every config file in configs/ starts from `base()` (a locked ConfigDict: ml_collections refuses a
misspelled key or a wrong type as the file sets it) and changes values; `validate` then checks that
a config's keys and types are the schema's (also for a config not built from base()) and that every
value is possible. Owners (each a `defaults()` and a `check_config(cfg)`): model
(core/model_config.py), diffusion (core/noise.py; its schedules and time samplers are registries in
core/schedules.py), block (core/block.py), objective / dual (core/objectives.py), train's
optimizer keys and LR schedules (core/optim.py), sample (core/sampling.py), mesh
(core/sharding.py), data (data/pipeline.py,
data/tokenizers.py); train's loop keys and eval, read only above this layer, in sections.py;
train.trackers is checked by the run that opens them (run/trackers.py); a run directory's old
config.json and resuming: run/resume.py. Errors are `ConfigError`s whose one-line message names the
key (main.py prints it and exits 2). Imports only core/, data/ and below.
"""
import difflib
import importlib.util
import math

import ml_collections

from dlm_jax import configs as shipped
from dlm_jax import sections
from dlm_jax.core import block
from dlm_jax.core import model_config
from dlm_jax.core import noise
from dlm_jax.core import objectives
from dlm_jax.core import optim
from dlm_jax.core import sampling
from dlm_jax.core import sharding
from dlm_jax.core.registry import need
from dlm_jax.data import pipeline
from dlm_jax.errors import ConfigError, SampleError



def base() -> ml_collections.ConfigDict:
  """Every key a config may set, with defaults suited to a small CPU run."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.init_from = ''             # AR2Diff: start from this run directory's latest params
  c.objective = 'mdm'          # a name in objectives.OBJECTIVES: ar | mdm | dual | prefix | block
  c.dual = ml_collections.ConfigDict(dict(
      ar_weight='1/2',         # AR share of each batch's sequences as in the paper: '63/64', '0.75'
      ar_attention='causal',   # causal | prefix: attention (and loss) of the AR share
  ))
  c.model = ml_collections.ConfigDict(model_config.defaults())
  c.data = ml_collections.ConfigDict(pipeline.defaults())
  c.diffusion = noise.defaults()
  c.block = block.defaults()   # block diffusion (objective=block): core/block.py
  c.train = ml_collections.ConfigDict(dict(sections.train_defaults(), **optim.defaults()))
  c.eval = ml_collections.ConfigDict(sections.eval_defaults())
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
  pipeline.check_config(cfg)
  sampling.check_prompts(cfg.sample.prompts.strip())
  objectives.check_config(cfg)
  model_config.check_config(cfg)
  noise.check_config(cfg, training)
  block.check_config(cfg)
  optim.check_config(cfg)
  sections.check_train(cfg)
  sections.check_eval(cfg)
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
