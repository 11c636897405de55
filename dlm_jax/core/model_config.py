"""config.model: the Transformer's settings (ModelConfig, frozen: a module field), the section's
defaults (`defaults`: ModelConfig's fields plus `size`) and its checks (`check_config`), written
once here beside the dataclass core/model.py builds from."""
import dataclasses

import numpy as np

from dlm_jax.core import flops
from dlm_jax.core.registry import choice, need
from dlm_jax.core.tokens import BOS, EOS, MASK, PAD

DTYPE_NAMES = ('float32', 'bfloat16')
REMATS = ('auto', 'none', 'full', 'dots')
ATTENTIONS = ('auto', 'xla', 'cudnn', 'explicit', 'reference')


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The architecture and compute settings of config.model, frozen (hashable: a module field)."""
  d_model: int = 256
  num_layers: int = 4
  num_heads: int = 4
  num_kv_heads: int = 0          # grouped-query attention: key/value heads (0: num_heads)
  head_dim: int = 0              # H per head (0: d_model / num_heads); Qwen3 sets it apart
  qk_norm: bool = False          # RMSNorm over each head's H dims of q and k, before RoPE (Qwen3)
  sliding_window: int = 0        # the checkpoint's attention window (0: none); recorded, not
                                 # applied: validation keeps data.seq_len within it, where full
                                 # attention is the same function
  mlp_dim: int = 0               # 0: SwiGLU hidden = 8/3 d_model rounded up to a multiple of 64
  vocab_size: int = 0            # 0: the tokenizer's vocabulary size
  vocab_real: int = 0            # ids in use (0: all); the rest pad the vocabulary, never predicted
  unpredicted: str = ''          # more ids never predicted, e.g. '0,1' = PAD, BOS: specials an
                                 # imported checkpoint lacks (its likelihoods stay the checkpoint's)
  embed_alias: str = ''          # 'ID:ROW,...': special id ID reads embedding row ROW, e.g. '1:2':
                                 # BOS is an imported checkpoint's EOS (bos = eos, or no bos)
  rope_base: float = 10000.0     # RoPE theta
  rope_scaling: str = ''         # '' | 'llama3:FACTOR,LOW,HIGH,CONTEXT': Llama 3.1's long-context
                                 # frequencies (set by hf import from the checkpoint)
  norm_eps: float = 1e-6         # RMSNorm epsilon
  qkv_bias: bool = False         # biases on the q, k, v projections (Qwen2)
  tie_embeddings: bool = True
  dtype: str = 'float32'         # compute dtype: DTYPE_NAMES
  param_dtype: str = 'float32'
  scan_layers: bool = True       # one compiled layer, stacked parameters (compile time flat in
                                 # depth)
  scan_unroll: int = 1           # layers per scanned step: >1 trades compile time for step time
                                 # (same parameters and checkpoints; num_layers: fully unrolled)
  remat: str = 'auto'            # auto (full for scanned layers on CPU, else none) | none | full |
                                 # dots: recompute activations in the backward (same results)
  attention: str = 'auto'        # auto (cuDNN on GPU in bf16, explicit on CPU, else XLA) | xla |
                                 # cudnn (GPU only: an error elsewhere) | explicit (softmax written
                                 # out, hand-written backward) | reference (the same, autodiff)
  attn_dropout: float = 0.0
  mlp_dropout: float = 0.0
  resid_dropout: float = 0.0
  embed_dropout: float = 0.0

  @classmethod
  def of(cls, c):
    """From a resolved config.model (ConfigDict or dict; other keys, such as size, ignored)."""
    if isinstance(c, cls):
      return c
    return cls(**{f.name: c[f.name] for f in dataclasses.fields(cls) if f.name in c})


def defaults() -> dict:
  """config.model: `size` (a name from flops.SIZES overrides d_model / num_layers / num_heads /
  mlp_dim) and ModelConfig's fields with their defaults."""
  return dict(size='', **dataclasses.asdict(ModelConfig()))


def resolve(m, vocab_size: int, vocab_real: int = 0):
  """Fills config.model's derived values in place (the named size, the tokenizer's vocabulary,
  the default MLP width), so config.json records what ran."""
  if m.size:
    s = flops.SIZES[m.size]
    m.d_model, m.num_layers, m.num_heads = s.d_model, s.num_layers, s.num_heads
    m.mlp_dim = s.mlp_dim
  if m.vocab_size == 0:
    m.vocab_size = vocab_size
  if m.vocab_real == 0 and vocab_real not in (0, m.vocab_size):
    m.vocab_real = vocab_real
  elif m.vocab_size < vocab_size:
    need(False, 'model.vocab_size', f'{m.vocab_size} is smaller than the tokenizer vocabulary '
         f'({vocab_size})')
  if m.mlp_dim == 0:
    m.mlp_dim = flops.default_mlp_dim(m.d_model)


def never_predicted(c, V: int) -> np.ndarray:
  """bool[V]: the ids the model never predicts (their logits are -1e9): [MASK], the vocabulary's
  padding rows (ids >= vocab_real) and model.unpredicted. The rest is what x-hat ranges over and
  what uniform noise draws from (core/noise.py)."""
  ids_V = np.arange(V)
  never_V = (ids_V == MASK) | (ids_V >= (c.vocab_real or c.vocab_size or V))
  for x in c.unpredicted.split(','):
    if x.strip():
      never_V |= ids_V == int(x)
  return never_V


