"""Device mesh, logical partition rules and global arrays. One code path from 1 CPU to a pod.

The mesh has axes ('data', 'fsdp', 'tensor') sized by config.mesh (-1: the remaining devices).
Batches are split over data x fsdp. Parameters carry logical axis names (model.logical_axes);
RULES map them onto mesh axes: the model dimension over `fsdp` (ZeRO-3 style: every weight matrix
is split, gathered per layer by XLA), heads / MLP width / vocabulary over `tensor` (Megatron
style). A dimension that a mesh axis does not divide stays replicated, so odd sizes still run.
The optimizer state follows the parameters it belongs to.

In a multi-process run every process calls the same functions; `local_rows` says which rows of
each global batch this process must read, `global_batch` assembles the global jax.Array from them.
"""
import jax
import numpy as np
import optax
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from dlm_jax.core.registry import need
from dlm_jax.errors import DistributedError, MeshError

AXES = ('data', 'fsdp', 'tensor')
BATCH_AXES = ('data', 'fsdp')
RULES = (('embed', 'fsdp'), ('heads', 'tensor'), ('mlp', 'tensor'), ('vocab', 'tensor'),
         ('layers', None), ('head_dim', None), ('norm', None))


def constrain(x, mesh, *spec):
  """Pins an activation's layout (batch over data x fsdp, heads / MLP width over tensor), so
  that with sharded weights XLA gathers the weights instead of re-sharding activations."""
  if mesh is None:
    return x
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(*spec)))


def mesh_shape(mesh_cfg, n_devices):
  sizes = [mesh_cfg[a] for a in AXES]
  if sizes.count(-1) > 1:
    raise MeshError('config.mesh: at most one axis may be -1')
  known = int(np.prod([s for s in sizes if s != -1]))
  if n_devices % known:
    raise MeshError(f'config.mesh: axes {dict(zip(AXES, sizes))} do not divide the '
                    f'{n_devices} devices')
  sizes = [n_devices // known if s == -1 else s for s in sizes]
  if int(np.prod(sizes)) != n_devices:
    raise MeshError(f'config.mesh: axes {dict(zip(AXES, sizes))} use {int(np.prod(sizes))} of '
                    f'the {n_devices} devices')
  return sizes


def make_mesh(mesh_cfg, devices=None) -> Mesh:
  devices = list(devices if devices is not None else jax.devices())
  sizes = mesh_shape(mesh_cfg, len(devices))
  try:  # topology-aware order on TPU/GPU (ICI neighbours share the inner axes)
    arr = mesh_utils.create_device_mesh(sizes, devices, allow_split_physical_axes=True)
  except (ValueError, NotImplementedError, AssertionError):
    arr = np.asarray(devices).reshape(sizes)
  return Mesh(arr, AXES)


def batch_sharding(mesh):
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh):
  return NamedSharding(mesh, P())


def data_parallel(mesh):
  return mesh.shape['data'] * mesh.shape['fsdp']


def check_batch(mesh, batch_size, key='train.batch_size', grad_accum=1):
  n = data_parallel(mesh)
  if batch_size % (n * grad_accum):
    what = f'{n} data-parallel devices of the mesh'
    if grad_accum > 1:
      what += f' times train.grad_accum={grad_accum} microbatches'
    raise MeshError(f'config.{key}: {batch_size} is not divisible by the {what}')


def logical_to_spec(logical: P, shape, mesh, rules=RULES) -> P:
  """Mesh PartitionSpec for one array: rule lookup, then replicate any dimension the mesh axis
  does not divide (e.g. a vocabulary of 50,261 over tensor=4)."""
  table = dict(rules)
  out = []
  for name, dim in zip(tuple(logical) + (None,) * (len(shape) - len(logical)), shape):
    axis = table.get(name) if name is not None else None
    if axis is not None and (mesh.shape[axis] == 1 or dim % mesh.shape[axis]):
      axis = None
    out.append(axis)
  return P(*out)


def param_shardings(logical_tree, abstract_params, mesh, rules=RULES):
  """NamedSharding per parameter, from model.logical_axes and the parameter shapes."""
  return jax.tree_util.tree_map(
      lambda spec, a: NamedSharding(mesh, logical_to_spec(spec, a.shape, mesh, rules)),
      logical_tree, abstract_params, is_leaf=lambda x: isinstance(x, P))


def state_shardings(abstract_state, params_sh, tx, mesh):
  """Shardings of a TrainState: params and EMA as the rules say; optimizer moments follow their
  parameter (optax.tree_map_params); step, rng and scalar counters replicated."""
  rep = replicated(mesh)
  opt_sh = optax.tree_map_params(tx, lambda _, s: s, abstract_state.opt_state, params_sh,
                                 transform_non_params=lambda _: rep,
                                 is_leaf=lambda x: isinstance(x, NamedSharding))
  return abstract_state.replace(
      step=rep, rng=rep, skipped=rep, params=params_sh, opt_state=opt_sh,
      ema_params=None if abstract_state.ema_params is None else params_sh)


