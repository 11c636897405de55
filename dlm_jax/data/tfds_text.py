"""`local_text`: a tfds builder over local JSONL files, for datasets that exist only as text.

It writes a real tfds dataset (array_record format, readable with tfds.data_source and grain,
no TensorFlow) from <manual_dir>/{train,validation}.jsonl, one {"text": ...} object per line.
`prepare --source tfds:local_text --tfds_data_dir DIR` then reads it like lm1b or openwebtext.

  python -m dlm_jax.data.tfds_text --manual_dir texts/ --data_dir ~/tensorflow_datasets
"""
import json
import os

import tensorflow_datasets as tfds


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
              for s in ('train', 'validation', 'test')
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
  """Builds local_text into data_dir; returns the dataset directory."""
  b = LocalText(data_dir=data_dir, file_format='array_record')
  b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return b.data_dir


if __name__ == '__main__':
  import argparse  # pylint: disable=g-import-not-at-top
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument('--manual_dir', required=True)
  ap.add_argument('--data_dir', default=os.path.expanduser('~/tensorflow_datasets'))
  a = ap.parse_args()
  print(build(a.manual_dir, a.data_dir))
