"""The decoder-only Transformer shared by AR, MDM and dual training.

Shape letters in tensor names, everywhere in the package: B batch rows, L sequence length,
S key / cache length, D model width, N attention heads, H head dim, F MLP width, V vocabulary,
R scored rows, P masked-variant passes, K Monte Carlo samples, G time-grid points, J blocks.

RoPE, RMSNorm (pre-norm), SwiGLU, grouped-query attention, optional q/k/v biases, an optional head
dim apart from d / N and RMSNorm on q and k per head (Qwen3), optional tied embeddings, layers
under `nn.scan`: the Llama / Mistral / Qwen2 / Qwen3 function (interop/hf.py). One set of
parameters runs with three attention kinds, chosen per call:
  causal         position i attends to j <= i
  bidirectional  every position attends to every position
  prefix         bidirectional over the first P_b positions of sequence b, causal after
  block          block diffusion's [noised ; clean] input of 2L (core/blockattn.py); with a KV
                 cache: the new positions see the cache and each other (one block)
and optional segment ids, so packed documents never attend across boundaries. The [MASK] logit is
never predicted (set to -1e9): MDM and AR share one output distribution over real tokens; nor are
the vocabulary's padding rows and the ids of model.unpredicted.
"""
import functools
import warnings
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dlm_jax.core import blockattn
from dlm_jax.core.flops import head_size
from dlm_jax.core.kernels import NEG_INF, reference_attention, rope, softmax_attention, swiglu
from dlm_jax.core.model_config import DTYPE_NAMES, ModelConfig  # pylint: disable=unused-import
from dlm_jax.core.model_config import never_predicted
from dlm_jax.core.sharding import BATCH_AXES as BATCH, constrain
from dlm_jax.errors import ConfigError


DTYPES = {name: getattr(jnp, name) for name in DTYPE_NAMES}  # config.model.dtype / param_dtype


class Kernel(nn.Module):
  """A bare weight, at the path nn.Dense would put it (<name>/kernel): same init, same tree."""
  shape: tuple
  axes: tuple
  init_std: float
  dtype: Any

  @nn.compact
  def __call__(self):
    init = nn.with_logical_partitioning(nn.initializers.normal(self.init_std), self.axes)
    return self.param('kernel', init, self.shape, self.dtype)


def attention_mask(kind: str, L: int, prefix_len_B=None, segment_ids_BxL=None):
  """(mask_Bx1xLxL or None, is_causal) for jax.nn.dot_product_attention; True = may attend."""
  if kind not in ('causal', 'bidirectional', 'prefix'):
    raise ValueError(f'unknown attention kind {kind!r}')
  if kind == 'prefix' and prefix_len_B is None:
    raise ValueError('prefix attention needs prefix_len_B')
  if segment_ids_BxL is None and kind != 'prefix':
    return None, kind == 'causal'
  i = jnp.arange(L)[:, None]
  j = jnp.arange(L)[None, :]
  if kind == 'causal':
    allowed_BxLxL = (j <= i)[None]
  elif kind == 'bidirectional':
    allowed_BxLxL = jnp.ones((1, L, L), bool)
  else:
    allowed_BxLxL = (j <= i)[None] | (j[None] < prefix_len_B[:, None, None])
  if segment_ids_BxL is not None:
    allowed_BxLxL = allowed_BxLxL & (segment_ids_BxL[:, :, None] == segment_ids_BxL[:, None, :])
  return allowed_BxLxL[:, None], False

_warned = set()


def remat_policy(cfg, backend=None) -> str:
  """model.remat, with auto = 'full' for scanned layers on CPU (recomputing a layer's forward
  is cheaper there than stacking its activations in the loop: 8% faster step, BENCHMARKS.md),
  else 'none'. Remat never changes results (tested)."""
  if cfg.remat != 'auto':
    return cfg.remat
  return 'full' if cfg.scan_layers and (backend or jax.default_backend()) == 'cpu' else 'none'


