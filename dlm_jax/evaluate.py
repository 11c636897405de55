"""Likelihood evaluation. Validation reports, per mode the run trains:
  AR   NLL per token and perplexity;
  MDM  NELBO per token with uniform low-discrepancy t and a fixed seed (so runs with different
       training samplers are comparable) and its perplexity bound exp(NELBO).
Both also in bits per byte when the split's bytes/token ratio is known.
"""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from dlm_jax import masking
from dlm_jax import objectives
from dlm_jax import sharding
from dlm_jax.data.tokenizers import PAD


def modes(cfg):
  """What validation measures for a run: AR NLL for anything with an AR share, the MDM NELBO for
  anything with an MDM share, and the prefix-LM NLL (prompt = first half) for prefix-LM training."""
  m = {'ar': ('ar',), 'mdm': ('mdm',), 'dual': ('ar', 'mdm'), 'prefix': ('ar', 'prefix')}
  out = m[cfg.objective]
  if cfg.objective == 'dual' and cfg.dual.ar_attention == 'prefix':
    out = out + ('prefix',)
  return out


def estimands(cfg) -> dict:
  """What each validation metric estimates, in words (summary.json `estimands`, the end-of-run
  table, README). Every MDM number is an upper bound (a NELBO), exact in expectation."""
  d = cfg.data
  doc = 'each document (segment ids: no attention across EOS)' if d.segment_ids else 'the window'
  out = {}
  if 'ar' in modes(cfg):
    out['ar_nll'] = (f'-log p(x) per token of {doc}, causal; EOS is a token, so the length of '
                     'each document is paid for')
  if 'prefix' in modes(cfg):
    out['prefix_nll'] = ('-log p(second half | first half) per token of the second half '
                         '(prefix-LM attention, prompt = the first L/2 tokens, or the task prompt)')
  if 'mdm' in modes(cfg):
    given = []
    if d.packing == 'pad' and cfg.diffusion.pad == 'visible':
      given.append('its length (diffusion.pad=visible: PAD never masked)')
    if not cfg.diffusion.mask_eos:
      given.append('the EOS positions (diffusion.mask_eos=False)')
    cond = f' given {" and ".join(given)}' if given else ''
    length = ('' if given or d.packing == 'wrap' else
              ', the length included (PAD masked and predicted, diffusion.pad=predict)')
    out['mdm_nelbo'] = (f'an upper bound on -log p(x){cond} per token of {doc}{length}: the '
                        'continuous-time NELBO, uniform low-discrepancy t, fixed seed')
  if cfg.data.task:
    for k in list(out):
      out[k] += '; task rows: the target given the prompt'
  out['*_ppl'] = 'exp of the per-token number (a perplexity bound for mdm_ppl)'
  out['*_bpb'] = 'the same in bits per UTF-8 byte of the split'
  return out


LIKELIHOOD_ESTIMANDS = {
    'ar': 'log p(scored | context): causal chain rule, exact',
    'nelbo': 'a lower bound on log p(scored | context, row length): K-sample continuous-time ELBO',
    'chain': 'log p(scored | context, row length) under the left-to-right unmasking order',
    'pll': 'pseudo-log-likelihood (not a normalised likelihood): one token masked per pass',
    'pll_word_l2r': 'pseudo-log-likelihood, the token and the rest of its word masked',
    'pll_word': 'pseudo-log-likelihood, whole words masked',
    'pll_span': 'pseudo-log-likelihood, the token and the next eval.pll_span - 1 masked',
    'pll_mix': 'mean of pll and pll_word_l2r',
    'fused': 'mean of pll and ar',
}


