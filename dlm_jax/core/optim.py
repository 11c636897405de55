"""config.train's optimizer keys: the learning-rate schedules as registered objects (each builds
its optax schedule after the shared linear warmup), the keys' defaults and their checks. A new LR
schedule is one registered LRSchedule here; run/step.py builds AdamW from these."""
import dataclasses
from typing import Callable

import optax

from dlm_jax.core.registry import choice, need, registered

LR_SCHEDULES = {}  # config.train.lr_schedule: name -> LRSchedule


@dataclasses.dataclass(frozen=True)
class LRSchedule:
  """`after_warmup(tcfg, rest)`: the optax schedule of the rest = num_steps - warmup_steps
  steps after warmup. uses_num_steps: its shape depends on train.num_steps (so a resumed run may
  not change num_steps)."""
  name: str
  after_warmup: Callable
  uses_num_steps: bool = True


def _wsd(tcfg, rest):
  """Warmup-stable-decay: constant, then linear to lr * min_lr_ratio over the last
  decay_fraction of the steps."""
  decay = max(int(round(tcfg.decay_fraction * tcfg.num_steps)), 1)
  return optax.join_schedules([optax.constant_schedule(tcfg.lr),
                               optax.linear_schedule(tcfg.lr, tcfg.lr * tcfg.min_lr_ratio, decay)],
                              [max(rest - decay, 0)])


for _s in (LRSchedule('cosine', lambda t, rest: optax.cosine_decay_schedule(
               t.lr, rest, alpha=t.min_lr_ratio)),
           LRSchedule('wsd', _wsd),
           LRSchedule('constant', lambda t, rest: optax.constant_schedule(t.lr),
                      uses_num_steps=False)):
  registered(LR_SCHEDULES)(_s)


def lr_schedule(tcfg):
  """The configured learning rate per step: linear warmup from 0, then the registered schedule."""
  warm = optax.linear_schedule(0.0, tcfg.lr, max(tcfg.warmup_steps, 1))
  rest = max(tcfg.num_steps - tcfg.warmup_steps, 1)
  main = LR_SCHEDULES[tcfg.lr_schedule].after_warmup(tcfg, rest)
  return optax.join_schedules([warm, main], [tcfg.warmup_steps])


def defaults() -> dict:
  """config.train's optimizer keys (AdamW, gradient clipping, the LR schedule)."""
  return dict(
      lr=3e-3,
      lr_schedule='cosine',    # a name in LR_SCHEDULES: cosine | wsd | constant
      warmup_steps=100,
      min_lr_ratio=0.1,
      decay_fraction=0.2,      # wsd: share of steps in the final decay
      b1=0.9,
      b2=0.95,
      adam_eps=1e-8,
      weight_decay=0.1,
      decay_embeddings=False,  # weight-decay mask: never norms/biases; embeddings only if True
      grad_clip=1.0,
      grad_accum=1,            # microbatches per step (same update, 1/k of the activations)
  )


def check_config(cfg):
  t = cfg.train
  need(t.lr > 0, 'train.lr', f'must be positive, got {t.lr}')
  choice(t, 'lr_schedule', LR_SCHEDULES, 'train.')
  need(t.warmup_steps >= 0, 'train.warmup_steps', 'must be >= 0')
  need(0.0 <= t.min_lr_ratio <= 1.0, 'train.min_lr_ratio', 'must be in [0, 1]')
  need(0.0 < t.decay_fraction <= 1.0, 'train.decay_fraction', 'must be in (0, 1]')
  need(0.0 <= t.b1 < 1.0 and 0.0 <= t.b2 < 1.0, 'train.b1', 'Adam betas must be in [0, 1)')
  need(t.weight_decay >= 0, 'train.weight_decay', 'must be >= 0')
  need(t.grad_clip >= 0, 'train.grad_clip', 'must be >= 0 (0 disables clipping)')
  need(t.grad_accum >= 1, 'train.grad_accum', f'must be >= 1, got {t.grad_accum}')
