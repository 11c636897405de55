"""TrainState, the one `train_step`, the loop, checkpoint/resume and the run directory.

The run directory is the contract with the analysis side (DESIGN.md): config.json, metrics.jsonl,
tb/ (TensorBoard), eval/validation.json, checkpoints/ (orbax: state + grain iterator),
samples.jsonl, summary.json. Rerunning the same command resumes from the latest checkpoint.
"""
import dataclasses
import functools
import json
import math
import os
import signal
import sys
import threading
import time
import warnings
from typing import Any

import flax
import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import tqdm

from dlm_jax import config as config_lib
from dlm_jax import evaluate
from dlm_jax import flops
from dlm_jax import model as model_lib
from dlm_jax import objectives
from dlm_jax import sharding
from dlm_jax.data import pipeline
from dlm_jax.data import tasks
from dlm_jax.data import tokenizers


class TrainingError(RuntimeError):
  """A run that cannot go on (NaN loss, incompatible workdir); the message says where and why."""


class Preempted(TrainingError):
  """SIGTERM / SIGINT: the run checkpointed its current step and stopped; rerun to resume."""

  def __init__(self, step, signum):
    self.step, self.signum = step, signum
    super().__init__(f'preempted ({signal.Signals(signum).name}) at step {step}: checkpoint '
                     'saved; rerun the same command to resume')


class StopOnSignal:
  """SIGTERM and SIGINT set a flag the loop reads after each step (in multi-process runs every
  log_every steps, through one allgather, so that every process stops at the same step). A
  watchdog ends the process `timeout` s after the first signal whatever it is doing; a second
  signal stops at once."""

  def __init__(self, timeout, every=1):
    self.signum, self.timeout, self.every, self._old, self._timer = None, timeout, every, {}, None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for s in (signal.SIGTERM, signal.SIGINT):
        self._old[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc):
    for s, h in self._old.items():
      signal.signal(s, h)
    self._old = {}
    if self._timer is not None:
      self._timer.cancel()

  def _handle(self, signum, frame):
    del frame
    if self.signum is not None:
      raise KeyboardInterrupt
    self.signum = signum
    self._timer = threading.Timer(self.timeout, lambda: os._exit(128 + signum))  # pylint: disable=protected-access
    self._timer.daemon = True
    self._timer.start()

  def requested(self, step) -> bool:
    if jax.process_count() == 1:
      return self.signum is not None
    if step % self.every:
      return False
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    flags = multihost_utils.process_allgather(np.int32(self.signum or 0))
    if self.signum is None and np.any(flags):
      self.signum = int(np.max(flags))
    return self.signum is not None


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
  ema_params: Any = None
  skipped: Any = None  # int32: updates skipped for a non-finite loss/gradient (nan_policy=skip)


def lr_schedule(tcfg):
  warm = optax.linear_schedule(0.0, tcfg.lr, max(tcfg.warmup_steps, 1))
  rest = max(tcfg.num_steps - tcfg.warmup_steps, 1)
  end = tcfg.lr * tcfg.min_lr_ratio
  if tcfg.lr_schedule == 'cosine':
    main = optax.cosine_decay_schedule(tcfg.lr, rest, alpha=tcfg.min_lr_ratio)
  elif tcfg.lr_schedule == 'wsd':
    decay = max(int(round(tcfg.decay_fraction * tcfg.num_steps)), 1)
    main = optax.join_schedules([optax.constant_schedule(tcfg.lr),
                                 optax.linear_schedule(tcfg.lr, end, decay)],
                                [max(rest - decay, 0)])
  else:
    main = optax.constant_schedule(tcfg.lr)
  return optax.join_schedules([warm, main], [tcfg.warmup_steps])


def weight_decay_mask(params, decay_embeddings=False):
  """Decay matrices (Dense kernels) only; never norm scales; embeddings only if asked."""
  def decide(path, _):
    name = path[-1].key if hasattr(path[-1], 'key') else str(path[-1])
    return name == 'kernel' or (decay_embeddings and name == 'embedding')
  return jax.tree_util.tree_map_with_path(decide, params)


