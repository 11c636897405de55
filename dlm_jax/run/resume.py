"""Run-directory compatibility: a run's config.json read over today's schema (keys it predates
take the value that reproduces it: LEGACY) and the rule for which keys a resuming command may
change (RESUMABLE_CHANGES, diff_for_resume). run/rundir.py applies them."""
import ml_collections

from dlm_jax import config as config_lib
from dlm_jax.core import optim
from dlm_jax.errors import ConfigError

# Keys the schema gained after runs were written, with the value that reproduces what those runs
# did when it differs from today's default: (key, value, condition on the old config).
LEGACY = (('diffusion.pad', 'visible', lambda d: d.get('data', {}).get('packing') == 'pad'),)


def complete(d: dict) -> ml_collections.ConfigDict:
  """A run's config.json over the schema: keys the schema gained since the run was written take
  their legacy value (LEGACY) or their default; unknown keys are errors."""
  def merge(schema, values, prefix):
    for k, v in values.items():
      if k not in schema:
        raise ConfigError(f'config.{prefix}{k}: unknown key in the run\'s config.json')
      if isinstance(schema[k], ml_collections.ConfigDict) and isinstance(v, dict):
        merge(schema[k], v, f'{prefix}{k}.')
      else:
        schema[k] = v
  cfg = config_lib.base()
  for key, value, applies in LEGACY:
    group, leaf = key.split('.')
    if leaf not in d.get(group, {leaf: None}) and applies(d):
      cfg[group][leaf] = value
  merge(cfg, d, '')
  return cfg


def from_run(d: dict) -> ml_collections.ConfigDict:
  """A run's config.json as a validated config (for evaluating or sampling it)."""
  return config_lib.validate(complete(d), training=False)


# Keys that may differ between a run's config.json and the command resuming it.
# train.num_steps too, but only where the LR schedule does not depend on it (diff_for_resume)
RESUMABLE_CHANGES = ('model.attention', 'model.remat', 'model.scan_unroll', 'train.compile_cache',
                     'train.preempt_timeout', 'train.num_steps', 'train.log_every',
                     'train.eval_every',
                     'train.checkpoint_every', 'train.max_to_keep', 'train.keep_period',
                     'train.nan_policy', 'train.nan_max_skips', 'train.trackers',
                     'train.wandb_', 'sample.', 'eval.num_batches',
                     'data.cache_dir', 'data.prefetch', 'mesh.', 'train.grad_accum',
                     'eval.name', 'eval.estimators', 'eval.likelihood_rows', 'eval.corpus',
                     'eval.nelbo_samples', 'eval.pll_span', 'eval.chunk', 'eval.task')


def diff_for_resume(old: dict, new: dict) -> list[str]:
  """Keys whose values differ in a way that makes resuming a different run."""
  a = dict(config_lib.walk(complete(old)))
  b = dict(config_lib.walk(ml_collections.ConfigDict(new)))
  out = []
  for k in sorted(set(a) | set(b)):
    if a.get(k) != b.get(k) and not any(k.startswith(p) for p in RESUMABLE_CHANGES):
      out.append(f'{k}: {a.get(k)!r} -> {b.get(k)!r}')
  k, lr = 'train.num_steps', b.get('train.lr_schedule')
  if a.get(k) != b.get(k) and getattr(optim.LR_SCHEDULES.get(lr), 'uses_num_steps', True):
    out.append(f'{k}: {a.get(k)!r} -> {b.get(k)!r} (the {lr} learning '
               "rate depends on it, so resuming would reshape it mid-run; continue in a new "
               "--workdir with init_from, or train with lr_schedule='constant')")
  return out
