"""Sweep files: a `get_sweep()` returning a `Sweep`, checked when loaded (every run's keys exist in
the base config), so a typo fails before any run starts.

Paths are the user's, never the install's: a relative base config is found beside the sweep
file, else as a shipped config name (dlm_jax.configs.find), and runs go under the current
directory by default, so a sweep behaves the same from a clone, a wheel or Colab.
"""
import dataclasses
import importlib.util
import os

from dlm_jax import config as config_lib
from dlm_jax import configs as shipped
from dlm_jax.errors import ConfigError, SweepError


@dataclasses.dataclass
class Sweep:
  name: str
  base_config: str        # a config file: absolute, relative to the sweep file, or a shipped name
  runs: dict              # {run name: {dotted key: value}}
  description: str = ''
  path: str = dataclasses.field(default='', compare=False)  # the sweep file (set by load_sweep)


def load_sweep(path) -> Sweep:
  """The sweep file at `path`, else the shipped one it names (`configs/sweeps/isoflop_micro.py`
  or `sweeps/isoflop_micro`, from any directory)."""
  if not os.path.exists(path):
    if shipped.find(path) is None:
      raise SweepError(f'sweep file not found: {path}')
    path = shipped.find(path)
  spec = importlib.util.spec_from_file_location('sweep_file', path)
  mod = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(mod)
    if not hasattr(mod, 'get_sweep'):
      raise SweepError(f'{path}: defines no get_sweep()')
    sw = mod.get_sweep()
  except SweepError:
    raise
  except Exception as e:  # pylint: disable=broad-except  # a broken sweep file: name it
    where = f' (line {e.lineno})' if isinstance(e, SyntaxError) else ''
    raise SweepError(f'{path}{where}: {type(e).__name__}: {e}') from None
  if not isinstance(sw, Sweep):
    raise SweepError(f'{path}: get_sweep() returned {type(sw).__name__!r}, not a '
                     'dlm_jax.sweep.Sweep')
  sw.path = os.path.abspath(path)
  for name in sw.runs:
    if not name or '/' in name or name.startswith('.'):
      raise SweepError(f'{path}: run name {name!r} is not a plain directory name')
  try:  # found here, not when each run starts
    cfg = config_lib.load_file(base_config_path(sw))
  except (ConfigError, SweepError) as e:
    raise SweepError(f'{path}: base config: {e}') from None
  for name, setting in sw.runs.items():
    for key in setting:
      try:
        config_lib.check_override(cfg, key)
      except ConfigError as e:
        raise SweepError(f'{path}: run {name!r}: {e}') from None
  return sw


def base_config_path(sw) -> str:
  """The sweep's base config file, absolute: as given when absolute; else beside the sweep file;
  else a shipped config (`sweeps/micro_base`, or `configs/sweeps/micro_base.py` as the shipped
  sweep files write it). Never resolved against the install location."""
  given = os.path.expanduser(sw.base_config)
  if os.path.isabs(given):
    return given
  if sw.path:
    beside = os.path.join(os.path.dirname(sw.path), given)
    if os.path.isfile(beside):
      return beside
  found = shipped.find(given)
  if found is None:
    raise SweepError(f'{sw.base_config}: no such file beside the sweep file nor a shipped '
                     'config name (python -m dlm_jax.main --help lists them)')
  return os.path.abspath(found)


def default_root(sw) -> str:
  """Where a sweep's runs go without --root: runs/sweeps/<name> under the current directory."""
  return os.path.abspath(os.path.join('runs', 'sweeps', sw.name))


def overrides(setting: dict) -> list[str]:
  return [f'--config.{k}={v}' for k, v in setting.items()]


def fmt_num(x) -> str:
  """Short deterministic number for run names: 1.5e+11 -> 1.5e11, 0.25 -> 0.25."""
  if isinstance(x, float) and (x >= 1e4 or (0 < x < 1e-3)):
    m, e = f'{x:.3g}'.split('e')
    return f'{m}e{int(e)}'
  return f'{x:g}' if isinstance(x, float) else str(x)
