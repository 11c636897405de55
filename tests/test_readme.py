"""Every command the README shows is run by a test.

The commands are read from the README itself (bash blocks, commented ones included, and inline
`python -m ...` / `bash ...` spans). Each must match a row of RUN_BY: the tests named there run
that command (through the real CLI in a subprocess, on tiny data). The cheap ones with no other
home are run here with the README's own arguments. A README command with no test fails
`test_every_readme_command_is_run_by_a_test`.
"""
import csv
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from dlm_jax.study import laws

README = os.path.join(ROOT, 'README.md')


def readme_commands(text):
  """Commands in ```bash blocks (continuation lines joined, comments after a command dropped,
  commands inside comments kept) and inline `python ...` / `bash ...` spans."""
  out, in_block, buf = [], False, ''
  for line in text.splitlines():
    if line.startswith('```'):
      in_block = line.startswith('```bash') if not in_block else False
      continue
    if in_block:
      s = line.strip()
      if s.startswith('#'):
        out += re.findall(r'(python -m [\w.]+[^#]*)', s)
        continue
      s = re.split(r'\s{2,}#', s)[0].rstrip()
      if buf:
        s, buf = f'{buf} {s}', ''
      if s.endswith('\\'):
        buf = s[:-1].rstrip()
        continue
      if re.match(r'^(for .*; do )?(python|bash)\b', s):
        out.append(s)
    else:
      out += re.findall(r'`((?:python -m|bash) [^`]+)`', line)
  return [' '.join(c.split()) for c in out]


# (pattern a README command matches, tests that run it)
RUN_BY = [
    (r'^python -m pip install -e \. && python -m dlm_jax\.main --config configs/default\.py',
     ['test_train.py::test_default_config_loss_decreases', '.ci/run']),
    (r'^python -m pip install -e "\.\[test\]" && python -m pytest -q -n 2 --dist '
     r'loadfile -m "not slow and not extras"$', ['.ci/run']),
    (r'^python -m pip install torch --index-url', ['.ci/run']),
    (r'^python -m pip install -e "\.\[test,lmeval,hf,trackers\]" && python -m pytest -q -n 2 --dist '
     r'loadfile -m "extras', ['.ci/run']),
    (r'dlm_jax\.main --config configs/default\.py --workdir runs/x --config\.objective',
     ['test_config.py::test_bad_config_exits_2_with_one_line_and_writes_nothing',
      'test_train.py::test_run_directory_contract']),
    (r'^python -m dlm_jax\.prepare --source', ['test_prepare.py::test_tfds_builder_prepare_then_train',
                                               'test_prepare.py::test_prepared_errors']),
    (r'^python -m dlm_jax\.bench train', ['test_perf.py::test_bench_train_reports_mfu_and_flops']),
    (r'^python -m dlm_jax\.flops', ['test_readme.py::test_flops_table']),
    (r'^python -m dlm_jax\.prepare --tasks all', ['test_zeroshot.py::test_build_from_the_real_package']),
    (r'--mode eval', ['test_zeroshot.py::test_mode_eval_end_to_end']),
    (r'^python -m dlm_jax\.lmeval', ['test_lmeval.py::test_cli_registers_the_model']),
    (r'^python -m dlm_jax\.probes', ['test_probes.py::test_reversal_probe_end_to_end']),
    (r'--mode sample', ['test_sample.py::test_mode_sample_cli_writes_scored_samples']),
    (r'^python -m dlm_jax\.sweep local configs/sweeps/objectives_default\.py',
     ['test_readme.py::test_sweep_commands']),
    (r'dlm_jax\.main --config configs/owt\.py --workdir runs/owt --config\.mesh',
     ['test_sharding.py::test_fsdp_mesh_matches_single_device', 'test_launch.py::test_paper_configs']),
    (r'--coordinator_address', ['test_sharding.py::test_two_processes_match_one']),
    (r'^python -m dlm_jax\.data\.tfds_text', ['test_prepare.py::test_tfds_builder_prepare_then_train']),
    (r'^python -m dlm_jax\.prepare --local_text',
     ['test_prepare.py::test_prepare_local_text_builds_the_tfds_dataset_then_prepares_it']),
    (r'dlm_jax\.main --config configs/owt\.py --workdir runs/owt_mdm$',
     ['test_launch.py::test_paper_configs']),
    (r'^python -m dlm_jax\.sweep slurm +configs/sweeps/isoflop_micro\.py --backend submitit',
     ['test_sweep.py::test_submitit_dry_run_lists_the_jobs_it_would_submit',
      'test_sweep.py::test_submitit_backend_requeues_a_preempted_run_which_resumes']),
    (r'^python -m dlm_jax\.sweep (list|local|slurm|tpu|collect) +configs/sweeps/isoflop_micro',
     ['test_readme.py::test_sweep_commands', 'test_sweep.py::test_local_sweep_collect_and_rerun']),
    (r'^python -m dlm_jax\.scaling fit', ['test_readme.py::test_scaling_fit_and_plot_curves_commands',
                                          'test_scaling.py::test_cli_isoflop_law',
                                          'test_scaling.py::test_cli_power_law',
                                          'test_scaling.py::test_cli_contract']),
    (r'^python -m dlm_jax\.plot curves', ['test_readme.py::test_scaling_fit_and_plot_curves_commands']),
    (r'^python -m dlm_jax\.plot sweep', ['test_readme.py::test_plot_sweep_command',
                                         'test_scaling.py::test_plot_sweep_cli_draws_the_plots_asked_for',
                                         'test_notebooks.py::test_notebook_executes_from_its_folder']),
    (r'^python -m dlm_jax\.hf import|init_config\.py',
     ['test_hf.py::test_ar2diff_from_a_pretrained_checkpoint_end_to_end']),
    (r'^python -m dlm_jax\.hf export',
     ['test_hf_native.py::test_a_native_run_exported_and_reimported_is_the_same_model',
      'test_hf.py::test_import_then_export_is_bit_identical_and_loads']),
    (r'^python -m dlm_jax\.prepare --source ~/data/fineweb',
     ['test_prepare.py::test_parquet_and_arrow_sources_prepare_like_jsonl']),
    (r'^bash launch/(tpu_pod|slurm)\.sh', ['test_launch.py::test_tpu_dry_run',
                                           'test_launch.py::test_slurm_dry_run']),
]


