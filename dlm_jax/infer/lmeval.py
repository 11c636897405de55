"""lm-eval-harness adapter: any trained run as an `lm_eval` model (optional extra `[lmeval]`).

  python -m dlm_jax.lmeval --model_args workdir=runs/x,estimator=nelbo --tasks piqa ...
  # or from Python: lm_eval.simple_evaluate(model=DlmJaxLM('runs/x'), tasks=[...])

Importing this module registers the model name `dlm_jax`, so `lm_eval --model dlm_jax` works after
`import dlm_jax.lmeval` (the module's own CLI does that and forwards every other flag to lm_eval).
lm-eval passes its own --batch_size (1 unless given) beside --model_args: a model_args batch_size
wins (a different --batch_size is named in one line). lm-eval names the output folder after the
model_args key `pretrained`; the CLI sets it to the run directory's name unless given, so results
land in <output_path>/<run name>/ (without it lm-eval picks a random name).

  loglikelihood          log p(continuation | context) with the chosen estimator (infer/likelihood.py;
                         `auto`: ar for AR runs, nelbo otherwise); is_greedy from greedy decoding
                         (AR teacher-forced argmax; MDM most-confident-first infilling).
  loglikelihood_rolling  the harness's disjoint rolling windows of data.seq_len tokens, each
                         window's tokens scored given the previous window's tail.
  generate_until         greedy (core/sampling.py): AR with the KV cache; MDM fills max_gen_toks
                         masked positions after the context most-confident-first, one per step;
                         cut at `until`/EOS.
Contexts are tokenised as the harness does (likelihood.encode_pair) and cut from the left to fit.
"""
import os
import sys

import jax
import numpy as np
import tqdm
from lm_eval import utils as lm_utils
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from dlm_jax.core import losses
from dlm_jax.core import noise as noise_lib
from dlm_jax.core import sampling
from dlm_jax.data.tokenizers import BOS, EOS, PAD
from dlm_jax.errors import ConfigError
from dlm_jax.infer import evaluate
from dlm_jax.infer import likelihood
from dlm_jax.run import rundir
from dlm_jax.run.trackers import run_name


