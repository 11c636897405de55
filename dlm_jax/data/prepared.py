"""Prepared datasets: tokenised documents in array_record shards, read with random access.

`prepare` turns a text source (a tfds dataset the user has locally, in array_record format, or a
local .txt/.jsonl corpus) into

  <out>/manifest.json                       format, source, tokenizer, vocab, dtype, per split:
                                            shards (file, records, tokens), documents, tokens, bytes
  <out>/<split>-<i>-of-<n>.array_record     one record per document: its token ids (no EOS)
  <out>/<split>.lengths.npy                 tokens per document (the packing index)
  <out>/<split>.unigram.npy                 token counts (unigram baseline without a data pass)

and `PreparedSource` serves fixed-length examples from it without loading the corpus:
  wrap  documents + EOS concatenated and cut into seq_len windows (window i = tokens
        [i L, (i+1) L) of that stream; found by binary search over cumulative lengths);
  pad   example i = document i + EOS, truncated to / padded with PAD up to seq_len.
Both are plain random-access sources, so grain shuffles, shards by process and checkpoints them
like the in-memory windows.
"""
import json
import os
import time

import numpy as np
import tensorflow_datasets as tfds

from dlm_jax.data import corpus as corpus_lib
from dlm_jax.data import tfds_text  # pylint: disable=unused-import  # registers local_text
from dlm_jax.data import arrow
from dlm_jax.data import tokenizers
from dlm_jax.data.corpus import DataError
from dlm_jax.data.tokenizers import EOS, PAD

FORMAT = 'dlm_jax.prepared/1'
MANIFEST = 'manifest.json'


def is_prepared(path: str) -> bool:
  return bool(path) and os.path.isfile(os.path.join(os.path.expanduser(path), MANIFEST))


def load_manifest(path):
  path = os.path.expanduser(path)
  f = os.path.join(path, MANIFEST)
  if not os.path.isfile(f):
    raise DataError(f'{path}: no {MANIFEST}; prepare it with python -m dlm_jax.prepare')
  try:
    m = json.load(open(f, encoding='utf-8'))
  except json.JSONDecodeError as e:
    raise DataError(f'{f}: malformed JSON ({e.msg})') from None
  if not isinstance(m, dict) or m.get('format') != FORMAT:
    got = m.get('format') if isinstance(m, dict) else type(m).__name__
    raise DataError(f'{f}: format {got!r}, expected {FORMAT!r}')
  missing = [k for k in ('splits', 'dtype', 'tokenizer', 'vocab_size') if k not in m]
  if missing or not isinstance(m['splits'], dict) or not all(
      isinstance(e, dict) and isinstance(e.get('shards'), list) for e in m['splits'].values()):
    raise DataError(f'{f}: malformed manifest (missing or malformed: '
                    f'{", ".join(missing) or "splits"}); re-run python -m dlm_jax.prepare')
  return m


# ------------------------------------------------------------------------------------- writing

def tfds_documents(name, split, data_dir, text_field='text'):
  """(id, text) of a tfds dataset prepared in array_record format (tfds.data_source: no
  TensorFlow). `split` may slice, e.g. 'train[:-100000]'."""
  try:
    src = tfds.data_source(name, split=split, data_dir=data_dir)
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(f'tfds dataset {name!r} split {split!r} in {data_dir or "~/tensorflow_datasets"}'
                    f' could not be opened ({type(e).__name__}: {str(e).splitlines()[0][:300]}); '
                    'it must be built locally in array_record format') from None
  for i in range(len(src)):
    ex = src[i]
    if text_field not in ex:
      raise DataError(f'tfds dataset {name!r}: no field {text_field!r} (fields: '
                      f'{", ".join(ex)}); pass --text_field')
    t = ex[text_field]
    yield f'{split}/{i}', t.decode('utf-8') if isinstance(t, bytes) else str(t)


def local_documents(source, val_fraction):
  train, val = corpus_lib.split_documents(corpus_lib.load_documents(source), val_fraction)
  return {'train': ((d.id, d.text) for d in train), 'validation': ((d.id, d.text) for d in val)}


def arrow_splits(source, text_field, val_fraction):
  """Streams of (id, text) per split of a parquet / arrow source: a saved DatasetDict's own train
  and validation (else test) splits, otherwise the document-id hash split of local corpora."""
  saved = arrow.saved_splits(source)
  val = next((saved[k] for k in ('validation', 'valid', 'test') if k in saved), None)
  if 'train' in saved and val:
    return {'train': arrow.documents(saved['train'], text_field),
            'validation': arrow.documents(val, text_field)}
  pick = lambda want: ((i, t) for i, t in arrow.documents(source, text_field)
                       if corpus_lib.is_validation(i, val_fraction) == want)
  return {'train': pick(False), 'validation': pick(True)}


