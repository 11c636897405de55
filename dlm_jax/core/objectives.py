"""Pure training objectives `(params, batch, rng) -> (loss, metrics)` and the registry of what
each objective trains, validates, estimates, samples and reports.

An objective is composed of loss kinds (core/losses.py: ar, prefix, mdm), each owning its noise,
loss terms, metrics, validation and sampler:
  ar      [ar]: causal next-token prediction on every row.
  mdm     [mdm]: masked diffusion on every row.
  prefix  [prefix]: prefix-LM on every row; validation also reports the causal NLL.
  dual    n_mdm sequences of each batch (chosen by a seeded permutation) train as MDM, the rest as
        AR (causal or prefix-LM: dual.ar_attention), one set of weights; loss = (AR sum + MDM sum)
        / all tokens. n_mdm follows the MDM fraction rho = 1 - ar_weight exactly over steps
        (`mdm_count`), so rho = 0 is exactly AR and rho = 1 exactly MDM.
Token dropout (train.token_dropout, AR and prefix-LM only): inputs replaced by [MASK] at rate p
during training, targets unchanged. Each kind first computes sums (`terms`) so the kinds compose,
microbatches add up and validation reuses them.

To add an objective: `register(name, Objective(kinds=...))` (and, if it trains a new kind of
loss, that kind in core/losses.py or your own module). Config validation, validation metrics,
--mode eval, --mode sample, probes and the sweep collector all read the registry.
"""
import dataclasses
import fractions
import functools
import math

import jax
import jax.numpy as jnp

from dlm_jax.core import losses
from dlm_jax.core import sampling
from dlm_jax.core import sharding
from dlm_jax.core.registry import choice, need
# re-exported: callers read the inputs, terms and special ids from here
from dlm_jax.core.inputs import input_segments, shift_inputs, token_dropout_mask
from dlm_jax.core.losses import ar_terms, mdm_terms, rows_padded, sample_prefix
from dlm_jax.core.tokens import BOS, EOS, MASK, PAD


def parse_fraction(s) -> fractions.Fraction:
  """'63/64' -> Fraction(63, 64); '0.75' -> Fraction(3, 4)."""
  return fractions.Fraction(str(s).strip())


@dataclasses.dataclass(frozen=True, kw_only=True)
class Objective:
  """What an objective trains (loss kinds by name, core/losses.py) and what the rest of the code
  does with it. Of `kinds`, at most one trains the MDM share of a batch (its `mdm_share`) and at
  most one the other rows; an objective of one kind trains every row with it."""
  kinds: tuple               # the loss kinds trained
  validate: tuple = ()       # kinds validation reports besides the trained ones (first)
  estimators: tuple          # eval.estimators=auto (likelihood estimators of --mode eval)
  task_estimator: str        # eval.task_estimator=auto (zero-shot option scores)
  headline: tuple            # the validation metric a sweep reports as the run's loss, in order

  def trained(self, cfg) -> tuple:
    """The LossKind objects trained under `cfg`: (the kind of the rows outside the MDM share or
    None, the kind of the MDM share or None)."""
    ks = [losses.KINDS[k] for k in self.kinds]
    return (next((k for k in ks if not k.mdm_share), None),
            next((k for k in ks if k.mdm_share), None))

  def mdm_share(self, cfg) -> fractions.Fraction:
    """Fraction of each batch's rows trained by the MDM-share kind."""
    rest, mdm = self.trained(cfg)
    return fractions.Fraction(int(rest is None and mdm is not None))

  def validation(self, cfg) -> tuple:
    """The kinds validation reports, by name."""
    return tuple(dict.fromkeys(self.validate + tuple(k.name for k in self.trained(cfg) if k)))

  @property
  def sample_modes(self) -> tuple:
    """sample.mode=auto: the sampler of every kind trained."""
    return tuple(dict.fromkeys(losses.KINDS[k].sampler for k in self.kinds))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Dual(Objective):
  """rho = 1 - dual.ar_weight of the rows train the MDM-share kind, the rest the kind of
  `ar_kinds` whose attention is dual.ar_attention."""
  ar_kinds: tuple = ('ar', 'prefix')

  def trained(self, cfg):
    rest = next(losses.KINDS[k] for k in self.ar_kinds
                if losses.KINDS[k].attention == cfg.dual.ar_attention)
    return rest, super().trained(cfg)[1]

  def mdm_share(self, cfg):
    return 1 - parse_fraction(cfg.dual.ar_weight)


# every likelihood estimator of --mode eval (infer/likelihood.py computes them)
ESTIMATORS = ('ar', 'nelbo', 'chain', 'pll', 'pll_word_l2r', 'pll_word', 'pll_span', 'pll_mix',
              'fused')