def test_every_readme_command_is_run_by_a_test():
  cmds = readme_commands(open(README, encoding='utf-8').read())
  assert len(cmds) >= 20, cmds  # the extractor found the README's commands
  for c in cmds:
    hits = [tests for pat, tests in RUN_BY if re.search(pat, c)]
    assert hits, f'README command run by no test: {c}'
  for pat, tests in RUN_BY:
    for t in tests:
      if t == '.ci/run':  # CI runs the README's test commands as the README writes them
        ci = open(os.path.join(ROOT, '.ci', 'run'), encoding='utf-8').read()
        for c in cmds:
          if re.search(pat, c) and 'pytest' in c:
            assert c.split('&& python ')[-1].replace('-m pytest', '"$PY" -m pytest', 1) in ci, c
        continue
      mod, fn = t.split('::')
      src = open(os.path.join(ROOT, 'tests', mod), encoding='utf-8').read()
      assert re.search(rf'^def {fn}\(', src, re.M), t


def _run(args, cwd=ROOT, ok=True):
  p = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                     env=dict(os.environ, PYTHONPATH=ROOT))
  assert (p.returncode == 0) == ok, (args, p.stdout[-2000:], p.stderr[-2000:])
  assert 'Traceback' not in p.stderr, p.stderr
  return p


def test_flops_table():
  out = _run(['-m', 'dlm_jax.flops']).stdout
  assert 'small' in out and 'base' in out
  assert _run(['-m', 'dlm_jax.flops', '8192', '128']).stdout != out


