"""Meshes, partition rules, gradient accumulation, 8 fake devices and 2 real processes."""
import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from conftest import ROOT, tiny_config
from dlm_jax import config as config_lib
from dlm_jax.core import sharding
from dlm_jax.run import loop


def _losses(workdir):
  rows = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  return {r['step']: r['loss'] for r in rows if 'loss' in r}


def test_mesh_shape_and_errors():
  assert sharding.mesh_shape(dict(data=-1, fsdp=4, tensor=1), 8) == [2, 4, 1]
  assert sharding.mesh_shape(dict(data=2, fsdp=2, tensor=-1), 8) == [2, 2, 2]
  with pytest.raises(sharding.MeshError, match='do not divide the 8 devices'):
    sharding.mesh_shape(dict(data=-1, fsdp=3, tensor=1), 8)
  with pytest.raises(sharding.MeshError, match='use 4 of the 8 devices'):
    sharding.mesh_shape(dict(data=2, fsdp=2, tensor=1), 8)
  with pytest.raises(sharding.MeshError, match='at most one axis'):
    sharding.mesh_shape(dict(data=-1, fsdp=-1, tensor=1), 8)
  mesh = sharding.make_mesh(dict(data=-1, fsdp=1, tensor=1))
  with pytest.raises(sharding.MeshError, match='grad_accum=3'):
    sharding.check_batch(mesh, 8, grad_accum=3)


def test_logical_rules_replicate_what_does_not_divide():
  class FakeMesh:
    shape = {'data': 2, 'fsdp': 4, 'tensor': 2}
  m = FakeMesh()
  assert sharding.logical_to_spec(P('layers', 'embed', 'heads', 'head_dim'), (2, 64, 4, 16),
                                  m) == P(None, 'fsdp', 'tensor', None)
  # vocabulary 261 is odd: not split over tensor; 62 is not a multiple of fsdp=4
  assert sharding.logical_to_spec(P('vocab', 'embed'), (261, 62), m) == P(None, None)
  assert sharding.logical_to_spec(P('norm'), (64,), m) == P(None)


def test_grad_accumulation_equals_one_pass(tmp_path):
  """AR loss is a token mean: 4 microbatches give the same updates as one pass."""
  runs = {}
  for k in (1, 4):
    c = tiny_config('ar', num_steps=6, grad_accum=k, eval_every=100, checkpoint_every=100)
    c.sample.num_samples = 0
    loop.train_and_evaluate(config_lib.validate(c), str(tmp_path / f'k{k}'))
    runs[k] = _losses(str(tmp_path / f'k{k}'))
  assert sorted(runs[1]) == list(range(1, 7))
  np.testing.assert_allclose([runs[4][s] for s in sorted(runs[1])],
                             [runs[1][s] for s in sorted(runs[1])], rtol=2e-5)


def test_grad_accumulation_dual_uneven_counts(tmp_path):
  """Dual 1/3 of 8 rows over 2 microbatches: MDM counts differ per microbatch (unrolled path)."""
  c = tiny_config('dual', num_steps=3, grad_accum=2, eval_every=100, checkpoint_every=100)
  c.dual.ar_weight = '1/3'
  c.sample.num_samples = 0
  s = loop.train_and_evaluate(config_lib.validate(c), str(tmp_path / 'w'))
  assert s['status'] == 'done' and np.isfinite(s['final']['mdm_nelbo'])


