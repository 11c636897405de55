"""The train step: TrainState, the optimizer, gradient accumulation and the compiled step.

The step is a pure function `train_step(state, batch, n_mdm) -> (state, metrics)`, jitted with
donated state and explicit shardings in and out; the MDM count is static (at most two compiled
variants: floor and ceil of rho * B).
"""
import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from dlm_jax.core import model as model_lib
from dlm_jax.core import objectives
from dlm_jax.core import sharding
from dlm_jax.core.optim import lr_schedule  # the LR schedules' registry (train.lr_schedule)


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
  ema_params: Any = None
  skipped: Any = None  # int32: updates skipped for a non-finite loss/gradient (nan_policy=skip)


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
  share of each microbatch. The loss is a ratio of sums (loss sum / tokens), so the microbatches'
  numerators, their gradients and the denominators are summed and divided once: the same update
  as one pass, up to float summation order (model dropout masks aside), even where a microbatch
  holds no token (grad_accum = B: a row of one share only, or only PAD / prompt), whose own
  ratio would be 0/0. finalize: per-mode metrics from the summed sums
  (objectives.metrics_from_sums); None reports the loss only."""
  if k == 1:
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, metrics), grads = grad_fn(params, batch, rng, n_mdm=n_mdm)
    metrics.pop('sums', None)
    return loss, metrics, grads
  B = batch['targets'].shape[0]
  n = B if n_mdm is None else n_mdm
  even = n % k == 0 and (B - n) % k == 0

  def numerator(p, m):
    _, metrics = loss_fn(p, batch, rng, n_mdm=n_mdm, micro=(m, k))
    return metrics['sums']['loss'], metrics['sums']
  num_grad = jax.value_and_grad(numerator, has_aux=True)

  def one(m):
    (_, sums), grads = num_grad(params, m)
    return sums, grads

  def add(a, b):
    return jax.tree_util.tree_map(jnp.add, a, b)

  if even:  # one compiled body, scanned
    init = jax.tree_util.tree_map(jnp.zeros_like, jax.eval_shape(lambda: one(0)))
    tot, _ = jax.lax.scan(lambda carry, m: (add(carry, one(m)), None), init, jnp.arange(k))
  else:  # uneven AR / MDM shares: static microbatch indices, unrolled
    tot = one(0)
    for m in range(1, k):
      tot = add(tot, one(m))
  sums, grads_sum = tot
  w = sums['tokens']
  metrics = finalize(sums) if finalize is not None else {}
  metrics.update(loss=sums['loss'] / w, tokens=w)
  return sums['loss'] / w, metrics, jax.tree_util.tree_map(lambda g: g / w, grads_sum)


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


def prepare(setup):
  """(optimizer, lr schedule, TrainState shardings, compiled step): the training setup the loop
  and `bench` share."""
  tx, sched, state_sh = state_layout(setup)
  return tx, sched, state_sh, compile_step(setup, tx, sched, state_sh)