def make_optimizer(tcfg, params):
  sched = lr_schedule(tcfg)
  parts = [optax.clip_by_global_norm(tcfg.grad_clip)] if tcfg.grad_clip > 0 else []
  parts.append(optax.adamw(sched, b1=tcfg.b1, b2=tcfg.b2, eps=tcfg.adam_eps,
                           weight_decay=tcfg.weight_decay,
                           mask=weight_decay_mask(params, tcfg.decay_embeddings)))
  return optax.chain(*parts), sched


def accumulate_grads(loss_fn, params, batch, rng, n_mdm, k, finalize=None):
  """(loss, metrics, grads) of the whole batch from k microbatches. loss_fn draws every random
  choice (dual assignment, t, masks, prefixes, token dropout) for the global batch and scores
  microbatch `micro=(m, k)` of it: rows m, m+k, ... of each share, so every device holds an equal
  share of each microbatch. The loss is a token mean, so each microbatch's loss and gradient are
  weighted by its token count: the same update as one pass, up to float summation order (model
  dropout masks aside). finalize: per-mode metrics from the summed numerators and denominators
  (objectives.metrics_from_sums); None averages the microbatches' metrics."""
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if k == 1:
    (loss, metrics), grads = grad_fn(params, batch, rng, n_mdm=n_mdm)
    metrics.pop('sums', None)
    return loss, metrics, grads
  B = batch['targets'].shape[0]
  n = B if n_mdm is None else n_mdm
  even = n % k == 0 and (B - n) % k == 0

  def one(m):
    (loss, metrics), grads = grad_fn(params, batch, rng, n_mdm=n_mdm, micro=(m, k))
    w = metrics['tokens']
    return w, loss * w, metrics, jax.tree_util.tree_map(lambda g: g * w, grads)

  def add(a, b):
    return jax.tree_util.tree_map(jnp.add, a, b)

  if even:  # one compiled body, scanned
    init = jax.tree_util.tree_map(jnp.zeros_like, jax.eval_shape(lambda: one(0)))
    tot, _ = jax.lax.scan(lambda carry, m: (add(carry, one(m)), None), init, jnp.arange(k))
  else:  # uneven AR / MDM shares: static microbatch indices, unrolled
    tot = one(0)
    for m in range(1, k):
      tot = add(tot, one(m))
  w, loss_w, metrics, grads_w = tot
  sums = metrics.pop('sums', None)
  if finalize is not None and sums is not None:
    metrics = finalize(sums)
  else:
    metrics = {key: v / k for key, v in metrics.items()}  # per-mode metrics: mean of microbatches
  metrics.update(loss=loss_w / w, tokens=w)
  return loss_w / w, metrics, jax.tree_util.tree_map(lambda g: g / w, grads_w)


def make_train_step(loss_fn, tx, sched, ema_decay, grad_accum=1, finalize=None):
  """The pure step. A non-finite loss or gradient leaves params, optimizer and EMA unchanged and
  counts the step in `skipped` (the loop then stops or goes on, by train.nan_policy), so a state
  that can be checkpointed never holds a NaN."""
  def train_step(state, batch, n_mdm=None):
    rng = jax.random.fold_in(state.rng, state.step)
    loss, metrics, grads = accumulate_grads(loss_fn, state.params, batch, rng, n_mdm, grad_accum,
                                            finalize)
    metrics.pop('tokens')
    grad_norm = optax.global_norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new, old)
    params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
    ema = state.ema_params
    if ema is not None:
      ema = keep(jax.tree_util.tree_map(lambda e, p: ema_decay * e + (1 - ema_decay) * p, ema,
                                        params), ema)
    skipped = state.skipped + (~finite).astype(jnp.int32)
    metrics = dict(metrics, grad_norm=grad_norm, lr=sched(state.step), finite=finite,
                   skipped=skipped)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                         ema_params=ema, skipped=skipped), metrics
  return train_step


@dataclasses.dataclass
class Setup:
  """Everything a run, an evaluation or a sampler needs, built once from a resolved config."""
  cfg: Any
  tokenizer: Any
  model: Any
  mesh: Any
  train_windows: np.ndarray
  val_windows: np.ndarray
  data_info: dict
  counts: dict
  train_prefix: Any = None   # prompt lengths of task examples (data.task), else None
  val_prefix: Any = None


