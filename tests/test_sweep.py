"""Sweep launcher and collector on a real 3-run sweep: a crash is reported, a rerun does no work."""
import csv
import json
import os
import signal
import subprocess
import sys
import sysconfig
import textwrap
import time

import pytest

from conftest import ROOT
from dlm_jax.errors import SweepError
from dlm_jax.study import clusters
from dlm_jax.study import sweep
from user_project import user_project

BASE = textwrap.dedent('''
    import os, sys
    sys.path.insert(0, os.path.join({root!r}, 'tests'))
    from conftest import tiny_config
    def get_config():
      c = tiny_config('ar', num_steps=4, eval_every=100, checkpoint_every=100)
      c.sample.num_samples = 0
      return c
''')

SWEEP = textwrap.dedent('''
    from dlm_jax.sweep import Sweep
    def get_sweep():
      return Sweep('t', {base!r}, {{
          'ar_d32': {{'objective': 'ar'}},
          'mdm_d32': {{'objective': 'mdm'}},
          'broken': {{'model.num_heads': 5}},   # 5 heads do not divide d_model=32
      }})
''')


def _sweep(tmp_path):
  (tmp_path / 'base.py').write_text(BASE.format(root=ROOT))
  (tmp_path / 'sweep.py').write_text(SWEEP.format(base=str(tmp_path / 'base.py')))
  return str(tmp_path / 'sweep.py')


def _cli(*args):
  return subprocess.run([sys.executable, '-m', 'dlm_jax.sweep', *args], cwd=ROOT,
                        capture_output=True, text=True, check=False,
                        env=dict(os.environ, PYTHONPATH=ROOT))


def test_local_sweep_collect_and_rerun(tmp_path):
  sw, root = _sweep(tmp_path), str(tmp_path / 'runs')
  p = _cli('local', sw, '--root', root, '--workers', '2')
  assert p.returncode == 1  # one run failed; the others still ran
  assert '2 done, 1 failed (broken)' in p.stdout
  rows = list(csv.DictReader(open(os.path.join(root, 'runs.csv'))))
  by = {r['run']: r for r in rows}
  assert [r['run'] for r in rows] == ['ar_d32', 'mdm_d32', 'broken']
  assert by['ar_d32']['status'] == 'done' and by['ar_d32']['loss_metric'] == 'ar_nll'
  assert by['mdm_d32']['loss_metric'] == 'mdm_nelbo' and float(by['mdm_d32']['loss']) > 0
  assert by['broken']['status'] == 'failed'
  assert 'config.model.num_heads: 5 heads do not divide d_model=32' in by['broken']['error']
  for k in ('N', 'N_total', 'D', 'U', 'C', 'epochs'):
    assert float(by['ar_d32'][k]) > 0
  assert os.path.isdir(os.path.join(root, '.xla_cache'))  # the shared compilation cache
  mtime = os.path.getmtime(os.path.join(root, 'ar_d32', 'summary.json'))
  again = _cli('local', sw, '--root', root, '--workers', '2', '--only', 'ar_d32,mdm_d32')
  assert again.returncode == 0 and '2 runs already done, 0 to run' in again.stdout
  assert os.path.getmtime(os.path.join(root, 'ar_d32', 'summary.json')) == mtime
  # validation curves of any set of runs
  c = subprocess.run([sys.executable, '-m', 'dlm_jax.plot', 'curves', os.path.join(root, 'ar_d32'),
                      os.path.join(root, 'mdm_d32'), '--out', str(tmp_path / 'curves')], cwd=ROOT,
                     capture_output=True, text=True, check=False)
  assert c.returncode == 0, c.stderr
  assert (tmp_path / 'curves.png').stat().st_size > 0 and (tmp_path / 'curves.svg').exists()


