"""The safetensors format with numpy alone (no torch, no safetensors package): an 8-byte header
length, a JSON header (dtype, shape, byte offsets per tensor), then the raw little-endian data.
Tensors are read as memory maps, one at a time (a 7B checkpoint is never held twice), bfloat16
through ml_dtypes; sharded checkpoints are followed through `model.safetensors.index.json`."""
import json
import os
import struct

import ml_dtypes
import numpy as np

from dlm_jax.errors import InteropError

DTYPES = {'F32': np.dtype(np.float32), 'F16': np.dtype(np.float16),
          'BF16': np.dtype(ml_dtypes.bfloat16), 'F64': np.dtype(np.float64),
          'I64': np.dtype(np.int64), 'I32': np.dtype(np.int32), 'I8': np.dtype(np.int8),
          'U8': np.dtype(np.uint8), 'BOOL': np.dtype(np.bool_)}
NAMES = {v: k for k, v in DTYPES.items()}
INDEX = 'model.safetensors.index.json'


def _header(path):
  try:
    with open(path, 'rb') as f:
      n = struct.unpack('<Q', f.read(8))[0]
      header = json.loads(f.read(n))
  except (OSError, struct.error, ValueError) as e:
    raise InteropError(f'{path}: not a readable safetensors file ({type(e).__name__}: {e})') from None
  return header, 8 + n


def tensor_files(model_dir):
  """{tensor name: file} of a model directory: one model.safetensors, or the shards its
  model.safetensors.index.json names."""
  index = os.path.join(model_dir, INDEX)
  if os.path.exists(index):
    try:
      weight_map = json.load(open(index, encoding='utf-8'))['weight_map']
    except (OSError, ValueError, KeyError) as e:
      raise InteropError(f'{index}: not a safetensors index ({type(e).__name__}: {e})') from None
    return {k: os.path.join(model_dir, v) for k, v in weight_map.items()}
  files = sorted(f for f in os.listdir(model_dir) if f.endswith('.safetensors'))
  if not files:
    raise InteropError(f'{model_dir}: no *.safetensors file (and no {INDEX})')
  out = {}
  for f in files:
    path = os.path.join(model_dir, f)
    out.update({k: path for k in _header(path)[0] if k != '__metadata__'})
  return out


class Reader:
  """Lazy tensors of a model directory: reader[name] is a read-only memory map."""

  def __init__(self, model_dir):
    self.files = tensor_files(model_dir)
    self._headers = {}

  def __contains__(self, name):
    return name in self.files

  def shape(self, name):
    return tuple(self._entry(name)[0]['shape'])

  def _entry(self, name):
    path = self.files[name]
    if path not in self._headers:
      self._headers[path] = _header(path)
    header, start = self._headers[path]
    if name not in header:
      raise InteropError(f'{path}: tensor {name} listed in the index is not in the file')
    return header[name], start, path

  def __getitem__(self, name):
    meta, start, path = self._entry(name)
    if meta['dtype'] not in DTYPES:
      raise InteropError(f'{path}: tensor {name} has dtype {meta["dtype"]}, which is not supported')
    dtype = DTYPES[meta['dtype']]
    begin, end = meta['data_offsets']
    count = int(np.prod(meta['shape'], dtype=np.int64))
    if end - begin != count * dtype.itemsize:
      raise InteropError(f'{path}: tensor {name} holds {end - begin} bytes, its shape '
                      f'{meta["shape"]} needs {count * dtype.itemsize}')
    if os.path.getsize(path) < start + end:
      raise InteropError(f'{path}: truncated (tensor {name} ends at byte {start + end})')
    return np.memmap(path, dtype=dtype, mode='r', offset=start + begin,
                     shape=tuple(meta['shape']))


def write(path, tensors, metadata=None):
  """Writes {name: array} (streamed one tensor at a time) as one safetensors file."""
  header, offset = {}, 0
  for name, x in tensors.items():
    n = int(np.prod(x.shape, dtype=np.int64)) * np.dtype(x.dtype).itemsize
    header[name] = dict(dtype=NAMES[np.dtype(x.dtype)], shape=list(x.shape),
                        data_offsets=[offset, offset + n])
    offset += n
  if metadata:
    header['__metadata__'] = metadata
  raw = json.dumps(header, separators=(',', ':')).encode('utf-8')
  raw += b' ' * (-len(raw) % 8)  # the data starts 8-byte aligned
  tmp = path + '.tmp'
  with open(tmp, 'wb') as f:
    f.write(struct.pack('<Q', len(raw)))
    f.write(raw)
    for x in tensors.values():
      f.write(np.ascontiguousarray(x).tobytes())
  os.replace(tmp, path)