def compile_cache_dir(tcfg) -> str:
  if tcfg.compile_cache != 'auto':
    return tcfg.compile_cache
  return os.environ.get('JAX_COMPILATION_CACHE_DIR',  # e.g. a sweep's shared <root>/.xla_cache
                        os.path.join(os.path.expanduser('~'), '.cache', 'dlm_jax', 'xla'))


def enable_compile_cache(tcfg):
  """Persistent XLA compilation cache: a rerun, a resumed run or a sweep's next run of the same
  shapes loads its executables instead of compiling them (programs that compile in > 1 s)."""
  path = compile_cache_dir(tcfg)
  if path:
    jax.config.update('jax_compilation_cache_dir', path)


def build(cfg) -> Setup:
  tok = tokenizers.get_tokenizer(cfg.data.tokenizer)
  cfg = config_lib.resolve(cfg, tok.vocab_size)
  try:
    model_lib.attention_impl(cfg.model)
  except ValueError as e:
    raise config_lib.ConfigError(str(e)) from None
  enable_compile_cache(cfg.train)
  mesh = sharding.make_mesh(cfg.mesh)
  sharding.check_batch(mesh, cfg.train.batch_size, grad_accum=cfg.train.grad_accum)
  sharding.check_batch(mesh, cfg.eval.batch_size, 'eval.batch_size')
  if cfg.train.batch_size % jax.process_count():
    raise sharding.MeshError(f'config.train.batch_size: {cfg.train.batch_size} is not divisible '
                             f'by the {jax.process_count()} processes')
  train_w, val_w, info = pipeline.load_splits(
      cfg.data, cfg.eval.num_batches * cfg.eval.batch_size, cfg.model.vocab_size)
  if cfg.train.epochs > 0:  # R epochs of the U unique tokens
    cfg.train.num_steps = int(cfg.train.epochs * len(train_w) // cfg.train.batch_size)
  train_p = val_p = None
  if cfg.data.task:  # prompt -> target fine-tuning replaces the LM windows
    tr, va = tasks.load_task(cfg.data.task, cfg.data.val_fraction)
    train_w, train_p, dropped_tr = tasks.encode(tr, tok, cfg.data.seq_len, 'train')
    val_w, val_p, dropped_va = tasks.encode(va, tok, cfg.data.seq_len, 'validation')
    info = dict(info, task=cfg.data.task, task_train=len(train_p), task_val=len(val_p),
                task_dropped_too_long=dropped_tr + dropped_va,
                unique_tokens=int((train_w != tokenizers.PAD).sum()),
                train_windows=int(train_w.shape[0]))
    if cfg.train.epochs > 0:
      cfg.train.num_steps = int(cfg.train.epochs * train_w.shape[0] // cfg.train.batch_size)
  return Setup(cfg, tok, model_lib.Transformer(cfg.model, mesh), mesh, train_w, val_w, info,
               flops.from_config(cfg.model, cfg.data.seq_len), train_p, val_p)


def init_state(setup, tx, params=None):
  """A fresh state; `params` (e.g. from init_from) replace the random initialisation."""
  cfg = setup.cfg
  rng = jax.random.PRNGKey(cfg.seed)
  init_rng, train_rng = jax.random.split(rng)
  if params is None:
    _, params = model_lib.init_params(cfg.model, init_rng, cfg.data.seq_len)
  ema = jax.tree_util.tree_map(jnp.copy, params) if cfg.train.ema_decay > 0 else None
  return TrainState(step=jnp.array(0, jnp.int32), params=params, opt_state=tx.init(params),
                    rng=train_rng, ema_params=ema, skipped=jnp.array(0, jnp.int32))


def state_layout(setup):
  """(optimizer, lr schedule, TrainState shardings) for the configured model and mesh."""
  cfg = setup.cfg
  params_shape = jax.eval_shape(
      lambda: model_lib.init_params(cfg.model, jax.random.PRNGKey(0), cfg.data.seq_len)[1])
  tx, sched = make_optimizer(cfg.train, params_shape)
  params_sh = sharding.param_shardings(model_lib.logical_axes(cfg.model, cfg.data.seq_len),
                                       params_shape, setup.mesh)
  state_sh = sharding.state_shardings(jax.eval_shape(lambda: init_state(setup, tx)), params_sh,
                                      tx, setup.mesh)
  return tx, sched, state_sh


def compile_step(setup, tx, sched, state_sh):
  """The jitted train step with explicit shardings in and out and donated state; the MDM count
  is static (at most two compiled variants: floor and ceil of rho * B)."""
  cfg, mesh = setup.cfg, setup.mesh
  loss_fn = objectives.make_loss_fn(setup.model, cfg, train=True, mesh=mesh)
  finalize = functools.partial(objectives.metrics_from_sums, cfg=cfg)
  return jax.jit(make_train_step(loss_fn, tx, sched, cfg.train.ema_decay, cfg.train.grad_accum,
                                 finalize),
                 in_shardings=(state_sh, sharding.batch_sharding(mesh)),
                 out_shardings=(state_sh, sharding.replicated(mesh)),
                 static_argnums=2, donate_argnums=0)


def abstract_state(setup, tx, state_sh):
  """ShapeDtypeStructs with shardings: what orbax restores onto (any mesh shape)."""
  return jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                jax.eval_shape(lambda: init_state(setup, tx)), state_sh)


class MetricWriter:
  """metrics.jsonl (one object per logged step) and TensorBoard events, from process 0 only."""

  def __init__(self, workdir):
    self.active = jax.process_index() == 0
    if self.active:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self.f = open(os.path.join(workdir, 'metrics.jsonl'), 'a', encoding='utf-8')
      self.tb = SummaryWriter(os.path.join(workdir, 'tb'))

  def write(self, step, values, prefix='', jsonl=True):
    if not self.active:
      return
    if jsonl:
      row = dict(step=int(step), **{prefix + k: v for k, v in values.items()})
      self.f.write(json.dumps(row) + '\n')
      self.f.flush()
    for k, v in values.items():
      if isinstance(v, (int, float)) and math.isfinite(v):
        self.tb.add_scalar(prefix + k, v, int(step))
    self.tb.flush()

  def close(self):
    if self.active:
      self.f.close()
      self.tb.close()


def truncate_metrics(workdir, step):
  """On resume, drop rows logged after the restored checkpoint so each step appears once."""
  path = os.path.join(workdir, 'metrics.jsonl')
  if jax.process_index() != 0 or not os.path.exists(path):
    return
  keep = []
  for line in open(path, encoding='utf-8'):
    try:
      if json.loads(line)['step'] <= step:
        keep.append(line if line.endswith('\n') else line + '\n')
    except (json.JSONDecodeError, KeyError):
      pass  # a torn last line from a killed process
  with open(path + '.tmp', 'w', encoding='utf-8') as f:
    f.writelines(keep)
  os.replace(path + '.tmp', path)


def _atomic_json(path, obj):
  if jax.process_index() != 0:
    return
  tmp = path + '.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    json.dump(obj, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def check_workdir(workdir, cfg):
  """Refuses a workdir whose config.json belongs to a different run (nothing is written)."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    if os.path.isdir(os.path.join(workdir, 'checkpoints')) and os.listdir(
        os.path.join(workdir, 'checkpoints')):
      raise TrainingError(f'{workdir} holds checkpoints but no config.json; refusing to mix runs')
    return False
  old = json.load(open(path, encoding='utf-8'))
  diffs = config_lib.diff_for_resume(old, cfg.to_dict())
  if diffs:
    raise TrainingError(f'{workdir} holds a different run (config.json differs: '
                        f'{"; ".join(diffs[:5])}); use a new --workdir')
  return True


ARCH_KEYS = ('d_model', 'num_layers', 'num_heads', 'mlp_dim', 'vocab_size', 'tie_embeddings',
             'scan_layers')


def load_params(run_dir, cfg, mesh=None, what=None):
  """(params, step): the latest parameters (EMA if the run kept one) of a run with the same
  architecture as cfg, restored replicated. `what` names the source in error messages."""
  what = what or f'run {run_dir!r}'
  cfg_path = os.path.join(run_dir, 'config.json')
  if not os.path.exists(cfg_path):
    raise TrainingError(f'{what}: no run there (no config.json)')
  other = json.load(open(cfg_path, encoding='utf-8'))['model']
  for k in ARCH_KEYS:
    if other.get(k) != cfg.model[k]:
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


def load_run(run_dir, overrides=None):
  """(cfg, tokenizer, model, params, step) of a trained run, from its config.json and latest
  checkpoint, without loading its data: what a sampler, a notebook or lm-eval needs.
  overrides: {dotted key: value} applied to the run's config (e.g. {'eval.nelbo_samples': 64})."""
  path = os.path.join(run_dir, 'config.json')
  if not os.path.exists(path):
    raise TrainingError(f'{run_dir}: not a run directory (no config.json)')
  cfg = config_lib.from_run(json.load(open(path, encoding='utf-8')))
  for k, v in (overrides or {}).items():
    *parents, leaf = k.split('.')
    node = cfg
    for part in parents:
      node = node[part]
    node[leaf] = v
  cfg = config_lib.validate(cfg, training=False)
  tok = tokenizers.get_tokenizer(cfg.data.tokenizer)
  params, step = load_params(run_dir, cfg, what=run_dir)
  return cfg, tok, model_lib.Transformer(cfg.model), params, step


def load_init_params(run_dir, cfg, mesh=None):
  """AR2Diff: another run's latest parameters; objective, attention, data and optimizer may
  differ, the architecture may not."""
  params, step = load_params(run_dir, cfg, mesh, what=f'config.init_from={run_dir!r}')
  print(f'initialised from {run_dir} step {step} (fresh optimizer)')
  return params


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
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
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
  while (e.__cause__ or e.__context__) is not None:
    e = e.__cause__ or e.__context__
  msg = ' '.join(str(e).split()) or '?'
  if len(msg) > 300:  # the start says what failed, the end usually says why
    msg = msg[:150] + ' ... ' + msg[-150:]
  return f'{type(e).__name__}: {msg}'


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
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices('dlm_jax:set_aside')
  mngr.reload()


class CheckpointWriteError(TrainingError):
  """A checkpoint could not be written (full disk, quota, permissions); earlier ones are kept."""


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
  position. A checkpoint written before TrainState.skipped existed restores with skipped = 0."""
  def read(item):
    args = dict(state=ocp.args.StandardRestore(item))
    if data_iter is not None:
      args['data'] = grain.checkpoint.CheckpointRestore(data_iter)
    return mngr.restore(step, args=ocp.args.Composite(**args))['state']
  try:
    return read(abstract_state)
  except ValueError as e:
    if 'skipped' not in str(e):
      raise
  old = {k: getattr(abstract_state, k) for k in ('step', 'params', 'opt_state', 'rng',
                                                  'ema_params')}
  got = read(old)
  fields = {k: jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(v),
                                            jax.tree_util.tree_leaves(got[k]))
            for k, v in old.items()}
  return TrainState(**fields, skipped=jax.device_put(jnp.zeros((), jnp.int32),
                                                     abstract_state.skipped.sharding))


def _host(tree):
  return jax.tree_util.tree_map(lambda x: x.item() if np.ndim(x) == 0 else np.asarray(x),
                                jax.device_get(tree))


def train_and_evaluate(cfg, workdir) -> dict:
  """Trains (or resumes) the configured run in `workdir`; returns the summary dict."""
  t_start = time.time()
  setup = build(cfg)
  cfg = setup.cfg
  resuming = check_workdir(workdir, cfg)
  summary_path = os.path.join(workdir, 'summary.json')
  if resuming and os.path.exists(summary_path):
    done = json.load(open(summary_path, encoding='utf-8'))
    if done.get('status') == 'done' and done.get('steps') == cfg.train.num_steps:
      print(f'{workdir} is already done ({done["steps"]} steps); nothing to do')
      return done
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  has_ckpt = latest_committed(ckpt_dir) is not None
  init_params = (load_init_params(cfg.init_from, cfg, setup.mesh)
                 if cfg.init_from and not has_ckpt else None)
  os.makedirs(os.path.join(workdir, 'eval'), exist_ok=True)
  _atomic_json(os.path.join(workdir, 'config.json'), cfg.to_dict())

  mesh = setup.mesh
  tx, sched, state_sharding = state_layout(setup)
  # one compiled step per distinct MDM count (at most two: floor and ceil of rho * B)
  step_fn = compile_step(setup, tx, sched, state_sharding)

  ds = pipeline.train_dataset(setup.train_windows, cfg.train.batch_size, cfg.seed,
                              cfg.data.segment_ids, setup.train_prefix,
                              rows=sharding.local_rows(mesh, cfg.train.batch_size))
  data_iter = pipeline.train_iterator(ds, cfg.data.prefetch)
  mngr = checkpoint_manager(workdir, cfg.train)
  latest, state = newest_readable(
      mngr, lambda s: restore(mngr, s, abstract_state(setup, tx, state_sharding), data_iter),
      workdir, set_aside=True)
  if latest is not None:
    print(f'resumed {workdir} from step {latest}')
  else:
    state = jax.jit(lambda p: init_state(setup, tx, p), out_shardings=state_sharding)(init_params)
  start = int(state.step)
  layout = dict(mesh=dict(mesh.shape), processes=jax.process_count(),
                param_bytes=int(sum(x.nbytes for x in jax.tree_util.tree_leaves(state.params))),
                param_bytes_per_device=int(sharding.bytes_per_device(state.params)))
  if jax.process_index() == 0:
    print(f'mesh {layout["mesh"]} over {layout["processes"]} process(es); parameters '
          f'{layout["param_bytes"] / 2**20:.2f} MiB, {layout["param_bytes_per_device"] / 2**20:.2f}'
          ' MiB on the fullest device')

  val_batches = pipeline.eval_batches(setup.val_windows, cfg.eval.batch_size,
                                      cfg.eval.num_batches, cfg.data.segment_ids,
                                      setup.val_prefix)
  evaluator = evaluate.Validator(
      setup.model, cfg, val_batches, mesh,
      bytes_per_token=setup.data_info["val_bytes"] / setup.data_info["val_tokens"],
      params_sharding=state_sharding.params)
  truncate_metrics(workdir, start)
  writer = MetricWriter(workdir)
  tokens_per_step = cfg.train.batch_size * cfg.data.seq_len
  eval_path = os.path.join(workdir, 'eval', 'validation.json')
  history = json.load(open(eval_path)) if (resuming and os.path.exists(eval_path)) else []
  history = [h for h in history if h['step'] <= start]

  def run_eval(step, state):
    params = state.ema_params if state.ema_params is not None else state.params
    res = dict(step=int(step), tokens=int(step) * tokens_per_step, **evaluator(params))
    history.append(res)
    _atomic_json(eval_path, history)
    writer.write(step, {k: v for k, v in res.items() if k != 'step'}, prefix='val/', jsonl=False)
    return res

  pending = None  # (step, device metrics) of the previous step: fetched one step late
  window, t_last, last_logged = [], time.time(), start
  bar = tqdm.tqdm(total=cfg.train.num_steps, initial=start, desc='train', unit='step',
                  dynamic_ncols=True, disable=None if jax.process_index() == 0 else True)

  def consume(step, m):
    """Checks and logs step `step`'s metrics, fetched one step late (no host sync per step)."""
    nonlocal t_last, last_logged, window
    m = _host(m)
    finite, skipped = m.pop('finite'), m.pop('skipped')
    if not finite:
      what = (f'non-finite loss or gradient at step {step + 1} (loss={m["loss"]}, '
              f'grad_norm={m["grad_norm"]})')
      good = f'the last good checkpoint is step {mngr.latest_step()}'
      if cfg.train.nan_policy == 'stop':
        raise TrainingError(f'{what}; {good} (train.nan_policy=skip skips such updates)')
      if skipped > cfg.train.nan_max_skips:
        raise TrainingError(f'{what}: {skipped} updates skipped, more than '
                            f'train.nan_max_skips={cfg.train.nan_max_skips}; {good}')
      warnings.warn(f'{what}: update skipped ({skipped} of at most {cfg.train.nan_max_skips})')
    else:
      window.append(m)
    if (step + 1) % cfg.train.log_every == 0 or step + 1 == cfg.train.num_steps:
      dt = time.time() - t_last
      steps = step + 1 - last_logged
      avg = {k: float(np.mean([w[k] for w in window])) for k in window[-1]
             if k in window[0]} if window else {}
      row = dict(avg, tokens=(step + 1) * tokens_per_step,
                 epochs=(step + 1) * tokens_per_step / setup.data_info['unique_tokens'],
                 tokens_per_s=steps * tokens_per_step / dt,
                 flops_per_s=steps * tokens_per_step * setup.counts['flops_per_token'] / dt)
      if skipped:
        row['skipped'] = skipped
      writer.write(step + 1, row)
      if avg:
        bar.set_postfix(loss=f'{avg["loss"]:.3f}', tok_s=f'{row["tokens_per_s"]:.0f}')
      window, t_last, last_logged = [], time.time(), step + 1

  stop = StopOnSignal(cfg.train.preempt_timeout, cfg.train.log_every).__enter__()
  try:
    for step in range(start, cfg.train.num_steps):
      batch = sharding.global_batch(next(data_iter), mesh)
      state, metrics = step_fn(state, batch,
                               objectives.mdm_count(cfg, step, cfg.train.batch_size))
      if pending is not None:
        consume(*pending)
      pending = (step, metrics)
      bar.update(1)
      done = step + 1
      if done % cfg.train.checkpoint_every == 0 or done % cfg.train.eval_every == 0:
        consume(*pending)  # never checkpoint or evaluate a state that has not been checked
        pending = None
        if done % cfg.train.eval_every == 0 and done != cfg.train.num_steps:
          run_eval(done, state)
        if done % cfg.train.checkpoint_every == 0:
          save(mngr, done, state, data_iter)
      if stop.requested(done):
        if pending is not None:
          consume(*pending)
        if mngr.latest_step() != done:
          save(mngr, done, state, data_iter)
        finish(mngr)
        raise Preempted(done, stop.signum)
    if pending is not None:
      consume(*pending)
    if mngr.latest_step() != cfg.train.num_steps and cfg.train.num_steps > start:
      save(mngr, cfg.train.num_steps, state, data_iter)
    finish(mngr)
  except BaseException as e:
    stop.__exit__()
    for close in (lambda: finish(mngr), bar.close, writer.close):
      try:  # e.g. a pending checkpoint write failing on the same full disk: report, go on
        close()
      except Exception as close_error:  # pylint: disable=broad-except
        print(f'while stopping: {type(close_error).__name__}: {close_error}', file=sys.stderr)
    status = ('interrupted' if isinstance(e, KeyboardInterrupt) else
              f'preempted at step {e.step}' if isinstance(e, Preempted) else f'failed: {e}')
    try:  # on a full disk this write fails too; the original error is the one to report
      _atomic_json(summary_path, make_summary(setup, int(latest_committed(mngr.directory) or 0),
                                              history, history[-1] if history else {},
                                              time.time() - t_start, status))
    except OSError as write_error:
      print(f'could not write {summary_path}: {write_error}', file=sys.stderr)
    raise
  stop.__exit__()
  bar.close()
  final_step = int(state.step)
  final = history[-1] if history and history[-1]['step'] == final_step else run_eval(final_step,
                                                                                     state)
  writer.close()

  from dlm_jax import sample  # pylint: disable=g-import-not-at-top
  params = state.ema_params if state.ema_params is not None else state.params
  samples = sample.write_samples(setup, params, workdir)

  summary = make_summary(setup, final_step, history, final, time.time() - t_start, 'done')
  summary['samples'] = len(samples)
  summary['skipped_updates'] = int(state.skipped)
  summary.update(layout)
  _atomic_json(summary_path, summary)
  return summary


def make_summary(setup, step, history, final, wall, status):
  cfg = setup.cfg
  D = step * cfg.train.batch_size * cfg.data.seq_len
  U = int(setup.data_info['unique_tokens'])
  metric_keys = [k for k in final if k.endswith(('nll', 'nelbo', 'ppl', 'bpb', 'exact_match'))]
  best = {k: (max if k.endswith('exact_match') else min)(h[k] for h in history if k in h)
          for k in metric_keys}
  return dict(
      objective=cfg.objective,
      ratio=float(1 - config_lib.mdm_fraction(cfg)),  # the AR weight, as in the dual-LM sweep
      mdm_fraction=float(config_lib.mdm_fraction(cfg)),
      size=cfg.model.size or f'd{cfg.model.d_model}_l{cfg.model.num_layers}',
      N_total=setup.counts['N_total'], N_nonembed=setup.counts['N_nonembed'],
      flops_per_token=setup.counts['flops_per_token'],
      D=D, U=U, epochs=D / U, C=setup.counts['flops_per_token'] * D, steps=step,
      final={k: final[k] for k in metric_keys}, best=best,
      unigram_entropy=setup.data_info['unigram_entropy'],
      estimands=evaluate.estimands(cfg),
      wall_time_s=wall, status=status)
