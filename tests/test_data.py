import json
import os

import numpy as np
import pytest

from conftest import tiny_config
from dlm_jax.data import corpus, pipeline, tokenizers
from dlm_jax.data.tokenizers import EOS
from dlm_jax.errors import DataError
from dlm_jax.run import setup as setup_lib


def test_embedded_corpus_is_real_and_large():
  docs = corpus.load_documents('embedded')
  assert sum(len(d.text) for d in docs) > 10_000_000
  assert {d.source for d in docs} == {'austen', 'shakespeare', 'milton', 'brown'}
  assert any('Elizabeth' in d.text for d in docs if d.source == 'austen')


def test_split_is_deterministic_and_disjoint():
  docs = corpus.load_documents('embedded')
  tr, va = corpus.split_documents(docs, 0.04)
  tr2, va2 = corpus.split_documents(list(reversed(docs)), 0.04)
  assert {d.id for d in va} == {d.id for d in va2}
  assert not {d.id for d in tr} & {d.id for d in va}
  assert 0.02 < len(va) / len(docs) < 0.07


@pytest.mark.parametrize('name', ['bpe', 'byte'])
def test_tokenizer_roundtrip_and_specials(name):
  tok = tokenizers.get_tokenizer(name)
  text = 'It is a truth universally acknowledged, that a single man — café.'
  ids = tok.encode_batch([text])[0]
  assert ids.min() >= 4  # specials are never produced from text
  assert tok.decode(ids) == text
  assert tok.vocab_size == (8192 if name == 'bpe' else 260)


def test_bad_corpora_give_clear_errors(tmp_path):
  with pytest.raises(corpus.DataError, match='no such file'):
    corpus.load_documents(str(tmp_path / 'missing.txt'))
  (tmp_path / 'empty.txt').write_text('  \n\n ')
  with pytest.raises(corpus.DataError, match='empty'):
    corpus.load_documents(str(tmp_path / 'empty.txt'))
  (tmp_path / 'latin1.txt').write_bytes('caf\xe9 au lait'.encode('latin-1'))
  with pytest.raises(corpus.DataError, match='not valid UTF-8'):
    corpus.load_documents(str(tmp_path / 'latin1.txt'))
  (tmp_path / 'bad.jsonl').write_text('{"text": "ok"}\n{"text": \n')
  with pytest.raises(corpus.DataError, match='bad.jsonl:2'):
    corpus.load_documents(str(tmp_path / 'bad.jsonl'))


def test_short_corpus_and_windows(tmp_path):
  with pytest.raises(corpus.DataError, match='fewer than one window'):
    pipeline.windows(np.arange(10, dtype=np.int32), 32, 'validation')
  w = pipeline.windows(np.arange(100, dtype=np.int32), 32)
  assert w.shape == (3, 32)
  with pytest.raises(corpus.DataError, match='batch_size'):
    pipeline.train_dataset(w, 8, 0)


def test_local_jsonl_corpus_short_documents_are_packed(tmp_path):
  from dlm_jax import config
  docs = [dict(id=f'd{i}', text=f'doc {i} says hello.') for i in range(200)]
  p = tmp_path / 'c.jsonl'
  p.write_text('\n'.join(json.dumps(d) for d in docs))
  c = config.base().data
  c.corpus, c.tokenizer, c.val_fraction, c.cache_dir = str(p), 'byte', 0.1, str(tmp_path / 'cache')
  tr, va, info = pipeline.token_streams(c)
  assert info['train_docs'] + info['val_docs'] == 200
  assert (tr == EOS).sum() == info['train_docs']  # one EOS closes every (short) document
  w = pipeline.windows(tr, 16)
  b = pipeline.make_batch(w[:4])
  # short documents share windows; the batch holds the targets only (segment ids come from the
  # inputs the model reads: objectives.input_segments, tested in test_estimands)
  assert set(b) == {'targets'} and (b['targets'] == EOS).sum() >= 3


