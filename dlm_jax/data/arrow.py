"""Parquet and Arrow corpora, streamed: the layouts FineWeb-Edu, OpenWebText and SlimPajama
downloads come in (a .parquet / .arrow file or a directory tree of them) and datasets saved with
`datasets.save_to_disk` (Arrow stream files; a DatasetDict keeps its splits). Rows are read in
record batches of one column, so a corpus of any size is tokenised in constant memory."""
import glob
import json
import os

from dlm_jax.errors import ConfigError, DataError

SUFFIXES = ('.parquet', '.arrow')
BATCH_ROWS = 4096


def _pyarrow():
  try:
    import pyarrow  # pylint: disable=g-import-not-at-top
    import pyarrow.parquet  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    raise DataError('reading parquet / arrow needs pyarrow: pip install pyarrow') from None
  return pyarrow


def is_arrow_source(source) -> bool:
  path = os.path.expanduser(source)
  if os.path.isfile(path):
    return path.endswith(SUFFIXES)
  return os.path.isdir(path) and bool(files(path))


def files(path):
  """The .parquet / .arrow files of a file or directory (recursively), sorted."""
  path = os.path.expanduser(path)
  if os.path.isfile(path):
    return [path]
  return sorted(f for s in SUFFIXES for f in glob.glob(os.path.join(path, '**', '*' + s),
                                                       recursive=True))


def saved_splits(path):
  """{split: directory} of a DatasetDict written by datasets.save_to_disk, else {}."""
  f = os.path.join(os.path.expanduser(path), 'dataset_dict.json')
  if not os.path.isfile(f):
    return {}
  try:
    names = json.load(open(f, encoding='utf-8'))['splits']
  except (OSError, ValueError, KeyError) as e:
    raise DataError(f'{f}: not a datasets DatasetDict index ({type(e).__name__}: {e})') from None
  return {n: os.path.join(os.path.expanduser(path), n) for n in names}


def _batches(f, field):
  """Record batches of column `field` of one file."""
  pa = _pyarrow()
  try:
    if f.endswith('.parquet'):
      pf = pa.parquet.ParquetFile(f)
      names = pf.schema_arrow.names
      _check_field(f, field, names)
      yield from pf.iter_batches(batch_size=BATCH_ROWS, columns=[field])
      return
    with pa.memory_map(f) as src:
      try:
        reader = pa.ipc.open_file(src)
        batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
      except pa.ArrowInvalid:  # datasets writes the streaming format
        src.seek(0)
        reader = pa.ipc.open_stream(src)
        batches = iter(reader)
      _check_field(f, field, reader.schema.names)
      for b in batches:
        yield b.select([field])
  except (pa.ArrowException, OSError) as e:
    raise DataError(f'{f}: not a readable parquet / arrow file ({type(e).__name__}: '
                    f'{str(e).splitlines()[0][:200]})') from None


def _check_field(f, field, names):
  if field not in names:
    raise ConfigError(f'--text_field {field!r}: {f} has no such column (columns: '
                      f'{", ".join(names)})')


def check(path, field):
  """Before anything is written: every file's schema has `field` (a ConfigError naming it)."""
  found = files(path)
  if not found:
    raise DataError(f'{path}: no .parquet or .arrow file')
  for f in found:
    next(iter(_batches(f, field)), None)


def documents(path, field):
  """(id, text) of every non-blank row: id = file relative to `path` / row number."""
  root = os.path.expanduser(path)
  for f in files(root):
    rel = os.path.relpath(f, root) if os.path.isdir(root) else os.path.basename(f)
    row = 0
    for batch in _batches(f, field):
      for text in batch.column(0).to_pylist():
        if isinstance(text, str) and text.strip():
          yield f'{rel}/{row}', text
        row += 1
