"""Hugging Face checkpoints in and out: Llama, Mistral, Qwen2 and Qwen3 causal LMs <-> dlm_jax runs.

Both models are the same function: pre-norm RMSNorm, RoPE in the half-split (rotate_half)
layout, SwiGLU, grouped-query attention, optional q/k/v biases (Qwen2), an explicit head_dim and
RMSNorm on q and k per head (Qwen3), tied or untied head. A sliding window (Mistral v0.1; Qwen2 /
Qwen3 with use_sliding_window) is recorded as model.sliding_window: full attention equals it for
every context up to the window, and validation refuses a data.seq_len beyond it.
Only the layout of the weights differs (torch Linear stores [out, in]; dlm_jax stores the
kernels [in, out] with heads split out, and stacks the layers when they are scanned), and the
vocabulary: dlm_jax fixes PAD=0, BOS=1, EOS=2, MASK=3 for every tokenizer, so an imported
vocabulary is permuted (data/tokenizers.VocabMap): the checkpoint's pad / bos / eos ids move to
0 / 1 / 2, its other ids follow from 4 in their order. BOS (PAD) where the checkpoint's bos (pad)
is its eos, or BOS where it has none, reads the eos row (model.embed_alias: one row, trained as
one). The [MASK] row is new: it (and a PAD the checkpoint lacks) starts as the mean of the
checkpoint's rows, as `transformers`' resize_token_embeddings initialises added tokens; the
vocabulary is then padded to a multiple of 128 (shardable over `tensor`) with zero rows whose
logits are never predicted. Export inverts all of it (the checkpoint's rows, the shared one
included), so import -> export returns the original tensors bit for bit.
"""
import json
import os
import shutil
from typing import Optional

import numpy as np

from dlm_jax.core import flops
from dlm_jax.data import tokenizers
from dlm_jax.data.tokenizers import BOS, EOS, MASK, PAD, SPECIALS, VocabMap
from dlm_jax.errors import InteropError

SUPPORTED = ('LlamaForCausalLM', 'MistralForCausalLM', 'Qwen2ForCausalLM', 'Qwen3ForCausalLM')
HF_CONFIG = 'hf_config.json'  # an imported checkpoint's own config.json, kept for export
TOKENIZER_FILES = ('tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json',
                   'generation_config.json')


def model_keys(hf, path='config.json'):
  """config.model keys of a HF config, or a ConfigError naming what is not supported."""
  arch = (hf.get('architectures') or ['?'])[0]
  if arch not in SUPPORTED:
    raise InteropError(f'{path}: architecture {arch} is not supported (supported: '
                      f'{", ".join(SUPPORTED)})')
  d, n = hf['hidden_size'], hf['num_attention_heads']
  # RoPE: `rope_theta` (+ `rope_scaling`) up to transformers 4, `rope_parameters` from 5
  rope = hf.get('rope_parameters') or dict(hf.get('rope_scaling') or {}, rope_type=(
      hf.get('rope_scaling') or {}).get('rope_type', (hf.get('rope_scaling') or {}).get(
          'type', 'default')))
  theta = float(rope.get('rope_theta', hf.get('rope_theta', 10000.0)))
  checks = [
      (hf.get('hidden_act', 'silu') == 'silu', 'hidden_act', 'only silu (SwiGLU)'),
      (rope.get('rope_type', 'default') in ('default', 'llama3'), 'rope_scaling',
       f'RoPE scaling {rope.get("rope_type")!r} is not implemented (default and llama3 are)'),
      (not hf.get('mlp_bias'), 'mlp_bias', 'MLP biases are not implemented'),
      (arch == 'Qwen2ForCausalLM' or not hf.get('attention_bias'), 'attention_bias',
       'an output-projection bias is not implemented (q/k/v biases are: Qwen2)'),
      (hf.get('head_dim') is not None or d % n == 0, 'num_attention_heads',
       f'it does not divide hidden_size={d} and no head_dim is given'),
      (hf.get('head_dim') is None or (isinstance(hf['head_dim'], int) and hf['head_dim'] > 0
                                      and hf['head_dim'] % 2 == 0), 'head_dim',
       'a positive even number is needed for RoPE'),
  ]
  for ok, key, why in checks:
    if not ok:
      raise InteropError(f'{path}: {key}={hf.get(key)!r} is not supported ({why})')
  H = flops.head_size(d, n, hf.get('head_dim') or 0)
  return dict(d_model=d, num_layers=hf['num_hidden_layers'], num_heads=n,
              num_kv_heads=hf.get('num_key_value_heads') or n,
              head_dim=0 if H * n == d else H, qk_norm=arch == 'Qwen3ForCausalLM',
              sliding_window=_sliding_window(hf, arch),
              mlp_dim=hf['intermediate_size'], rope_base=theta, rope_scaling=(
                  'llama3:{factor},{low_freq_factor},{high_freq_factor},'
                  '{original_max_position_embeddings}'.format(**rope)
                  if rope.get('rope_type') == 'llama3' else ''),
              norm_eps=float(hf.get('rms_norm_eps', 1e-6)),
              tie_embeddings=bool(hf.get('tie_word_embeddings', False)),
              qkv_bias=arch == 'Qwen2ForCausalLM', size='')