def test_epochs_reshuffle_and_cover_every_window():
  w = np.arange(40, dtype=np.int32).reshape(10, 4)
  ds = pipeline.train_dataset(w, 5, seed=3)
  e1 = np.concatenate([ds[0]['targets'][:, 0], ds[1]['targets'][:, 0]])
  e2 = np.concatenate([ds[2]['targets'][:, 0], ds[3]['targets'][:, 0]])
  assert sorted(e1) == sorted(e2) == list(range(0, 40, 4))
  assert list(e1) != list(e2)


def test_repetition_uses_exactly_U_unique_tokens_for_R_epochs():
  from conftest import tiny_config
  cfg = tiny_config('ar')
  cfg.data.unique_tokens = 32 * 24   # 24 windows of 32
  cfg.train.epochs = 4.0             # -> 4 * 24 / 8 = 12 steps
  setup = setup_lib.build(cfg)
  assert setup.cfg.train.num_steps == 12
  assert setup.data_info['unique_tokens'] == 32 * 24
  train_s, _, _ = pipeline.token_streams(setup.cfg.data)
  np.testing.assert_array_equal(setup.train_windows.reshape(-1), train_s[:32 * 24])
  ds = pipeline.train_dataset(setup.train_windows, 8, cfg.seed)
  seen = np.concatenate([ds[i]['targets'] for i in range(12)])
  rows = [tuple(r) for r in seen]
  from collections import Counter
  counts = Counter(rows)
  assert len(counts) == 24 and set(counts.values()) == {4}
  # each epoch is a permutation of the same windows, in a different order
  epochs = [rows[24 * e:24 * (e + 1)] for e in range(4)]
  assert all(sorted(e) == sorted(epochs[0]) for e in epochs) and epochs[0] != epochs[1]


def test_unique_tokens_larger_than_split_is_a_clear_error():
  from conftest import tiny_config
  cfg = tiny_config('ar')
  cfg.data.unique_tokens = 10**9
  with pytest.raises(corpus.DataError, match='exceeds the training split, which has'):
    setup_lib.build(cfg)


def test_token_cache_is_keyed_on_content(tmp_path):
  """An edit that keeps the corpus file's size and modification time still invalidates the
  cached tokens (before: the key was size and mtime, so stale tokens were reused)."""
  corpus = tmp_path / 'c.jsonl'
  corpus.write_text(''.join(json.dumps({'id': f'd{i}', 'text': 'alpha beta gamma. ' * 40}) + '\n'
                            for i in range(40)))
  c = tiny_config().data
  c.corpus, c.tokenizer, c.cache_dir, c.val_fraction = str(corpus), 'byte', str(tmp_path / 'k'), 0.1
  first = np.concatenate(pipeline.token_streams(c)[:2])
  st = os.stat(corpus)
  corpus.write_text(corpus.read_text().replace('alpha', 'omega'))  # same size
  os.utime(corpus, ns=(st.st_atime_ns, st.st_mtime_ns))
  assert os.stat(corpus).st_size == st.st_size and os.stat(corpus).st_mtime_ns == st.st_mtime_ns
  second = np.concatenate(pipeline.token_streams(c)[:2])
  assert not np.array_equal(first, second)
  assert len(os.listdir(tmp_path / 'k' / 'tokens')) == 2


def test_a_full_disk_while_caching_tokens_names_the_cache_and_leaves_no_temp_file(
    tmp_path, monkeypatch):
  c = tiny_config().data
  c.tokenizer, c.cache_dir = 'byte', str(tmp_path / 'k')

  def full(path, arr):
    del arr
    with open(path, 'wb') as f:
      f.write(b'partial')
    raise OSError(28, 'No space left on device', path)
  monkeypatch.setattr(pipeline.np, 'save', full)
  with pytest.raises(DataError, match=r'cannot write the token cache under .*k/tokens/\w+ \(No '
                     r'space left on device\); free space there or point data.cache_dir'):
    pipeline.token_streams(c)
  left = [f for _, _, fs in os.walk(tmp_path / 'k') for f in fs]
  assert left == []