FAKE8 = textwrap.dedent('''
    import json, os, sys
    sys.path.insert(0, {root!r}); sys.path.insert(0, os.path.join({root!r}, 'tests'))
    import jax
    from conftest import tiny_config
    from dlm_jax import config as config_lib
    from dlm_jax.core import objectives, sharding
    from dlm_jax.run import loop, setup as setup_lib, step as step_lib
    assert jax.device_count() == 8, jax.devices()
    def cfg(steps, data, fsdp):
      c = tiny_config('dual', num_steps=steps, checkpoint_every=10, eval_every=10,
                      lr_schedule='constant')  # the 10-step leg has the 20-step run's schedule
      c.sample.num_samples = 0
      c.mesh.data, c.mesh.fsdp = data, fsdp
      return config_lib.validate(c)
    out = {{}}
    s = loop.train_and_evaluate(cfg(20, 2, 4), {work!r} + '/sharded')
    out['bytes'] = [s['param_bytes'], s['param_bytes_per_device']]
    setup = setup_lib.build(cfg(20, 2, 4))
    _, _, sh = step_lib.state_layout(setup)
    out['q_spec'] = list(sh.params['layers']['q']['kernel'].spec)
    out['mu_spec'] = list(sh.opt_state[1][0].mu['layers']['q']['kernel'].spec)
    # per-device FLOPs of the compiled dual step: 8-way data parallelism must split the work
    def step_flops(devices, fsdp=1):
      setup.mesh = sharding.make_mesh(dict(data=-1, fsdp=fsdp, tensor=1), devices)
      setup.model = setup.model.clone(mesh=setup.mesh)
      tx, sched, sh = step_lib.state_layout(setup)
      loss = objectives.make_loss_fn(setup.model, setup.cfg, True, setup.mesh)
      f = jax.jit(step_lib.make_train_step(loss, tx, sched, 0.0), static_argnums=2,
                  in_shardings=(sh, sharding.batch_sharding(setup.mesh)))
      st = jax.eval_shape(lambda: step_lib.init_state(setup, tx))
      ca = f.lower(st, {{'targets': jax.ShapeDtypeStruct((8, 32), 'int32')}}, 4).compile()
      ca = ca.cost_analysis()
      return (ca[0] if isinstance(ca, list) else ca)['flops']
    out['flops'] = [step_flops(jax.devices()[:1]), step_flops(jax.devices()),
                    step_flops(jax.devices(), fsdp=8)]
    # interrupted on data=8, resumed on data=2 x fsdp=4: orbax reshards the checkpoint
    loop.train_and_evaluate(cfg(10, 8, 1), {work!r} + '/moved')
    loop.train_and_evaluate(cfg(20, 2, 4), {work!r} + '/moved')
    print('RESULT' + json.dumps(out))
''')


@pytest.mark.slow  # a 2 x 2 data x fsdp mesh runs by default in test_reliability's SIGKILL resume
@pytest.mark.parametrize('objective', ['dual'])
def test_fsdp_mesh_matches_single_device(tmp_path, objective):
  """data=2 x fsdp=4 on 8 fake CPU devices follows the 1-device run step for step; its
  parameters and Adam moments are split over fsdp; a checkpoint written on data=8 resumes on
  data=2 x fsdp=4 and continues the same trajectory."""
  c = tiny_config(objective, num_steps=20, checkpoint_every=10, eval_every=10,
                  lr_schedule='constant')
  c.sample.num_samples = 0
  ref = loop.train_and_evaluate(config_lib.validate(c), str(tmp_path / 'single'))
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             JAX_PLATFORMS='cpu')
  code = FAKE8.format(root=ROOT, work=str(tmp_path))
  p = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True,
                     timeout=600, check=False)
  assert p.returncode == 0, p.stderr[-3000:]
  out = json.loads(p.stdout.split('RESULT')[-1])
  assert out['q_spec'] == [None, 'fsdp', None, None]
  assert out['mu_spec'] == out['q_spec']
  total, per_device = out['bytes']
  assert per_device < total / 3  # embedding/kernels split 4 ways, only norm scales replicated
  # per-device work: without spreading the dual batch's AR/MDM rows over the devices, XLA
  # replicated the computation and each of the 8 devices did all of it
  one, data8, fsdp8 = out['flops']
  assert data8 < one / 3 and fsdp8 < one / 3, out['flops']
  single = _losses(str(tmp_path / 'single'))
  for name in ('sharded', 'moved'):
    got = _losses(str(tmp_path / name))
    assert sorted(got) == sorted(single) == list(range(1, 21))
    np.testing.assert_allclose([got[s] for s in range(1, 21)],
                               [single[s] for s in range(1, 21)], rtol=1e-5, atol=1e-5)
  sharded = json.load(open(tmp_path / 'sharded' / 'summary.json'))
  assert sharded['final']['mdm_nelbo'] == pytest.approx(ref['final']['mdm_nelbo'], rel=1e-5)


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