@pytest.mark.slow  # missing rows also in test_reliability::test_a_damaged_run_file_is_named...
def test_collect_lists_missing_runs_and_dry_runs(tmp_path):
  sw, root = _sweep(tmp_path), str(tmp_path / 'empty')
  p = _cli('collect', sw, '--root', root)
  assert p.returncode == 0 and p.stdout.count('  missing  ') == 3
  d = _cli('local', sw, '--root', root, '--dry-run')
  assert d.returncode == 0 and d.stdout.count('-m dlm_jax.main') == 3
  assert not os.path.exists(os.path.join(root, 'ar_d32'))
  s = _cli('slurm', sw, '--root', root, '--dry-run')
  assert "#SBATCH --array=0-2" in s.stdout and "  2) cmd=(" in s.stdout
  t = _cli('tpu', sw, '--root', root, '--zone', 'z', '--bucket', 'b')
  assert t.stdout.count('launch/tpu_pod.sh') == 3


def test_sweep_files_expand_deterministically():
  a = sweep.load_sweep(os.path.join(ROOT, 'configs', 'sweeps', 'isoflop_micro.py'))
  b = sweep.load_sweep(os.path.join(ROOT, 'configs', 'sweeps', 'isoflop_micro.py'))
  assert a.runs == b.runs and len(a.runs) >= 50
  assert sweep.fmt_num(1.5e11) == '1.5e11' and sweep.fmt_num(0.25) == '0.25'


FAULTS = textwrap.dedent('''
    from dlm_jax.sweep import Sweep
    def get_sweep():
      return Sweep('faults', {base!r}, {{
          'ok': {{'objective': 'ar'}},
          'no_corpus': {{'data.corpus': '/nonexistent/corpus.txt'}},
          'nan': {{'train.lr': 1e30, 'train.grad_clip': 0.0, 'train.warmup_steps': 0,
                   'train.b1': 0.0, 'train.checkpoint_every': 1}},
          'blocked': {{'objective': 'ar'}},     # its run directory is a file
          'full_disk': {{'objective': 'mdm'}},  # run with a file-size limit, then without
      }})
''')


@pytest.mark.slow  # a failing run among good ones also in test_local_sweep_collect_and_rerun
def test_sweep_with_injected_failures_reports_exactly_those_runs(tmp_path):
  """Failures injected into a 5-run sweep: a missing corpus, a NaN loss, a run directory that
  cannot be created, and a run whose disk fills. The sweep finishes the others, the collector
  lists exactly the broken runs with their reasons, and rerunning after the cause is removed
  completes them without redoing the finished ones."""
  import resource  # pylint: disable=g-import-not-at-top
  (tmp_path / 'base.py').write_text(BASE.format(root=ROOT))
  (tmp_path / 'faults.py').write_text(FAULTS.format(base=str(tmp_path / 'base.py')))
  sw, root = str(tmp_path / 'faults.py'), str(tmp_path / 'runs')
  os.makedirs(root)
  open(os.path.join(root, 'blocked'), 'w').write('not a directory\n')

  def limited():
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))  # EFBIG past 256 KiB
  env = dict(os.environ, PYTHONPATH=ROOT)
  full = subprocess.run([sys.executable, '-m', 'dlm_jax.sweep', 'local', sw, '--root', root,
                         '--only', 'full_disk'], cwd=ROOT, capture_output=True, text=True,
                        env=env, preexec_fn=limited, check=False)
  assert full.returncode == 1 and '0 done, 1 failed (full_disk)' in full.stdout, full.stdout
  p = _cli('local', sw, '--root', root, '--workers', '2',
           '--only', 'ok,no_corpus,nan,blocked')
  assert p.returncode == 1, p.stdout + p.stderr
  assert '1 done, 3 failed' in p.stdout
  rows = {r['run']: r for r in csv.DictReader(open(os.path.join(root, 'runs.csv')))}
  assert list(rows) == ['ok', 'no_corpus', 'nan', 'blocked', 'full_disk']
  assert {k for k, r in rows.items() if r['status'] == 'failed'} == {
      'no_corpus', 'nan', 'blocked', 'full_disk'}
  assert "no such file or directory (/nonexistent/corpus.txt)" in rows['no_corpus']['error']
  assert 'non-finite loss or gradient at step' in rows['nan']['error']
  assert 'exists and is not a directory' in rows['blocked']['error']
  assert 'File too large' in rows['full_disk']['error']
  mtime = os.path.getmtime(os.path.join(root, 'ok', 'summary.json'))
  os.remove(os.path.join(root, 'blocked'))  # the causes removed: rerun everything
  again = _cli('local', sw, '--root', root, '--workers', '2', '--only', 'ok,blocked,full_disk')
  assert again.returncode == 0 and '1 runs already done, 2 to run' in again.stdout, again.stdout
  assert os.path.getmtime(os.path.join(root, 'ok', 'summary.json')) == mtime
  rows = {r['run']: r for r in csv.DictReader(open(os.path.join(root, 'runs.csv')))}
  assert [k for k, r in rows.items() if r['status'] != 'done'] == ['no_corpus', 'nan']


