"""SMDM probes: the generated data and query rows are what the probe claims."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dlm_jax.data import corpus as corpus_lib
from dlm_jax.data import tokenizers
from dlm_jax.study import probes

from conftest import ROOT


def test_reversal_data_trains_every_fact_and_hides_reverse_of_forward_only(tmp_path):
  path = probes.write_reversal_data(str(tmp_path), n_pairs=40, val_fraction=0.05)
  docs = [json.loads(l) for l in open(path)]
  pairs = json.load(open(tmp_path / 'pairs.json'))
  train = [d['text'] for d in docs if not corpus_lib.is_validation(d['id'], 0.05)]
  assert len(pairs['both']) == len(pairs['forward_only']) == 20
  for a, b in pairs['both'] + pairs['forward_only']:
    assert probes.forward(a, b) in train
  for a, b in pairs['both']:
    assert probes.backward(a, b) in train
  for a, b in pairs['forward_only']:
    assert not any(b in t and 'written by' in t for t in (d['text'] for d in docs))
  people = [a for a, _ in pairs['both'] + pairs['forward_only']]
  assert len(set(people)) == len(people)
  assert probes.reversal_pairs(40) == probes.reversal_pairs(40)  # deterministic


def test_query_rows_score_exactly_the_answer():
  tok = tokenizers.get_tokenizer('bpe')
  a, b = 'Belwyn Ashwood', 'The Silent River'
  x, score = probes._rows_with_eos(tok, 32, [f'{a} is the author of'], [f' {b}.'])
  assert tok.decode(x[0][score[0]]) == f' {b}.'
  assert x[0][score[0].nonzero()[0][-1] + 1] == tokenizers.EOS
  x, score = probes._rows_with_eos(tok, 32, [None], [(a, probes.forward(a, b)[len(a):])])
  assert tok.decode(x[0][score[0]]) == a
  assert tok.decode(x[0][x[0] > 3]) == probes.forward(a, b)


def test_shift_data_splits_the_embedded_corpus_by_era(tmp_path):
  paths = probes.write_shift_data(str(tmp_path))
  old = [json.loads(l) for l in open(paths['old'])]
  brown = [json.loads(l) for l in open(paths['brown'])]
  assert {d['source'] for d in old} == {'shakespeare', 'milton', 'austen'}
  assert {d['source'] for d in brown} == {'brown'}
  assert len(old) + len(brown) == len(corpus_lib.load_documents('embedded'))


@pytest.mark.slow
def test_reversal_probe_end_to_end(tmp_path):
  r = subprocess.run([sys.executable, '-m', 'dlm_jax.probes', 'reversal', '--out', str(tmp_path),
                      '--steps', '5', '--workers', '1'], capture_output=True, text=True,
                     env=dict(os.environ, PYTHONPATH=ROOT), timeout=900)
  assert r.returncode == 0, r.stderr[-2000:]
  rep = json.load(open(tmp_path / 'report.json'))
  assert [x['objective'] for x in rep['runs']] == ['ar', 'mdm', 'dual']
  assert 'forward_only/reverse_infill/mdm' in rep['runs'][2]['acc']
  assert all(0 <= v <= 1 for x in rep['runs'] for v in x['acc'].values())
  assert np.isfinite(rep['runs'][0]['acc']['both/forward/ar'])