def attention_impl(cfg, has_mask=False, backend=None) -> str:
  """The kernel config.model.attention asks for on this backend: 'xla', 'cudnn', 'explicit' or
  'reference'. auto: cuDNN flash attention on GPU when it applies (bf16/fp16, head dim a multiple
  of 8 up to 128, no explicit mask), else XLA, with one warning on GPU saying why; on CPU the
  explicit softmax with its hand-written backward (softmax_attention), which XLA:CPU runs faster
  than jax.nn.dot_product_attention. 'reference' is the same softmax under plain autodiff (what
  the others are tested against). A forced 'cudnn' off GPU is an error naming the key."""
  backend = backend or jax.default_backend()
  want = getattr(cfg, 'attention', 'auto')
  if want == 'cudnn' and backend != 'gpu':
    raise ConfigError(f'config.model.attention=cudnn needs an NVIDIA GPU; this backend is '
                     f'{backend} (use auto or xla)')
  if want != 'auto':
    return want
  if backend == 'cpu':  # measured: a faster train step than XLA's kernel (BENCHMARKS.md)
    return 'explicit'
  if backend != 'gpu':
    return 'xla'
  H = head_dim(cfg)
  why = ('compute dtype float32 (cuDNN needs bf16/fp16)' if cfg.dtype == 'float32' else
         f'head dim {H} (cuDNN needs a multiple of 8 up to 128)' if H % 8 or H > 128 else
         'an explicit (segment / prefix) mask' if has_mask else '')
  if why and why not in _warned:
    _warned.add(why)
    warnings.warn(f'model.attention=auto: XLA attention instead of cuDNN because of {why}')
  return 'xla' if why else 'cudnn'


class RMSNorm(nn.Module):
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  eps: float = 1e-6

  @nn.compact
  def __call__(self, x_BxLxD):
    scale_D = self.param('scale', nn.with_logical_partitioning(nn.initializers.ones, ('norm',)),
                         (x_BxLxD.shape[-1],), self.param_dtype)
    x = x_BxLxD.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
    return (x * scale_D.astype(jnp.float32)).astype(self.dtype)