@pytest.mark.slow  # sweep local / collect run by default in test_sweep.py::test_local_sweep_collect_and_rerun
def test_sweep_commands(tmp_path):
  """The README's sweep commands on its isoflop_micro sweep (list, local --dry-run, slurm, tpu,
  collect), and `sweep local` on a one-run sweep of objectives_default's shape."""
  root = str(tmp_path / 'iso')
  sw = 'configs/sweeps/isoflop_micro.py'
  out = _run(['-m', 'dlm_jax.sweep', 'list', sw, '--root', root]).stdout
  n = int(re.search(r'(\d+) runs in', out).group(1))
  assert n >= 50 and out.count('missing') == n
  assert f'{n} runs, the CPU demo' in open(README, encoding='utf-8').read()  # the README's count
  out = _run(['-m', 'dlm_jax.sweep', 'local', sw, '--root', root, '--workers', '2',
              '--dry-run']).stdout
  assert out.count('dlm_jax.main') == n
  out = _run(['-m', 'dlm_jax.sweep', 'slurm', sw, '--root', root]).stdout
  assert '#SBATCH --array=0-' in out and os.path.exists(os.path.join(root, 'sweep.sbatch'))
  out = _run(['-m', 'dlm_jax.sweep', 'tpu', sw, '--zone', 'Z', '--bucket', 'B']).stdout
  assert 'tpu_pod.sh' in out
  _run(['-m', 'dlm_jax.sweep', 'collect', sw, '--root', root, '--csv', str(tmp_path / 'r.csv')])
  rows = list(csv.DictReader(open(tmp_path / 'r.csv')))
  assert len(rows) == n and {r['status'] for r in rows} == {'missing'}
  # sweep local for real: a one-run sweep file in objectives_default's form
  src = open(os.path.join(ROOT, 'configs/sweeps/objectives_default.py')).read()
  assert 'def get_sweep' in src
  one = tmp_path / 'one.py'
  one.write_text(f'import sys\nsys.path.insert(0, {ROOT!r})\n' + src + '''

_full = get_sweep


def get_sweep():
  s = _full()
  name = sorted(s.runs)[0]
  s.runs = {name: dict(s.runs[name], **{'train.num_steps': 2, 'train.eval_every': 2,
                                        'train.checkpoint_every': 2, 'model.d_model': 32,
                                        'model.num_layers': 1, 'model.num_heads': 2,
                                        'sample.num_samples': 0, 'eval.num_batches': 1})}
  return s
''')
  out = _run(['-m', 'dlm_jax.sweep', 'local', str(one), '--root', str(tmp_path / 'od')]).stdout
  assert '1 done, 0 failed' in out


def _runs_table(path):
  """A runs table with the collector's columns: AR and MDM at 3 budgets x 5 sizes."""
  law = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
  rows = []
  for C in (1e15, 1e16, 1e17):
    n_opt = laws.compute_optimal(law, C)[0]
    for i, k in enumerate(np.linspace(-1.2, 1.2, 5)):
      for obj in ('ar', 'mdm'):
        N = n_opt * np.exp(k)
        D = C / (6 * N)
        loss = laws.chinchilla_loss(law, N, D) * (1.0 if obj == 'ar' else 1.1)
        rows.append(dict(run=f'{obj}_C{C:.0e}_{i}', status='done', objective=obj, ratio=0.0,
                         size=f's{i}', N=N, N_total=N * 1.2, N_nonembed=N, D=D, U=D, epochs=1.0,
                         C=C, loss=loss, loss_metric='final_ar_nll', steps=10, wall_time_s=1.0,
                         error=''))
  with open(path, 'w', newline='') as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)


@pytest.mark.slow  # the fit CLI contract and plots run by default in test_scaling.py and the notebooks
def test_scaling_fit_and_plot_curves_commands(tmp_path, tiny_run):
  """`scaling fit --law chinchilla` (200 bootstrap draws and profile intervals by default) and
  `plot curves` as the README writes them."""
  _runs_table(tmp_path / 'runs.csv')
  _run(['-m', 'dlm_jax.scaling', 'fit', '--runs', 'runs.csv', '--law', 'chinchilla', '--out',
        'fit.json'], cwd=tmp_path)
  fit = json.load(open(tmp_path / 'fit.json'))
  assert fit['bootstrap']['requested'] == 200 and set(fit['profile']) == {'alpha', 'beta'}
  _, run, _ = tiny_run('dual')
  _run(['-m', 'dlm_jax.plot', 'curves', run, '--out', str(tmp_path / 'curves')])
  assert [p for p in os.listdir(tmp_path) if p.startswith('curves')]


@pytest.mark.slow  # the same fits and plots as the notebook test, which runs by default
def test_plot_sweep_command(tmp_path):
  """`plot sweep runs.csv --out-dir plots/` (every law fitted per family, Chinchilla included)."""
  _runs_table(tmp_path / 'runs.csv')
  _run(['-m', 'dlm_jax.plot', 'sweep', 'runs.csv', '--out-dir', 'plots/'], cwd=tmp_path)
  assert [p for p in os.listdir(tmp_path / 'plots') if p.endswith('.png')]
  # a table with no finished run: one line, exit 2, no plots (before: exit 0, empty plots)
  lines = open(tmp_path / 'runs.csv').read().splitlines()
  (tmp_path / 'empty.csv').write_text(lines[0] + '\n')
  p = _run(['-m', 'dlm_jax.plot', 'sweep', 'empty.csv', '--out-dir', 'none/'], cwd=tmp_path,
           ok=False)
  assert p.returncode == 2 and p.stderr.startswith('error: no finished run')
  assert not os.path.exists(tmp_path / 'none')
