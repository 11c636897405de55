"""The analysis notebooks as a reader gets them: executed from notebooks/ (their own folder, as
Jupyter and Colab run them) in a fresh kernel on the runs tables shipped with the package; the
shipped files are what scripts/make_notebooks.py writes, with saved outputs; the install cell
installs the package from a clone or from a wheel."""
import glob
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT
from user_project import user_project

nbformat = pytest.importorskip('nbformat')
nbclient = pytest.importorskip('nbclient')

NOTEBOOKS = os.path.join(ROOT, 'notebooks')
_spec = importlib.util.spec_from_file_location('make_notebooks',
                                               os.path.join(ROOT, 'scripts', 'make_notebooks.py'))
make_notebooks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_notebooks)


def _errors(nb):
  return [o for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', [])
          if o.get('output_type') == 'error']


@pytest.mark.parametrize('name,plot', [
    # as shipped: Chinchilla fits, 200 bootstrap draws per fit, profile intervals
    ('scaling_analysis.ipynb', 'fitted_vs_observed.png'),
    ('dual_ratio_analysis.ipynb', 'dual_ratio.png'),
])
def test_notebook_executes_from_its_folder(tmp_path, monkeypatch, name, plot):
  monkeypatch.delenv('DLM_JAX_RUNS_CSV', raising=False)  # the shipped table, found by the package
  monkeypatch.setenv('DLM_JAX_NB_OUT', str(tmp_path))
  monkeypatch.setenv('PYTHONPATH', ROOT)
  nb = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
  for c in nb.cells:
    if c.cell_type == 'code':  # run afresh, not the saved outputs
      c.outputs, c.execution_count = [], None
  make_notebooks.execute(nb)  # a fresh kernel whose working directory is notebooks/
  assert not _errors(nb)
  assert (tmp_path / plot).exists() and (tmp_path / 'fits.json').exists()
  if name == 'scaling_analysis.ipynb':
    fits = json.loads((tmp_path / 'fits.json').read_text())
    for f in ('chinchilla_ar', 'chinchilla_mdm', 'power_frontier'):
      assert fits[f]['bootstrap']['used'] + fits[f]['bootstrap']['failed'] == 200, f
    assert set(fits['chinchilla_ar']['profile']) == {'alpha', 'beta'}
    assert 'compute_multiplier' in fits['power_frontier']['ci']


@pytest.mark.parametrize('name', sorted(make_notebooks.NOTEBOOK_CELLS))
def test_shipped_notebooks_are_the_generated_ones_with_saved_outputs(name):
  """What scripts/make_notebooks.py writes (rerun it after editing its cells), executed: every
  code cell ran, none failed, and the plots are in the file."""
  shipped = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
  built = make_notebooks.build(name)
  assert [c.source for c in shipped.cells] == [c.source for c in built.cells]
  code = [c for c in shipped.cells if c.cell_type == 'code']
  assert all(c.execution_count for c in code), 'saved without running every cell'
  assert not _errors(shipped)
  images = [o for c in code for o in c.outputs if 'image/png' in o.get('data', {})]
  assert images, 'the plots are not among the saved outputs'
  text = json.dumps(shipped.dict())
  assert '/tmp/' not in text and '/work/' not in text, 'a local path in the saved outputs'


@pytest.mark.parametrize('where', ['clone', 'wheel'])
def test_the_install_cell_installs_the_package_from_a_clone_or_a_wheel(tmp_path, where):
  """The notebook's first code cell, in a new virtual environment that cannot import dlm_jax,
  run from the clone's notebooks/ folder or from a folder holding only a built wheel (Colab's
  upload). --no-deps keeps it to the package itself (its dependencies are PyPI's business)."""
  venv = tmp_path / 'venv'
  subprocess.run([sys.executable, '-m', 'venv', str(venv)], check=True)
  py = str(venv / 'bin' / 'python')
  if where == 'clone':
    cwd = NOTEBOOKS
  else:
    cwd = tmp_path / 'colab'
    cwd.mkdir()
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps',
                    '-q', '-w', str(tmp_path / 'dist'), ROOT], check=True, capture_output=True)
    for whl in glob.glob(str(tmp_path / 'dist' / 'dlm_jax-*.whl')):
      shutil.copy(whl, cwd)
  env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'DLM_JAX_SOURCE')}
  r = subprocess.run([py, '-c', make_notebooks.INSTALL], cwd=cwd, capture_output=True, text=True,
                     env=dict(env, DLM_JAX_PIP_ARGS='--no-deps'),
                     timeout=600)
  assert r.returncode == 0, r.stderr[-2000:]
  expected = ROOT if where == 'clone' else str(cwd / os.listdir(cwd)[0])
  assert r.stdout.strip() == f'installed dlm_jax from {expected}'
  where_is = subprocess.run([py, '-c', 'import dlm_jax, os; print(os.path.dirname(dlm_jax.__file__))'],
                            cwd=tmp_path, capture_output=True, text=True, env=env)
  assert where_is.stdout.startswith(str(venv)), where_is  # installed, not found on a path
  # the shipped tables came with it (package data)
  assert os.path.isfile(os.path.join(where_is.stdout.strip(), 'study', 'results',
                                     'isoflop_micro.csv'))


TINY = ['--config.model.d_model=32', '--config.model.num_layers=1', '--config.model.num_heads=2',
        '--config.data.tokenizer=byte']


def _installed_files(pkg):
  return sorted(os.path.relpath(os.path.join(d, f), pkg) for d, _, fs in os.walk(pkg)
                for f in fs if '__pycache__' not in d)