def local_rows(mesh, batch_size):
  """[start, stop) rows of every global batch that live on this process's devices."""
  idx = batch_sharding(mesh).addressable_devices_indices_map((batch_size,))
  starts = sorted({s[0].start or 0 for s in idx.values()})
  stops = sorted({s[0].stop if s[0].stop is not None else batch_size for s in idx.values()})
  start, stop = starts[0], stops[-1]
  covered = sum(b - a for a, b in zip(starts, stops))
  if covered != stop - start:
    raise MeshError('the mesh gives this process non-contiguous batch rows; order the devices so '
                    'each process owns one block of the data axes')
  return start, stop


def global_batch(local_batch, mesh):
  """This process's rows (a dict of numpy arrays) -> global jax.Arrays sharded over the batch."""
  sh = batch_sharding(mesh)
  return jax.tree_util.tree_map(lambda x: jax.make_array_from_process_local_data(sh, x),
                                local_batch)


def put_global(tree, sharding):
  """Host data that every process holds in full (eval batches) -> global jax.Arrays."""
  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda i: x[i])
  return jax.tree_util.tree_map(put, tree)


def bytes_per_device(tree):
  """Largest per-device footprint of the arrays in `tree` (checks that sharding happened)."""
  per = {}
  for x in jax.tree_util.tree_leaves(tree):
    for s in x.addressable_shards:
      per[s.device] = per.get(s.device, 0) + s.data.nbytes
  return max(per.values()) if per else 0


def _wait_for_port(address, timeout_s):
  """True once something accepts TCP connections at host:port, False after timeout_s."""
  import socket  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  host, _, port = address.rpartition(':')
  deadline = time.time() + timeout_s
  while time.time() < deadline:
    try:
      with socket.create_connection((host.strip('[]'), int(port)), timeout=2):
        return True
    except OSError:
      time.sleep(0.5)
  return False


def _auto_cluster():
  """True when the environment describes a multi-process job JAX can configure itself from."""
  import os  # pylint: disable=g-import-not-at-top
  env = os.environ
  if int(env.get('SLURM_NTASKS', '1') or 1) > 1 and 'SLURM_JOB_ID' in env:
    return True
  if ',' in env.get('TPU_WORKER_HOSTNAMES', '') or 'MEGASCALE_COORDINATOR_ADDRESS' in env:
    return True
  return 'JAX_COORDINATOR_ADDRESS' in env


def initialize_distributed(coordinator='', num_processes=0, process_id=-1, timeout_s=300,
                           force=False):
  """jax.distributed.initialize() for multi-process runs: from explicit flags, or automatically
  on TPU pods and SLURM; a no-op for a single process. Must run before any other JAX call.

  JAX aborts the whole process when the coordinator never answers, so non-coordinator
  processes first wait for its port themselves and fail with a message that names it."""
  if not coordinator and not force and not _auto_cluster():
    return False
  if coordinator:
    if ':' not in coordinator:
      raise DistributedError(f'--coordinator_address={coordinator!r}: expected host:port')
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise DistributedError(f'--coordinator_address needs --num_processes >= 1 and 0 <= '
                             f'--process_id < num_processes (got {num_processes}, {process_id})')
    if process_id != 0 and not _wait_for_port(coordinator, timeout_s):
      raise DistributedError(f'coordinator {coordinator} did not answer within {timeout_s} s '
                             f'(process {process_id} of {num_processes}); is process 0 running '
                             'and is the port reachable?')
    print(f'process {process_id}/{num_processes}: joining coordinator {coordinator} '
          f'(timeout {timeout_s} s)', flush=True)
    jax.distributed.initialize(coordinator, num_processes, process_id,
                               initialization_timeout=timeout_s)
  else:
    print('jax.distributed.initialize() from the environment (TPU slice / SLURM)', flush=True)
    try:
      jax.distributed.initialize(initialization_timeout=timeout_s)
    except ValueError as e:  # JAX's argument checks, before it starts anything
      raise DistributedError(
          f'--distributed: no cluster in the environment ({str(e).strip().rstrip(".")}): '
          'no SLURM job (run it under srun / launch/slurm.sh), no TPU slice (on every worker: '
          'launch/tpu_pod.sh), no JAX_COORDINATOR_ADDRESS; or give --coordinator_address, '
          '--num_processes and --process_id, or drop --distributed for one process') from None
  return True


def defaults() -> dict:
  """config.mesh: the device mesh's axis sizes; -1: the remaining devices."""
  return dict(
      data=-1,                 # pure data parallelism (replicated parameters)
      fsdp=1,                  # data parallelism with parameters/optimizer split (ZeRO-3)
      tensor=1,                # heads / MLP width / vocabulary split (Megatron-style)
  )


def check_config(cfg):
  for k in ('data', 'fsdp', 'tensor'):
    need(cfg.mesh[k] == -1 or cfg.mesh[k] >= 1, f'mesh.{k}', 'must be -1 (the rest) or >= 1')
