"""Running named sets of runs and reading them back (the seed of the sweep launcher, issue 6).

A setting is a dict of dotted config keys -> values (`{'diffusion.time_sampler': 'beta'}`). Runs
go one after another in fresh processes (`python -m dlm_jax.main`), each in root/<name>; finished
runs (summary.json with status done) are skipped and partial ones resume, so rerunning a script
never repeats work. One failing run is recorded and the others still run.
"""
import json
import os
import subprocess
import sys


def overrides(setting: dict) -> list[str]:
  return [f'--config.{k}={v}' for k, v in setting.items()]


def is_done(workdir) -> bool:
  p = os.path.join(workdir, 'summary.json')
  return os.path.exists(p) and json.load(open(p)).get('status') == 'done'


def run_local(config_path: str, root: str, settings: dict, log=print) -> dict:
  """Runs every setting not yet done; returns {name: 'done' | 'failed: ...'}."""
  status = {}
  for name, setting in settings.items():
    wd = os.path.join(root, name)
    if is_done(wd):
      status[name] = 'done'
      continue
    cmd = [sys.executable, '-m', 'dlm_jax.main', '--config', config_path, '--workdir', wd,
           *overrides(setting)]
    log(' '.join(cmd))
    r = subprocess.run(cmd, check=False)
    status[name] = 'done' if r.returncode == 0 else f'failed: exit {r.returncode}'
  return status


def validation_curve(workdir, key):
  """(tokens, values) of a run's validation metric `key`."""
  rows = json.load(open(os.path.join(workdir, 'eval', 'validation.json')))
  rows = [r for r in rows if key in r]
  return [r['tokens'] for r in rows], [r[key] for r in rows]


def summary(workdir):
  return json.load(open(os.path.join(workdir, 'summary.json')))