class Block(nn.Module):
  """Pre-norm attention + SwiGLU MLP; returns (x, kv) so it can run under nn.scan. With a KV
  cache (k_BxSxKxH, v_BxSxKxH: K key/value heads) the T inputs sit at positions pos..pos+T-1: their keys and values
  are written into the cache at pos and the queries attend over the whole cache under `mask`;
  kv is then the updated cache (else None)."""
  cfg: ModelConfig
  mesh: Any = None  # activation sharding constraints when set

  @nn.compact
  def __call__(self, x_BxLxD, mask, is_causal, deterministic, kv=None, pos=None,
               positions_L=None):
    c = self.cfg
    dt, pdt = DTYPES[c.dtype], DTYPES[c.param_dtype]
    N, H = c.num_heads, head_dim(c)
    K = c.num_kv_heads or N
    normal = nn.initializers.normal(0.02)
    std_out = 0.02 / (2 * c.num_layers) ** 0.5  # residual-branch outputs (GPT-2 scaling)
    out_normal = nn.initializers.normal(std_out)
    init = lambda *axes: nn.with_logical_partitioning(normal, axes)
    out_init = lambda *axes: nn.with_logical_partitioning(out_normal, axes)
    dense = functools.partial(nn.DenseGeneral, use_bias=False, dtype=dt, param_dtype=pdt)
    bias_init = nn.with_logical_partitioning(nn.initializers.zeros, ('heads', 'head_dim'))
    qkv = lambda n, name: dense((n, H), kernel_init=init('embed', 'heads', 'head_dim'),
                                use_bias=c.qkv_bias, bias_init=bias_init, name=name)
    # each group of N / K query heads shares a key/value head (HF's repeat_kv order)
    groups = lambda y_BxLxKxH: y_BxLxKxH if K == N else jnp.repeat(y_BxLxKxH, N // K, axis=2)

    h_BxLxD = RMSNorm(dt, pdt, c.norm_eps, name='attn_norm')(x_BxLxD)
    heads = lambda y: constrain(y, self.mesh, BATCH, None, 'tensor', None)
    offset = 0 if kv is None else pos
    q_BxLxNxH, k_BxLxKxH = qkv(N, 'q')(h_BxLxD), qkv(K, 'k')(h_BxLxD)
    if c.qk_norm:  # Qwen3: each head's q and k RMS-normalised over H (own scales), then RoPE
      q_BxLxNxH = RMSNorm(dt, pdt, c.norm_eps, name='q_norm')(q_BxLxNxH)
      k_BxLxKxH = RMSNorm(dt, pdt, c.norm_eps, name='k_norm')(k_BxLxKxH)
    q_BxLxNxH = heads(rope(q_BxLxNxH, c.rope_base, offset, c.rope_scaling, positions_L))
    k_BxLxKxH = rope(k_BxLxKxH, c.rope_base, offset, c.rope_scaling, positions_L)
    v_BxLxKxH = qkv(K, 'v')(h_BxLxD)
    if kv is not None:  # decoding: this step's keys / values into the cache, attend over it
      start = (0, pos, 0, 0)
      kv = tuple(jax.lax.dynamic_update_slice(cache_BxSxKxH, new_BxLxKxH.astype(
          cache_BxSxKxH.dtype), start) for cache_BxSxKxH, new_BxLxKxH in zip(
              kv, (k_BxLxKxH, v_BxLxKxH)))
      k_BxLxKxH, v_BxLxKxH = kv  # (length S)
      is_causal, impl = False, 'xla'
    elif c.attn_dropout > 0 and not deterministic:
      impl = 'dropout'
    else:
      impl = attention_impl(c, has_mask=mask is not None)
    k_BxSxNxH, v_BxSxNxH = heads(groups(k_BxLxKxH)), heads(groups(v_BxLxKxH))
    if impl == 'dropout':
      drop = lambda p: nn.Dropout(c.attn_dropout)(p, deterministic=False)
      o_BxLxNxH = reference_attention(q_BxLxNxH, k_BxSxNxH, v_BxSxNxH, mask, is_causal, drop)
    elif impl == 'explicit':
      o_BxLxNxH = softmax_attention(q_BxLxNxH, k_BxSxNxH, v_BxSxNxH, mask, is_causal)
    elif impl == 'reference':
      o_BxLxNxH = reference_attention(q_BxLxNxH, k_BxSxNxH, v_BxSxNxH, mask, is_causal)
    else:
      o_BxLxNxH = jax.nn.dot_product_attention(q_BxLxNxH, k_BxSxNxH, v_BxSxNxH, mask=mask,
                                               is_causal=is_causal, implementation=impl)
    o_BxLxD = dense(c.d_model, axis=(-2, -1), kernel_init=out_init('heads', 'head_dim', 'embed'),
                    name='o')(o_BxLxNxH)
    x_BxLxD = x_BxLxD + nn.Dropout(c.resid_dropout)(o_BxLxD, deterministic=deterministic)

    h_BxLxD = RMSNorm(dt, pdt, c.norm_eps, name='mlp_norm')(x_BxLxD)
    D, F = c.d_model, c.mlp_dim
    gate_DxF, up_DxF = (Kernel((D, F), ('embed', 'mlp'), 0.02, pdt, name=n)().astype(dt)
                        for n in ('gate', 'up'))
    down_FxD = Kernel((F, D), ('mlp', 'embed'), std_out, pdt, name='down')().astype(dt)
    if c.mlp_dropout > 0 and not deterministic:
      a_BxLxF = nn.Dropout(c.mlp_dropout)(nn.silu(h_BxLxD @ gate_DxF) * (h_BxLxD @ up_DxF),
                                          deterministic=False)
      a_BxLxF = constrain(a_BxLxF, self.mesh, BATCH, None, 'tensor')
      y_BxLxD = a_BxLxF @ down_FxD
    else:
      y_BxLxD = swiglu(h_BxLxD, gate_DxF, up_DxF, down_FxD)
    x_BxLxD = x_BxLxD + nn.Dropout(c.resid_dropout)(y_BxLxD, deterministic=deterministic)
    return constrain(x_BxLxD, self.mesh, BATCH, None, None), kv


class Transformer(nn.Module):
  """tokens_BxL -> logits_BxLxV (float32). `attention` is static; prefix/segments are arrays.

  Incremental causal decoding: with cache=init_cache(...) and cache_pos=p, tokens_BxT are the
  inputs at positions p..p+T-1 (causal over everything before them in the cache) and the call
  returns (logits_BxTxV, updated cache)."""
  cfg: Any  # ModelConfig, or a resolved config.model (turned into one)
  mesh: Any = None  # a jax Mesh: pin activation layouts (sharding.py); None: let XLA choose

  def __post_init__(self):
    object.__setattr__(self, 'cfg', ModelConfig.of(self.cfg))
    super().__post_init__()

  @nn.compact
  def __call__(self, tokens_BxL, attention: str = 'causal', prefix_len_B=None,
               segment_ids_BxL=None, deterministic: bool = True, cache=None, cache_pos=None,
               block_size: int = 0):
    c = self.cfg
    dt, pdt = DTYPES[c.dtype], DTYPES[c.param_dtype]
    embed = nn.Embed(c.vocab_size, c.d_model,
                     embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                                 ('vocab', 'embed')),
                     dtype=dt, param_dtype=pdt, name='embed')
    for i, row in embed_aliases(c):  # one row for two ids: training, scoring, decoding alike
      tokens_BxL = jnp.where(tokens_BxL == i, row, tokens_BxL)
    x_BxLxD = constrain(embed(tokens_BxL), self.mesh, BATCH, None, None)
    x_BxLxD = nn.Dropout(c.embed_dropout)(x_BxLxD, deterministic=deterministic)
    positions_L = None
    if cache is None and attention == 'block':
      if segment_ids_BxL is not None or tokens_BxL.shape[1] % 2 or block_size < 1:
        raise ValueError('block attention reads 2L tokens, needs block_size, has no segments')
      L = tokens_BxL.shape[1] // 2
      mask, is_causal = jnp.asarray(blockattn.block_allowed(L, block_size))[None, None], False
      positions_L, kv = blockattn.block_positions(L), None
    elif cache is None:
      mask, is_causal = attention_mask(attention, tokens_BxL.shape[1], prefix_len_B,
                                       segment_ids_BxL)
      kv = None
    else:
      if (attention not in ('causal', 'block') or segment_ids_BxL is not None or
          prefix_len_B is not None):
        raise ValueError('a KV cache decodes causally or by blocks, without segments or prefixes')
      T, S = tokens_BxL.shape[1], cache['k'].shape[2]
      q_pos_T = cache_pos + jnp.arange(T)
      allowed_TxS = (jnp.arange(S)[None, :] <= q_pos_T[:, None] if attention == 'causal' else
                     blockattn.cache_allowed(S, cache_pos, T))
      mask, is_causal = allowed_TxS[None, None], False
      kv = (cache['k'], cache['v'])
    block = Block
    remat = remat_policy(c)
    if remat != 'none' and cache is None:
      policy = (jax.checkpoint_policies.checkpoint_dots if remat == 'dots' else None)
      block = nn.remat(Block, static_argnums=(3, 4), policy=policy,  # self is argument 0
                       prevent_cse=not c.scan_layers)
    if c.scan_layers:
      x_BxLxD, kv = nn.scan(block, variable_axes={'params': 0}, split_rngs={'params': True,
                                                                            'dropout': True},
                           in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, 0, nn.broadcast,
                                    nn.broadcast),
                           metadata_params={nn.PARTITION_NAME: 'layers'},
                           length=c.num_layers, unroll=min(c.scan_unroll, c.num_layers))(
                               c, self.mesh, name='layers')(
                               x_BxLxD, mask, is_causal, deterministic, kv, cache_pos,
                               positions_L)
    else:
      new_kv = []
      for i in range(c.num_layers):
        kv_i = None if kv is None else (kv[0][i], kv[1][i])
        x_BxLxD, kv_i = block(c, self.mesh, name=f'layers_{i}')(
            x_BxLxD, mask, is_causal, deterministic, kv_i, cache_pos, positions_L)
        new_kv.append(kv_i)
      if kv is not None:
        kv = tuple(jnp.stack([layer[j] for layer in new_kv]) for j in (0, 1))
    x_BxLxD = RMSNorm(dt, pdt, c.norm_eps, name='final_norm')(x_BxLxD)
    if c.tie_embeddings:
      logits_BxLxV = embed.attend(x_BxLxD)
    else:
      logits_BxLxV = nn.Dense(c.vocab_size, use_bias=False, dtype=dt, param_dtype=pdt,
                              kernel_init=nn.with_logical_partitioning(
                                  nn.initializers.normal(0.02), ('embed', 'vocab')),
                              name='head')(x_BxLxD)
    # a select, not .at[].set: the scatter's transpose in the backward pass cost 0.5 s of a 9 s
    # CPU step (profile in BENCHMARKS.md)
    never_V = never_predicted(c, logits_BxLxV.shape[-1])  # [MASK], vocabulary padding, ...
    logits_BxLxV = jnp.where(never_V, NEG_INF, logits_BxLxV.astype(jnp.float32))
    if cache is None:
      return logits_BxLxV
    return logits_BxLxV, dict(k=kv[0], v=kv[1])