def check_config(cfg):
  """config.model (and data.seq_len against model.sliding_window)."""
  m = cfg.model
  need(m.size == '' or m.size in flops.SIZES, 'model.size',
       f'{m.size!r} is not a size name ({", ".join(flops.SIZES)})')
  for k in ('d_model', 'num_layers', 'num_heads'):
    need(m[k] > 0, f'model.{k}', f'must be positive, got {m[k]}')
  need(m.head_dim >= 0, 'model.head_dim', f'must be >= 0 (0: d_model / num_heads), got '
       f'{m.head_dim}')
  need(m.head_dim > 0 or m.d_model % m.num_heads == 0, 'model.num_heads',
       f'{m.num_heads} heads do not divide d_model={m.d_model} (or set model.head_dim)')
  H = flops.head_size(m.d_model, m.num_heads, m.head_dim)
  need(H % 2 == 0, 'model.head_dim' if m.head_dim else 'model.num_heads',
       f'head dim {H} must be even for RoPE')
  check_window(m.sliding_window, cfg.data.seq_len)
  need(m.mlp_dim >= 0 and m.vocab_size >= 0, 'model.mlp_dim', 'must be >= 0')
  need(m.num_kv_heads >= 0 and (m.num_kv_heads == 0 or m.num_heads % m.num_kv_heads == 0),
       'model.num_kv_heads', f'{m.num_kv_heads} must be 0 or divide num_heads={m.num_heads}')
  need(m.norm_eps > 0, 'model.norm_eps', f'must be positive, got {m.norm_eps}')
  need(rope_scaling_ok(m.rope_scaling), 'model.rope_scaling',
       f"{m.rope_scaling!r} is not '' or 'llama3:FACTOR,LOW,HIGH,CONTEXT' (LOW < HIGH)")
  need(all(x.strip().isdigit() for x in m.unpredicted.split(',') if x.strip()),
       'model.unpredicted', f'{m.unpredicted!r} is not a comma list of token ids')
  check_embed_alias(m)
  need(0 <= m.vocab_real and (m.vocab_size == 0 or m.vocab_real <= m.vocab_size),
       'model.vocab_real', f'{m.vocab_real} must be in [0, model.vocab_size={m.vocab_size}]')
  choice(m, 'dtype', DTYPE_NAMES, 'model.')
  choice(m, 'param_dtype', DTYPE_NAMES, 'model.')
  choice(m, 'remat', REMATS, 'model.')
  need(m.scan_unroll >= 1, 'model.scan_unroll', f'must be >= 1, got {m.scan_unroll}')
  choice(m, 'attention', ATTENTIONS, 'model.')
  for k in ('attn_dropout', 'mlp_dropout', 'resid_dropout', 'embed_dropout'):
    need(0.0 <= m[k] < 1.0, f'model.{k}', f'{m[k]} is outside [0, 1)')


def check_embed_alias(m):
  """model.embed_alias: PAD / BOS / EOS may read another id's row (that id neither aliased nor
  [MASK]), and are then never predicted (model.unpredicted): their own row is never read."""
  pairs = [p.strip() for p in m.embed_alias.split(',') if p.strip()]
  ok = all(len(p.split(':')) == 2 and all(v.strip().isdigit() for v in p.split(':'))
           for p in pairs)
  need(ok, 'model.embed_alias', f"{m.embed_alias!r} is not a comma list of ID:ROW ('1:2')")
  pairs = [tuple(int(v) for v in p.split(':')) for p in pairs]
  ids = [i for i, _ in pairs]
  for i, row in pairs:
    need(i in (PAD, BOS, EOS) and ids.count(i) == 1, 'model.embed_alias',
         f'{i}:{row}: only the special ids PAD={PAD}, BOS={BOS}, EOS={EOS} may read another row, '
         'once each')
    need(row not in ids and row != MASK and row != i and (
        m.vocab_size == 0 or row < m.vocab_size), 'model.embed_alias',
         f'{i}:{row}: row {row} must be another id below model.vocab_size, not [MASK] '
         f'({MASK}) and not itself aliased')
    need(str(i) in [x.strip() for x in m.unpredicted.split(',')], 'model.embed_alias',
         f'{i}:{row}: id {i} must be in model.unpredicted={m.unpredicted!r} (it reads row '
         f'{row}: predicting it too would split that token\'s probability)')


def check_window(sliding_window, seq_len):
  """model.sliding_window W > 0: the checkpoint attends to the last W positions only, and full
  attention (all dlm_jax has) is the same function only while data.seq_len <= W."""
  need(sliding_window >= 0, 'model.sliding_window', f'must be >= 0 (0: none), got '
       f'{sliding_window}')
  need(not sliding_window or seq_len <= sliding_window, 'data.seq_len',
       f'{seq_len} is larger than model.sliding_window={sliding_window}: the checkpoint attends '
       f'over its last {sliding_window} positions only and dlm_jax attends over all of them, '
       f'which is the same model only up to the window (use data.seq_len <= {sliding_window})')


def rope_scaling_ok(spec):
  """model.rope_scaling: '' or 'llama3:FACTOR,LOW,HIGH,CONTEXT' with LOW < HIGH."""
  if not spec:
    return True
  kind, _, values = spec.partition(':')
  try:
    factor, low, high, context = (float(v) for v in values.split(','))
  except ValueError:
    return False
  return kind == 'llama3' and factor > 0 and 0 < low < high and context > 0
