"""The model-size table and the only place parameters and FLOPs are counted.

Conventions (Kaplan/Chinchilla, PaLM appendix B):
  N_total      every parameter of the initialised pytree;
  N_nonembed   N_total minus the token embedding and (if untied) the output head;
  FLOPs/token  training = 3 x forward; forward = 2 x (matmul parameters, head included) +
               attention 4 * L * d per layer (QK^T and AV), counted in full for every attention kind
               because the dense kernels compute the full L x L score matrix.
"""
import dataclasses
import math


def default_mlp_dim(d_model: int) -> int:
  """SwiGLU hidden width: 8/3 d rounded up to a multiple of 64 (keeps 3 d f ~ 8 d^2)."""
  return int(math.ceil(8 * d_model / 3 / 64) * 64)


@dataclasses.dataclass(frozen=True)
class Size:
  d_model: int
  num_layers: int
  num_heads: int

  @property
  def mlp_dim(self):
    return default_mlp_dim(self.d_model)


# Named sizes; N_nonembed is roughly 12 d^2 layers (see `python -m dlm_jax.flops` for the table).
SIZES = {
    'nano': Size(64, 2, 2),
    'micro': Size(128, 4, 4),
    'tiny': Size(256, 4, 4),
    'mini': Size(384, 6, 6),
    'small': Size(512, 8, 8),
    'base': Size(768, 12, 12),
    'medium': Size(1024, 24, 16),
    'large': Size(1536, 24, 16),
    'xl': Size(2048, 24, 16),
}


def head_size(d_model, num_heads, head_dim=0):
  """H of each attention head: model.head_dim, or d_model / num_heads where that is 0 (Llama's
  rule; Qwen3 sets H apart, so N H may differ from d). The one place it is computed."""
  return head_dim or d_model // num_heads


def param_counts(d_model, num_layers, mlp_dim, vocab_size, tie_embeddings=True, num_heads=1,
                 num_kv_heads=0, qkv_bias=False, head_dim=0, qk_norm=False):
  """Exact counts for model.Transformer: dict(N_total, N_nonembed, N_embed, N_head). The q and o
  projections are d x (N H), k and v d x (K H) each (grouped-query attention: K < N); qk_norm
  adds an H-wide RMSNorm scale for q and one for k per layer."""
  d, f = d_model, mlp_dim
  H = head_size(d, num_heads, head_dim)
  q, kv = num_heads * H, (num_kv_heads or num_heads) * H  # N x H, K x H
  per_layer = 2 * d * q + 2 * d * kv + 3 * d * f + 2 * d  # q,o + k,v + gate,up,down + 2 norms
  per_layer += (q + 2 * kv) if qkv_bias else 0
  per_layer += 2 * H if qk_norm else 0
  embed = vocab_size * d
  head = 0 if tie_embeddings else d * vocab_size
  nonembed = num_layers * per_layer + d       # + final norm
  return dict(N_total=embed + head + nonembed, N_nonembed=nonembed, N_embed=embed, N_head=head)


def flops_per_token(d_model, num_layers, mlp_dim, vocab_size, seq_len, training=True,
                    num_heads=1, num_kv_heads=0, head_dim=0):
  """Matmul FLOPs per token of one forward (x3 when training), attention included."""
  d, f = d_model, mlp_dim
  H = head_size(d, num_heads, head_dim)
  q, kv = num_heads * H, (num_kv_heads or num_heads) * H
  matmul_params = num_layers * (2 * d * q + 2 * d * kv + 3 * d * f) + d * vocab_size
  forward = 2 * matmul_params + num_layers * 4 * seq_len * q
  return 3 * forward if training else forward


def from_config(model_cfg, seq_len, factor: int = 1):
  """Counts and per-token training FLOPs for a resolved config.model. factor: input tokens the
  model reads per target (block diffusion: 2, a noised and a clean copy, so 2L of attention)."""
  m = model_cfg
  kv = m.get('num_kv_heads', 0)
  hd = m.get('head_dim', 0)
  out = param_counts(m.d_model, m.num_layers, m.mlp_dim, m.vocab_size, m.tie_embeddings,
                     m.num_heads, kv, m.get('qkv_bias', False), hd, m.get('qk_norm', False))
  out['flops_per_token'] = factor * flops_per_token(
      m.d_model, m.num_layers, m.mlp_dim, m.vocab_size, factor * seq_len, num_heads=m.num_heads,
      num_kv_heads=kv, head_dim=hd)
  return out


def table(vocab_size=8192, seq_len=1024):
  rows = []
  for name, s in SIZES.items():
    c = param_counts(s.d_model, s.num_layers, s.mlp_dim, vocab_size)
    fl = flops_per_token(s.d_model, s.num_layers, s.mlp_dim, vocab_size, seq_len)
    rows.append((name, s.d_model, s.num_layers, s.num_heads, s.mlp_dim, c['N_total'],
                 c['N_nonembed'], fl))
  return rows