@pytest.mark.slow  # ~11 min on 2 busy cores: a wheel build, eight commands and both notebooks
def test_a_new_user_works_from_the_installed_wheel(tmp_path):
  """The wheel installed (not editable) into a fresh venv, used from a scratch directory as a
  new user would: the quickstart, bench, a probe, their own two-run sweep (a relative base
  config importing a helper beside it, a relative corpus) collected and fitted, and both
  notebooks. Everything is written under the scratch directory, nothing inside the install."""
  venv, dist, scratch = tmp_path / 'venv', tmp_path / 'dist', tmp_path / 'scratch'
  scratch.mkdir()
  subprocess.run([sys.executable, '-m', 'venv', '--system-site-packages', str(venv)], check=True)
  py = str(venv / 'bin' / 'python')
  subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '-q', '-w', str(dist), ROOT],
                 check=True, capture_output=True)
  (whl,) = glob.glob(str(dist / 'dlm_jax-*.whl'))
  # the dependencies come from the system site (no download); the package from the wheel only
  subprocess.run([py, '-m', 'pip', 'install', '-q', '--no-index', '--no-deps', '--force-reinstall',
                  whl], check=True, capture_output=True)
  env = {k: v for k, v in os.environ.items()
         if k not in ('PYTHONPATH', 'DLM_JAX_SOURCE', 'DLM_JAX_RUNS_CSV', 'DLM_JAX_CACHE',
                      'JAX_COMPILATION_CACHE_DIR')}
  env.update(PATH=f'{venv / "bin"}{os.pathsep}{env.get("PATH", "")}', VIRTUAL_ENV=str(venv),
             HOME=str(tmp_path / 'home'))  # as an activated venv; caches in a fresh home

  def run(*args, timeout=600, **extra):
    r = subprocess.run([py, '-m', *args], cwd=scratch, env=dict(env, **extra), text=True,
                       capture_output=True, timeout=timeout, check=False)
    assert r.returncode == 0, f'{args}: {r.stdout[-1500:]}\n{r.stderr[-2500:]}'
    return r.stdout

  info = subprocess.run([py, '-c', 'import dlm_jax, importlib.metadata as m; '
                         'print(dlm_jax.__file__); print(m.requires("dlm_jax"))'],
                        cwd=scratch, env=env, capture_output=True, text=True, check=True)
  pkg = os.path.dirname(info.stdout.splitlines()[0])
  assert pkg.startswith(str(venv)), info.stdout  # the wheel's copy, not the clone
  assert 'pandas' in info.stdout  # the notebooks' tables come with the package's dependencies
  before = _installed_files(pkg)

  run('dlm_jax.main', '--config', 'configs/default.py', '--workdir', 'runs/default',
      '--config.model.d_model=32', '--config.model.num_layers=2', '--config.model.num_heads=2',
      '--config.data.tokenizer=byte', '--config.data.seq_len=32', '--config.train.batch_size=4',
      '--config.train.num_steps=2', '--config.train.warmup_steps=1',
      '--config.train.eval_every=100', '--config.train.checkpoint_every=100',
      '--config.eval.num_batches=1', '--config.eval.batch_size=4', '--config.sample.num_samples=0')
  assert (scratch / 'runs' / 'default' / 'summary.json').is_file()
  out = run('dlm_jax.bench', 'train', '--steps', '1', '--seq', '16', '--batch', '2', *TINY)
  assert 'MFU' in out or 'tok' in out, out
  run('dlm_jax.probes', 'reversal', '--out', 'runs/probes/reversal', '--steps', '2',
      '--workers', '1', timeout=900)
  rep = json.loads((scratch / 'runs' / 'probes' / 'reversal' / 'report.json').read_text())
  assert [x['objective'] for x in rep['runs']] == ['ar', 'mdm', 'dual']

  user_project(scratch)
  mine = dict(PYTHONPATH=str(scratch / 'exp'))  # the user's own, inherited by every run
  root = scratch / 'runs' / 'sweeps' / 'mine'
  out = run('dlm_jax.sweep', 'local', 'exp/sweep.py', **mine)
  assert f'runs directory: {root}' in out and '2 done, 0 failed' in out, out
  out = run('dlm_jax.sweep', 'collect', 'exp/sweep.py', **mine)
  assert f'2 done runs -> {root / "runs.csv"}' in out, out
  assert (root / '.xla_cache').is_dir()  # the runs' shared compilation cache, in the runs folder
  run('dlm_jax.scaling', 'fit', '--runs', str(root / 'runs.csv'), '--law', 'chinchilla',
      '--fix', 'E=1,alpha=0.34,beta=0.28,B=400', '--bootstrap', '0', '--no-profile',
      '--out', 'fit.json')
  assert json.loads((scratch / 'fit.json').read_text())['n_runs'] == 2

  for name in sorted(make_notebooks.NOTEBOOK_CELLS):  # in the venv's kernel (its python on PATH)
    shutil.copy(os.path.join(NOTEBOOKS, name), scratch / name)
    script = ('import nbclient, nbformat, sys\n'
              f'nb = nbformat.read({name!r}, as_version=4)\n'
              "nb.cells.append(nbformat.v4.new_code_cell(\n"
              "    'import dlm_jax; print(dlm_jax.__file__)'))\n"
              "nbclient.NotebookClient(nb, timeout=600, kernel_name='python3').execute()\n"
              "print(nb.cells[-1].outputs[0]['text'].strip())\n")
    r = subprocess.run([py, '-c', script], cwd=scratch, text=True, capture_output=True,
                       env=dict(env, DLM_JAX_NB_BOOTSTRAP='4', DLM_JAX_NB_OUT=str(scratch / 'nb')),
                       timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-2500:]
    assert r.stdout.strip().splitlines()[-1].startswith(str(venv)), r.stdout
  assert _installed_files(pkg) == before  # nothing written inside the install location
