"""Token streams, packing and grain pipelines.

Packing `wrap` (MDLM/OpenWebText-style): the documents of a split, in id order, are concatenated
with EOS after each, and cut into non-overlapping windows of seq_len tokens; documents shorter than
a window share it (with `data.segment_ids` they do not attend to each other). Packing `pad`
(LM1B-style): one document + EOS per example, truncated or padded with PAD (never in the loss).
The training stream is a grain MapDataset: examples, shuffled with the seed, reshuffled every
epoch, batched, each process reading only its rows; its position is checkpointed with the run.
Text corpora are tokenised once and cached as .npy under data.cache_dir; prepared datasets
(data/prepared.py, array_record) are read in place with random access.
"""
import hashlib
import json
import os

import grain
import ml_collections
import numpy as np

from dlm_jax.data import corpus as corpus_lib
from dlm_jax.data import prepared
from dlm_jax.data import tokenizers
from dlm_jax.data.corpus import DataError
from dlm_jax.data.tokenizers import EOS, PAD
from dlm_jax.errors import ConfigError


def cache_dir(dcfg):
  return os.path.expanduser(dcfg.cache_dir or os.environ.get('DLM_JAX_CACHE', '~/.cache/dlm_jax'))


def _source_fingerprint(source):
  """A hash of the source's content (every file's relative name and bytes): an edit that keeps
  a file's size and modification time still changes it, so stale tokens are never reused. The
  corpus is read whole to be tokenised anyway; hashing it costs a fraction of that."""
  path = corpus_lib.EMBEDDED if source == 'embedded' else os.path.expanduser(source)
  if not os.path.exists(path):
    raise DataError(f'corpus {source!r}: no such file or directory ({path})')
  h = hashlib.sha256(source.encode())
  files = ([os.path.join(root, f) for root, _, fs in sorted(os.walk(path)) for f in sorted(fs)]
           if os.path.isdir(path) else [path])
  for f in files:
    h.update(os.path.relpath(f, path).encode() + b'\0')
    with open(f, 'rb') as fh:
      for block in iter(lambda: fh.read(1 << 20), b''):
        h.update(block)
  return h.hexdigest()[:16]


def tokenize_docs(docs, tok):
  ids = tok.encode_batch([d.text for d in docs])
  return np.concatenate([np.append(x, EOS).astype(np.int32) for x in ids])


def token_streams(dcfg):
  """(train_stream, val_stream, info) as int32 arrays; EOS after every document."""
  tok = tokenizers.get_tokenizer(dcfg.tokenizer)
  tok_id = dcfg.tokenizer if dcfg.tokenizer in ('bpe', 'gpt2', 'byte') else _source_fingerprint(
      dcfg.tokenizer[3:] if dcfg.tokenizer.startswith('hf:') else dcfg.tokenizer)
  key = hashlib.sha256(json.dumps([_source_fingerprint(dcfg.corpus), tok_id,
                                   float(dcfg.val_fraction), 1]).encode()).hexdigest()[:20]
  d = os.path.join(cache_dir(dcfg), 'tokens', key)
  files = {s: os.path.join(d, f'{s}.npy') for s in ('train', 'validation')}
  meta_path = os.path.join(d, 'meta.json')
  if all(os.path.exists(f) for f in files.values()) and os.path.exists(meta_path):
    try:
      streams = {s: np.load(f) for s, f in files.items()}
      return streams['train'], streams['validation'], json.load(open(meta_path))
    except (ValueError, OSError):
      pass  # a corrupt cache entry is rebuilt below
  train_docs, val_docs = corpus_lib.split_documents(corpus_lib.load_documents(dcfg.corpus),
                                                    dcfg.val_fraction)
  streams = {'train': tokenize_docs(train_docs, tok), 'validation': tokenize_docs(val_docs, tok)}
  info = dict(corpus=dcfg.corpus, tokenizer=dcfg.tokenizer, train_docs=len(train_docs),
              val_docs=len(val_docs), train_tokens=int(streams['train'].size),
              val_tokens=int(streams['validation'].size),
              train_bytes=sum(len(x.text.encode()) + 1 for x in train_docs),
              val_bytes=sum(len(x.text.encode()) + 1 for x in val_docs))
  os.makedirs(d, exist_ok=True)
  # atomic: write then rename, so a crash never leaves half a file; per-process temporary names,
  # so concurrent runs (a sweep's workers) tokenising the same corpus never collide
  tag = f'.tmp{os.getpid()}'
  temps = [f + tag + '.npy' for f in files.values()] + [meta_path + tag]
  try:
    for s, f in files.items():
      np.save(f + tag + '.npy', streams[s])
      os.replace(f + tag + '.npy', f)
    with open(meta_path + tag, 'w', encoding='utf-8') as f:
      json.dump(info, f)
    os.replace(meta_path + tag, meta_path)
  except OSError as e:  # a full disk or quota: no half-written cache, and say which disk
    for t in temps:
      if os.path.exists(t):
        os.remove(t)
    raise DataError(f'cannot write the token cache under {d} ({e.strerror or e}); free space '
                    'there or point data.cache_dir (or DLM_JAX_CACHE) at another disk') from None
  return streams['train'], streams['validation'], info


