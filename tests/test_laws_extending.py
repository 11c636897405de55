"""Adding a scaling law is one object in one file: tests/extending/toy_law.py (the README's
"Extending it: a law") is registered, fitted through the CLI's entry point (scaling.fit) with
bootstrap intervals, drawn as a `plot sweep` panel, and removed, the registry as before."""
import importlib.util
import os

import numpy as np
import pytest

from conftest import ROOT
from dlm_jax import errors
from dlm_jax.study import fitting
from dlm_jax.study import laws
from dlm_jax.study import plot
from dlm_jax.study import scaling

TOY = os.path.join(ROOT, 'tests', 'extending', 'toy_law.py')
BUILT_IN = ['chinchilla', 'isoflop', 'data_constrained', 'power']


@pytest.fixture
def toy():
  """Runs toy_law.py (its @register adds the law), and takes the law out again after."""
  before = dict(fitting.LAWS)
  spec = importlib.util.spec_from_file_location('toy_law', TOY)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  try:
    yield module
  finally:
    fitting.unregister('toy')
    assert fitting.LAWS == before and list(fitting.LAWS) == BUILT_IN
    assert plot.panels() == ('compute', 'isoflop', 'chinchilla', 'dual')


def toy_runs(a=0.25, n=20, seed=0):
  rng = np.random.default_rng(seed)
  C = np.logspace(10, 13, n)
  return dict(C=C, loss=(1.8 + 300 / C ** a) * np.exp(rng.normal(0, 0.002, n)))


def test_the_built_in_laws_are_registered_objects():
  assert list(scaling.LAWS) == BUILT_IN and scaling.LAWS is fitting.LAWS
  assert all(isinstance(law, fitting.Law) and law.name == name
             for name, law in laws.fitting.LAWS.items())
  assert plot.PLOTS == plot.panels() == ('compute', 'isoflop', 'chinchilla', 'dual')
  with pytest.raises(errors.FitError, match="unknown law 'toy': use chinchilla, isoflop, "
                     'data_constrained, power'):
    scaling.fit('toy', toy_runs())


def test_a_law_is_one_object_in_one_file(toy, tmp_path):
  assert list(scaling.LAWS) == BUILT_IN + ['toy'] and isinstance(scaling.LAWS['toy'], toy.Toy)
  assert plot.panels() == ('compute', 'isoflop', 'chinchilla', 'toy', 'dual')
  with pytest.raises(ValueError, match="law name 'toy' is empty or taken"):
    fitting.register(toy.Toy)
  # fitted through the CLI's entry point: parameters, intervals, the law's own degeneracy check
  out = scaling.fit('toy', toy_runs(), bootstrap=50)
  assert out['law'] == 'toy' and out['n_runs'] == 20 and 'degenerate' not in out
  assert out['params']['a'] == pytest.approx(0.25, abs=0.02)
  assert out['params']['E'] == pytest.approx(1.8, abs=0.05)
  lo, hi = out['ci']['a']
  assert lo < out['params']['a'] < hi and out['bootstrap']['used'] == 50
  rising = dict(C=np.logspace(10, 13, 8), loss=np.linspace(2.0, 2.5, 8))
  assert 'loss does not fall' in scaling.fit('toy', rising)['degenerate']
  with pytest.raises(errors.FitError, match="toy: the runs table needs a column 'C'"):
    scaling.fit('toy', dict(loss=np.ones(5)))
  # its panel, drawn by plot sweep from a table of runs
  rows = [dict(run=f'r{i}', status='done', objective=obj, C=c, loss=l * (1.1 if obj == 'mdm'
                                                                         else 1.0))
          for obj in ('ar', 'mdm') for i, (c, l) in enumerate(zip(*toy_runs().values()))]
  files, fits = plot.sweep_plots(rows, str(tmp_path), which=('toy',))
  assert sorted(os.path.basename(f) for f in files) == ['toy.png', 'toy.svg']
  assert set(fits) == {'toy_ar', 'toy_mdm'}
  assert 'ar: a = 0.25' in open(tmp_path / 'toy.svg', encoding='utf-8').read()
