"""Memory a training run needs, known before anything is allocated.

The train step is compiled ahead of time (the compile is reused by the first step) and XLA's
buffer assignment says what each device holds: the arguments (parameters, optimizer moments, EMA,
batch) and the step's temporaries (activations kept for the backward pass, gradients, logits).
That is set against what is free: the accelerator's memory limit, or on CPU the host's available
memory, its cgroup limit and the address-space limit (`ulimit -v`), shared by every local device.
A run that cannot fit is refused with what to change; one that fits is announced in one line, so
that an out-of-memory kill never leaves an empty log.
"""
import resource

import jax
import numpy as np

from dlm_jax.core import objectives
from dlm_jax.core import sharding
from dlm_jax.data import pipeline
from dlm_jax.errors import MEMORY_ADVICE, ResourceError
from dlm_jax.run import step as step_lib

GiB = 2 ** 30


def _gib(n):
  return f'{n / GiB:.2f} GiB' if n >= GiB / 4 else f'{n / 2 ** 20:.1f} MiB'


def _read_int(path):
  try:
    with open(path, encoding='utf-8') as f:
      text = f.read().strip()
    return None if text == 'max' else int(text)
  except (OSError, ValueError):
    return None


def _proc_kib(path, key):
  try:
    with open(path, encoding='utf-8') as f:
      for line in f:
        if line.startswith(key + ':'):
          return int(line.split()[1]) * 1024
  except (OSError, ValueError, IndexError):
    pass
  return None


def host_free():
  """[(free bytes, what limits it)] for this process on the host: available memory, the cgroup's
  limit less its usage, the address-space limit less this process's virtual size."""
  out = []
  avail = _proc_kib('/proc/meminfo', 'MemAvailable')
  if avail is not None:
    out.append((avail, 'available host memory'))
  for limit, usage in (('/sys/fs/cgroup/memory.max', '/sys/fs/cgroup/memory.current'),
                       ('/sys/fs/cgroup/memory/memory.limit_in_bytes',
                        '/sys/fs/cgroup/memory/memory.usage_in_bytes')):
    lim, use = _read_int(limit), _read_int(usage)
    if lim is not None and use is not None and lim < 2 ** 60:
      out.append((lim - use, f'the cgroup memory limit ({limit})'))
      break
  soft, _ = resource.getrlimit(resource.RLIMIT_AS)
  vm = _proc_kib('/proc/self/status', 'VmSize')
  if soft != resource.RLIM_INFINITY and vm is not None:
    out.append((soft - vm, f'the address-space limit (ulimit -v {soft // 1024})'))
  return out


def device_free(device):
  """(free bytes, what limits it) on an accelerator that reports its memory, else None."""
  try:
    stats = device.memory_stats() or {}
  except Exception:  # pylint: disable=broad-except  # backends without memory statistics
    stats = {}
  if 'bytes_limit' not in stats:
    return None
  return stats['bytes_limit'] - stats.get('bytes_in_use', 0), f'{device.device_kind} memory'


def _per_device(tree):
  """Bytes of the largest shard of each leaf of an abstract tree with shardings, summed."""
  total = 0
  for x in jax.tree_util.tree_leaves(tree):
    shape = x.sharding.shard_shape(x.shape) if getattr(x, 'sharding', None) else x.shape
    total += int(np.prod(shape, dtype=np.int64)) * np.dtype(x.dtype).itemsize
  return total


def abstract_batch(setup):
  """The global train batch as ShapeDtypeStructs sharded like the real ones."""
  cfg = setup.cfg
  width = cfg.data.seq_len + (setup.train_prefix is not None)  # + a task's prompt-length column
  host = pipeline.make_batch(np.zeros((cfg.train.batch_size, width), np.int32),
                             setup.train_prefix is not None)
  sh = sharding.batch_sharding(setup.mesh)
  return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                                host)


def train_step_need(abstract_state, compiled):
  """Per-device bytes of one train step: dict(parameters, optimizer, ema, batch, temporaries,
  total), from XLA's buffer assignment of the compiled step (donated state counted once)."""
  stats = compiled.memory_analysis()
  need = dict(parameters=_per_device(abstract_state.params),
              optimizer=_per_device(abstract_state.opt_state),
              ema=_per_device(abstract_state.ema_params))
  state = _per_device(abstract_state)  # + the step, rng and skip counters
  args = stats.argument_size_in_bytes if stats else state
  need['batch'] = max(args - state, 0)
  need['temporaries'] = stats.temp_size_in_bytes if stats else 0
  out = (stats.output_size_in_bytes - stats.alias_size_in_bytes) if stats else 0
  need['total'] = args + need['temporaries'] + max(out, 0)
  return need


def describe(need):
  return (f'{_gib(need["total"])} per device (parameters {_gib(need["parameters"])}, optimizer '
          f'{_gib(need["optimizer"])}, EMA {_gib(need["ema"])}, step temporaries '
          f'{_gib(need["temporaries"])})')


def check(need, devices=None):
  """Raises ResourceError when the step cannot fit where it runs; returns the one-line report."""
  devices = devices if devices is not None else jax.local_devices()
  per_device = [device_free(d) for d in devices]
  if all(p is not None for p in per_device) and per_device:
    free, what = min(per_device)
    want = need['total']
  else:  # CPU: every local device shares the host's memory
    free, what = min(host_free(), default=(None, None))
    want = need['total'] * len(devices)
  line = f'memory: the train step needs {describe(need)}'
  if free is None:
    return line
  line += f'; {_gib(free)} free ({what})'
  if want > free:
    many = f' x {len(devices)} devices = {_gib(want)}' if want != need['total'] else ''
    raise ResourceError(f'the train step needs {describe(need)}{many}, but only {_gib(free)} is '
                        f'free ({what}); use {MEMORY_ADVICE}')
  return line


def preflight(setup, tx, state_sh, step_fn):
  """(compiled step for step 0's shapes, need): the compile the first step reuses, with what it
  needs per device; prints that and what is free, and refuses a step that cannot fit."""
  cfg = setup.cfg
  abstract = step_lib.abstract_state(setup, tx, state_sh)
  compiled = step_fn.lower(abstract, abstract_batch(setup),
                           objectives.mdm_count(cfg, 0, cfg.train.batch_size)).compile()
  need = train_step_need(abstract, compiled)
  line = check(need)
  if jax.process_index() == 0:
    print(line, flush=True)
  return compiled, need
