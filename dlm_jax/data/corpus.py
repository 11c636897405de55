"""The embedded public-domain English corpus and its deterministic document split.

The corpus (Austen, Shakespeare, Milton, Brown; ~15.8 M characters, 1,095 documents) ships
compressed in the package; `scripts/build_corpus.py` rebuilds it from registry packages. Other text
sources (a local .txt/.jsonl file or directory) go through the same `load_documents`.
"""
import dataclasses
import glob
import hashlib
import json
import lzma
import os

from dlm_jax.errors import DataError

EMBEDDED = os.path.join(os.path.dirname(__file__), 'corpus', 'embedded.jsonl.xz')


@dataclasses.dataclass(frozen=True)
class Document:
  id: str
  text: str
  source: str = ''
  era: str = ''


def is_validation(doc_id: str, val_fraction: float) -> bool:
  """Split by a hash of the document id: stable across machines, corpus order and Python runs."""
  h = int.from_bytes(hashlib.sha256(doc_id.encode('utf-8')).digest()[:8], 'big')
  return (h % 1_000_000) < val_fraction * 1_000_000


def _read_text(path):
  try:
    opener = lzma.open if path.endswith('.xz') else open
    with opener(path, 'rt', encoding='utf-8', errors='strict') as f:
      return f.read()
  except UnicodeDecodeError as e:
    raise DataError(f'{path}: not valid UTF-8 ({e.reason} at byte {e.start}); '
                    're-encode the file as UTF-8') from None
  except (EOFError, lzma.LZMAError) as e:  # a copy cut short, or not xz at all
    raise DataError(f'{path}: truncated or corrupt xz file ({type(e).__name__}: '
                    f'{str(e).strip() or "ended early"}); copy it again') from None


def jsonl_records(path):
  """(line number, object) for every non-blank line; a malformed line names file and line."""
  if not os.path.exists(path):
    raise DataError(f'file not found: {path}')
  for i, line in enumerate(_read_text(path).splitlines(), 1):
    if not line.strip():
      continue
    try:
      yield i, json.loads(line)
    except json.JSONDecodeError as e:
      raise DataError(f'{path}:{i}: malformed JSON line ({e.msg})') from None


def _jsonl_documents(path):
  out = []
  for i, rec in jsonl_records(path):
    if not isinstance(rec, dict) or not isinstance(rec.get('text'), str):
      raise DataError(f'{path}:{i}: expected an object with a string "text" field')
    out.append(Document(id=str(rec.get('id', f'{os.path.basename(path)}/{i}')), text=rec['text'],
                        source=str(rec.get('source', '')), era=str(rec.get('era', ''))))
  return out


def load_documents(source: str = 'embedded') -> list[Document]:
  """All documents of a source: 'embedded', a .jsonl(.xz) file, a .txt file or a directory.

  A .txt file is split into documents at every two consecutive blank lines; a .jsonl file holds
  one document per line; a directory is every .txt and .jsonl file below it, one document per
  .txt file. Blank documents are dropped."""
  path = EMBEDDED if source == 'embedded' else os.path.expanduser(source)
  if not os.path.exists(path):
    raise DataError(f'corpus {source!r}: no such file or directory ({path})')
  if os.path.isdir(path):
    files = sorted(glob.glob(os.path.join(path, '**', '*.txt'), recursive=True) +
                   glob.glob(os.path.join(path, '**', '*.jsonl'), recursive=True))
    docs = []
    for f in files:
      if f.endswith('.jsonl'):
        docs += _jsonl_documents(f)
      else:
        docs.append(Document(id=os.path.relpath(f, path), text=_read_text(f)))
  elif '.jsonl' in path:
    docs = _jsonl_documents(path)
  else:
    docs = [Document(id=f'{os.path.basename(path)}/{i}', text=t)
            for i, t in enumerate(_read_text(path).split('\n\n\n')) if t.strip()]
  docs = [d for d in docs if d.text.strip()]
  if not docs:
    raise DataError(f'corpus {source!r} ({path}) is empty: no non-blank documents found')
  return docs


def split_documents(docs, val_fraction: float):
  train = [d for d in docs if not is_validation(d.id, val_fraction)]
  val = [d for d in docs if is_validation(d.id, val_fraction)]
  if not train or not val:
    raise DataError(f'corpus split with val_fraction={val_fraction} leaves {len(train)} train and '
                    f'{len(val)} validation documents; both must be non-empty')
  return train, val