def test_bad_sweep_files_and_run_names_are_one_line_errors(tmp_path):
  sw = _sweep(tmp_path)
  p = _cli('local', sw, '--root', str(tmp_path / 'r'), '--only', 'ar_d32,nope')
  assert p.returncode == 2 and p.stderr.strip() == 'error: --only: unknown runs nope'
  for text in ('def get_sweep(:\n', 'x = 1\n'):
    (tmp_path / 'bad.py').write_text(text)
    p = _cli('list', str(tmp_path / 'bad.py'))
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and 'bad.py' in lines[0], p.stderr
  assert not (tmp_path / 'r').exists()


SLOW_BASE = textwrap.dedent('''
    import os, sys
    sys.path.insert(0, os.path.join({root!r}, 'tests'))
    from conftest import tiny_config
    def get_config():
      c = tiny_config('ar', num_steps=2000, eval_every=5000, checkpoint_every=5000, log_every=50)
      c.sample.num_samples = 0
      return c
''')


@pytest.mark.slow  # ~2 min (two training processes under submitit); the dry-run test runs by default
def test_submitit_backend_requeues_a_preempted_run_which_resumes(tmp_path):
  """One run as a submitit job (submitit's local cluster: the same job, signal and requeue
  machinery as on SLURM, run here). Preempted mid-run (submitit's preemption signal), the job
  checkpoints through the training process's SIGTERM path, is requeued, and the requeued job
  resumes the run from that checkpoint and finishes it."""
  pytest.importorskip('submitit', reason='needs the [slurm] extra')
  (tmp_path / 'base.py').write_text(SLOW_BASE.format(root=ROOT))
  root, wd = str(tmp_path / 'runs'), str(tmp_path / 'runs' / 'r')
  cmd = sweep.command(str(tmp_path / 'base.py'), wd, {}) + ['--config.train.preempt_timeout=40']
  job = clusters.RunJob(cmd, wd, sweep.worker_env(root, 1), grace_s=50)
  params = clusters.parameters(time_limit='00:10:00', signal_s=60, gpus=0)
  assert params['slurm_signal_delay_s'] == 60 and params['timeout_min'] == 10
  ex = clusters.executor(root, params, cluster='local')
  j = clusters.submit({'r': job}, ex, root, log=lambda _: None)['r']
  metrics = os.path.join(wd, 'metrics.jsonl')
  deadline = time.time() + 300
  while not (os.path.exists(metrics) and len(open(metrics).readlines()) >= 2):
    assert time.time() < deadline and not j.done(), j.stderr()
    time.sleep(0.1)
  # submitit's preemption signal to the job process, as SLURM's would reach it (the local
  # controller, j._process, only forwards SIGTERM)
  controller = j._process.pid  # pylint: disable=protected-access
  (task,) = open(f'/proc/{controller}/task/{controller}/children').read().split()
  os.kill(int(task), signal.SIGUSR2)
  summary = j.result()
  assert summary['status'] == 'done' and summary['steps'] == 2000
  log = open(os.path.join(wd, 'launcher.log')).read()
  assert log.count('submitit job') == 2, log  # the first job and its requeued copy
  first, second = log.split('submitit job')[1:]
  assert 'preempted' in first.lower() or 'checkpoint' in first.lower(), first[-1500:]
  resumed = [l for l in second.splitlines() if l.startswith('resumed ')]
  assert resumed and 0 < int(resumed[0].split()[-1]) < 2000, second[:1500]
  steps = [json.loads(l)['step'] for l in open(metrics)]
  assert steps == sorted(set(steps)) and steps[-1] == 2000  # each step logged once
  assert json.load(open(os.path.join(root, 'submitit_jobs.json'))) == {'r': j.job_id}