def take_unique(stream, unique_tokens):
  """The first U tokens of the training split (data-constrained runs repeat exactly these)."""
  if unique_tokens == 0:
    return stream
  if unique_tokens > stream.size:
    raise DataError(f'data.unique_tokens={unique_tokens:,} exceeds the training split, which has '
                    f'{stream.size:,} tokens')
  return stream[:unique_tokens]


def windows(stream, seq_len, split='train'):
  n = stream.size // seq_len
  if n == 0:
    raise DataError(f'the {split} split has {stream.size} tokens, fewer than one window of '
                    f'data.seq_len={seq_len}')
  return stream[:n * seq_len].reshape(n, seq_len)


def pad_examples(stream, seq_len, split='train'):
  """`pad` packing of an in-memory stream: one example per EOS-terminated document."""
  docs = [d for d in np.split(stream, np.flatnonzero(stream == EOS) + 1) if d.size]
  if not docs:
    raise DataError(f'the {split} split is empty')
  out = np.full((len(docs), seq_len), PAD, np.int32)
  for i, d in enumerate(docs):
    out[i, :min(d.size, seq_len)] = d[:seq_len]
  return out


def load_splits(dcfg, val_examples, vocab_size):
  """(train examples: an array or PreparedSource, validation examples: the first val_examples as
  an array, info) for a text corpus or a prepared dataset, packed as data.packing says."""
  L = dcfg.seq_len
  if prepared.is_prepared(dcfg.corpus):
    m = prepared.load_manifest(dcfg.corpus)
    if m['tokenizer'] != dcfg.tokenizer:
      raise DataError(f'{dcfg.corpus} was prepared with tokenizer {m["tokenizer"]!r}; set '
                      f'data.tokenizer={m["tokenizer"]!r}')
    train = prepared.PreparedSource(dcfg.corpus, 'train', L, dcfg.packing, dcfg.unique_tokens)
    val = prepared.PreparedSource(dcfg.corpus, 'validation', L, dcfg.packing)
    sp = m['splits']
    info = dict(corpus=dcfg.corpus, tokenizer=dcfg.tokenizer, prepared_source=m['source'],
                train_docs=sp['train']['documents'], val_docs=sp['validation']['documents'],
                train_tokens=sp['train']['tokens'] + sp['train']['documents'],
                val_tokens=sp['validation']['tokens'] + sp['validation']['documents'],
                train_bytes=sp['train']['bytes'], val_bytes=sp['validation']['bytes'],
                unique_tokens=int(row_tokens(train).sum()), train_windows=len(train),
                unigram_entropy=unigram_entropy_counts(
                    prepared.unigram_counts(dcfg.corpus, 'validation'),
                    prepared.unigram_counts(dcfg.corpus, 'train'), vocab_size))
    return train, val.take(val_examples), info
  train_s, val_s, info = token_streams(dcfg)
  full_train = train_s
  train_s = take_unique(train_s, dcfg.unique_tokens)
  if dcfg.packing == 'wrap':
    train_w, val_w = windows(train_s, L, 'train'), windows(val_s, L, 'validation')
  else:
    train_w, val_w = pad_examples(train_s, L, 'train'), pad_examples(val_s, L, 'validation')
  info = dict(info, unique_tokens=int((train_w != PAD).sum()), train_windows=int(len(train_w)),
              unigram_entropy=unigram_entropy(val_s, full_train, vocab_size))
  return train_w, val_w, info