def unpredicted_ids(cfg):
  """The ids of model.unpredicted ('0,1' -> (0, 1))."""
  return tuple(int(x) for x in cfg.unpredicted.split(',') if x.strip())


def head_dim(cfg):
  """H of each attention head of a ModelConfig or config.model (flops.head_size)."""
  return head_size(cfg.d_model, cfg.num_heads, getattr(cfg, 'head_dim', 0))


def embed_aliases(cfg):
  """The (id, row) pairs of model.embed_alias ('0:2,1:2' -> ((0, 2), (1, 2)))."""
  return tuple(tuple(int(v) for v in p.split(':')) for p in cfg.embed_alias.split(',')
               if p.strip())


def init_cache(cfg, batch: int, length: int):
  """An empty KV cache for `length` positions: k, v of shape layers x B x S x K x head_dim in the
  compute dtype (K key/value heads: grouped-query attention caches K, not N)."""
  cfg = ModelConfig.of(cfg)
  shape = (cfg.num_layers, batch, length, cfg.num_kv_heads or cfg.num_heads, head_dim(cfg))
  return dict(k=jnp.zeros(shape, DTYPES[cfg.dtype]), v=jnp.zeros(shape, DTYPES[cfg.dtype]))


def _init_boxed(cfg, rng, seq_len):
  return Transformer(cfg).init({'params': rng}, jnp.zeros((1, seq_len), jnp.int32))['params']


def init_params(cfg, rng, seq_len: int):
  """(model, params) with plain arrays (the logical-axis boxes are stripped)."""
  return Transformer(cfg), nn.meta.unbox(_init_boxed(cfg, rng, seq_len))


def logical_axes(cfg, seq_len: int):
  """The params tree with a PartitionSpec of logical axis names per leaf ('layers', 'embed',
  'heads', 'head_dim', 'mlp', 'vocab', 'norm'); sharding.py maps them onto mesh axes."""
  boxed = jax.eval_shape(lambda: _init_boxed(cfg, jax.random.PRNGKey(0), seq_len))
  return nn.get_partition_spec(boxed)
