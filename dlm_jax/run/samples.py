"""The samples a run writes (samples.jsonl): prompts from sample.prompts, the sampler settings of
sample.*, and the generation loop shared by the end of training and --mode sample."""
import dataclasses
import json
import math
import os

import jax
import numpy as np

from dlm_jax.core import objectives
from dlm_jax.core import sampling
from dlm_jax.data import pipeline
from dlm_jax.data.tokenizers import EOS
from dlm_jax.errors import SampleError
from dlm_jax.run import rundir


def cut_at_eos(ids):
  ids = np.asarray(ids)
  stop = np.flatnonzero(ids == EOS)
  return ids[:stop[0]] if stop.size else ids


def unigram_entropy(ids) -> float:
  """Entropy (nats) of the token frequencies within one sample."""
  _, counts = np.unique(np.asarray(ids), return_counts=True)
  if counts.size == 0:
    return 0.0
  p = counts / counts.sum()
  return float(-np.sum(p * np.log(p)))


def run_samples(sampler, tok, st_list, prompts, rng, *, batch_size, suffixes=None, scorer=None,
                extra=None):
  """Samples every prompt under each Settings; returns the rows samples.jsonl holds."""
  rows = []
  for st in st_list:
    for start in range(0, len(prompts), batch_size):
      ps = prompts[start:start + batch_size]
      sx = None if suffixes is None else suffixes[start:start + batch_size]
      rng, sub = jax.random.split(rng)
      res = sampler.generate(sub, ps, st, sx)
      gens = [cut_at_eos(g) if st.stop_at_eos else np.asarray(g) for g in res['tokens']]
      for i, g in enumerate(gens):
        row = dict(extra or {}, **dataclasses.asdict(st))
        row.update(prompt=tok.decode(ps[i]), text=tok.decode(g),
                   tokens=[int(t) for t in g], num_tokens=len(g), passes=res['passes'],
                   batch_seconds=round(res['seconds'], 4), batch_size=len(ps),
                   entropy=unigram_entropy(g))
        if sx is not None:
          row['suffix'] = tok.decode(sx[i])
        rows.append(row)
      if scorer is not None:
        nll, n = scorer.score(ps, gens, tok)
        for row, a, b in zip(rows[-len(ps):], nll, n):
          row.update(gen_nll=float(a), gen_tokens_scored=int(b),
                     gen_ppl=float(math.exp(a / b)) if b else float('nan'),
                     scorer=scorer.run_dir)
  return rows


def read_prompts(cfg, tok, windows=None):
  """(prompts, suffixes or None) from sample.prompts: '' -> num_samples unconditional;
  'data:N' -> the first N tokens of num_samples validation windows; a .txt file (one prompt per
  line) or a .jsonl file ({"prompt": ..., optional "suffix": ...} per line). windows: validation
  windows already in memory (the end of training), read instead of loading the split again."""
  sc = cfg.sample
  spec = sc.prompts.strip()
  if not spec:
    return [np.zeros(0, np.int32)] * sc.num_samples, None
  if spec.startswith('data:'):
    n = int(spec[5:])
    if windows is None or len(windows) < sc.num_samples:
      windows, _ = pipeline.validation_windows(cfg.data, '', sc.num_samples, cfg.model.vocab_size)
    return [np.asarray(w[:n], np.int32) for w in windows[:sc.num_samples]], None
  if not os.path.exists(spec):
    raise SampleError(f'sample.prompts: file not found: {spec}')
  texts, suffix_texts = [], []
  with open(spec, encoding='utf-8') as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      if spec.endswith('.jsonl'):
        try:
          d = json.loads(line)
          texts.append(d['prompt'])
        except (json.JSONDecodeError, KeyError, TypeError) as e:
          raise SampleError(f'{spec}:{lineno}: expected {{"prompt": ..., "suffix": ...}}: '
                            f'{e}') from None
        suffix_texts.append(d.get('suffix', ''))
      else:
        texts.append(line.rstrip('\n'))
        suffix_texts.append('')
  if not texts:
    raise SampleError(f'sample.prompts: {spec} holds no prompts')
  if sc.num_samples:
    texts, suffix_texts = texts[:sc.num_samples], suffix_texts[:sc.num_samples]
  prompts = [np.asarray(p, np.int32) for p in tok.encode_batch(texts)]
  if not any(suffix_texts):
    return prompts, None
  return prompts, [np.asarray(s, np.int32) for s in tok.encode_batch(suffix_texts)]


def settings_for(cfg, prompts, suffixes):
  """Settings per mode; sample.length 0 fills the context after the longest prompt + suffix."""
  sts = [sampling.settings_from_config(cfg, m) for m in objectives.sample_modes(cfg)]
  if cfg.sample.length == 0:
    used = max([len(p) for p in prompts] + [0]) + max(
        [len(s) for s in suffixes or []] + [0])
    sts = [dataclasses.replace(st, length=max(cfg.data.seq_len - used, 1)) for st in sts]
  return [st.check() for st in sts]


def write_jsonl(path, rows):
  with open(path, 'a', encoding='utf-8') as f:
    for r in rows:
      f.write(json.dumps(r, ensure_ascii=False) + '\n')


END_OF_TRAINING = 'end of training'


def write_samples(setup, params, workdir, step):
  """At the end of training: sample.num_samples samples in each mode, written to samples.jsonl
  (no scoring) in place of any an earlier process wrote for the same step (a run stopped
  between its samples and summary.json, then rerun, does not list them twice)."""
  cfg = setup.cfg
  if cfg.sample.num_samples == 0:
    return []
  sampler = sampling.Sampler.from_config(setup.model, params, cfg, mesh=setup.mesh)
  # data:N prompts come from the validation windows in memory (a task run's are task rows)
  prompts, suffixes = read_prompts(cfg, setup.tokenizer,
                                   None if cfg.data.task else setup.val_windows)
  sts = settings_for(cfg, prompts, suffixes)
  rows = run_samples(sampler, setup.tokenizer, sts, prompts, jax.random.PRNGKey(cfg.seed + 7),
                     batch_size=cfg.sample.batch_size, suffixes=suffixes,
                     extra=dict(step=int(step), source=END_OF_TRAINING))
  if jax.process_index() == 0:
    file = rundir.path(workdir, rundir.SAMPLES)
    kept = []
    if os.path.exists(file):
      for line in open(file, encoding='utf-8'):
        try:
          r = json.loads(line)
        except ValueError:
          r = {}
        if not (isinstance(r, dict) and r.get('source') == END_OF_TRAINING and
                r.get('step') == int(step)):
          kept.append(line if line.endswith('\n') else line + '\n')
    with open(file + '.tmp', 'w', encoding='utf-8') as f:
      f.writelines(kept)
    os.replace(file + '.tmp', file)
    write_jsonl(file, rows)
  return rows
