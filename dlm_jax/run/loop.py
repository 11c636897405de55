"""The training loop: resume or start, step, log (metrics fetched one step late: no host sync
per step), validate, checkpoint, stop cleanly on SIGTERM / SIGINT, and write the run directory."""
import os
import signal
import sys
import threading
import time
import warnings

import jax
import numpy as np
import tqdm
from jax.experimental import multihost_utils

from dlm_jax.core import objectives
from dlm_jax.core import sharding
from dlm_jax.data import pipeline
from dlm_jax.errors import ConfigError, Preempted, TrainingError, os_errors_as
from dlm_jax.run import checkpoint
from dlm_jax.run import memory
from dlm_jax.run import rundir
from dlm_jax.run import samples as run_samples
from dlm_jax.run import setup as setup_lib
from dlm_jax.run import step as step_lib
from dlm_jax.run import validate


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
    flags = multihost_utils.process_allgather(np.int32(self.signum or 0))
    if self.signum is None and np.any(flags):
      self.signum = int(np.max(flags))
    return self.signum is not None


def _host(tree):
  return jax.tree_util.tree_map(lambda x: x.item() if np.ndim(x) == 0 else np.asarray(x),
                                jax.device_get(tree))


class StepLog:
  """Checks each step's metrics (fetched one step late: no host sync per step) and writes one
  metrics.jsonl row and progress-bar update every log_every steps."""

  def __init__(self, setup, workdir, start, mngr, t_start):
    self.cfg, self.setup, self.mngr, self.t_start = setup.cfg, setup, mngr, t_start
    self.writer = rundir.MetricWriter(workdir, self.cfg.to_dict())
    self.tokens_per_step = self.cfg.train.batch_size * self.cfg.data.seq_len  # slots, PAD too
    self.trained = pipeline.TrainedTokens(setup.train_windows, self.cfg.train.batch_size,
                                          self.cfg.seed)  # non-PAD tokens: D, epochs
    self.workdir, self.window, self.t_last, self.last_logged = workdir, [], time.time(), start
    self.timed_from = start  # rates count only the steps this process timed
    saved = rundir.read_window(workdir, start) if start else None
    if saved:  # resuming mid-window: the steps before the checkpoint count in the next row
      self.window, self.last_logged = saved
    self.bar = tqdm.tqdm(total=self.cfg.train.num_steps, initial=start, desc='train',
                         unit='step', dynamic_ncols=True,
                         disable=None if jax.process_index() == 0 else True)
    self.plain = batch_log()  # a plain line per row instead

  def consume(self, step, m):
    """Checks and logs step `step`'s metrics; a non-finite step stops or is skipped
    (train.nan_policy)."""
    cfg = self.cfg
    m = _host(m)
    finite, skipped = m.pop('finite'), m.pop('skipped')
    if not finite:
      what = (f'non-finite loss or gradient at step {step + 1} (loss={m["loss"]}, '
              f'grad_norm={m["grad_norm"]})')
      last = self.mngr.latest_step()
      good = ('no checkpoint was written yet' if last is None else
              f'the last good checkpoint is step {last}')
      if cfg.train.nan_policy == 'stop':
        raise TrainingError(f'{what}; {good} (train.nan_policy=skip skips such updates)')
      if skipped > cfg.train.nan_max_skips:
        raise TrainingError(f'{what}: {skipped} updates skipped, more than '
                            f'train.nan_max_skips={cfg.train.nan_max_skips}; {good}')
      warnings.warn(f'{what}: update skipped ({skipped} of at most {cfg.train.nan_max_skips})')
    else:
      self.window.append(m)
    if (step + 1) % cfg.train.log_every == 0 or step + 1 == cfg.train.num_steps:
      dt = time.time() - self.t_last
      steps, tps = step + 1 - max(self.last_logged, self.timed_from), self.tokens_per_step
      w = self.window
      avg = {k: float(np.mean([x[k] for x in w])) for k in w[-1] if k in w[0]} if w else {}
      trained = self.trained(step + 1)
      row = dict(avg, tokens=(step + 1) * tps, tokens_trained=trained,
                 epochs=trained / self.setup.data_info['unique_tokens'],
                 tokens_per_s=steps * tps / dt,
                 flops_per_s=steps * tps * self.setup.counts['flops_per_token'] / dt,
                 wall_time_s=time.time() - self.t_start)
      if skipped:
        row['skipped'] = skipped
      self.writer.write(step + 1, row)
      if avg:
        self.bar.set_postfix(loss=f'{avg["loss"]:.3f}', tok_s=f'{row["tokens_per_s"]:.0f}')
      if self.plain:
        eta = (cfg.train.num_steps - step - 1) * dt / max(steps, 1)
        print(progress_line(step + 1, cfg.train.num_steps, row, eta), flush=True)
      self.window, self.t_last, self.last_logged = [], time.time(), step + 1

  def save_window(self, step):
    rundir.save_window(self.workdir, step, self.window, self.last_logged)

  def close(self):
    self.bar.close()
    self.writer.close()