def validation_windows(dcfg, corpus, n, vocab_size):
  """(the first n validation windows, bytes per token) of a text source packed as dcfg says
  (corpus '' = dcfg's own; else any data.corpus value: embedded, a file, a directory or a
  prepared dataset)."""
  d = ml_collections.ConfigDict(dcfg.to_dict())
  if corpus:
    d.corpus, d.unique_tokens = corpus, 0
  _, val, info = load_splits(d, n, vocab_size)
  bpt = info['val_bytes'] / info['val_tokens'] if info.get('val_tokens') else None
  return np.asarray(val)[:n], bpt


def make_batch(targets_BxL, prefix_column: bool = False):
  """A batch dict. With prefix_column, the last column of each row is the prompt length of a
  task example. Segment ids are not data: the model derives them from the tokens it reads
  (objectives.input_segments), so a masked EOS never reveals a boundary."""
  targets_BxL = np.asarray(targets_BxL, np.int32)
  out = {}
  if prefix_column:
    targets_BxL, out['prefix_len'] = targets_BxL[:, :-1], targets_BxL[:, -1]
  out['targets'] = targets_BxL
  return out


def with_prefix(windows_NxL, prefix_len_N):
  """Task rows carry their prompt length as an extra last column (one array, one grain source)."""
  if prefix_len_N is None:
    return windows_NxL
  return np.concatenate([windows_NxL, prefix_len_N[:, None]], axis=1)