CONFIG_FILE = textwrap.dedent('''
    import os, sys
    sys.path.insert(0, os.path.join({root!r}, 'tests'))
    from conftest import tiny_config
    def get_config():
      c = tiny_config('dual', num_steps={steps}, checkpoint_every=10, eval_every=10,
                      lr_schedule='constant')  # the 10-step leg has the 20-step run's schedule
      c.sample.num_samples = 2
      return c
''')


def _main(cfg_path, workdir, extra=(), env=None):
  return [sys.executable, '-m', 'dlm_jax.main', f'--config={cfg_path}', f'--workdir={workdir}',
          *extra]


def test_two_processes_match_one(tmp_path):
  """Two jax.distributed processes on 127.0.0.1 (one CPU device each, gloo collectives) train,
  checkpoint, resume, and follow the 1-process run on 2 devices; only process 0 writes."""
  cfgs = {}
  for steps in (10, 20):
    cfgs[steps] = tmp_path / f'cfg{steps}.py'
    cfgs[steps].write_text(CONFIG_FILE.format(root=ROOT, steps=steps))
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT)
  env.pop('XLA_FLAGS', None)
  one = subprocess.run(_main(cfgs[20], tmp_path / 'one'), cwd=ROOT, capture_output=True, text=True,
                       env=dict(env, XLA_FLAGS='--xla_force_host_platform_device_count=2'),
                       timeout=600, check=False)
  assert one.returncode == 0, one.stderr[-3000:]

  def two(steps):
    port = _free_port()
    procs = [subprocess.Popen(
        _main(cfgs[steps], tmp_path / 'two', [f'--coordinator_address=127.0.0.1:{port}',
                                              '--num_processes=2', f'--process_id={i}',
                                              '--distributed_timeout=120']),
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
      assert p.returncode == 0, err[-3000:]
    return outs

  two(10)  # stops at its final checkpoint, step 10
  outs = two(20)  # resumes from it
  assert 'resumed' in outs[0][0]
  a, b = _losses(tmp_path / 'one'), _losses(tmp_path / 'two')
  assert sorted(b) == list(range(1, 21))
  np.testing.assert_allclose([b[s] for s in range(1, 21)], [a[s] for s in range(1, 21)],
                             rtol=1e-5, atol=1e-5)
  summary = json.load(open(tmp_path / 'two' / 'summary.json'))
  assert summary['processes'] == 2 and summary['status'] == 'done'
  # two finished legs x (2 AR + 2 MDM samples), written by process 0 only
  assert len(open(tmp_path / 'two' / 'samples.jsonl').readlines()) == 8
  assert not list((tmp_path / 'two').glob('*.tmp'))


def test_unreachable_coordinator_is_named(tmp_path):
  cfg = tmp_path / 'cfg.py'
  cfg.write_text(CONFIG_FILE.format(root=ROOT, steps=2))
  port = _free_port()
  p = subprocess.run(_main(cfg, tmp_path / 'w', [f'--coordinator_address=127.0.0.1:{port}',
                                                '--num_processes=2', '--process_id=1',
                                                '--distributed_timeout=2']),
                     cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
                     env=dict(os.environ, PYTHONPATH=ROOT))
  assert p.returncode == 1
  assert f'coordinator 127.0.0.1:{port} did not answer within 2 s' in p.stderr
  assert not (tmp_path / 'w').exists()


@pytest.mark.slow
def test_two_processes_sigterm_to_one_stops_both_at_the_same_step(tmp_path):
  """Preemption of a 2-process run, the signal reaching only process 1: the flags are combined
  every log_every steps, both processes checkpoint the same step and exit 143, and the same
  commands resume and follow the uninterrupted 2-device run."""
  import signal  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  cfg = tmp_path / 'cfg.py'
  cfg.write_text(CONFIG_FILE.format(root=ROOT, steps=200).replace(
      'c.sample.num_samples = 2', 'c.sample.num_samples = 0\n  c.train.log_every = 4\n'
      '  c.train.checkpoint_every = c.train.eval_every = 1000'))
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT)
  env.pop('XLA_FLAGS', None)
  one = subprocess.run(_main(cfg, tmp_path / 'one'), cwd=ROOT, capture_output=True, text=True,
                       env=dict(env, XLA_FLAGS='--xla_force_host_platform_device_count=2'),
                       timeout=600, check=False)
  assert one.returncode == 0, one.stderr[-3000:]

  def start():
    port = _free_port()
    return [subprocess.Popen(
        _main(cfg, tmp_path / 'two', [f'--coordinator_address=127.0.0.1:{port}',
                                      '--num_processes=2', f'--process_id={i}',
                                      '--distributed_timeout=120']),
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(2)]
  procs = start()
  metrics = tmp_path / 'two' / 'metrics.jsonl'
  deadline = time.time() + 300
  while time.time() < deadline and not (metrics.exists() and
                                        len(metrics.read_text().splitlines()) >= 5):
    time.sleep(0.05)
  procs[1].send_signal(signal.SIGTERM)
  outs = [p.communicate(timeout=300) for p in procs]
  assert [p.returncode for p in procs] == [143, 143], [e[-2000:] for _, e in outs]
  status = json.load(open(tmp_path / 'two' / 'summary.json'))['status']
  step = int(status.split()[-1])
  assert status == f'preempted at step {step}' and step % 4 == 0 and step < 200
  procs = start()
  outs = [p.communicate(timeout=600) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for _, e in outs]
  assert f'resumed {tmp_path / "two"} from step {step}' in outs[0][0]
  a, b = _losses(tmp_path / 'one'), _losses(tmp_path / 'two')
  assert sorted(b) == sorted(a)
  np.testing.assert_allclose([b[s] for s in sorted(a)], [a[s] for s in sorted(a)], rtol=1e-5,
                             atol=1e-5)


@pytest.mark.parametrize('arch', [{}, dict(num_kv_heads=1, qkv_bias=True, tie_embeddings=False)])
def test_tensor_parallel_mesh_matches_single_device(tmp_path, arch):
  """fsdp=2 x tensor=2 on 4 fake CPU devices (heads and the MLP width split over `tensor`,
  through the hand-written attention / MLP backwards) follows the 1-device run; with grouped
  key/value heads (one: replicated over `tensor`), q/k/v biases and an untied head too."""
  c = tiny_config('dual', num_steps=10, checkpoint_every=10, eval_every=10,
                  lr_schedule='constant')
  c.sample.num_samples = 0
  c.model.update(arch)
  loop.train_and_evaluate(config_lib.validate(c), str(tmp_path / 'single'))
  cfg = tmp_path / 'cfg.py'
  cfg.write_text(CONFIG_FILE.format(root=ROOT, steps=10).replace(
      'c.sample.num_samples = 2', 'c.sample.num_samples = 0\n  c.mesh.data, c.mesh.fsdp, '
      f'c.mesh.tensor = 1, 2, 2\n  c.model.update({arch!r})'))
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT,
             XLA_FLAGS='--xla_force_host_platform_device_count=4')
  r = subprocess.run(_main(cfg, tmp_path / 'tp'), cwd=ROOT, env=env, capture_output=True,
                     text=True, timeout=600, check=False)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "mesh {'data': 1, 'fsdp': 2, 'tensor': 2}" in r.stdout
  a, b = _losses(tmp_path / 'single'), _losses(tmp_path / 'tp')
  assert sorted(a) == sorted(b) == list(range(1, 11))
  np.testing.assert_allclose([b[s] for s in a], [a[s] for s in a], rtol=1e-5, atol=1e-5)