def test_submitit_dry_run_lists_the_jobs_it_would_submit(tmp_path):
  pytest.importorskip('submitit', reason='needs the [slurm] extra')
  sw, root = _sweep(tmp_path), str(tmp_path / 'runs')
  p = _cli('slurm', sw, '--root', root, '--backend', 'submitit', '--dry-run', '--partition', 'gpu',
           '--time', '02:30:00', '--signal-seconds', '90')
  assert p.returncode == 0, p.stderr
  out = p.stdout.splitlines()
  assert out[0] == '0 runs already done; 3 to submit'
  params = json.loads(out[1].split(' ', 2)[2])
  assert params['timeout_min'] == 150 and params['slurm_signal_delay_s'] == 90
  assert params['slurm_partition'] == 'gpu'
  assert [l.split(':')[0] for l in out[2:]] == ['ar_d32', 'mdm_d32', 'broken']
  assert all(l.endswith('--config.train.preempt_timeout=70') for l in out[2:])
  assert not os.path.exists(os.path.join(root, 'submitit'))  # a dry run submits nothing
  p = _cli('slurm', sw, '--root', root, '--backend', 'submitit', '--signal-seconds', '30')
  assert p.returncode == 2 and p.stderr.strip() == (
      'error: --signal-seconds 30: must be >= 40 (checkpoint time before the kill)')


def test_sbatch_array_is_preemption_safe_and_valid_bash(tmp_path):
  """`sweep slurm` (sbatch backend): one array task per run under srun, SIGTERM --signal-seconds
  ahead, the run's watchdog 20 s shorter, the task requeued on exit 143; the script parses."""
  sw, root = _sweep(tmp_path), str(tmp_path / 'runs')
  p = _cli('slurm', sw, '--root', root, '--signal-seconds', '90', '--only', 'ar_d32,mdm_d32')
  assert p.returncode == 0, p.stderr
  script = open(os.path.join(root, 'sweep.sbatch')).read()
  lines = script.splitlines()
  for line in ('#SBATCH --array=0-1', '#SBATCH --requeue', '#SBATCH --signal=TERM@90',
               'srun --kill-on-bad-exit=1 "${cmd[@]}" --config.train.preempt_timeout=70 || rc=$?',
               'if [[ $rc -eq 143 ]]; then scontrol requeue '
               '"${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"; exit 0; fi'):
    assert line in lines, line
  assert [l.split(')')[0].strip() for l in lines if l.startswith('  ') and ') cmd=(' in l] == [
      '0', '1']
  assert subprocess.run(['bash', '-n', os.path.join(root, 'sweep.sbatch')]).returncode == 0


