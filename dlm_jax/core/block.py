"""Block diffusion (BD3-LM, Arriola et al., arXiv 2503.09573): autoregressive over blocks of
L' = block.size targets, masked diffusion inside each block; the loss kind `block`, the objective
`block`, the sampler mode `block` (core/blocksample.py) and the config section `block`.

Shifted parameterisation (core/inputs.py): targets x_0..x_{L-1}, block b = targets bL'..bL'+L'-1.
The model reads 2L tokens, [noised copy ; clean copy] (core/blockattn.py): the noised copy is the
MDM input of the targets with each block's own noise, except that a block's last target is shown
clean (it is the next block's first input: clean context there, and never an input of its own
block); the clean copy is u = [BOS, x_0..x_{L-2}]. Noise per block: the targets reshaped to
(B L / L') rows of L' and drawn by core/noise.py like MDM rows (t, mask, weights per block), so
every time sampler, weighting and mask pattern carries over. Loss = the MDM sums of the noised
half's logits per block; divided by the non-PAD tokens, the NELBO per token:
  -log p(x) = sum_b -log p(x_b | x_<b) <= sum_b NELBO_b.
L' = 1 is exactly AR (tested), L' = L exactly MDM (tested).
"""
import math

import jax
import jax.numpy as jnp
import ml_collections

from dlm_jax.core import blocksample
from dlm_jax.core import losses
from dlm_jax.core import noise as noise_lib
from dlm_jax.core import objectives
from dlm_jax.core import sampling
from dlm_jax.core.inputs import shift_inputs
from dlm_jax.core.registry import need


def defaults() -> ml_collections.ConfigDict:
  """config.block (objective=block and sample.mode=block)."""
  return ml_collections.ConfigDict(dict(
      size=4,                  # L': targets per block; divides data.seq_len (1: AR, seq_len: MDM)
  ))


def uses_block(cfg) -> bool:
  """Does the run train or sample by blocks?"""
  return cfg.objective == 'block' or 'block' in objectives.sample_modes(cfg)


def check_config(cfg):
  """config.block, and what objective=block cannot do (refused with the reason)."""
  size, L = cfg.block.size, cfg.data.seq_len
  need(size >= 1, 'block.size', f'must be >= 1, got {size}')
  if not uses_block(cfg):
    return
  need(L % size == 0, 'block.size', f'{size} does not divide data.seq_len={L} (blocks tile the '
       'window)')
  if cfg.objective != 'block':
    return
  need(not cfg.data.segment_ids, 'data.segment_ids', 'objective=block has no segment masks in '
       'its block attention (documents would attend across EOS); set it False')
  need(not cfg.data.task, 'data.task', 'objective=block does not train prefix tasks (its noise '
       'is drawn per block, with no prompt); use objective=mdm or ar')
  need(noise_lib.masked(cfg.diffusion), 'diffusion.noise', f'{cfg.diffusion.noise}: '
       'objective=block supports masked noise only so far')
  need(cfg.eval.tasks == '', 'eval.tasks', 'objective=block has no zero-shot option scorer '
       '(the likelihood estimators score AR or MDM models, not block diffusion)')
  need(cfg.eval.estimators == 'auto', 'eval.estimators', 'objective=block has no likelihood '
       'estimator of --mode eval (its validation reports block_nelbo); leave it auto')


def last_of_block(L: int, size: int):
  """bool[L]: the last target of each block (shown clean in the noised copy)."""
  return jnp.arange(L) % size == size - 1


