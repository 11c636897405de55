"""Device mesh and shardings. One code path from 1 CPU to a pod slice.

The mesh has axes ('data', 'fsdp'); -1 means "the remaining devices". Batches are split over both
axes; parameters and optimizer state are replicated for now (logical FSDP rules: issue 5).
"""
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXES = ('data', 'fsdp')


class MeshError(ValueError):
  pass


def make_mesh(mesh_cfg, devices=None) -> Mesh:
  devices = np.asarray(devices if devices is not None else jax.devices())
  n = devices.size
  sizes = [mesh_cfg[a] for a in AXES]
  if sizes.count(-1) > 1:
    raise MeshError('config.mesh: at most one axis may be -1')
  known = int(np.prod([s for s in sizes if s != -1]))
  if n % known:
    raise MeshError(f'config.mesh: axes {dict(zip(AXES, sizes))} do not divide {n} devices')
  sizes = [n // known if s == -1 else s for s in sizes]
  if int(np.prod(sizes)) != n:
    raise MeshError(f'config.mesh: axes {dict(zip(AXES, sizes))} use {int(np.prod(sizes))} of '
                    f'{n} devices')
  return Mesh(devices.reshape(sizes), AXES)


def batch_sharding(mesh):
  return NamedSharding(mesh, P(AXES))


def replicated(mesh):
  return NamedSharding(mesh, P())


def check_batch(mesh, batch_size, key='train.batch_size'):
  n = mesh.shape['data'] * mesh.shape['fsdp']
  if batch_size % n:
    raise MeshError(f'config.{key}: {batch_size} is not divisible by the {n} data-parallel '
                    'devices of the mesh')