def _sliding_window(hf, arch):
  """The attention window any layer of the checkpoint uses (0: none). Mistral: sliding_window;
  Qwen2 / Qwen3: sliding_window where use_sliding_window is set, on the layers that
  layer_types marks (by default those from max_window_layers on)."""
  w = hf.get('sliding_window')
  if arch == 'MistralForCausalLM' or not w:
    return int(w or 0)
  if arch not in ('Qwen2ForCausalLM', 'Qwen3ForCausalLM') or not hf.get('use_sliding_window'):
    return 0
  n = hf['num_hidden_layers']
  types = hf.get('layer_types') or ['sliding_attention' if i >= hf.get('max_window_layers', n)
                                    else 'full_attention' for i in range(n)]
  return int(w) if 'sliding_attention' in types else 0


# (HF name with {i} for the layer, dlm_jax path, to dlm_jax, from dlm_jax); shapes from cfg
def _layer_tensors(m):
  D, N, F = m['d_model'], m['num_heads'], m['mlp_dim']
  K = m['num_kv_heads'] or N
  H = flops.head_size(D, N, m.get('head_dim', 0))
  heads_in = lambda n: (lambda w: w.T.reshape(D, n, H), lambda k: k.reshape(D, n * H).T)
  bias = lambda n: (lambda b: b.reshape(n, H), lambda b: b.reshape(n * H))
  plain = (lambda w: w.T, lambda k: k.T)
  same = (lambda w: w, lambda w: w)
  out = [('self_attn.q_proj.weight', ('q', 'kernel'), *heads_in(N), (N * H, D)),
         ('self_attn.k_proj.weight', ('k', 'kernel'), *heads_in(K), (K * H, D)),
         ('self_attn.v_proj.weight', ('v', 'kernel'), *heads_in(K), (K * H, D)),
         ('self_attn.o_proj.weight', ('o', 'kernel'), lambda w: w.T.reshape(N, H, D),
          lambda k: k.reshape(N * H, D).T, (D, N * H)),
         ('mlp.gate_proj.weight', ('gate', 'kernel'), *plain, (F, D)),
         ('mlp.up_proj.weight', ('up', 'kernel'), *plain, (F, D)),
         ('mlp.down_proj.weight', ('down', 'kernel'), *plain, (D, F)),
         ('input_layernorm.weight', ('attn_norm', 'scale'), *same, (D,)),
         ('post_attention_layernorm.weight', ('mlp_norm', 'scale'), *same, (D,))]
  if m.get('qk_norm'):
    out += [('self_attn.q_norm.weight', ('q_norm', 'scale'), *same, (H,)),
            ('self_attn.k_norm.weight', ('k_norm', 'scale'), *same, (H,))]
  if m['qkv_bias']:
    out += [('self_attn.q_proj.bias', ('q', 'bias'), *bias(N), (N * H,)),
            ('self_attn.k_proj.bias', ('k', 'bias'), *bias(K), (K * H,)),
            ('self_attn.v_proj.bias', ('v', 'bias'), *bias(K), (K * H,))]
  return out