MDM_ESTIMATORS = ('nelbo', 'chain', 'pll', 'pll_word_l2r', 'pll_mix')
OBJECTIVES = {
    'ar': Objective(kinds=('ar',), estimators=('ar',), task_estimator='ar',
                    headline=('ar_nll',)),
    'mdm': Objective(kinds=('mdm',), estimators=MDM_ESTIMATORS, task_estimator='nelbo',
                     headline=('mdm_nelbo',)),
    'dual': Dual(kinds=('ar', 'mdm'), validate=('ar', 'mdm'),
                 estimators=('ar', 'nelbo', 'chain', 'pll', 'pll_mix', 'fused'),
                 task_estimator='nelbo', headline=('ar_nll', 'mdm_nelbo')),
    # prefix-LM; validation also reports the causal NLL, so it compares with AR
    'prefix': Objective(kinds=('prefix',), validate=('ar',), estimators=('ar',),
                        task_estimator='ar', headline=('ar_nll', 'prefix_nll')),
}


def register(name: str, objective: Objective):
  """Adds an objective (its kinds registered first: losses.register)."""
  if name in OBJECTIVES:
    raise ValueError(f'objective {name!r} is already registered')
  missing = [k for k in objective.kinds if k not in losses.KINDS]
  if missing:
    raise ValueError(f'objective {name!r}: unregistered loss kinds {", ".join(missing)}')
  OBJECTIVES[name] = objective
  return objective


def unregister(name: str):
  OBJECTIVES.pop(name)


def of(cfg) -> Objective:
  return OBJECTIVES[cfg.objective]


def mdm_fraction(cfg) -> fractions.Fraction:
  """Share of sequences trained as MDM under the configured objective."""
  return of(cfg).mdm_share(cfg)


def prefix_ar(cfg) -> bool:
  """Does the AR share train prefix-LM?"""
  rest = of(cfg).trained(cfg)[0]
  return rest is not None and rest.attention == 'prefix'


def sample_modes(cfg) -> tuple:
  """The sampler modes sample.mode asks for; auto: the sampler of every kind the objective
  trains; both: every sampler."""
  if cfg.sample.mode != 'auto':
    return ('ar', 'mdm') if cfg.sample.mode == 'both' else (cfg.sample.mode,)
  return of(cfg).sample_modes


def input_factor(cfg) -> int:
  """Input tokens per target of the most expensive kind trained (FLOP counts)."""
  return max([1] + [losses.KINDS[k].input_factor for k in of(cfg).kinds if k in losses.KINDS])


def mdm_count(cfg, step: int, batch_size: int) -> int:
  """MDM sequences in the batch of `step`: floor((s+1) rho B) - floor(s rho B), exact rationals, so
  fractions like 1/256 are honoured over steps even when rho * B is not an integer."""
  rho = mdm_fraction(cfg) * batch_size
  return math.floor((step + 1) * rho) - math.floor(step * rho)


def _take(batch, idx, spread=None):
  out = {k: jnp.take(v, idx, axis=0) for k, v in batch.items()}
  return out if spread is None else jax.tree_util.tree_map(spread, out)


def draw(cfg, batch, rng, n_mdm, train=True):
  """Every random choice of a step, made once for the global batch: which rows train MDM (dual),
  then each share's kind draws its noise (MDM: t, masks and weights; AR: prefix lengths,
  token-dropout masks) from its named key. Returns (idx_ar, idx_mdm, noise): row indices of each
  share (None: all rows, or none when the share is empty) and per-row noise arrays for the whole
  batch. Drawing for the global batch and only then splitting it is what makes gradient
  accumulation the same update."""
  rng_noise, rng_perm, rng_prefix, rng_tok = jax.random.split(rng, 4)
  keys = dict(noise=rng_noise, prefix=rng_prefix, drop=rng_tok)
  B = batch['targets'].shape[0]
  if 0 < n_mdm < B:  # a mixed batch (dual): which rows train which kind
    perm_B = jax.random.permutation(rng_perm, B)
    idx_mdm, idx_ar = perm_B[:n_mdm], perm_B[n_mdm:]
  else:
    idx_mdm = idx_ar = None
  noise = {}
  for kind, n in zip(of(cfg).trained(cfg), (B - n_mdm, n_mdm)):
    if n > 0:
      noise.update(_kind(kind, cfg).draw(cfg, batch, keys, train))
  return idx_ar, idx_mdm, noise


def _kind(kind, cfg):
  if kind is None:
    raise ValueError(f'objective {cfg.objective!r} trains no kind on this share of the batch')
  return kind


def _share(n, micro):
  """Does microbatch `micro` hold any of a share of n rows? (static)"""
  return n > 0 if micro is None or isinstance(micro[0], jax.Array) else (
      len(range(micro[0], n, micro[1])) > 0)


