"""A toy loss kind and an objective that trains it: next-token prediction with every target's
loss counted twice (the same NLL, twice the gradient). The README's "Extending it: a loss kind"
example; tests/test_losses_extending.py registers it, trains it and removes it."""
from dlm_jax.core import losses
from dlm_jax.core import objectives


class Doubled(losses.AR):
  """Inherits AR's noise draw (token dropout), task exact match and sampler."""
  name, bpb_of, estimators = 'doubled', 'doubled_nll', ()
  sums_keys = ('doubled_sum', 'doubled_tokens')

  def terms(self, model, params, batch, rng, cfg, train):
    ar = losses.ar_terms(model, params, batch, rng, train, segments=cfg.data.segment_ids)
    return dict(loss_sum=2 * ar['loss_sum'], tokens=ar['tokens'], doubled_sum=ar['nll_sum'],
                doubled_tokens=ar['tokens'])

  def metrics(self, sums, cfg):
    return {'doubled_nll': sums['doubled_sum'] / sums['doubled_tokens']}

  def estimands(self, cfg, doc):
    return {'doubled_nll': f'-log p(x) per token of {doc}, causal (trained at weight 2)'}

  def validation_sums(self, model, cfg):
    def sums(params, batch, rng):
      ar = losses.ar_terms(model, params, batch, rng, train=False, segments=cfg.data.segment_ids)
      return dict(doubled_nll_sum=ar['nll_sum'], doubled_tokens=ar['tokens'])
    return sums

  def validation_metrics(self, tot):
    return dict(doubled_nll=float(tot['doubled_nll_sum'] / tot['doubled_tokens']))


def register():
  """objective=doubled trains it on every row; --mode eval scores it with the AR estimator."""
  losses.register(Doubled())
  objectives.register('doubled', objectives.Objective(
      kinds=('doubled',), estimators=('ar',), task_estimator='ar', headline=('doubled_nll',)))


def unregister():
  objectives.unregister('doubled')
  losses.unregister('doubled')