def _get(reader, name, shape):
  if name not in reader:
    raise InteropError(f'tensor {name} (shape {list(shape)}) is missing from the checkpoint')
  if reader.shape(name) != tuple(shape):
    raise InteropError(f'tensor {name} has shape {list(reader.shape(name))}, expected '
                    f'{list(shape)}')
  return reader[name]


def _check_head_dim(reader, m):
  """The q projection's rows are num_attention_heads x head_dim: a config whose head_dim (or
  hidden_size / heads) the tensors contradict is named as such, not as a shape mismatch."""
  N, H, name = m['num_heads'], flops.head_size(m['d_model'], m['num_heads'], m.get('head_dim')), \
      'model.layers.0.self_attn.q_proj.weight'
  rows = reader.shape(name)[0] if name in reader else N * H
  if rows != N * H:
    raise InteropError(f'config.json: head_dim={H} does not match the checkpoint: {name} has '
                       f'{rows} rows, not num_attention_heads x head_dim = {N} x {H} = {N * H}')


def params_from_hf(reader, m, vocab: VocabMap, dtype, scan_layers=True):
  """dlm_jax params (numpy, `dtype`) from a safetensors Reader. Each stacked array is allocated
  once and filled layer by layer from the memory-mapped file: one copy in memory."""
  D, Lyr = m['d_model'], m['num_layers']
  _check_head_dim(reader, m)
  cast = lambda x: np.asarray(x).astype(dtype, copy=False)
  params = {'embed': {'embedding': cast(vocab.rows_in(
      _get(reader, 'model.embed_tokens.weight', (vocab.rows, D))))}}
  for hf_name, (mod, leaf), to_dlm, _, shape in _layer_tensors(m):
    first = to_dlm(_get(reader, f'model.layers.0.{hf_name}', shape))
    if scan_layers:
      stacked = np.empty((Lyr,) + first.shape, dtype)
      for i in range(Lyr):
        stacked[i] = to_dlm(_get(reader, f'model.layers.{i}.{hf_name}', shape))
      params.setdefault('layers', {}).setdefault(mod, {})[leaf] = stacked
    else:
      for i in range(Lyr):
        params.setdefault(f'layers_{i}', {}).setdefault(mod, {})[leaf] = cast(
            to_dlm(_get(reader, f'model.layers.{i}.{hf_name}', shape)))
  params['final_norm'] = {'scale': cast(_get(reader, 'model.norm.weight', (D,)))}
  if not m['tie_embeddings']:
    params['head'] = {'kernel': cast(vocab.rows_in(
        _get(reader, 'lm_head.weight', (vocab.rows, D))).T)}
  return params


def params_to_hf(params, m, vocab: Optional[VocabMap], dtype, mask=False):
  """{HF tensor name: numpy array} of dlm_jax params (vocab None: ids kept as they are; mask:
  the [MASK] row appended to an imported checkpoint's rows, VocabMap.rows_out)."""
  rows = (lambda t: np.asarray(t)) if vocab is None else (lambda t: vocab.rows_out(t, mask))
  cast = lambda x: np.asarray(x).astype(dtype, copy=False)
  out = {'model.embed_tokens.weight': cast(rows(params['embed']['embedding']))}
  for i in range(m['num_layers']):
    layer = params['layers'] if 'layers' in params else params[f'layers_{i}']
    pick = (lambda x, i=i: x[i]) if 'layers' in params else (lambda x: x)
    for hf_name, (mod, leaf), _, from_dlm, _ in _layer_tensors(m):
      out[f'model.layers.{i}.{hf_name}'] = cast(from_dlm(np.asarray(pick(layer[mod][leaf]))))
  out['model.norm.weight'] = cast(params['final_norm']['scale'])
  if not m['tie_embeddings']:
    out['lm_head.weight'] = cast(rows(np.asarray(params['head']['kernel']).T))
  return out


