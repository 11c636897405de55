"""Checkpoints: asynchronous atomic orbax writes, restore onto any mesh, fallback past unreadable
steps, and parameter-only reads (evaluation, sampling, init_from)."""
import errno
import json
import os
import sys
import warnings

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from dlm_jax.core import model as model_lib
from dlm_jax.core import sharding
from dlm_jax.errors import CheckpointWriteError, TrainingError


def checkpoint_manager(workdir, tcfg):
  """Asynchronous and atomic (orbax writes a temporary directory and renames it when complete, so
  a killed write leaves no half step, and its leftovers are removed here); keeps the newest
  train.max_to_keep steps plus every train.keep_period-th step."""
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), 'checkpoints'),
      options=ocp.CheckpointManagerOptions(max_to_keep=tcfg.max_to_keep,
                                           keep_period=tcfg.keep_period or None, create=True,
                                           cleanup_tmp_directories=True,
                                           enable_async_checkpointing=True))


def newest_readable(mngr, read, what, set_aside=False):
  """(step, read(step)) for the newest checkpoint that reads, or (None, None) when there is none.

  A truncated or partly written checkpoint (or one whose files were damaged) is passed over with a
  warning naming it and the step used instead. set_aside (training): its directory is renamed
  to `<step>.unreadable` (kept, never deleted) so the resumed run can write that step again."""
  failures = []
  for step in sorted(mngr.all_steps(), reverse=True):
    why = None
    try:
      out = read(step)
    except Exception as e:  # pylint: disable=broad-except
      why = _root_cause(e)
    if jax.process_count() > 1:  # every process must resume from the same step
      if not np.all(multihost_utils.process_allgather(np.int32(why is None))) and why is None:
        why = 'unreadable on another process'
    if why is not None:
      failures.append((step, why))
      continue
    if failures:
      bad = ', '.join(str(b) for b, _ in failures)
      warnings.warn(f'{what}: checkpoint step {bad} is unreadable ({failures[0][1]}); using the '
                    f'previous good checkpoint, step {step}', stacklevel=2)
      if set_aside:
        _set_aside(mngr, [b for b, _ in failures])
    return step, out
  if failures:
    raise TrainingError(f'{what}: no readable checkpoint (' + '; '.join(
        f'step {b}: {why}' for b, why in failures) + ')')
  return None, None


def _root_cause(e):
  """The innermost exception of a chain, in one short line (orbax wraps TensorStore's reason)."""
  chain = [e]
  while (chain[-1].__cause__ or chain[-1].__context__) is not None:
    chain.append(chain[-1].__cause__ or chain[-1].__context__)
  # an iterator's end caught inside a library (StopIteration: 0) is control flow, not a reason
  reasons = [x for x in chain if not isinstance(x, (StopIteration, StopAsyncIteration,
                                                     GeneratorExit))]
  e = (reasons or chain)[-1]
  msg = ' '.join(str(e).split()) or 'no message'
  if len(msg) > 300:  # the start says what failed, the end usually says why ...
    why = [r for r in OS_REASONS if r in msg]
    msg = msg[:150] + ' ... ' + msg[-150:]
    if why and why[0] not in msg:  # ... unless a long path pushed the OS's reason into the middle
      msg += f' ({why[0]})'
  return f'{type(e).__name__}: {msg}'


# what the OS says of a write that cannot go on (full disk, file size limit, quota, permissions)
OS_REASONS = tuple(os.strerror(n) for n in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EACCES,
                                            errno.EROFS, errno.EIO))


def _set_aside(mngr, steps):
  root = str(mngr.directory)
  if jax.process_index() == 0:
    for step in steps:
      src = os.path.join(root, str(step))
      dst, k = f'{src}.unreadable', 1
      while os.path.exists(dst):
        dst, k = f'{src}.unreadable{k}', k + 1
      os.rename(src, dst)
      print(f'moved the unreadable checkpoint aside: {dst}', file=sys.stderr)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('dlm_jax:set_aside')
  mngr.reload()


def _writing(mngr, what, fn, *args, **kwargs):
  try:
    return fn(*args, **kwargs)
  except (OSError, ValueError, RuntimeError) as e:  # tensorstore reports EFBIG/ENOSPC as these
    good = latest_committed(mngr.directory)
    raise CheckpointWriteError(
        f'writing {what} under {mngr.directory} failed ({_root_cause(e)}); the checkpoints '
        'already written are kept (' + (f'latest: step {good})' if good is not None else
                                        'none was complete)')) from None


