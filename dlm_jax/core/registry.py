"""Registries of named extensions: a class (or object) with a `name`, filed by a decorator, so the
config's choices and the dispatch on them are the same dict; `Param` is a config parameter such
an extension declares with its default and the values it accepts; `need` / `choice`: the one-line
ConfigError every section owner's check_config raises."""
import dataclasses
from typing import Callable

from dlm_jax.errors import ConfigError


def registered(registry: dict):
  """Decorator: files a class or object under its `name` in `registry` (once)."""
  def add(obj):
    if not obj.name or obj.name in registry:
      raise ValueError(f'{obj.name!r}: an extension needs a name not yet registered')
    registry[obj.name] = obj
    return obj
  return add


@dataclasses.dataclass(frozen=True)
class Param:
  """A config parameter an extension reads: its key, its default and the values it accepts
  (`ok`; `why` is the refusal, formatted with the value as {v})."""
  key: str
  default: float
  ok: Callable[[float], bool] = lambda v: True
  why: str = ''


def need(ok, key, msg):
  """A section owner's check: unless ok, the one-line ConfigError naming config.KEY."""
  if not ok:
    raise ConfigError(f'config.{key}: {msg}')


def choice(section, key, options, prefix):
  """section[key] is one of options (a registry's names or a tuple)."""
  v = section[key]
  need(v in options, f'{prefix}{key}', f'{v!r} is not one of {", ".join(options)}')