def write_split(docs, tok, out, split, docs_per_shard=250_000, chunk=1024):
  """Tokenises (id, text) pairs into array_record shards; returns the manifest entry."""
  from array_record.python.array_record_module import ArrayRecordWriter  # pylint: disable=g-import-not-at-top
  import tqdm  # pylint: disable=g-import-not-at-top
  dtype = np.uint16 if tok.vocab_size <= 2**16 else np.int32
  counts = np.zeros(tok.vocab_size, np.int64)
  lengths, shards, n_bytes = [], [], 0
  writer, shard_docs, shard_tokens = None, 0, 0
  tmp_names = []

  def close():
    nonlocal writer
    if writer is not None:
      writer.close()
      shards.append(dict(file=tmp_names[-1], records=shard_docs, tokens=shard_tokens))
      writer = None

  buf = []
  bar = tqdm.tqdm(desc=f'prepare {split}', unit='doc', disable=None)

  def flush():
    nonlocal writer, shard_docs, shard_tokens, n_bytes
    encoded = tok.encode_batch(buf)
    if encoded:  # one bincount per chunk, not per document (O(V) each)
      counts[:] += np.bincount(np.concatenate(encoded), minlength=tok.vocab_size)
    for text, ids in zip(buf, encoded):
      if writer is None:
        tmp_names.append(f'{split}-{len(tmp_names):05d}.array_record')
        writer = ArrayRecordWriter(os.path.join(out, tmp_names[-1]), 'group_size:1')
        shard_docs = shard_tokens = 0
      writer.write(np.asarray(ids, dtype).tobytes())
      lengths.append(len(ids))
      n_bytes += len(text.encode('utf-8')) + 1
      shard_docs += 1
      shard_tokens += len(ids)
      if shard_docs == docs_per_shard:
        close()
    bar.update(len(buf))
    buf.clear()

  for _, text in docs:
    if text.strip():
      buf.append(text)
    if len(buf) == chunk:
      flush()
  flush()
  close()
  bar.close()
  if not lengths:
    raise DataError(f'split {split!r} of the source has no non-blank documents')
  final = []
  for i, s in enumerate(shards):  # names carry the shard count, known only now
    name = f'{split}-{i:05d}-of-{len(shards):05d}.array_record'
    os.replace(os.path.join(out, s['file']), os.path.join(out, name))
    final.append(dict(s, file=name))
  counts[EOS] += len(lengths)  # every document ends with EOS in both packings
  np.save(os.path.join(out, f'{split}.lengths.npy'), np.asarray(lengths, np.int32))
  np.save(os.path.join(out, f'{split}.unigram.npy'), counts)
  return dict(shards=final, documents=len(lengths), tokens=int(sum(lengths)), bytes=n_bytes)


def prepare(source, out, tokenizer='bpe', splits=None, tfds_data_dir=None, text_field='text',
            val_fraction=0.04, docs_per_shard=250_000):
  """Writes a prepared dataset to `out` (atomically: a crash leaves no manifest)."""
  out = os.path.expanduser(out)
  if is_prepared(out):
    raise DataError(f'{out} already holds a prepared dataset; use a new --out')
  tok = tokenizers.get_tokenizer(tokenizer)
  tabular = not source.startswith('tfds:') and arrow.is_arrow_source(source)
  if tabular:
    arrow.check(source, text_field)  # before anything is written
  tmp = out.rstrip('/') + '.incomplete'
  if os.path.exists(tmp):
    import shutil  # pylint: disable=g-import-not-at-top
    shutil.rmtree(tmp)
  os.makedirs(tmp)
  if source.startswith('tfds:'):
    name = source[len('tfds:'):]
    splits = splits or {'train': 'train', 'validation': 'validation'}
    docs = {k: tfds_documents(name, v, tfds_data_dir, text_field) for k, v in splits.items()}
  else:
    if splits:
      raise DataError('--split applies to tfds sources; local corpora are split by document id '
                      'hash with --val_fraction')
    docs = (arrow_splits(source, text_field, val_fraction) if tabular else
            local_documents(source, val_fraction))
  t0 = time.time()
  manifest = dict(format=FORMAT, source=source, tokenizer=tokenizer, vocab_size=tok.vocab_size,
                  dtype='uint16' if tok.vocab_size <= 2**16 else 'int32',
                  splits={s: write_split(d, tok, tmp, s, docs_per_shard) for s, d in docs.items()},
                  split_map=splits or {}, val_fraction=val_fraction)
  manifest['seconds'] = round(time.time() - t0, 1)
  for s in ('train', 'validation'):
    if s not in manifest['splits']:
      raise DataError(f'the prepared dataset needs a {s!r} split (got {", ".join(docs)})')
  with open(os.path.join(tmp, MANIFEST), 'w', encoding='utf-8') as f:
    json.dump(manifest, f, indent=2)
  if os.path.isdir(out) and not os.listdir(out):
    os.rmdir(out)
  os.replace(tmp, out)
  return manifest


# ------------------------------------------------------------------------------------- reading

