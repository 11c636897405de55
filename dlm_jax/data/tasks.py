"""Prompt -> target tasks (JSONL: {"prompt": str, "target": str}) for fine-tuning and AR2Diff.

An example is [prompt tokens, target tokens, EOS] padded with PAD to seq_len; `prefix_len` is the
prompt length. AR loss is on the target (and EOS) only; in MDM the prompt is never masked and the
target (with diffusion.pad=predict, the PAD after it too) is noised. `cloze` is a task built from the embedded corpus: the prompt is a passage (the
previous sentence and the current one) without its last word, the target is that word (LAMBADA-
style); train examples come from training documents, validation from validation documents.
"""
import os
import re

import numpy as np

from dlm_jax.data import corpus as corpus_lib
from dlm_jax.data.corpus import DataError
from dlm_jax.data.tokenizers import EOS, PAD

def read_jsonl(path):
  out = []
  for i, rec in corpus_lib.jsonl_records(path):
    if not isinstance(rec, dict) or not isinstance(rec.get('prompt'), str) or not isinstance(
        rec.get('target'), str):
      raise DataError(f'{path}:{i}: expected {{"prompt": str, "target": str}}')
    if not rec['target'].strip():
      raise DataError(f'{path}:{i}: empty target')
    out.append(rec)
  if not out:
    raise DataError(f'task file {path} has no examples')
  return out


_SENT = re.compile(r'(?<=[.!?])\s+')


def cloze_examples(docs, max_chars=400):
  """Deterministic last-word cloze items from documents."""
  out = []
  for d in docs:
    sents = [s.strip().replace('\n', ' ') for s in _SENT.split(d.text) if s.strip()]
    for prev, cur in zip(sents, sents[1:]):
      m = re.match(r'^(.*\S)\s+([A-Za-z]{3,})([.!?])$', cur)
      if not m or len(cur.split()) < 8:
        continue
      prompt = f'{prev} {m.group(1)}'
      if len(prompt) > max_chars:
        continue
      out.append(dict(prompt=prompt, target=' ' + m.group(2)))
  return out


def load_task(source, val_fraction):
  """(train, validation) example lists for 'cloze' or a directory with train/validation.jsonl."""
  if source == 'cloze':
    tr, va = corpus_lib.split_documents(corpus_lib.load_documents('embedded'), val_fraction)
    return cloze_examples(tr), cloze_examples(va)
  path = os.path.expanduser(source)
  if os.path.isdir(path):
    return (read_jsonl(os.path.join(path, 'train.jsonl')),
            read_jsonl(os.path.join(path, 'validation.jsonl')))
  raise DataError(f'task {source!r}: use cloze or a directory holding train.jsonl and '
                  'validation.jsonl')


def encode(examples, tok, seq_len, split):
  """(targets_NxL, prefix_len_N, dropped, target_bytes_N); examples longer than seq_len are
  dropped and counted. target_bytes_N: the UTF-8 bytes of each kept target, + 1 for its EOS (as
  a corpus counts a document's): what bits per byte of the scored part divide by."""
  prompts = tok.encode_batch([e['prompt'] for e in examples])
  targets = tok.encode_batch([e['target'] for e in examples])
  rows, prefix, nbytes = [], [], []
  for e, p, t in zip(examples, prompts, targets):
    ids = np.concatenate([p, t, [EOS]]).astype(np.int32)
    if ids.size > seq_len or p.size == 0:
      continue
    rows.append(np.pad(ids, (0, seq_len - ids.size), constant_values=PAD))
    prefix.append(p.size)
    nbytes.append(len(e['target'].encode('utf-8')) + 1)
  if not rows:
    raise DataError(f'no {split} task example fits data.seq_len={seq_len}')
  return (np.stack(rows), np.asarray(prefix, np.int32), len(examples) - len(rows),
          np.asarray(nbytes, np.int64))
