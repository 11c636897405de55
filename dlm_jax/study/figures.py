"""What a plot panel draws with: matplotlib (Agg), saving as PNG and SVG, warnings drawn on the
panel, decade-labelled log axes, and the Sheet a law's panel receives from `plot sweep`."""
import dataclasses
import os
import sys
import textwrap
from typing import Callable

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position
from matplotlib import ticker  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position


plt.rcParams['svg.fonttype'] = 'none'  # SVG text stays text: searchable, smaller


def save(fig, out):
  """out without extension -> out.png and out.svg."""
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  fig.tight_layout()
  for ext in ('png', 'svg'):
    fig.savefig(f'{out}.{ext}', dpi=130)
  plt.close(fig)
  return [f'{out}.png', f'{out}.svg']


def column(rows, k):
  return np.array([float(r[k]) for r in rows])


def note(ax, notes, what, text, where=0.5):
  """A warning drawn on the panel itself (a degenerate fit, a family without data, an empty
  panel), printed, and kept in fits.json's `warnings`: a reader of the PNG sees it too."""
  notes.append(f'{what}: {text}')
  print(f'warning: {what}: {text}', file=sys.stderr)
  ax.text(0.5, where, '\n'.join(textwrap.wrap(text, 60)), transform=ax.transAxes, ha='center',
          va='center', fontsize=7.5, color='#a00000', zorder=10,
          bbox=dict(boxstyle='round', fc='#fff0f0', ec='#a00000', alpha=0.9))


def log_axis(ax, axis='x'):
  """Log scale with labels on the decades only (minor labels overlap on short ranges)."""
  getattr(ax, f'set_{axis}scale')('log')
  getattr(ax, f'{axis}axis').set_minor_formatter(ticker.NullFormatter())


def ci_text(fit, key):
  iv = fit.get('ci', {}).get(key)
  return f' [{iv[0]:.2f}, {iv[1]:.2f}]' if iv else ''


@dataclasses.dataclass
class Sheet:
  """What a law's panel gets from `plot sweep`: the finished runs per objective family (lists of
  row dicts) and their colours; `fits` and `notes` collect what fits.json records."""
  fams: dict
  colors: dict
  fits: dict
  notes: list
  out_dir: str
  driver: Callable  # scaling.fit(law, runs, fix, seed, bootstrap, window, profile) -> dict
  bootstrap: int = 0
  seed: int = 0
  window: int = 0  # the IsoFLOP parabolas' sizes around each minimum (0: all)

  def fit(self, law, runs, **kw):
    """The FIT.json dict of `law` fitted to runs, with the sweep's bootstrap draws."""
    return self.driver(law, runs, bootstrap=self.bootstrap, seed=self.seed, **kw)

  def note(self, ax, what, text, where=0.5):
    note(ax, self.notes, what, text, where)

  def save(self, fig, name):
    return save(fig, os.path.join(self.out_dir, name))