class PreparedSource:
  """Random-access fixed-length examples (wrap or pad packing) over a prepared split."""

  def __init__(self, path, split, seq_len, packing='wrap', max_tokens=0):
    import grain  # pylint: disable=g-import-not-at-top
    path = os.path.expanduser(path)
    m = load_manifest(path)
    if split not in m['splits']:
      raise DataError(f'{path}: no {split!r} split (has {", ".join(m["splits"])})')
    entry = m['splits'][split]
    files = [os.path.join(path, s['file']) for s in entry['shards']]
    for f in files:
      if not os.path.isfile(f):
        raise DataError(f'{path}: shard {os.path.basename(f)} listed in {MANIFEST} is missing')
    self.path, self.manifest, self.split = path, m, split
    self.seq_len, self.packing = seq_len, packing
    self.dtype = np.dtype(m['dtype'])
    try:
      self._src = grain.sources.ArrayRecordDataSource(files)
    except Exception:  # pylint: disable=broad-except
      for f in files:  # name the damaged shard
        try:
          grain.sources.ArrayRecordDataSource([f])
        except Exception as e:  # pylint: disable=broad-except
          raise DataError(f'{path}: shard {os.path.basename(f)} is truncated or corrupt '
                          f'({type(e).__name__}: {str(e).strip() or "unreadable"}); re-run '
                          'python -m dlm_jax.prepare') from None
      raise
    lengths_file = os.path.join(path, f'{split}.lengths.npy')
    try:
      lengths = np.load(lengths_file, allow_pickle=False).astype(np.int64)
    except (OSError, ValueError, EOFError) as e:
      raise DataError(f'{lengths_file}: truncated or unreadable ({type(e).__name__}: '
                      f'{str(e).strip().splitlines()[0] if str(e).strip() else "empty"}); re-run '
                      'python -m dlm_jax.prepare') from None
    if len(self._src) != lengths.size:
      raise DataError(f'{path}: {split} shards hold {len(self._src)} records but '
                      f'{split}.lengths.npy lists {lengths.size}; re-run prepare')
    self._ends = np.cumsum(lengths + 1)  # + EOS
    total = int(self._ends[-1])
    if max_tokens:  # data-constrained: only the first U tokens of the split exist
      if max_tokens > total:
        raise DataError(f'data.unique_tokens={max_tokens:,} exceeds the {split} split, which '
                        f'has {total:,} tokens')
      total = max_tokens
    if packing == 'wrap':
      self._n = total // seq_len
    else:
      self._n = int(np.searchsorted(self._ends, total, side='right'))
    if self._n == 0:
      raise DataError(f'the {split} split of {path} has {total} tokens, fewer than one example '
                      f'of data.seq_len={seq_len}')
    self.tokens = self._n * seq_len if packing == 'wrap' else int(self._ends[self._n - 1])

  def __len__(self):
    return self._n

  def _doc(self, d):
    try:
      rec = self._src[int(d)]
      ids = np.frombuffer(rec, self.dtype).astype(np.int32)
    except Exception as e:  # pylint: disable=broad-except
      shards = self.manifest['splits'][self.split]['shards']
      k = int(np.searchsorted(np.cumsum([x['records'] for x in shards]), int(d), side='right'))
      raise DataError(f'{self.path}: shard {shards[min(k, len(shards) - 1)]["file"]} is truncated '
                      f'or corrupt: {self.split} document {int(d)} is unreadable '
                      f'({type(e).__name__}: {str(e).strip()[:200]}); re-run '
                      'python -m dlm_jax.prepare') from None
    return np.append(ids, EOS)

  def __getitem__(self, i):
    if not 0 <= i < self._n:
      raise IndexError(i)
    L = self.seq_len
    if self.packing == 'pad':
      doc = self._doc(i)[:L]
      return np.pad(doc, (0, L - doc.size), constant_values=PAD).astype(np.int32)
    start, stop = i * L, (i + 1) * L
    d = int(np.searchsorted(self._ends, start, side='right'))
    doc_start = int(self._ends[d - 1]) if d else 0
    parts = [self._doc(d)[start - doc_start:]]
    have = parts[0].size
    while have < L:
      d += 1
      parts.append(self._doc(d))
      have += parts[-1].size
    return np.concatenate(parts)[:stop - start].astype(np.int32)

  def row_tokens(self):
    """Non-PAD tokens of each example, without reading a record: seq_len under wrap; the
    document and its EOS, cut at seq_len, under pad."""
    if self.packing == 'wrap':
      return np.full(self._n, self.seq_len, np.int64)
    return np.minimum(np.diff(self._ends[:self._n], prepend=0), self.seq_len)

  def take(self, n):
    """The first n examples as one array (validation batches)."""
    return np.stack([self[i] for i in range(min(n, self._n))])


def unigram_counts(path, split):
  return np.load(os.path.join(os.path.expanduser(path), f'{split}.unigram.npy'))