def draw_noise(noise, rng, targets_BxL, size: int):
  """The noise of every block: (mask_BxL, training weight_BxJ, NELBO weight_BxJ)."""
  B, L = targets_BxL.shape
  _, mask_R, w_R, elbo_R = noise.sample(rng, targets_BxL.reshape(B * L // size, size))
  return mask_R.reshape(B, L), w_R.reshape(B, L // size), elbo_R.reshape(B, L // size)


def block_inputs(targets_BxL, mask_BxL, size: int):
  """u_Bx2L = [noised copy ; clean copy] (see the module docstring)."""
  shown_BxL = mask_BxL & ~last_of_block(targets_BxL.shape[1], size)[None]
  return jnp.concatenate([losses.mdm_inputs(targets_BxL, shown_BxL),
                          shift_inputs(targets_BxL)], axis=1)


def block_logits(model, params, targets_BxL, mask_BxL, size, rng=None, train=False):
  """The noised half's logits_BxLxV: block b's targets given x_<b and block b's noise."""
  L = targets_BxL.shape[1]
  logits = model.apply({'params': params}, block_inputs(targets_BxL, mask_BxL, size), 'block',
                       deterministic=not train, rngs={'dropout': rng} if train else None,
                       block_size=size)
  return logits[:, :L]


def block_terms(model, params, batch, mask_BxL, w_BxJ, elbo_BxJ, size, rng=None, train=False):
  """losses.mdm_sums of every block (rows of L' targets, weights per block)."""
  targets_BxL = batch['targets']
  B, L = targets_BxL.shape
  logits_BxLxV = block_logits(model, params, targets_BxL, mask_BxL, size, rng, train)
  rows = lambda a: a.reshape(B * L // size, size, *a.shape[2:])
  return losses.mdm_sums(rows(logits_BxLxV), dict(targets=rows(targets_BxL)), rows(mask_BxL),
                         w_BxJ.reshape(-1), elbo_BxJ.reshape(-1))


class Block(losses.LossKind):
  """Trains every row of objective=block; decoded by sample.mode=block (blocksample.py)."""
  name, mdm_share, sampler, bpb_of = 'block', True, 'block', 'block_nelbo'
  noise_keys = ('mask', 'w', 'elbo')
  input_factor = 2  # the noised and the clean copy: 2L tokens, 2L of attention
  sums_keys = ('block_loss_sum', 'block_sum', 'block_tokens', 'block_masked')

  def draw(self, cfg, batch, keys, train):
    mask_BxL, w_BxJ, elbo_BxJ = draw_noise(noise_lib.Noise(cfg.diffusion), keys['noise'],
                                           batch['targets'], cfg.block.size)
    return dict(mask=mask_BxL, w=w_BxJ, elbo=elbo_BxJ)

  def terms(self, model, params, batch, rng, cfg, train):
    t = block_terms(model, params, batch, batch['mask'], batch['w'], batch['elbo'],
                    cfg.block.size, jax.random.fold_in(rng, 1), train)
    return dict(loss_sum=t['loss_sum'], tokens=t['tokens'], block_loss_sum=t['loss_sum'],
                block_sum=t['nelbo_sum'], block_tokens=t['tokens'], block_masked=t['masked'])

  def metrics(self, sums, cfg):
    out = {}
    if noise_lib.Noise(cfg.diffusion).nelbo_exact:
      out['block_nelbo'] = sums['block_sum'] / sums['block_tokens']
    if cfg.diffusion.weighting == 'plain':
      out['block_loss'] = sums['block_loss_sum'] / sums['block_tokens']
    out['block_mask_rate'] = sums['block_masked'] / sums['block_tokens']
    return out

  def estimands(self, cfg, doc):
    given = []
    if losses.rows_padded(cfg) and cfg.diffusion.pad == 'visible':
      given.append('its length (diffusion.pad=visible: PAD never masked)')
    if not cfg.diffusion.mask_eos:
      given.append('the EOS positions (diffusion.mask_eos=False)')
    cond = f' given {" and ".join(given)}' if given else ''
    return {'block_nelbo': f'an upper bound on -log p(x){cond} per token of {doc}: AR over '
                           f'blocks of {cfg.block.size} tokens, the continuous-time NELBO inside '
                           'each; uniform low-discrepancy t per block, fixed seed'}

  def validation_sums(self, model, cfg):
    """Uniform low-discrepancy t and the run's fixed eval seed, as MDM's."""
    noise, size = noise_lib.Noise.for_evaluation(cfg.diffusion), cfg.block.size

    def sums(params, batch, rng):
      mask_BxL, w_BxJ, elbo_BxJ = draw_noise(noise, rng, batch['targets'], size)
      t = block_terms(model, params, batch, mask_BxL, w_BxJ, elbo_BxJ, size)
      return dict(block_nelbo_sum=t['nelbo_sum'], block_tokens=t['tokens'])
    return sums

  def validation_metrics(self, tot):
    nelbo = float(tot['block_nelbo_sum'] / tot['block_tokens'])
    return dict(block_nelbo=nelbo, block_ppl=math.exp(min(nelbo, 700)))


def register():
  """Files the loss kind, the objective and the sampler mode (once, at import)."""
  if 'block' in losses.KINDS:
    return
  losses.register(Block())
  objectives.register('block', objectives.Objective(
      kinds=('block',), estimators=(), task_estimator='', headline=('block_nelbo',)))
  sampling.Sampler.register_mode('block', blocksample.generate, False,
                                 lambda cfg: dict(block_size=cfg.block.size))


register()
