"""`local_text`: a tfds builder over local JSONL files, for datasets that exist only as text.

It writes a real tfds dataset (array_record format, readable with tfds.data_source and grain,
no TensorFlow) from <manual_dir>/{train,validation}.jsonl, one {"text": ...} object per line.
`prepare --source tfds:local_text --tfds_data_dir DIR` then reads it like lm1b or openwebtext.

  python -m dlm_jax.prepare --local_text texts/ --tfds_data_dir ~/tensorflow_datasets
"""
import json
import os

import tensorflow_datasets as tfds

from dlm_jax.errors import DataError

SPLITS = ('train', 'validation', 'test')


class LocalText(tfds.core.GeneratorBasedBuilder):
  """Documents from <manual_dir>/<split>.jsonl (every split file present becomes a split)."""
  VERSION = tfds.core.Version('1.0.0')
  MANUAL_DOWNLOAD_INSTRUCTIONS = 'Put train.jsonl and validation.jsonl ({"text": ...} per line).'

  def _info(self):
    return tfds.core.DatasetInfo(builder=self,
                                 features=tfds.features.FeaturesDict({'text': tfds.features.Text()}),
                                 description='Local text documents.')

  def _split_generators(self, dl_manager):
    d = dl_manager.manual_dir
    splits = {s: self._generate_examples(os.path.join(d, f'{s}.jsonl'))
              for s in SPLITS
              if os.path.exists(os.path.join(d, f'{s}.jsonl'))}
    if not splits:
      raise FileNotFoundError(f'{d}: no train.jsonl / validation.jsonl / test.jsonl')
    return splits

  def _generate_examples(self, path):
    with open(path, encoding='utf-8') as f:
      for i, line in enumerate(f):
        if line.strip():
          yield i, {'text': json.loads(line)['text']}


def build(manual_dir, data_dir):
  """Builds local_text into data_dir; returns the dataset directory. No split file in
  manual_dir is a DataError naming it (tfds would assert)."""
  if not any(os.path.isfile(os.path.join(manual_dir, f'{s}.jsonl')) for s in SPLITS):
    raise DataError(f'{manual_dir}: no train.jsonl / validation.jsonl / test.jsonl')
  b = LocalText(data_dir=data_dir, file_format='array_record')
  b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return b.data_dir

