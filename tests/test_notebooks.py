"""The analysis notebooks run headless, top to bottom, on real sweep tables shipped in docs/."""
import json
import os

import pytest

from conftest import ROOT

nbformat = pytest.importorskip('nbformat')
nbclient = pytest.importorskip('nbclient')


@pytest.mark.parametrize('name,table,plot', [
    # as shipped: Chinchilla fits, 200 bootstrap draws per fit, profile intervals
    ('scaling_analysis.ipynb', 'docs/isoflop_micro/runs.csv', 'fitted_vs_observed.png'),
    ('dual_ratio_analysis.ipynb', 'docs/dual_ratio_micro/runs.csv', 'dual_ratio.png'),
])
def test_notebook_executes(tmp_path, monkeypatch, name, table, plot):
  monkeypatch.setenv('DLM_JAX_RUNS_CSV', os.path.join(ROOT, table))
  monkeypatch.setenv('DLM_JAX_NB_OUT', str(tmp_path))
  monkeypatch.setenv('PYTHONPATH', ROOT)
  nb = nbformat.read(os.path.join(ROOT, 'notebooks', name), as_version=4)
  nbclient.NotebookClient(nb, timeout=600, kernel_name='python3',
                          resources={'metadata': {'path': ROOT}}).execute()
  errors = [o for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', [])
            if o.get('output_type') == 'error']
  assert not errors
  assert (tmp_path / plot).exists() and (tmp_path / 'fits.json').exists()
  if name == 'scaling_analysis.ipynb':
    fits = json.loads((tmp_path / 'fits.json').read_text())
    for f in ('chinchilla_ar', 'chinchilla_mdm', 'power_frontier'):
      assert fits[f]['bootstrap']['used'] + fits[f]['bootstrap']['failed'] == 200, f
    assert set(fits['chinchilla_ar']['profile']) == {'alpha', 'beta'}
    assert 'compute_multiplier' in fits['power_frontier']['ci']