def _rope_parameters(m):
  if not m.get('rope_scaling'):
    return dict(rope_type='default', rope_theta=m['rope_base'])
  factor, low, high, context = (float(v) for v in m['rope_scaling'].split(':', 1)[1].split(','))
  return dict(rope_type='llama3', rope_theta=m['rope_base'], factor=factor, low_freq_factor=low,
              high_freq_factor=high, original_max_position_embeddings=int(context))


def hf_config(m, vocab_size, max_positions, dtype_name, base=None):
  """A transformers config.json for dlm_jax model keys: `base` (an imported checkpoint's own
  config) kept where given, else Llama (Qwen2 with q/k/v biases, Qwen3 with qk_norm) with
  dlm_jax's special ids."""
  if base is not None:
    return dict(base, torch_dtype=dtype_name, dtype=dtype_name)
  if m.get('qk_norm') and m['qkv_bias']:
    raise InteropError('model.qk_norm=True with model.qkv_bias=True: no transformers '
                       "architecture has both (Qwen3's attention_bias biases the output "
                       'projection too), so this run cannot be exported')
  arch, kind = (('Qwen3ForCausalLM', 'qwen3') if m.get('qk_norm') else
                ('Qwen2ForCausalLM', 'qwen2') if m['qkv_bias'] else ('LlamaForCausalLM', 'llama'))
  return dict(architectures=[arch], model_type=kind,
              hidden_size=m['d_model'], num_hidden_layers=m['num_layers'],
              num_attention_heads=m['num_heads'],
              head_dim=flops.head_size(m['d_model'], m['num_heads'], m.get('head_dim')),
              num_key_value_heads=m['num_kv_heads'] or m['num_heads'],
              intermediate_size=m['mlp_dim'], vocab_size=vocab_size, hidden_act='silu',
              rope_theta=m['rope_base'], rms_norm_eps=m['norm_eps'],
              rope_parameters=_rope_parameters(m),
              tie_word_embeddings=m['tie_embeddings'], max_position_embeddings=max_positions,
              bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD, mask_token_id=MASK,
              attention_bias=False,
              torch_dtype=dtype_name, dtype=dtype_name)


def read_json(path):
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  except FileNotFoundError:
    raise InteropError(f'{path}: no such file') from None
  except (OSError, ValueError) as e:
    raise InteropError(f'{path}: not readable JSON ({type(e).__name__}: {e})') from None



def _byte_tokenizer():
  """`byte` as a tokenizers BPE without merges over GPT-2's byte-to-character alphabet: byte b is
  id b + 4, as ByteTokenizer has it."""
  import tokenizers as tk  # pylint: disable=g-import-not-at-top
  keep = [*range(33, 127), *range(161, 173), *range(174, 256)]  # printable: their own character
  chars = {b: chr(b) for b in keep}
  chars.update({b: chr(256 + i) for i, b in enumerate(b for b in range(256) if b not in chars)})
  vocab = dict({s: i for i, s in enumerate(SPECIALS)},
               **{chars[b]: b + len(SPECIALS) for b in range(256)})
  tok = tk.Tokenizer(tk.models.BPE(vocab=vocab, merges=[]))
  tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
  tok.decoder = tk.decoders.ByteLevel()
  return tok


def write_native_tokenizer(name, out):
  """tokenizer.json (+ tokenizer_config.json naming the specials) for a run's own tokenizer,
  with dlm_jax's ids."""
  if name == 'byte':
    _byte_tokenizer().save(os.path.join(out, 'tokenizer.json'))
  elif name == 'gpt2':
    tokenizers.get_tokenizer('gpt2').shifted().save(os.path.join(out, 'tokenizer.json'))
  else:
    shutil.copy(tokenizers.BPE_FILE if name == 'bpe' else os.path.expanduser(name),
                os.path.join(out, 'tokenizer.json'))
  pad, bos, eos, mask = SPECIALS
  with open(os.path.join(out, 'tokenizer_config.json'), 'w', encoding='utf-8') as f:
    json.dump(dict(tokenizer_class='PreTrainedTokenizerFast', bos_token=bos, eos_token=eos,
                   pad_token=pad, mask_token=mask, add_bos_token=False), f, indent=1)
