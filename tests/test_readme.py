"""Every command the README and the docs/ pages show is run by a test; every link they hold
points to a file (and a heading) that exists.

The commands are read from the pages themselves (bash blocks, commented ones included, and inline
`python -m ...` / `bash ...` spans). Each must match a row of RUN_BY: the tests named there run
that command (through the real CLI in a subprocess, on tiny data). The cheap ones with no other
home are run here with the pages' own arguments. A command with no test fails
`test_every_readme_command_is_run_by_a_test`.
"""
import csv
import glob
import json
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from dlm_jax.study import laws

README = os.path.join(ROOT, 'README.md')
# the pages whose commands and links are checked: the README and the docs/ pages it links to
PAGES = [README] + sorted(glob.glob(os.path.join(ROOT, 'docs', '*.md')))
# the pages whose links are checked: those and the other documents they link to
LINKED = PAGES + [os.path.join(ROOT, p) for p in (
    'EXPERIMENTS.md', 'BENCHMARKS.md', 'RELIABILITY.md', 'launch/README.md', 'notebooks/README.md')]


def page_commands():
  """(page, command) for every command of every page."""
  return [(p, c) for p in PAGES for c in readme_commands(open(p, encoding='utf-8').read())]


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
    # the README's "Train AR and MDM and compare them", run as written (tiny model)
    (r'^python -m dlm_jax\.main --config configs/default\.py --workdir runs/(ar|mdm) '
     r'--config\.objective=(ar|mdm)$', ['test_readme.py::test_ar_mdm_recipe']),
    (r'^python -m dlm_jax\.plot curves runs/ar runs/mdm ', ['test_readme.py::test_ar_mdm_recipe']),
    (r'^for r in ar mdm; do python -m dlm_jax\.main .*--mode eval; done$',
     ['test_readme.py::test_ar_mdm_recipe']),
    (r'^python -m dlm_jax\.main --config configs/default\.py --workdir runs/default --mode '
     r'(eval|sample)$', ['test_readme.py::test_quickstart_eval_and_sample']),
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
  """Over the README and every docs/ page; the test commands CI runs stay in the README."""
  found = page_commands()
  cmds = [c for _, c in found]
  assert len(cmds) >= 20, cmds  # the extractor found the pages' commands
  assert len(readme_commands(open(README, encoding='utf-8').read())) >= 5  # the README's own
  for page, c in found:
    hits = [tests for pat, tests in RUN_BY if re.search(pat, c)]
    assert hits, f'{os.path.relpath(page, ROOT)}: command run by no test: {c}'
    if 'pytest' in c:
      assert page == README, f'{page}: the test commands CI runs belong in the README: {c}'
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


def heading_anchors(text):
  """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces to '-',
  a repeated one suffixed -1, -2, ..."""
  out, in_code = set(), False
  for line in text.splitlines():
    if line.startswith('```'):
      in_code = not in_code
      continue
    m = None if in_code else re.match(r'#{1,6} +(.*?)[ #]*$', line)
    if m:
      slug = re.sub(r'[^\w\- ]', '', m.group(1).lower()).replace(' ', '-')
      anchor, n = slug, 0
      while anchor in out:
        n += 1
        anchor = f'{slug}-{n}'
      out.add(anchor)
  return out


def broken_links(text, page):
  """Relative links (and images) of a page, outside code, whose file or heading is missing."""
  prose = re.sub(r'^```.*?^```', '', text, flags=re.M | re.S)
  prose = re.sub(r'`[^`\n]*`', '', prose)
  bad = []
  for target in re.findall(r'\]\(([^)\s]+)(?:\s+"[^"]*")?\)', prose):
    if re.match(r'[a-z]+:', target):  # http:, https:, mailto:
      continue
    path, _, anchor = target.partition('#')
    full = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
    if not os.path.exists(full):
      bad.append(f'{target} (no file {os.path.relpath(full, ROOT)})')
    elif anchor and full.endswith('.md') and anchor not in heading_anchors(
        open(full, encoding='utf-8').read()):
      bad.append(f'{target} (no heading #{anchor} in {os.path.relpath(full, ROOT)})')
  return bad


def test_every_relative_link_points_to_a_file_and_heading():
  """README.md, docs/*.md and the documents they link to: a moved page or a renamed heading fails
  here, not in a reader's browser."""
  n = 0
  for page in LINKED:
    text = open(page, encoding='utf-8').read()
    n += text.count('](')
    assert not broken_links(text, page), (os.path.relpath(page, ROOT), broken_links(text, page))
  assert n >= 30  # the checker saw the links


def test_readme_is_a_front_door():
  """Short, its contents list is its sections, and every docs/ page is one click away."""
  text = open(README, encoding='utf-8').read()
  assert len(text.splitlines()) <= 300
  sections = re.findall(r'^## (.+)$', text, re.M)
  listed = re.findall(r'^- \[(.+?)\]\(#', section(text, 'Contents'), re.M)
  assert listed == [s for s in sections if s != 'Contents']
  for page in PAGES[1:]:
    assert f'](docs/{os.path.basename(page)}' in text, f'{page} is not linked from the README'


@pytest.mark.parametrize('example', ['toy_loss.py', 'toy_law.py'])
def test_extending_shows_the_files_its_tests_add_and_remove(example):
  """README "Extending it": each diff is exactly the file (less its module docstring) that
  tests/test_losses_extending.py / test_laws_extending.py register, run and remove."""
  text = open(README, encoding='utf-8').read()
  path = f'tests/extending/{example}'
  block = re.search(r'```diff\n--- /dev/null\n\+\+\+ b/' + re.escape(path) + r'\n(.*?)```', text,
                    re.S)
  assert block, f'README shows no diff adding {path}'
  shown = ''.join(line[1:] + '\n' for line in block.group(1).splitlines())
  source = open(os.path.join(ROOT, path), encoding='utf-8').read()
  assert source.startswith('"""') and shown == source[source.index('"""\n', 3) + 4:]