def train_dataset(windows_NxL, batch_size, seed, prefix_len_N=None, rows=None):
  """Shuffled, reshuffled-every-epoch, infinitely repeated batches (a grain MapDataset).

  `rows` = [start, stop): the rows of every global batch this process reads (multi-host); the
  global batch is the same whatever the number of processes, and each process touches only the
  windows of its own rows."""
  if len(windows_NxL) < batch_size:
    raise DataError(f'the training split has {len(windows_NxL)} windows, fewer than '
                    f'train.batch_size={batch_size}')
  start, stop = rows or (0, batch_size)
  local = stop - start
  if batch_size % local or start % local:
    raise DataError(f'process rows [{start}, {stop}) do not tile train.batch_size={batch_size}')
  src = with_prefix(windows_NxL, prefix_len_N)
  has_prefix = prefix_len_N is not None
  ds = _repeated(src, seed).batch(local, drop_remainder=True)
  if local != batch_size:  # global batch s = local blocks s*P ... s*P + P-1; this process's one
    ds = ds[start // local::batch_size // local]
  return ds.map(lambda w: make_batch(w, has_prefix))


def _repeated(src, seed):
  """The training stream's order: shuffled with the seed, reshuffled every epoch, endless."""
  return grain.MapDataset.source(src).shuffle(seed=seed).repeat(None)


def row_tokens(examples):
  """Non-PAD tokens of each training example (an array or a PreparedSource)."""
  if isinstance(examples, np.ndarray):
    return (examples != PAD).sum(1)
  return examples.row_tokens()


class TrainedTokens:
  """trained(steps): the non-PAD target tokens in the first `steps` global batches of
  `train_dataset(examples, batch_size, seed)`: what a run has trained on (U counts the same way,
  so epochs = D / U), as opposed to the batch's slots (PAD included) that it computed on. Whole
  epochs count every example once; the current one the examples its shuffled order has drawn
  (the same order: `_repeated` over the example indices), counted incrementally."""

  def __init__(self, examples, batch_size, seed):
    self.n_N = np.asarray(row_tokens(examples), np.int64)
    self.N, self.U, self.B = self.n_N.size, int(self.n_N.sum()), batch_size
    self.uniform = bool(np.all(self.n_N == self.n_N[0]))  # wrap packing: every slot a token
    self.order = _repeated(np.arange(self.N), seed)
    self.rows, self.count = 0, 0

  def __call__(self, steps):
    rows = steps * self.B
    if self.uniform:
      return rows * int(self.n_N[0])
    if rows < self.rows:
      self.rows, self.count = 0, 0
    while self.rows < rows:
      if self.rows % self.N == 0 and rows - self.rows >= self.N:  # a whole epoch
        self.count, self.rows = self.count + self.U, self.rows + self.N
        continue
      stop = min(rows, (self.rows // self.N + 1) * self.N)
      idx = [int(self.order[i]) for i in range(self.rows, stop)]
      self.count, self.rows = self.count + int(self.n_N[idx].sum()), stop
    return self.count


def train_iterator(ds, prefetch: int):
  opts = grain.ReadOptions(num_threads=max(prefetch, 1), prefetch_buffer_size=prefetch)
  return iter(ds.to_iter_dataset(opts))


def eval_batches(windows_NxL, batch_size, num_batches, prefix_len_N=None):
  """The first num_batches x batch_size validation windows, in order (fixed across runs)."""
  rows = with_prefix(windows_NxL, prefix_len_N)
  has_prefix = prefix_len_N is not None
  n = min(num_batches, rows.shape[0] // batch_size)
  if n == 0:
    return [make_batch(rows, has_prefix)]
  return [make_batch(rows[i * batch_size:(i + 1) * batch_size], has_prefix)
          for i in range(n)]


def unigram_entropy_counts(val_counts, train_counts, vocab_size):
  """Cross-entropy (nats/token) of validation tokens under the add-one train unigram model."""
  V = max(val_counts.size, train_counts.size, vocab_size)
  tr = np.pad(train_counts, (0, V - train_counts.size)).astype(np.float64) + 1.0
  va = np.pad(val_counts, (0, V - val_counts.size)).astype(np.float64)
  return float(-(va * np.log(tr / tr.sum())).sum() / va.sum())


def unigram_entropy(val_stream, train_stream, vocab_size):
  return unigram_entropy_counts(np.bincount(val_stream), np.bincount(train_stream), vocab_size)


PACKINGS = ('wrap', 'pad')  # config.data.packing: windows | pad_examples


def defaults() -> dict:
  """config.data: where the tokens come from and how they become rows."""
  return dict(
      corpus='embedded',       # embedded | .txt/.jsonl(.xz) file or directory | a directory
                               # written by `python -m dlm_jax.prepare` (array_record shards)
      task='',                 # prompt->target fine-tuning: cloze | dir with train/validation.jsonl
      tokenizer='bpe',         # bpe | gpt2 | byte | path to a HF tokenizers .json
      packing='wrap',          # wrap: documents + EOS concatenated and cut (MDLM/OWT) |
                               # pad: one document per example, padded/truncated (LM1B)
      seq_len=128,
      val_fraction=0.04,
      segment_ids=False,       # True: packed documents never attend across EOS boundaries
      unique_tokens=0,         # U: train on the first U tokens of the split only (0: all of it)
      cache_dir='',            # '' : ~/.cache/dlm_jax
      prefetch=2,
  )


def check_config(cfg):
  """config.data (the tokenizer: data/tokenizers.py)."""
  d = cfg.data
  tokenizers.check_config(cfg)
  for ok, key, msg in (
      (d.unique_tokens >= 0, 'unique_tokens', f'must be >= 0, got {d.unique_tokens}'),
      (d.seq_len >= 2, 'seq_len', f'must be >= 2, got {d.seq_len}'),
      (0.0 < d.val_fraction < 1.0, 'val_fraction', f'{d.val_fraction} is outside (0, 1)'),
      (d.prefetch >= 0, 'prefetch', 'must be >= 0'),
      (d.packing in PACKINGS, 'packing', f'{d.packing!r} is not one of {", ".join(PACKINGS)}')):
    if not ok:
      raise ConfigError(f'config.data.{key}: {msg}')