def test_a_relative_base_config_is_found_beside_the_sweep_file_then_by_shipped_name(
    tmp_path, monkeypatch):
  """Not against the install location or the working directory: the same sweep file loads from
  anywhere, from a clone or a wheel."""
  (tmp_path / 'exp').mkdir()
  (tmp_path / 'exp' / 'base.py').write_text(
      'from dlm_jax import config\ndef get_config():\n  return config.base()\n')
  for base, want in (('base.py', str(tmp_path / 'exp' / 'base.py')),
                     ('configs/sweeps/micro_base.py', os.path.join(
                         ROOT, 'dlm_jax', 'configs', 'sweeps', 'micro_base.py')),
                     ('sweeps/micro_base', os.path.join(
                         ROOT, 'dlm_jax', 'configs', 'sweeps', 'micro_base.py'))):
    (tmp_path / 'exp' / 's.py').write_text(
        f'from dlm_jax.sweep import Sweep\ndef get_sweep():\n  return Sweep("s", {base!r}, {{}})\n')
    monkeypatch.chdir(tmp_path)  # neither the sweep's folder nor the clone
    sw = sweep.load_sweep('exp/s.py')
    assert os.path.realpath(sweep.base_config_path(sw)) == os.path.realpath(want), base
    assert sweep.default_root(sw) == str(tmp_path / 'runs' / 'sweeps' / 's')
  # a shipped sweep file by its README path or its name, outside a clone
  assert sweep.load_sweep('configs/sweeps/dual_ratio.py').runs == sweep.load_sweep(
      'sweeps/dual_ratio').runs
  (tmp_path / 'exp' / 's.py').write_text(
      'from dlm_jax.sweep import Sweep\ndef get_sweep():\n  return Sweep("s", "nope.py", {})\n')
  with pytest.raises(SweepError, match=r"exp/s.py: base config: nope.py: no such file beside "
                     r"the sweep file nor a shipped config name"):
    sweep.load_sweep('exp/s.py')


def test_runs_inherit_the_users_directory_and_pythonpath(tmp_path, monkeypatch):
  """The children run where the user is, with the user's PYTHONPATH (plus the folder this dlm_jax
  came from, here the clone), never in or with the install location."""
  monkeypatch.setenv('PYTHONPATH', f'/mine{os.pathsep}{ROOT}')
  env = sweep.worker_env(str(tmp_path / 'runs'), 1)
  assert env['PYTHONPATH'].split(os.pathsep) == ['/mine', ROOT]
  assert env['JAX_COMPILATION_CACHE_DIR'] == str(tmp_path / 'runs' / '.xla_cache')
  monkeypatch.setenv('PYTHONPATH', '/mine')
  assert sweep.worker_env('r', 1)['PYTHONPATH'] == f'/mine{os.pathsep}{ROOT}'
  site_dir = sysconfig.get_paths()['purelib']
  assert site_dir not in sweep.worker_env('r', 1)['PYTHONPATH']
  monkeypatch.chdir(tmp_path)
  (tmp_path / 'log').write_text('')
  with open(tmp_path / 'log', 'a') as log:
    code = sweep.Children().run([sys.executable, '-c', 'import os; print(os.getcwd())'], log,
                                dict(os.environ))
  assert code == 0 and (tmp_path / 'log').read_text().strip() == str(tmp_path)


def test_a_users_sweep_runs_from_their_directory_with_relative_paths(tmp_path):
  """A sweep of the user's own: base config beside the sweep file importing a helper beside it
  (on the user's PYTHONPATH), a corpus relative to the working directory, no --root: the run
  lands under the working directory, which is printed."""
  user_project(tmp_path)
  (tmp_path / 'exp' / 'sweep.py').write_text(
      'from dlm_jax.sweep import Sweep\ndef get_sweep():\n'
      '  return Sweep("mine", "base.py", {"d32": {"model.d_model": 32}})\n')
  p = subprocess.run([sys.executable, '-m', 'dlm_jax.sweep', 'local', 'exp/sweep.py'],
                     cwd=tmp_path, capture_output=True, text=True, check=False,
                     env=dict(os.environ, PYTHONPATH=f'{tmp_path / "exp"}{os.pathsep}{ROOT}'))
  root = tmp_path / 'runs' / 'sweeps' / 'mine'
  assert p.returncode == 0, p.stdout + p.stderr + open(root / 'd32' / 'launcher.log').read()
  assert f'runs directory: {root} (--root to choose another)' in p.stdout
  assert (root / 'd32' / 'summary.json').is_file() and (root / 'runs.csv').is_file()