class Validator:
  """Callable params -> metrics over a fixed list of validation batches."""

  def __init__(self, model, cfg, batches, mesh, bytes_per_token=None, params_sharding=None):
    """params_sharding: the parameters' NamedShardings (train.state_layout); None: whatever
    layout the parameters arrive in."""
    self.batches = batches
    self.modes = modes(cfg)
    self.seed = cfg.eval.seed
    self.bytes_per_token = bytes_per_token
    noise = masking.Noise.for_evaluation(cfg.diffusion)
    rep, bsh = sharding.replicated(mesh), sharding.batch_sharding(mesh)
    self._bsh = bsh

    def sums(params, batch, rng):
      out = {}
      if 'ar' in self.modes:
        ar = objectives.ar_terms(model, params, batch, rng, train=False)
        out.update(ar_nll_sum=ar['nll_sum'], ar_tokens=ar['tokens'])
      if 'prefix' in self.modes:
        B, L = batch['targets'].shape
        P_B = batch['prefix_len'] if 'prefix_len' in batch else jnp.full((B,), L // 2, jnp.int32)
        pre = objectives.ar_terms(model, params, batch, rng, False, P_B)
        out.update(prefix_nll_sum=pre['nll_sum'], prefix_tokens=pre['tokens'])
      if 'mdm' in self.modes:
        _, mask_BxL, w_B, elbo_B = noise.sample(rng, batch['targets'], batch.get('prefix_len'))
        md = objectives.mdm_terms(model, params, batch, mask_BxL, w_B, elbo_B, rng, train=False)
        out.update(mdm_nelbo_sum=md['nelbo_sum'], mdm_tokens=md['tokens'])
      return out

    in_sh = None if params_sharding is None else (params_sharding, bsh, rep)
    self._sums = jax.jit(sums, in_shardings=in_sh, out_shardings=rep)
    self.task = bool(batches) and 'prefix_len' in batches[0]
    if self.task:
      in_sh = None if params_sharding is None else (params_sharding, bsh)
      self._exact = {m: jax.jit(functools.partial(task_exact_match, model, mode=m),
                                in_shardings=in_sh, out_shardings=rep) for m in self.modes}

  def __call__(self, params):
    tot = {}
    for i, b in enumerate(self.batches):
      rng = jax.random.fold_in(jax.random.PRNGKey(self.seed), i)
      s = self._sums(params, sharding.put_global(b, self._bsh), rng)
      for k, v in s.items():
        tot[k] = tot.get(k, 0.0) + v
    tot = jax.device_get(tot)
    out = {}
    if 'ar' in self.modes:
      nll = float(tot['ar_nll_sum'] / tot['ar_tokens'])
      out.update(ar_nll=nll, ar_ppl=math.exp(min(nll, 700)))
    if 'prefix' in self.modes:
      out['prefix_nll'] = float(tot['prefix_nll_sum'] / tot['prefix_tokens'])
    if 'mdm' in self.modes:
      nelbo = float(tot['mdm_nelbo_sum'] / tot['mdm_tokens'])
      out.update(mdm_nelbo=nelbo, mdm_ppl=math.exp(min(nelbo, 700)))
    if self.bytes_per_token:
      for k in ('ar_nll', 'mdm_nelbo'):
        if k in out:
          out[k.split('_')[0] + '_bpb'] = out[k] / self.bytes_per_token / math.log(2)
    out['eval_tokens'] = int(sum(jnp.size(b['targets']) for b in self.batches))
    if self.task:
      for m, fn in self._exact.items():
        hits = [fn(params, sharding.put_global(b, self._bsh)) for b in self.batches]
        out[f'{m}_exact_match'] = float(np.mean(np.concatenate(jax.device_get(hits))))
    return out


def task_exact_match(model, params, batch, mode):
  """Per example: does greedy decoding reproduce the target (and its EOS) exactly?
  AR: greedy decoding yields the target iff every target token is the argmax given the gold
  prefix, so one teacher-forced pass is exact. MDM: the target span (its gold length, an oracle
  the padding already reveals in training) is filled most-confident-first, one token per step."""
  targets_BxL, P_B = batch['targets'], batch['prefix_len']
  L = targets_BxL.shape[1]
  span_BxL = (jnp.arange(L)[None] >= P_B[:, None]) & (targets_BxL != PAD)
  if mode in ('ar', 'prefix'):  # prefix-LM: the prompt is read bidirectionally, then causal
    logits_BxLxV = model.apply({'params': params}, objectives.shift_inputs(targets_BxL),
                               'causal' if mode == 'ar' else 'prefix', P_B + 1)
    pred_BxL = jnp.argmax(logits_BxLxV, -1)
  else:
    from dlm_jax import sample  # pylint: disable=g-import-not-at-top
    # T = L >= any span; steps that reveal nothing reuse the logits, so only span + 1 passes run
    pred_BxL = sample.mdm_infill_greedy(model, params, targets_BxL, span_BxL, L)
  return jnp.all(jnp.where(span_BxL, pred_BxL == targets_BxL, True), axis=-1)


# ----------------------------------------------------------------------------- --mode eval

AUTO_ESTIMATORS = {'ar': ('ar',), 'prefix': ('ar',),
                   'mdm': ('nelbo', 'chain', 'pll', 'pll_word_l2r', 'pll_mix'),
                   'dual': ('ar', 'nelbo', 'chain', 'pll', 'pll_mix', 'fused')}


def estimators(cfg):
  names = [x.strip() for x in cfg.eval.estimators.split(',') if x.strip()]
  out = []
  for n in names:
    for e in (AUTO_ESTIMATORS[cfg.objective] if n == 'auto' else (n,)):
      if e not in out:
        out.append(e)
  return out


def task_estimator(cfg):
  if cfg.eval.task_estimator != 'auto':
    return cfg.eval.task_estimator
  return 'ar' if cfg.objective in ('ar', 'prefix') else 'nelbo'


def likelihood_table(scorer, names, rows_NxL, bytes_per_token=None):
  """{estimator: nats/token (and bits/byte, NELBO standard error, rows/s)} on full windows."""
  import time  # pylint: disable=g-import-not-at-top
  from dlm_jax import likelihood  # pylint: disable=g-import-not-at-top
  out = {}
  for est in names:
    t0 = time.time()
    r = scorer(est, rows_NxL, rows_NxL != PAD)
    dt = time.time() - t0
    tok = int(r['tokens'].sum())
    res = dict(nats_per_token=likelihood.per_token(r['logp'], r['tokens']), tokens=tok,
               rows=int(len(rows_NxL)), seconds=round(dt, 3),
               rows_per_s=round(len(rows_NxL) / dt, 3), estimand=LIKELIHOOD_ESTIMANDS[est])
    if est == 'nelbo':
      res['stderr'] = float(np.sqrt(np.sum(r['se'] ** 2)) / tok)
      res['samples'] = scorer.K
    if bytes_per_token:
      res['bits_per_byte'] = res['nats_per_token'] / bytes_per_token / math.log(2)
    out[est] = res
  return out


def validation_windows(cfg, corpus, n):
  """(the first n validation windows, bytes per token) of a text source packed as the run's data
  (corpus '' = the run's own; else any data.corpus value: embedded, a file, a directory or a
  prepared dataset)."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from dlm_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  d = ml_collections.ConfigDict(cfg.data.to_dict())
  if corpus:
    d.corpus, d.unique_tokens = corpus, 0
  _, val, info = pipeline.load_splits(d, n, cfg.model.vocab_size)
  bpt = info['val_bytes'] / info['val_tokens'] if info.get('val_tokens') else None
  return np.asarray(val)[:n], bpt


def run(cfg, workdir):
  """--mode eval: the estimators on the first eval.likelihood_rows validation windows (of the
  run's data, or of eval.corpus) and the zero-shot tasks, for the latest checkpoint of `workdir`
  (EMA parameters if it kept them). Writes eval/<name>.json (per-item predictions under
  eval/<name>/) and returns the dict."""
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  from dlm_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from dlm_jax import likelihood  # pylint: disable=g-import-not-at-top
  from dlm_jax import model as model_lib  # pylint: disable=g-import-not-at-top
  from dlm_jax import train  # pylint: disable=g-import-not-at-top
  from dlm_jax import zeroshot  # pylint: disable=g-import-not-at-top
  from dlm_jax.data import benchmarks  # pylint: disable=g-import-not-at-top
  from dlm_jax.data import tokenizers  # pylint: disable=g-import-not-at-top
  e = cfg.eval
  if not os.path.isdir(workdir):
    raise train.TrainingError(f'--workdir {workdir}: no such run directory')
  tasks = [zeroshot.resolve_task(t.strip(), e.tasks_dir) for t in e.tasks.split(',') if t.strip()]
  items = {name: benchmarks.read(path, e.task_limit) for name, path in tasks}  # fail early
  tok = tokenizers.get_tokenizer(cfg.data.tokenizer)
  cfg = config_lib.resolve(cfg, tok.vocab_size, training=False)
  params, step = train.load_params(workdir, cfg, what=f'--workdir {workdir}')
  model = model_lib.Transformer(cfg.model)
  scorer = likelihood.Scorer.from_config(model, params, cfg, tok)
  t0 = time.time()
  out = dict(run=os.path.abspath(workdir), step=int(step), objective=cfg.objective,
             corpus=e.corpus or cfg.data.corpus, date=time.strftime('%Y-%m-%d'), likelihood={},
             tasks={})
  if e.likelihood_rows:
    rows, bpt = validation_windows(cfg, e.corpus, e.likelihood_rows)
    out['likelihood'] = likelihood_table(scorer, estimators(cfg), rows, bpt)
  est = task_estimator(cfg)
  pred_dir = os.path.join(workdir, 'eval', e.name)
  for name, path in tasks:
    t1 = time.time()
    res = zeroshot.score_items(scorer, est, items[name], tok, cfg.data.seq_len)
    preds = res.pop('predictions')
    res['seconds'] = round(time.time() - t1, 3)
    out['tasks'][name] = res
    os.makedirs(pred_dir, exist_ok=True)
    with open(os.path.join(pred_dir, f'{name}.jsonl'), 'w', encoding='utf-8') as f:
      for p in preds:
        f.write(json.dumps(p) + '\n')
  out['seconds'] = round(time.time() - t0, 3)
  train._atomic_json(os.path.join(workdir, 'eval', f'{e.name}.json'), out)  # pylint: disable=protected-access
  return out


def format_table(res):
  lines = [f'{res["run"]} (step {res["step"]}, {res["objective"]})']
  if res['likelihood']:
    lines.append(f'  {"estimator":14s} {"nats/token":>10s} {"bits/byte":>9s} {"rows/s":>8s}')
    for k, v in res['likelihood'].items():
      se = f' +- {v["stderr"]:.4f}' if 'stderr' in v else ''
      bpb = f'{v["bits_per_byte"]:9.4f}' if 'bits_per_byte' in v else f'{"":9s}'
      lines.append(f'  {k:14s} {v["nats_per_token"]:10.4f} {bpb} {v["rows_per_s"]:8.2f}{se}')
  if res['tasks']:
    lines.append(f'  {"task":14s} {"items":>6s} {"acc":>7s} {"acc_norm":>8s} {"chance":>7s} '
                 f'{"ppl":>9s}  estimator')
    for k, v in res['tasks'].items():
      norm = f'{v["acc_norm"]:8.4f}' if 'acc_norm' in v else f'{"":8s}'
      chance = f'{v["chance"]:7.4f}' if 'chance' in v else f'{"":7s}'
      ppl = f'{v["ppl"]:9.1f}' if 'ppl' in v else f'{"":9s}'
      lines.append(f'  {k:14s} {v["items"]:6d} {v["acc"]:7.4f} {norm} {chance} {ppl}  '
                   f'{v["estimator"]}')
  return '\n'.join(lines)
