"""The config sections read only above the config layer (run/ and infer/, which config.base()
cannot import): train's loop keys (its optimizer keys: core/optim.py) and eval, with their defaults
and checks, next to the schema (config.py) that assembles them."""
from dlm_jax.core import noise as noise_lib
from dlm_jax.core import objectives
from dlm_jax.core.registry import choice, need

NAN_POLICIES = ('stop', 'skip')  # config.train.nan_policy (run/loop.py)


def train_defaults() -> dict:
  """config.train without the optimizer keys: the loop (run/loop.py), its checkpoints, logging
  and trackers."""
  return dict(
      batch_size=32,
      num_steps=1000,
      epochs=0.0,              # R > 0: num_steps = R * (U / seq_len windows) / batch_size
      token_dropout=0.0,       # AR/prefix inputs replaced by [MASK] at this rate (targets kept)
      ema_decay=0.0,           # 0: no EMA
      log_every=10,
      eval_every=200,
      checkpoint_every=200,
      max_to_keep=3,           # newest checkpoints kept ...
      keep_period=0,           # ... plus every step divisible by this (0: none), never deleted
      compile_cache='auto',    # persistent XLA compilation cache dir; auto:
                               # $JAX_COMPILATION_CACHE_DIR (sweeps set <root>/.xla_cache) or
                               # ~/.cache/dlm_jax/xla; '': off
      nan_policy='stop',       # non-finite loss/gradient: stop (error) | skip (the update)
      nan_max_skips=10,        # skip: stop once more than this many updates were skipped
      preempt_timeout=60.0,    # SIGTERM/SIGINT: checkpoint the current step and exit within this
      trackers='tensorboard',  # comma list of run/trackers.TRACKERS; '' : metrics.jsonl only
      wandb_project='dlm_jax',
      wandb_entity='',         # '' : the W&B default entity
  )


def eval_defaults() -> dict:
  """config.eval: validation during training (run/validate.py) and --mode eval
  (infer/evaluate.py)."""
  return dict(
      num_batches=8,           # validation during training: batches x batch_size windows
      batch_size=32,
      seed=1234,
      # --mode eval (evaluate.py): likelihood estimators on validation windows + zero-shot tasks
      name='scores',           # writes <workdir>/eval/<name>.json
      estimators='auto',       # comma list of likelihood.ESTIMATORS; auto: by objective
      likelihood_rows=32,      # validation windows scored by each estimator (0: none)
      corpus='',               # score another source's validation windows ('' : the run's own)
      nelbo_samples=16,        # K Monte Carlo samples per row for `nelbo`
      pll_span=2,              # masked span of `pll_span`
      chunk=64,                # rows per compiled forward pass of the estimators
      tasks='',                # comma list: benchmark names (files in tasks_dir) or .jsonl paths
      tasks_dir='data/zeroshot',  # python -m dlm_jax.prepare --tasks all --out data/zeroshot
      task_estimator='auto',   # log-likelihood of an option; auto: ar for AR runs, else nelbo
      task_limit=0,            # the first N items of each task (0: all)
  )


def check_train(cfg):
  t = cfg.train
  need(t.epochs >= 0, 'train.epochs', f'must be >= 0, got {t.epochs}')
  need(0.0 <= t.token_dropout < 1.0, 'train.token_dropout', f'{t.token_dropout} is outside [0, 1)')
  need(t.batch_size > 0, 'train.batch_size', f'must be positive, got {t.batch_size}')
  need(t.num_steps >= 0, 'train.num_steps', f'must be >= 0, got {t.num_steps}')
  need(0.0 <= t.ema_decay < 1.0, 'train.ema_decay', 'must be in [0, 1)')
  for k in ('log_every', 'eval_every', 'checkpoint_every', 'max_to_keep'):
    need(t[k] > 0, f'train.{k}', f'must be positive, got {t[k]}')
  choice(t, 'nan_policy', NAN_POLICIES, 'train.')
  need(t.nan_max_skips >= 0, 'train.nan_max_skips', f'must be >= 0, got {t.nan_max_skips}')
  need(t.keep_period >= 0, 'train.keep_period', f'must be >= 0 (0: none), got {t.keep_period}')
  need(t.preempt_timeout > 0, 'train.preempt_timeout', f'must be > 0, got {t.preempt_timeout}')


# the likelihood estimators that read [MASK]-noised rows (nelbo follows the run's noise)
MASKED_ONLY = ('chain', 'pll', 'pll_word_l2r', 'pll_word', 'pll_span', 'pll_mix', 'fused')


def check_eval(cfg):
  e = cfg.eval
  need(e.num_batches > 0 and e.batch_size > 0, 'eval.num_batches', 'must be positive')
  names = ', '.join(objectives.ESTIMATORS)
  for est in [x.strip() for x in e.estimators.split(',') if x.strip()] + [e.task_estimator]:
    need(est != 'ce', 'eval.estimators', "'ce' is a training loss (diffusion.weighting=ce), not "
         'an estimand: it bounds nothing; validation reports the NELBO whatever the loss')
    need(est == 'auto' or est in objectives.ESTIMATORS, 'eval.estimators',
         f'{est!r} is not one of auto, {names}')
    need(noise_lib.masked(cfg.diffusion) or est == 'auto' or est not in MASKED_ONLY,
         'eval.estimators', f'{est} reads [MASK]-noised rows: defined for diffusion.noise=masked '
         f'only (under {cfg.diffusion.noise} noise use nelbo, which follows the run\'s noise)')
  task = objectives.of(cfg).task_estimator if e.task_estimator == 'auto' else e.task_estimator
  need(not e.tasks or noise_lib.masked(cfg.diffusion) or task not in MASKED_ONLY,
       'eval.task_estimator', f'{task} reads [MASK]-noised rows: zero-shot tasks under '
       f'diffusion.noise={cfg.diffusion.noise} need nelbo or ar')
  need(e.task_estimator == 'auto' or e.task_estimator in objectives.ESTIMATORS,
       'eval.task_estimator', f'{e.task_estimator!r} is not one of auto, {names}')
  for k in ('likelihood_rows', 'task_limit'):
    need(e[k] >= 0, f'eval.{k}', f'must be >= 0, got {e[k]}')
  for k in ('nelbo_samples', 'pll_span', 'chunk'):
    need(e[k] >= 1, f'eval.{k}', f'must be >= 1, got {e[k]}')
  need(bool(e.name) and '/' not in e.name, 'eval.name', f'{e.name!r} is not a file name')
