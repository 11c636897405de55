"""The shipped config files, installed with the package so that `--config NAME` works from any
directory and from a wheel: `default`, `lm1b`, `owt`, `experiments/recipes`, `sweeps/isoflop_micro`,
... (`python -m dlm_jax.main --help` lists them). A path that exists is always used as given."""
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def names() -> list[str]:
  """Every shipped config file (a get_config()), as the name `--config` takes: no .py, folders
  with '/'. Sweep files (sweeps/*.py with get_sweep()) are found by `find` too."""
  out = []
  for d, _, files in os.walk(HERE):
    for f in files:
      path = os.path.join(d, f)
      if f.endswith('.py') and f != '__init__.py' and 'def get_config(' in open(path, encoding='utf-8').read():
        out.append(os.path.relpath(path, HERE)[:-3].replace(os.sep, '/'))
  return sorted(out)


def find(arg: str) -> str | None:
  """The file a --config argument names: an existing path as given; else the shipped config
  named `arg` ('default', 'sweeps/isoflop_micro', with or without '.py' or a leading 'configs/',
  so the README's `configs/default.py` also works outside a clone); else None."""
  if os.path.isfile(os.path.expanduser(arg)):
    return os.path.expanduser(arg)
  name = arg[len('configs/'):] if arg.startswith('configs/') else arg
  name = name[:-3] if name.endswith('.py') else name
  path = os.path.join(HERE, *name.split('/')) + '.py'
  return path if name and '..' not in name.split('/') and os.path.isfile(path) else None