@register_model('dlm_jax')
class DlmJaxLM(LM):
  """A dlm_jax run directory as an lm-eval model."""

  ARGS = ('workdir', 'estimator', 'batch_size', 'nelbo_samples', 'greedy', 'pretrained')
  HARNESS = ('max_batch_size', 'device')  # what lm_eval passes every model; not ours to use
  GREEDY = sampling.MODES

  def __init__(self, workdir=None, estimator='auto', batch_size=None, nelbo_samples=None,
               greedy=None, pretrained=None, **unknown):
    unknown = sorted(k for k in unknown if k not in self.HARNESS)
    if unknown or not workdir:  # a misspelled key was silently ignored before
      what = f'unknown {", ".join(unknown)}' if unknown else 'workdir= is required'
      raise ConfigError(f'--model_args: {what} (valid: {", ".join(self.ARGS)})')
    super().__init__()
    if greedy is not None and greedy not in self.GREEDY:
      raise ConfigError(f'--model_args greedy={greedy!r}: not one of {", ".join(self.GREEDY)}')
    if nelbo_samples is not None and not (str(nelbo_samples).isdigit() and int(nelbo_samples)):
      raise ConfigError(f'--model_args nelbo_samples={nelbo_samples!r}: a positive integer')
    over = {} if nelbo_samples is None else {'eval.nelbo_samples': int(nelbo_samples)}
    self.workdir, self.name = str(workdir), str(pretrained or run_name(workdir))
    self.cfg, self.tok, self.model, self.params, self.step = rundir.load_run(self.workdir, over)
    estimator = str(estimator)
    if estimator == 'auto':
      estimator = evaluate.task_estimator(self.cfg)
    if estimator not in likelihood.ESTIMATORS:
      raise ConfigError(f'--model_args estimator={estimator!r}: not one of '
                        f'{", ".join(likelihood.ESTIMATORS)}')
    self.estimator = estimator
    self.greedy_mode = greedy or losses.decoder_of(estimator)
    self.L = self.cfg.data.seq_len
    # auto (or auto:N): the run's eval.batch_size, the rows its own evaluation scores at once
    if batch_size is None or str(batch_size).startswith('auto'):
      self.batch = int(self.cfg.eval.batch_size)
    elif str(batch_size).isdigit() and int(batch_size) > 0:
      self.batch = int(batch_size)
    else:
      raise ConfigError(f"batch_size={batch_size!r} (--model_args or lm-eval's --batch_size): "
                        'a positive integer or auto')
    self.batch_sizes = {0: self.batch}  # lm-eval records and prints the batch actually used
    self.scorer = likelihood.Scorer.from_config(self.model, self.params, self.cfg, self.tok)
    # masked: the linear grid, one token per step at T = span (most-confident-first greedy, as
    # zero-shot decoding); uniform / hybrid: the run's own reverse process
    self.sampler = (sampling.Sampler(self.model, self.params, context=self.L)
                    if noise_lib.masked(self.cfg.diffusion) else
                    sampling.Sampler.from_config(self.model, self.params, self.cfg))

  @classmethod
  def create_from_arg_string(cls, arg_string, additional_config=None):
    return cls.create_from_arg_obj(lm_utils.simple_parse_args_string(arg_string),
                                   additional_config)

  @classmethod
  def create_from_arg_obj(cls, arg_dict, additional_config=None):
    """--model_args plus what lm-eval passes every model; a key in both keeps the model_args
    value (lm-eval's base class raised TypeError: multiple values for 'batch_size')."""
    args = dict(arg_dict or {})
    for k, v in (additional_config or {}).items():
      if v is None:
        continue
      if k not in args:
        args[k] = v
      elif k == 'batch_size' and str(v) != str(args[k]):
        print(f"warning: lm-eval's --batch_size {v} ignored: --model_args "
              f'batch_size={args[k]} wins', file=sys.stderr)
    return cls(**args)

  def get_model_info(self):
    """What this run scores with, for lm-eval's results["config"] (auto resolved)."""
    return dict(dlm_jax=dict(workdir=os.path.abspath(self.workdir), name=self.name,
                             step=int(self.step), estimator=self.estimator,
                             nelbo_samples=int(self.scorer.K), greedy=self.greedy_mode,
                             batch_size=self.batch))

  def _score(self, pairs, greedy=False, disable_tqdm=False):
    lls, hits = [], []
    for s in tqdm.trange(0, len(pairs), self.batch, desc=f'dlm_jax {self.estimator}',
                         unit='batch', disable=disable_tqdm or None):
      x, score, _, _ = likelihood.rows(pairs[s:s + self.batch], self.L)
      lls.append(self.scorer(self.estimator, x, score)['logp'])
      if greedy:
        hits.append(self.scorer.greedy(self.greedy_mode, x, score))
    ll = np.concatenate(lls) if lls else np.zeros(0)
    return ll, (np.concatenate(hits) if hits else np.zeros(0, bool))

  def loglikelihood(self, requests, disable_tqdm=False):
    pairs = [likelihood.encode_pair(self.tok, *r.args) for r in requests]
    ll, hit = self._score(pairs, greedy=True, disable_tqdm=disable_tqdm)
    return [(float(a), bool(b)) for a, b in zip(ll, hit)]

  def loglikelihood_rolling(self, requests, disable_tqdm=False):
    pairs, owner = [], []
    for k, r in enumerate(requests):
      ids = [int(i) for i in self.tok.encode_batch([r.args[0]])[0]]
      for win in lm_utils.get_rolling_token_windows(ids, BOS, self.L, 1):
        ctx, pred = lm_utils.make_disjoint_window(win)
        ctx = [i for i in ctx if i != BOS]  # our rows start from BOS implicitly
        pairs.append((np.asarray(ctx, np.int32), np.asarray(pred, np.int32)))
        owner.append(k)
    ll, _ = self._score(pairs, disable_tqdm=disable_tqdm)
    out = np.zeros(len(requests))
    np.add.at(out, np.asarray(owner, int), ll)
    return [float(v) for v in out]

  def generate_until(self, requests, disable_tqdm=False):
    outs = []
    for r in requests:
      context, kw = r.args
      kw = dict(kw or {})
      until = kw.get('until') or []
      until = [until] if isinstance(until, str) else list(until)
      n = max(1, min(int(kw.get('max_gen_toks', 64)), self.L - 1))
      ids = np.asarray(self.tok.encode_batch([context])[0], np.int32)[-(self.L - n):]
      gen = self._greedy_generate(ids, n)
      stop = np.flatnonzero((gen == EOS) | (gen == PAD))
      text = self.tok.decode(gen[:stop[0]] if stop.size else gen)
      for u in until:
        if u and u in text:
          text = text[:text.index(u)]
      outs.append(text)
    return outs

  def _greedy_generate(self, ctx_ids, n):
    # uniform / hybrid noise: the family's reverse process at temperature 0 (confidence decoding
    # only unmasks)
    strategy = 'confidence' if noise_lib.masked(self.cfg.diffusion) else 'ancestral'
    st = sampling.Settings(mode=self.greedy_mode, length=n, steps=n, strategy=strategy,
                           temperature=0.0)
    out = self.sampler.generate(jax.random.PRNGKey(0), [ctx_ids], st)['tokens'][0]
    return np.concatenate([out, np.full(n - len(out), PAD, np.int32)])