def _rows(idx, n, micro):
  """Row indices of microbatch m of k (rows m, m+k, ... of a share of n rows), or None when the
  share is the whole batch and there is no microbatching."""
  if micro is None:
    return idx
  m, k = micro
  idx = jnp.arange(n) if idx is None else idx
  if n % k == 0:  # m may be traced (a scanned microbatch loop)
    return idx.reshape(n // k, k)[:, m]
  return idx[m::k]  # uneven shares: m is a Python int (an unrolled loop)


def loss_fn(params, batch, rng, *, model, cfg, train=True, n_mdm=None, spread=None,
            micro=None):
  """The configured objective; returns (loss, metrics) with per-kind NLL / NELBO per token.
  n_mdm (static): MDM sequences in this batch; None -> round(rho * B).
  micro: (m, k): the loss of microbatch m of k, with every random choice drawn for the whole
  batch first (`draw`), so that k microbatches weighted by their `tokens` give exactly the
  single-pass gradient.
  spread: lays a row-subset back out over the data-parallel devices (a sharding constraint);
  without it a dual batch's random AR/MDM split would leave XLA to replicate both halves on
  every device (measured: 8x the work on 8 devices)."""
  rng_draw, rng_drop = jax.random.split(rng)
  B = batch['targets'].shape[0]
  if n_mdm is None:
    n_mdm = int(round(mdm_fraction(cfg) * B))
  idx_ar, idx_mdm, noise = draw(cfg, batch, rng_draw, n_mdm, train)
  if micro is not None:
    rng_drop = jax.random.fold_in(rng_drop, micro[0])
  shares = [(_kind(k, cfg), idx, n) for k, idx, n in zip(of(cfg).trained(cfg), (idx_ar, idx_mdm),
                                                         (B - n_mdm, n_mdm)) if n > 0]
  # the same keys in every microbatch (a share may be empty in one of them)
  zero = jnp.zeros((), jnp.float32)
  sums = dict(loss=zero, tokens=zero)
  for kind, _, _ in shares:
    sums.update({k: zero for k in kind.sums_keys})
  for kind, idx, n in shares:
    if not _share(n, micro):
      continue
    rows = _rows(idx, n, micro)
    full = dict(batch, **{k: noise[k] for k in kind.noise_keys if k in noise})
    sub = full if rows is None else _take(full, rows, spread)
    t = kind.terms(model, params, sub, rng_drop, cfg, train)
    sums.update(loss=sums['loss'] + t.pop('loss_sum'), tokens=sums['tokens'] + t.pop('tokens'),
                **t)
  metrics = metrics_from_sums(sums, cfg)
  metrics['tokens'] = sums['tokens']  # the loss's denominator: gradient accumulation weights by it
  metrics['sums'] = sums              # per-kind numerators and denominators, for accumulation
  return metrics['loss'], metrics


def metrics_from_sums(sums, cfg):
  """Per-kind metrics of accumulated sums (the same formulas as loss_fn): a kind reports when
  its sums are there (a dual step may hold one share only)."""
  out = {}
  for kind in of(cfg).trained(cfg):
    if kind is not None and all(k in sums for k in kind.sums_keys):
      out.update(kind.metrics(sums, cfg))
  out['loss'] = sums['loss'] / sums['tokens']
  return out


def make_loss_fn(model, cfg, train=True, mesh=None):
  spread = None
  if mesh is not None:
    sh = sharding.batch_sharding(mesh)
    spread = lambda x: jax.lax.with_sharding_constraint(x, sh)
  return functools.partial(loss_fn, model=model, cfg=cfg, train=train, spread=spread)


# config.objective / config.dual, checked by their owner (config.validate asks).

AR_ATTENTIONS = ('causal', 'prefix')  # config.dual.ar_attention


def check_config(cfg):
  """config.objective, config.dual, and model.unpredicted against the PAD rows it trains."""
  choice(cfg, 'objective', tuple(OBJECTIVES), '')
  try:
    w = parse_fraction(cfg.dual.ar_weight)
  except (ValueError, ZeroDivisionError):
    need(False, 'dual.ar_weight', f'{cfg.dual.ar_weight!r} is not a fraction like '
         "'63/64' or a number")
  need(0 <= w <= 1, 'dual.ar_weight', f'{cfg.dual.ar_weight} is outside [0, 1]')
  choice(cfg.dual, 'ar_attention', AR_ATTENTIONS, 'dual.')
  need(not (rows_padded(cfg) and cfg.diffusion.pad == 'predict' and
            str(PAD) in [x.strip() for x in cfg.model.unpredicted.split(',')]),
       'model.unpredicted', f'lists PAD ({PAD}), which padded rows (data.packing=pad '
       'or a data.task) with diffusion.pad=predict train the model to predict: remove it there, '
       'or use diffusion.pad=visible')