def batch_log():
  """True on process 0 when stdout is no terminal (SLURM output files, `| tee`): long commands
  print a plain progress line per row or stage there, which tqdm's bar (off there) does not."""
  return jax.process_index() == 0 and not sys.stdout.isatty()


def progress_line(step, total, row, eta_s):
  """`step 100/300 | tokens 409,600 | loss 5.1234 ar_nll 4.9 ... | lr 3.0e-03 | 3,300 tok/s |
  ETA 2m10s`: every logged loss (per objective included), the learning rate, speed, time left."""
  keys = ['loss'] + sorted(k for k in row if k.endswith(('_nll', '_nelbo', '_loss')))
  losses = ' '.join(f'{k} {row[k]:.4f}' for k in keys if k in row)
  m, s = divmod(int(eta_s), 60)
  return (f'step {step}/{total} | tokens {row["tokens"]:,} | {losses} | lr {row.get("lr", 0):.2e}'
          f' | {row["tokens_per_s"]:,.0f} tok/s | ETA {m // 60}h{m % 60:02d}m{s:02d}s')


def _start(setup, workdir, tx, state_sharding, data_iter, mngr, init):
  """(TrainState, step restored or None): the newest readable checkpoint, else a fresh state
  (from `init` parameters, init_from's, when given)."""
  latest, state = checkpoint.newest_readable(
      mngr, lambda s: checkpoint.restore(mngr, s, step_lib.abstract_state(setup, tx,
                                                                          state_sharding),
                                         data_iter), workdir, set_aside=True)
  if latest is not None:
    print(f'resumed {workdir} from step {latest}')
    return state, latest
  state = jax.jit(lambda p: step_lib.init_state(setup, tx, p), out_shardings=state_sharding)(init)
  # waits on every buffer: one that failed to allocate raises here (reading only the step of a
  # state whose other buffers failed waits forever on the CPU backend)
  return jax.block_until_ready(state), None


