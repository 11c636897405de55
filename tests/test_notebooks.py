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