def test_link_checker_finds_what_is_broken(tmp_path):
  (tmp_path / 'a.md').write_text('# Title\n\n## Some `code` here\n')
  text = ('[ok](a.md) [ok](a.md#title) [ok](a.md#some-code-here) [ok](#mine) [web](https://x.y/z)\n'
          '## Mine\n[gone](b.md) [bad anchor](a.md#nothing) ![img](pic.png) [self](#none)\n'
          '```\n[in code](c.md)\n```\n`[inline](d.md)`\n')
  (tmp_path / 'p.md').write_text(text)
  rel = lambda name: os.path.relpath(tmp_path / name, ROOT)
  assert broken_links(text, str(tmp_path / 'p.md')) == [
      f'b.md (no file {rel("b.md")})', f'a.md#nothing (no heading #nothing in {rel("a.md")})',
      f'pic.png (no file {rel("pic.png")})', f'#none (no heading #none in {rel("p.md")})']


def _run(args, cwd=ROOT, ok=True):
  p = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                     env=dict(os.environ, PYTHONPATH=ROOT))
  assert (p.returncode == 0) == ok, (args, p.stdout[-2000:], p.stderr[-2000:])
  assert 'Traceback' not in p.stderr, p.stderr
  return p


def section(text, title):
  """The body of a page's `## title` section."""
  return re.search(rf'^## {re.escape(title)}\n(.*?)(?=^## |\Z)', text, re.M | re.S).group(1)


# appended to the recipe's training and eval commands: a model that trains in seconds
TINY = ('--config.train.num_steps=4 --config.train.eval_every=2 --config.train.checkpoint_every=2 '
        '--config.model.d_model=32 --config.model.num_layers=1 --config.model.num_heads=2 '
        '--config.data.seq_len=32 --config.train.batch_size=8 --config.eval.num_batches=1 '
        '--config.sample.num_samples=0 --config.eval.likelihood_rows=4')


def _run_as_written(cmd, cwd, extra=''):
  """A page's command line in bash, as written, with TINY (and `extra`) after --config."""
  cmd = cmd.replace('python -m ', f'{shlex.quote(sys.executable)} -m ')
  cmd = cmd.replace('--config configs/default.py', f'--config configs/default.py {TINY} {extra}')
  p = subprocess.run(['bash', '-c', cmd], cwd=cwd, capture_output=True, text=True,
                     env=dict(os.environ, PYTHONPATH=ROOT))
  assert p.returncode == 0, (cmd, p.stdout[-2000:], p.stderr[-2000:])
  assert 'Traceback' not in p.stderr, p.stderr
  return p


@pytest.mark.slow  # the quickstart's train / eval / sample and plot curves run by default elsewhere
def test_ar_mdm_recipe(tmp_path):
  """The README's "Train AR and MDM and compare them" as written, from a directory outside the
  clone, with TINY after each --config: two runs, their curves, every estimator of each."""
  text = section(open(README, encoding='utf-8').read(), 'Train AR and MDM and compare them')
  cmds = readme_commands(text)
  assert len(cmds) == 4 and len(text.splitlines()) <= 25, cmds  # a recipe, not a chapter
  for c in cmds:
    _run_as_written(c, tmp_path)
  assert (tmp_path / 'runs' / 'ar_vs_mdm.png').is_file()
  for obj, estimators in (('ar', {'ar'}), ('mdm', {'nelbo', 'chain', 'pll'})):
    summary = json.load(open(tmp_path / 'runs' / obj / 'summary.json'))
    assert summary['objective'] == obj and summary['status'] == 'done'
    scores = json.load(open(tmp_path / 'runs' / obj / 'eval' / 'scores.json'))
    assert estimators <= set(scores['likelihood']), scores['likelihood']


@pytest.mark.slow  # --mode eval / sample run by default in test_zeroshot.py and test_sample.py
def test_quickstart_eval_and_sample(tmp_path):
  """The Quickstart's eval and sample lines as written, on a tiny run of the default config."""
  cmds = [c for c in readme_commands(section(open(README, encoding='utf-8').read(), 'Quickstart'))
          if '--mode' in c]
  assert [c.split()[-1] for c in cmds] == ['eval', 'sample'], cmds
  train = cmds[0].replace(' --mode eval', '')
  _run_as_written(train, tmp_path)
  out = _run_as_written(cmds[0], tmp_path).stdout
  assert 'chain' in out and 'ar ' in out  # a dual run: both kinds of estimator
  scores = json.load(open(tmp_path / 'runs' / 'default' / 'eval' / 'scores.json'))
  assert {'ar', 'nelbo', 'chain'} <= set(scores['likelihood'])
  _run_as_written(cmds[1], tmp_path, '--config.sample.num_samples=2')
  rows = [json.loads(l) for l in open(tmp_path / 'runs' / 'default' / 'samples.jsonl')]
  assert {r['mode'] for r in rows if 'gen_ppl' in r} == {'ar', 'mdm'}


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
  sweeps_md = os.path.join(ROOT, 'docs', 'sweeps.md')
  assert f'{n} runs, the CPU demo' in open(sweeps_md, encoding='utf-8').read()  # the page's count
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
