"""--mode sample: samples from a run's latest checkpoint in every mode sample.mode asks for,
scored for generative perplexity, appended to samples.jsonl, summarised in a table.

Generative perplexity: the samples scored by an AR-capable run of this codebase
(`GenerativeScorer`), with each sample's unigram entropy (repetitive text has low perplexity and
low entropy).
"""
import math
import os
import time

import jax
import numpy as np

from dlm_jax import config as config_lib
from dlm_jax.core import model as model_lib
from dlm_jax.core import objectives
from dlm_jax.core import sampling
from dlm_jax.data import tokenizers
from dlm_jax.errors import SampleError, TrainingError, os_errors_as
from dlm_jax.infer import likelihood
from dlm_jax.run import checkpoint
from dlm_jax.run import rundir
from dlm_jax.run import samples as run_samples


class GenerativeScorer:
  """Generative perplexity: samples scored (given their prompts) by an AR-capable run of this
  codebase, in causal mode, with its own tokenizer (text is re-tokenised when it differs)."""

  def __init__(self, run_dir):
    cfg, self.tok, model, params, self.step = rundir.load_run(run_dir)
    if objectives.mdm_fraction(cfg) == 1:  # no AR share to score with
      raise SampleError(f'sample.scorer={run_dir!r} is an MDM run; generative perplexity needs '
                        'an AR-capable run (objective ar, prefix or dual)')
    self.run_dir, self.context = os.path.abspath(run_dir), cfg.data.seq_len
    self.scorer = likelihood.Scorer.from_config(model, params, cfg)

  def score(self, prompts, samples, tok):
    """Per sample (nats, tokens) of the generated text given its prompt, both as this scorer
    tokenises them. prompts / samples: token ids under `tok`, the sampler's tokenizer."""
    same = getattr(tok, 'name', None) == getattr(self.tok, 'name', '') and (
        tok.vocab_size == self.tok.vocab_size)
    pairs = []
    for p, s in zip(prompts, samples):
      if same:
        pairs.append((np.asarray(p, np.int32), np.asarray(s, np.int32)))
      else:
        pairs.append(likelihood.encode_pair(self.tok, tok.decode(p), tok.decode(s)))
    x, score, _, _ = likelihood.rows(pairs, self.context)
    r = self.scorer('ar', x, score)
    return -r['logp'], r['tokens']


def summarize(rows):
  """Per mode: samples, generated tokens, tokens/s, passes, generative perplexity (total nats /
  total tokens), mean unigram entropy."""
  out = {}
  for mode in dict.fromkeys(r['mode'] for r in rows):
    rs = [r for r in rows if r['mode'] == mode]
    toks = sum(r['num_tokens'] for r in rs)
    secs = sum(r['batch_seconds'] / r['batch_size'] for r in rs)
    d = dict(samples=len(rs), tokens=toks, tokens_per_s=toks / secs if secs else float('nan'),
             passes=float(np.mean([r['passes'] for r in rs])),
             entropy=float(np.mean([r['entropy'] for r in rs])))
    if all('gen_nll' in r for r in rs):
      scored = sum(r['gen_tokens_scored'] for r in rs)
      d['gen_ppl'] = math.exp(sum(r['gen_nll'] for r in rs) / max(scored, 1))
    out[mode] = d
  return out


@os_errors_as(TrainingError)
def run(cfg, workdir):
  """--mode sample: samples from the run's latest checkpoint in each mode sample.mode asks for,
  scored for generative perplexity by sample.scorer; appended to <workdir>/samples.jsonl.
  Returns (rows, summary)."""
  if not os.path.isdir(workdir):
    raise TrainingError(f'--workdir {workdir}: no such run directory')
  rundir.check_writable(rundir.path(workdir, rundir.SAMPLES))
  sc = cfg.sample
  tok = tokenizers.get_tokenizer(cfg.data.tokenizer)
  cfg = config_lib.resolve(cfg, tok.vocab_size, training=False,
                           vocab_real=tok.vocab_real)
  prompts, suffixes = run_samples.read_prompts(cfg, tok)
  sts = run_samples.settings_for(cfg, prompts, suffixes)
  scorer = None
  scorer_dir = sc.scorer or (workdir if objectives.mdm_fraction(cfg) < 1 else '')
  if scorer_dir and scorer_dir != 'none':
    scorer = GenerativeScorer(scorer_dir)
  params, step = checkpoint.load_params(workdir, cfg, what=f'--workdir {workdir}')
  sampler = sampling.Sampler.from_config(model_lib.Transformer(cfg.model), params, cfg)
  rows = run_samples.run_samples(sampler, tok, sts, prompts, jax.random.PRNGKey(sc.seed),
                     batch_size=sc.batch_size, suffixes=suffixes, scorer=scorer,
                     extra=dict(step=int(step), date=time.strftime('%Y-%m-%d')))
  run_samples.write_jsonl(rundir.path(workdir, rundir.SAMPLES), rows)
  return rows, summarize(rows)


def format_summary(summary):
  lines = [f'  {"mode":5s} {"samples":>7s} {"tokens":>7s} {"tok/s":>8s} {"passes":>7s} '
           f'{"gen_ppl":>9s} {"entropy":>7s}']
  for m, d in summary.items():
    ppl = f'{d["gen_ppl"]:9.2f}' if 'gen_ppl' in d else f'{"-":>9s}'
    lines.append(f'  {m:5s} {d["samples"]:7d} {d["tokens"]:7d} {d["tokens_per_s"]:8.1f} '
                 f'{d["passes"]:7.1f} {ppl} {d["entropy"]:7.3f}')
  return '\n'.join(lines)