def latest_committed(ckpt_dir):
  """The newest complete checkpoint step in a directory (renamed into place only when complete),
  or None; without opening a manager."""
  steps = [int(n) for n in os.listdir(ckpt_dir) if n.isdigit()] if os.path.isdir(ckpt_dir) else []
  return max(steps) if steps else None


def save(mngr, step, state, data_iter):
  """Starts writing checkpoint `step` in the background (an earlier write's failure shows here)."""
  _writing(mngr, 'a checkpoint', mngr.save, step,
           args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                   data=grain.checkpoint.CheckpointSave(data_iter)))


def finish(mngr):
  """Waits for the background checkpoint write; its failure becomes a CheckpointWriteError."""
  _writing(mngr, 'a checkpoint', mngr.wait_until_finished)


def restore(mngr, step, abstract_state, data_iter=None):
  """The TrainState of `step` onto abstract_state's shardings (any mesh), and the data iterator's
  position."""
  args = dict(state=ocp.args.StandardRestore(abstract_state))
  if data_iter is not None:
    args['data'] = grain.checkpoint.CheckpointRestore(data_iter)
  return mngr.restore(step, args=ocp.args.Composite(**args))['state']


ARCH_KEYS = ('d_model', 'num_layers', 'num_heads', 'num_kv_heads', 'head_dim', 'mlp_dim',
             'vocab_size', 'vocab_real', 'unpredicted', 'embed_alias', 'tie_embeddings',
             'qkv_bias', 'qk_norm', 'rope_base', 'rope_scaling', 'norm_eps', 'scan_layers')


def load_params(run_dir, cfg, mesh=None, what=None):
  """(params, step): the latest parameters (EMA if the run kept one) of a run with the same
  architecture as cfg, restored replicated. `what` names the source in error messages."""
  what = what or f'run {run_dir!r}'
  cfg_path = os.path.join(run_dir, 'config.json')
  if not os.path.exists(cfg_path):
    raise TrainingError(f'{what}: no run there (no config.json)')
  other = json.load(open(cfg_path, encoding='utf-8'))['model']
  for k in ARCH_KEYS:  # keys a run written before they existed lacks: that run had the default
    if other.get(k, getattr(model_lib.ModelConfig, k)) != cfg.model[k]:
      raise TrainingError(f'{what}: architecture differs: model.{k} is '
                          f'{other.get(k)!r} there and {cfg.model[k]!r} here')
  ckpt = os.path.join(os.path.abspath(run_dir), 'checkpoints')
  if not os.path.isdir(ckpt):
    raise TrainingError(f'{what}: the run has no checkpoint')
  mngr = ocp.CheckpointManager(ckpt, options=ocp.CheckpointManagerOptions(read_only=True,
                                                                          create=False))
  want = jax.eval_shape(lambda: model_lib.init_params(cfg.model, jax.random.PRNGKey(0),
                                                      cfg.data.seq_len)[1])
  # only the (EMA) parameters are read: no optimizer moments in memory
  key = 'ema_params' if json.load(open(cfg_path, encoding='utf-8'))['train'].get(
      'ema_decay', 0) > 0 else 'params'
  on = sharding.replicated(mesh) if mesh is not None else jax.sharding.SingleDeviceSharding(
      jax.local_devices()[0])
  item = {key: jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                                     sharding=on), want)}
  read = lambda s: mngr.restore(s, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
      item=item, partial_restore=True)))['state'][key]
  step, params = newest_readable(mngr, read, what)
  if step is None:
    raise TrainingError(f'{what}: the run has no checkpoint')
  got_paths = {jax.tree_util.keystr(p): np.shape(x)
               for p, x in jax.tree_util.tree_leaves_with_path(params)}
  for p, x in jax.tree_util.tree_leaves_with_path(want):
    k = jax.tree_util.keystr(p)
    if got_paths.get(k) != x.shape:
      raise TrainingError(f'{what}: parameter {k} has shape '
                          f'{got_paths.get(k)} there, {x.shape} here')
  return jax.tree_util.tree_map(lambda w, x: np.asarray(x, w.dtype), want, params), step


def load_init_params(run_dir, cfg, mesh=None):
  """AR2Diff: another run's latest parameters; objective, attention, data and optimizer may
  differ, the architecture may not."""
  params, step = load_params(run_dir, cfg, mesh, what=f'config.init_from={run_dir!r}')
  print(f'initialised from {run_dir} step {step} (fresh optimizer)')
  return params