@os_errors_as(TrainingError, '; the checkpoints already written are kept')
def train_and_evaluate(cfg, workdir) -> dict:
  """Trains (or resumes) the configured run in `workdir`; returns the summary dict."""
  t_start = time.time()
  setup = setup_lib.build(cfg)
  cfg, mesh = setup.cfg, setup.mesh
  resuming = rundir.check_workdir(workdir, cfg)
  summary_path = rundir.path(workdir, rundir.SUMMARY)
  if resuming and os.path.exists(summary_path):
    done = rundir.read_summary(workdir)
    if done.get('status') == 'done' and done.get('steps') == cfg.train.num_steps:
      print(f'{workdir} is already done ({done["steps"]} steps); nothing to do')
      return done
  latest = checkpoint.latest_committed(rundir.path(workdir, 'checkpoints'))
  if latest is not None and latest > cfg.train.num_steps:  # before config.json is rewritten
    raise ConfigError(f'config.train.num_steps: {workdir} is already trained to step {latest}; '
                      f'{cfg.train.num_steps} steps would rewrite its record (use a new --workdir)')
  has_ckpt = latest is not None
  tx, _, state_sharding, step_fn = step_lib.prepare(setup)
  _, need = memory.preflight(setup, tx, state_sharding, step_fn)  # cannot fit: refused here
  init = (checkpoint.load_init_params(cfg.init_from, cfg, setup.mesh)  # fails before any write
          if cfg.init_from and not has_ckpt else None)
  os.makedirs(rundir.path(workdir, 'eval'), exist_ok=True)
  rundir.atomic_json(rundir.path(workdir, rundir.CONFIG), cfg.to_dict())

  data_iter = setup_lib.train_iterator(setup)
  mngr = checkpoint.checkpoint_manager(workdir, cfg.train)
  state, _ = _start(setup, workdir, tx, state_sharding, data_iter, mngr, init)
  start = int(state.step)
  layout = dict(mesh=dict(mesh.shape), processes=jax.process_count(),
                param_bytes=int(sum(x.nbytes for x in jax.tree_util.tree_leaves(state.params))),
                param_bytes_per_device=int(sharding.bytes_per_device(state.params)),
                step_bytes_per_device=int(need['total']))  # XLA's count (run/memory.py)
  if jax.process_index() == 0:
    print(f'mesh {layout["mesh"]} over {layout["processes"]} process(es); parameters '
          f'{layout["param_bytes"] / 2**20:.2f} MiB, {layout["param_bytes_per_device"] / 2**20:.2f}'
          ' MiB on the fullest device')

  val_batches = pipeline.eval_batches(setup.val_windows, cfg.eval.batch_size,
                                      cfg.eval.num_batches, setup.val_prefix)
  evaluator = validate.Validator(
      setup.model, cfg, val_batches, mesh, bytes_per_token=validate.bytes_per_token(setup,
                                                                                    val_batches),
      params_sharding=state_sharding.params)
  rundir.truncate_metrics(workdir, start)
  # wall time of every process that worked on the run, up to the restored checkpoint's last row
  t_start -= rundir.wall_time_before(workdir) if resuming else 0.0
  log = StepLog(setup, workdir, start, mngr, t_start)
  history = rundir.read_validation(workdir, up_to=start) if resuming else []

  def run_eval(step, state):
    params = state.ema_params if state.ema_params is not None else state.params
    res = dict(step=int(step), tokens=int(step) * log.tokens_per_step, **evaluator(params))
    history.append(res)
    if log.plain:
      print(f'validation at step {int(step)}: ' + ' '.join(
          f'{k} {v:.4f}' for k, v in res.items() if isinstance(v, float)), flush=True)
    rundir.write_validation(workdir, history)
    log.writer.write(step, {k: v for k, v in res.items() if k != 'step'}, prefix='val/',
                     jsonl=False)
    return res

  pending = None  # (step, device metrics) of the previous step: fetched one step late
  try:
    with StopOnSignal(cfg.train.preempt_timeout, cfg.train.log_every) as stop:
      for step in range(start, cfg.train.num_steps):
        batch = sharding.global_batch(next(data_iter), mesh)
        state, metrics = step_fn(state, batch,
                                 objectives.mdm_count(cfg, step, cfg.train.batch_size))
        if pending is not None:
          log.consume(*pending)
        pending = (step, metrics)
        log.bar.update(1)
        done = step + 1
        if done % cfg.train.checkpoint_every == 0 or done % cfg.train.eval_every == 0:
          log.consume(*pending)  # never checkpoint or evaluate a state that was not checked
          pending = None
          if done % cfg.train.eval_every == 0 and done != cfg.train.num_steps:
            run_eval(done, state)
          if done % cfg.train.checkpoint_every == 0:
            log.save_window(done)
            checkpoint.save(mngr, done, state, data_iter)
        if stop.requested(done):
          if pending is not None:
            log.consume(*pending)
          if mngr.latest_step() != done:
            log.save_window(done)
            checkpoint.save(mngr, done, state, data_iter)
          checkpoint.finish(mngr)
          raise Preempted(done, stop.signum)
      if pending is not None:
        log.consume(*pending)
      if mngr.latest_step() != cfg.train.num_steps and cfg.train.num_steps > start:
        checkpoint.save(mngr, cfg.train.num_steps, state, data_iter)
      checkpoint.finish(mngr)
  except BaseException as e:  # the handlers are restored already (the with block has exited)
    for close in (lambda: checkpoint.finish(mngr), log.close):
      try:  # e.g. a pending checkpoint write failing on the same full disk: report, go on
        close()
      except Exception as close_error:  # pylint: disable=broad-except
        print(f'while stopping: {type(close_error).__name__}: {close_error}', file=sys.stderr)
    status = ('interrupted' if isinstance(e, KeyboardInterrupt) else
              f'preempted at step {e.step}' if isinstance(e, Preempted) else f'failed: {e}')
    try:  # on a full disk this write fails too; the original error is the one to report
      last = int(checkpoint.latest_committed(mngr.directory) or 0)
      rundir.atomic_json(summary_path, rundir.make_summary(
          setup, last, history, history[-1] if history else {}, time.time() - t_start, status,
          log.trained(last)))
    except OSError as write_error:
      print(f'could not write {summary_path}: {write_error}', file=sys.stderr)
    raise
  log.bar.close()
  final_step = int(state.step)
  final = history[-1] if history and history[-1]['step'] == final_step else run_eval(final_step,
                                                                                     state)
  params = state.ema_params if state.ema_params is not None else state.params
  samples = run_samples.write_samples(setup, params, workdir, final_step)

  summary = rundir.make_summary(setup, final_step, history, final, time.time() - t_start, 'done',
                                log.trained(final_step))
  summary['samples'] = len(samples)
  summary['skipped_updates'] = int(state.skipped)
  summary.update(layout)
  rundir.atomic_json(summary_path, summary)
  log.writer.close(summary)
  return summary
