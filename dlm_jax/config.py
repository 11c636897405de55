"""The config schema, its defaults and validation.

Every config file in configs/ starts from `base()` (a locked ConfigDict: ml_collections refuses a
misspelled key or a wrong type as the file sets it) and changes values; `validate` then checks that
a config's keys and types are the schema's (also for a config not built from base()) and that every
value is possible, calling each core component's own check. Errors are `ConfigError`s whose
one-line message names the key (main.py prints it and exits 2). Imports only core/ and below.
"""
import difflib
import importlib.util
import math
import os

import ml_collections

from dlm_jax import configs as shipped
from dlm_jax.core import flops
from dlm_jax.core import noise as noise_lib
from dlm_jax.core import objectives
from dlm_jax.core import sampling
from dlm_jax.core import schedules
from dlm_jax.errors import ConfigError, SampleError

def base() -> ml_collections.ConfigDict:
  """Every key a config may set, with defaults suited to a small CPU run."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.init_from = ''             # AR2Diff: start from this run directory's latest params
  c.objective = 'mdm'          # ar | mdm | dual | prefix (prefix-LM)
  c.dual = ml_collections.ConfigDict(dict(
      ar_weight='1/2',         # AR share of each batch's sequences, as in the paper: '63/64', '0.75'
      ar_attention='causal',   # causal | prefix: attention (and loss) of the AR share
  ))
  c.model = ml_collections.ConfigDict(dict(
      size='',                 # a name from flops.SIZES overrides d_model/num_layers/num_heads/mlp_dim
      vocab_size=0,            # 0: the tokenizer's vocabulary size
      vocab_real=0,            # ids in use (0: all); the rest pad the vocabulary, never predicted
      unpredicted='',          # more ids never predicted: '0,1' = PAD, BOS (the specials an
                               # imported checkpoint lacks: its likelihoods stay exactly its own)
      embed_alias='',          # 'ID:ROW,...': special id ID reads embedding row ROW ('1:2': BOS is
                               # the EOS row of a checkpoint whose bos is its eos, or has no bos)
      d_model=256,
      num_layers=4,
      num_heads=4,
      num_kv_heads=0,          # grouped-query attention: key/value heads (0: num_heads)
      head_dim=0,              # H per head (0: d_model / num_heads); Qwen3 sets it apart
      qk_norm=False,           # RMSNorm on each head's q and k before RoPE (Qwen3)
      sliding_window=0,        # an imported checkpoint's attention window (0: none): data.seq_len
                               # may not exceed it (full attention is exact only within it)
      mlp_dim=0,               # 0: SwiGLU hidden = 8/3 d_model rounded up to a multiple of 64
      rope_base=10000.0,       # RoPE theta
      rope_scaling='',         # '' | 'llama3:FACTOR,LOW,HIGH,CONTEXT': Llama 3.1's long-context
                               # frequencies (set by hf import from the checkpoint)
      norm_eps=1e-6,           # RMSNorm epsilon
      qkv_bias=False,          # biases on the q, k, v projections (Qwen2)
      tie_embeddings=True,
      dtype='float32',         # compute dtype: float32 | bfloat16
      param_dtype='float32',
      scan_layers=True,        # one compiled layer, stacked parameters (compile time flat in depth)
      scan_unroll=1,           # layers per scanned step: >1 trades compile time for step time
                               # (same parameters and checkpoints; num_layers: fully unrolled)
      remat='auto',            # auto (full for scanned layers on CPU, else none) | none | full |
                               # dots: recompute activations in the backward (same results)
      attention='auto',        # auto (cuDNN on GPU in bf16, explicit on CPU, else XLA) | xla |
                               # cudnn (GPU only: an error elsewhere) | explicit (softmax written
                               # out, hand-written backward) | reference (the same, autodiff)
      attn_dropout=0.0,
      mlp_dropout=0.0,
      resid_dropout=0.0,
      embed_dropout=0.0,
  ))
  c.data = ml_collections.ConfigDict(dict(
      corpus='embedded',       # embedded | .txt/.jsonl(.xz) file or directory | a directory
                               # written by `python -m dlm_jax.prepare` (array_record shards)
      task='',                 # prompt->target fine-tuning: cloze | dir with train/validation.jsonl
      tokenizer='bpe',         # bpe | gpt2 | byte | path to a HF tokenizers .json
      packing='wrap',          # wrap: documents + EOS concatenated and cut (MDLM/OWT) |
                               # pad: one document per example, padded/truncated (LM1B)
      seq_len=128,
      val_fraction=0.04,
      segment_ids=False,       # True: packed documents never attend across EOS boundaries
      unique_tokens=0,         # U: train on the first U tokens of the split only (0: all of it)
      cache_dir='',            # '' : ~/.cache/dlm_jax
      prefetch=2,
  ))
  c.diffusion = ml_collections.ConfigDict(dict(
      schedule='linear',       # linear | cosine | polynomial | loglinear
      poly_k=2.0,              # polynomial: alpha = 1 - t^k
      eps=1e-3,                # t in [eps, 1]
      time_sampler='uniform',  # uniform | beta | logit_normal | truncated_normal
      low_discrepancy=True,    # u_i = (u + i/B) mod 1 across the batch, through the inverse CDF
      sampler_params=ml_collections.ConfigDict(dict(
          beta_a=2.0, beta_b=2.0,  # beta
          mu=0.0, sigma=1.0,       # logit_normal: logit-space; truncated_normal: centre/width in t
          uniform_mix=0.0,         # mix in U(eps,1) with this weight: bounded `elbo` weights
      )),
      weighting='elbo',        # elbo: w(t)/q(t), unbiased NELBO | plain: w(t), sampler reshapes
      mask_pattern='bernoulli',  # bernoulli | exact_count
      mask_eos=True,           # EOS is a real token to predict (AR pays for it too)
      pad='predict',           # predict: PAD is noised and predicted like any token, so the NELBO
                               # bounds -log p(x) with its length, as AR's NLL does (EOS) |
                               # visible: PAD never masked nor scored: -log p(x | its length)
  ))
  c.train = ml_collections.ConfigDict(dict(
      batch_size=32,
      num_steps=1000,
      epochs=0.0,              # R > 0: num_steps = R * (U / seq_len windows) / batch_size
      lr=3e-3,
      lr_schedule='cosine',    # cosine | wsd | constant
      warmup_steps=100,
      min_lr_ratio=0.1,
      decay_fraction=0.2,      # wsd: share of steps in the final decay
      b1=0.9,
      b2=0.95,
      adam_eps=1e-8,
      weight_decay=0.1,
      decay_embeddings=False,  # weight-decay mask: never norms/biases; embeddings only if True
      grad_clip=1.0,
      grad_accum=1,            # microbatches per step (same update, 1/k of the activations)
      token_dropout=0.0,       # AR/prefix inputs replaced by [MASK] at this rate (targets kept)
      ema_decay=0.0,           # 0: no EMA
      log_every=10,
      eval_every=200,
      checkpoint_every=200,
      max_to_keep=3,           # newest checkpoints kept ...
      keep_period=0,           # ... plus every step divisible by this (0: none), never deleted
      compile_cache='auto',    # persistent XLA compilation cache dir; auto: $JAX_COMPILATION_CACHE_DIR
                               # (sweeps set <root>/.xla_cache) or ~/.cache/dlm_jax/xla; '': off
      nan_policy='stop',       # non-finite loss/gradient: stop (error) | skip (the update)
      nan_max_skips=10,        # skip: stop once more than this many updates were skipped
      preempt_timeout=60.0,    # SIGTERM/SIGINT: checkpoint the current step and exit within this
      trackers='tensorboard',  # comma list of TRACKERS (run/trackers.py); '' : metrics.jsonl only
      wandb_project='dlm_jax',
      wandb_entity='',         # '' : the W&B default entity
  ))
  c.eval = ml_collections.ConfigDict(dict(
      num_batches=8,           # validation during training: batches x batch_size windows
      batch_size=32,
      seed=1234,
      # --mode eval (evaluate.py): likelihood estimators on validation windows + zero-shot tasks
      name='scores',           # writes <workdir>/eval/<name>.json
      estimators='auto',       # comma list of likelihood.ESTIMATORS; auto: by objective
      likelihood_rows=32,      # validation windows scored by each estimator (0: none)
      corpus='',               # score another source's validation windows ('' : the run's own)
      nelbo_samples=16,        # K Monte Carlo samples per row for `nelbo`
      pll_span=2,              # masked span of `pll_span`
      chunk=64,                # rows per compiled forward pass of the estimators
      tasks='',                # comma list: benchmark names (files in tasks_dir) or .jsonl paths
      tasks_dir='data/zeroshot',  # python -m dlm_jax.prepare --tasks all --out data/zeroshot
      task_estimator='auto',   # log-likelihood of an option; auto: ar for AR runs, else nelbo
      task_limit=0,            # the first N items of each task (0: all)
  ))
  c.sample = ml_collections.ConfigDict(dict(  # sample.py; at the end of training and --mode sample
      num_samples=4,           # samples per mode (with prompts: the first N prompts; 0: all)
      mode='auto',             # auto: every mode the objective trains | ar | mdm | both
      length=0,                # new tokens per sample; 0: data.seq_len
      prompts='',              # '' unconditional | data:N (first N tokens of validation windows)
                               # | a .txt (a prompt per line) | a .jsonl ({"prompt", "suffix"})
      steps=64,                # MDM: T denoising steps
      grid='uniform',          # MDM time grid: uniform | cosine
      strategy='ancestral',    # MDM: ancestral | confidence (most confident first)
      block_size=0,            # MDM: semi-autoregressive block length (0: one block)
      temperature=1.0,         # 0: greedy
      top_k=0,                 # 0: off
      top_p=1.0,               # nucleus mass in (0, 1]; 1: off
      guidance=0.0,            # MDM: unsupervised classifier-free guidance weight w
      reuse_logits=True,       # MDM: reuse a step's logits when the previous step revealed nothing
      kv_cache=True,           # AR: KV cache (False: recompute the prefix per token)
      stop_at_eos=True,        # AR stops at EOS; MDM text is cut there
      batch_size=16,           # prompts per compiled sampling call
      scorer='',               # generative perplexity: an AR-capable run dir; '': this run unless
                               # it is MDM-only; 'none': off (--mode sample only)
      seed=0,                  # --mode sample
  ))
  c.mesh = ml_collections.ConfigDict(dict(  # device mesh; -1: the remaining devices
      data=-1,                 # pure data parallelism (replicated parameters)
      fsdp=1,                  # data parallelism with parameters/optimizer split (ZeRO-3)
      tensor=1,                # heads / MLP width / vocabulary split (Megatron-style)
  ))
  c.lock()
  return c


def _walk(d, prefix=''):
  for k, v in d.items():
    key = f'{prefix}{k}'
    if isinstance(v, ml_collections.ConfigDict):
      yield from _walk(v, key + '.')
    else:
      yield key, v


def _check_keys(cfg):
  """Every key of cfg is the schema's, with the schema's type: ml_collections' own checks, run by
  setting each value on a fresh locked base()."""
  schema = base()
  for key, value in _walk(cfg):
    try:
      schema.update_from_flattened_dict({key: value})
    except (KeyError, AttributeError):
      raise ConfigError(f'config.{key}: unknown key') from None
    except TypeError:
      want = type(dict(_walk(base())).get(key, None)).__name__
      raise ConfigError(f'config.{key}: expected {want}, got {type(value).__name__} '
                        f'{value!r}') from None


def load_file(path):
  """Runs a config file's get_config() (config files are Python executed as code: run only
  those you trust) and returns its ConfigDict; anything wrong is one ConfigError naming the
  file."""
  found = shipped.find(path)
  if found is None:
    raise ConfigError(f'--config {path}: no such file (nor a shipped config name: '
                      f'{", ".join(shipped.names())})')
  path = found
  try:
    spec = importlib.util.spec_from_file_location('dlm_jax_user_config', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
  except Exception as e:  # pylint: disable=broad-except  # any error of user code, named
    raise ConfigError(f'--config {path}: {type(e).__name__}: {_first_line(e)}') from None
  if not callable(getattr(module, 'get_config', None)):
    raise ConfigError(f'--config {path}: defines no get_config()')
  try:
    cfg = module.get_config()
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(f'--config {path}: get_config() raised {type(e).__name__}: '
                      f'{_first_line(e)}') from None
  if not isinstance(cfg, ml_collections.ConfigDict):
    raise ConfigError(f'--config {path}: get_config() returned a {type(cfg).__name__}, not an '
                      'ml_collections.ConfigDict (start from dlm_jax.config.base())')
  return cfg


def _first_line(e):
  text = str(e).strip()
  return text.splitlines()[0].strip("'\"") if text else type(e).__name__


def check_override(cfg, key):
  """A --config.KEY=VALUE override names a key of cfg; else one line with the closest keys."""
  node = cfg
  for i, part in enumerate(key.split('.')):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      here = '.'.join(key.split('.')[:i])
      options = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
      close = difflib.get_close_matches(part, options, n=1)
      hint = f' (did you mean config.{here + "." if here else ""}{close[0]}?)' if close else ''
      raise ConfigError(f'--config.{key}: unknown key{hint}')
    node = node[part]


def check_cli(argv):
  """The --config file and each --config.KEY override, checked before absl loads them, so a
  missing file, a broken get_config() or a misspelled key is one line naming it. Returns argv
  with the config argument as the file it names (a shipped config's name -> its path)."""
  args = list(argv[1:])
  for i, a in enumerate(args):
    if a in ('--config', '-config') and i + 1 < len(args):
      path, where = args[i + 1], i + 1
    elif a.startswith(('--config=', '-config=')):
      path, where = a.split('=', 1)[1], i
    else:
      continue
    cfg = load_file(path)
    for b in args:
      if b.startswith('--config.'):
        check_override(cfg, b[len('--config.'):].split('=', 1)[0])
    args[where] = (shipped.find(path) if where == i + 1 else
                   f'{a.split("=", 1)[0]}={shipped.find(path)}')
    break
  return [argv[0]] + args


def _need(cond, key, msg):
  if not cond:
    raise ConfigError(f'config.{key}: {msg}')


def _choice(cfg, key, options):
  v = cfg
  for part in key.split('.'):
    v = v[part]
  _need(v in options, key, f'{v!r} is not one of {", ".join(options)}')


TOKENIZERS = ('bpe', 'gpt2', 'byte')  # named tokenizers (data/tokenizers.get_tokenizer)

# train.trackers (run/trackers.py): name -> the modules it needs (the [trackers] extra)
TRACKERS = {'tensorboard': ('tensorboardX',), 'wandb': ('wandb',),
            'clu': ('clu', 'tensorflow', 'tensorboard')}


def tracker_names(spec: str) -> list[str]:
  return [t.strip() for t in spec.split(',') if t.strip()]


def _check_trackers(spec):
  names = tracker_names(spec)
  for t in names:
    _need(t in TRACKERS, 'train.trackers', f'{t!r} is not one of {", ".join(TRACKERS)}')
    missing = [m for m in TRACKERS[t] if importlib.util.find_spec(m) is None]
    _need(not missing, 'train.trackers', f'{t} needs the {", ".join(missing)} package(s) '
          '(pip install -e ".[trackers]")')
  _need(len(set(names)) == len(names), 'train.trackers', f'{spec!r} names a tracker twice')


def _check_prompts(spec):
  """sample.prompts: '', data:N with N >= 1, or an existing file (checked before training, not
  at its end)."""
  if not spec:
    return
  if spec.startswith('data:'):
    _need(spec[5:].isdigit() and int(spec[5:]) >= 1, 'sample.prompts',
          f'{spec!r}: data:N needs a whole number of tokens N >= 1')
    return
  _need(os.path.isfile(spec), 'sample.prompts', f'file not found: {spec}')


def _rope_scaling_ok(spec):
  if not spec:
    return True
  kind, _, values = spec.partition(':')
  try:
    factor, low, high, context = (float(v) for v in values.split(','))
  except ValueError:
    return False
  return kind == 'llama3' and factor > 0 and 0 < low < high and context > 0


def validate(cfg: ml_collections.ConfigDict, training=True) -> ml_collections.ConfigDict:
  """Checks keys, types and values against the schema; returns cfg, raises ConfigError.
  training=False (evaluating or sampling a run) skips what only training uses: whether the time
  sampler's NELBO weights can be unbiased."""
  _check_keys(cfg)
  present = dict(_walk(cfg))
  for key, _ in _walk(base()):
    _need(key in present, key, 'missing (build the config from dlm_jax.config.base())')
  for key, v in _walk(cfg):  # inf / nan pass every comparison below that is written as a refusal
    _need(not isinstance(v, float) or math.isfinite(v), key, f'{v} is not a finite number')
  m, d, t, e = cfg.model, cfg.data, cfg.train, cfg.eval
  _need(d.tokenizer in TOKENIZERS or (d.tokenizer.endswith('.json') and os.path.isfile(
      os.path.expanduser(d.tokenizer))) or (d.tokenizer.startswith('hf:') and os.path.isfile(
          os.path.join(os.path.expanduser(d.tokenizer[3:]), 'tokenizer.json'))), 'data.tokenizer',
        f'{d.tokenizer!r} is not {", ".join(TOKENIZERS)}, an existing tokenizers .json file or '
        'hf:<the tokenizer directory of an imported checkpoint>')
  _check_prompts(cfg.sample.prompts.strip())
  _choice(cfg, 'objective', tuple(objectives.OBJECTIVES))
  try:
    w = objectives.parse_fraction(cfg.dual.ar_weight)
  except (ValueError, ZeroDivisionError):
    raise ConfigError(f'config.dual.ar_weight: {cfg.dual.ar_weight!r} is not a fraction like '
                      "'63/64' or a number") from None
  _need(0 <= w <= 1, 'dual.ar_weight', f'{cfg.dual.ar_weight} is outside [0, 1]')
  _choice(cfg, 'dual.ar_attention', ('causal', 'prefix'))
  _need(d.unique_tokens >= 0, 'data.unique_tokens', f'must be >= 0, got {d.unique_tokens}')
  _need(t.epochs >= 0, 'train.epochs', f'must be >= 0, got {t.epochs}')
  _need(0.0 <= t.token_dropout < 1.0, 'train.token_dropout', f'{t.token_dropout} is outside [0, 1)')
  _need(m.size == '' or m.size in flops.SIZES, 'model.size',
        f'{m.size!r} is not a size name ({", ".join(flops.SIZES)})')
  for k in ('d_model', 'num_layers', 'num_heads'):
    _need(m[k] > 0, f'model.{k}', f'must be positive, got {m[k]}')
  _need(m.head_dim >= 0, 'model.head_dim', f'must be >= 0 (0: d_model / num_heads), got '
        f'{m.head_dim}')
  _need(m.head_dim > 0 or m.d_model % m.num_heads == 0, 'model.num_heads',
        f'{m.num_heads} heads do not divide d_model={m.d_model} (or set model.head_dim)')
  H = flops.head_size(m.d_model, m.num_heads, m.head_dim)
  _need(H % 2 == 0, 'model.head_dim' if m.head_dim else 'model.num_heads',
        f'head dim {H} must be even for RoPE')
  check_window(m.sliding_window, d.seq_len)
  _need(m.mlp_dim >= 0 and m.vocab_size >= 0, 'model.mlp_dim', 'must be >= 0')
  _need(m.num_kv_heads >= 0 and (m.num_kv_heads == 0 or m.num_heads % m.num_kv_heads == 0),
        'model.num_kv_heads', f'{m.num_kv_heads} must be 0 or divide num_heads={m.num_heads}')
  _need(m.norm_eps > 0, 'model.norm_eps', f'must be positive, got {m.norm_eps}')
  _need(_rope_scaling_ok(m.rope_scaling), 'model.rope_scaling',
        f"{m.rope_scaling!r} is not '' or 'llama3:FACTOR,LOW,HIGH,CONTEXT' (LOW < HIGH)")
  _need(all(x.strip().isdigit() for x in m.unpredicted.split(',') if x.strip()),
        'model.unpredicted', f'{m.unpredicted!r} is not a comma list of token ids')
  _need(not (objectives.rows_padded(cfg) and cfg.diffusion.pad == 'predict' and
             str(objectives.PAD) in [x.strip() for x in m.unpredicted.split(',')]),
        'model.unpredicted', f'lists PAD ({objectives.PAD}), which padded rows (data.packing=pad '
        'or a data.task) with diffusion.pad=predict train the model to predict: remove it there, '
        'or use diffusion.pad=visible')
  _check_embed_alias(m)
  _need(0 <= m.vocab_real and (m.vocab_size == 0 or m.vocab_real <= m.vocab_size),
        'model.vocab_real', f'{m.vocab_real} must be in [0, model.vocab_size={m.vocab_size}]')
  _choice(cfg, 'model.dtype', ('float32', 'bfloat16'))
  _choice(cfg, 'model.param_dtype', ('float32', 'bfloat16'))
  _choice(cfg, 'model.remat', ('auto', 'none', 'full', 'dots'))
  _need(m.scan_unroll >= 1, 'model.scan_unroll', f'must be >= 1, got {m.scan_unroll}')
  _choice(cfg, 'model.attention', ('auto', 'xla', 'cudnn', 'explicit', 'reference'))
  for k in ('attn_dropout', 'mlp_dropout', 'resid_dropout', 'embed_dropout'):
    _need(0.0 <= m[k] < 1.0, f'model.{k}', f'{m[k]} is outside [0, 1)')
  _need(d.seq_len >= 2, 'data.seq_len', f'must be >= 2, got {d.seq_len}')
  _need(0.0 < d.val_fraction < 1.0, 'data.val_fraction', f'{d.val_fraction} is outside (0, 1)')
  _need(d.prefetch >= 0, 'data.prefetch', 'must be >= 0')
  _choice(cfg, 'data.packing', ('wrap', 'pad'))
  dc, sp = cfg.diffusion, cfg.diffusion.sampler_params
  _choice(cfg, 'diffusion.schedule', schedules.SCHEDULES)
  _choice(cfg, 'diffusion.time_sampler', schedules.TIME_SAMPLERS)
  _choice(cfg, 'diffusion.weighting', ('elbo', 'plain'))
  _choice(cfg, 'diffusion.mask_pattern', tuple(noise_lib.MASK_PATTERNS))
  _choice(cfg, 'diffusion.pad', noise_lib.PAD_MODES)
  _need(0.0 < dc.eps < 1.0, 'diffusion.eps', f'{dc.eps} is outside (0, 1)')
  _need(dc.poly_k > 0, 'diffusion.poly_k', f'must be positive, got {dc.poly_k}')
  if dc.time_sampler == 'beta':
    for k in ('beta_a', 'beta_b'):
      _need(sp[k] > 0, f'diffusion.sampler_params.{k}', f'must be > 0, got {sp[k]}')
  _need(0.0 <= sp.uniform_mix < 1.0, 'diffusion.sampler_params.uniform_mix',
        f'{sp.uniform_mix} is outside [0, 1)')
  if dc.time_sampler in ('logit_normal', 'truncated_normal'):
    _need(sp.sigma > 0, 'diffusion.sampler_params.sigma',
          f'must be > 0 (a width of {sp.sigma} makes the density improper)')
  if training and dc.weighting == 'elbo' and dc.time_sampler != 'uniform':
    bias = noise_lib.nelbo_bias_bound(dc)
    _need(bias <= noise_lib.BIAS_TOLERANCE, 'diffusion.time_sampler',
          f'{dc.time_sampler} with these sampler_params cannot give an unbiased NELBO under '
          f'weighting=elbo with schedule={dc.schedule}: its density near eps or 1 falls faster '
          f'than float32 sampling can follow (bias up to {min(bias, 1e9):.3g} relative); add '
          'diffusion.sampler_params.uniform_mix (e.g. 0.05), or use weighting=plain')
  _need(t.batch_size > 0, 'train.batch_size', f'must be positive, got {t.batch_size}')
  _need(t.num_steps >= 0, 'train.num_steps', f'must be >= 0, got {t.num_steps}')
  _need(t.lr > 0, 'train.lr', f'must be positive, got {t.lr}')
  _choice(cfg, 'train.lr_schedule', ('cosine', 'wsd', 'constant'))
  _need(t.warmup_steps >= 0, 'train.warmup_steps', 'must be >= 0')
  _need(0.0 <= t.min_lr_ratio <= 1.0, 'train.min_lr_ratio', 'must be in [0, 1]')
  _need(0.0 < t.decay_fraction <= 1.0, 'train.decay_fraction', 'must be in (0, 1]')
  _need(0.0 <= t.b1 < 1.0 and 0.0 <= t.b2 < 1.0, 'train.b1', 'Adam betas must be in [0, 1)')
  _need(t.weight_decay >= 0, 'train.weight_decay', 'must be >= 0')
  _need(t.grad_clip >= 0, 'train.grad_clip', 'must be >= 0 (0 disables clipping)')
  _need(0.0 <= t.ema_decay < 1.0, 'train.ema_decay', 'must be in [0, 1)')
  for k in ('log_every', 'eval_every', 'checkpoint_every', 'max_to_keep'):
    _need(t[k] > 0, f'train.{k}', f'must be positive, got {t[k]}')
  _choice(cfg, 'train.nan_policy', ('stop', 'skip'))
  _need(t.nan_max_skips >= 0, 'train.nan_max_skips', f'must be >= 0, got {t.nan_max_skips}')
  _need(t.keep_period >= 0, 'train.keep_period', f'must be >= 0 (0: none), got {t.keep_period}')
  _need(t.preempt_timeout > 0, 'train.preempt_timeout', f'must be > 0, got {t.preempt_timeout}')
  if training:
    _check_trackers(t.trackers)
  _need(e.num_batches > 0 and e.batch_size > 0, 'eval.num_batches', 'must be positive')
  names = ', '.join(objectives.ESTIMATORS)
  for est in [x.strip() for x in e.estimators.split(',') if x.strip()]:
    _need(est == 'auto' or est in objectives.ESTIMATORS, 'eval.estimators',
          f'{est!r} is not one of auto, {names}')
  _need(e.task_estimator == 'auto' or e.task_estimator in objectives.ESTIMATORS,
        'eval.task_estimator', f'{e.task_estimator!r} is not one of auto, {names}')
  for k in ('likelihood_rows', 'task_limit'):
    _need(e[k] >= 0, f'eval.{k}', f'must be >= 0, got {e[k]}')
  for k in ('nelbo_samples', 'pll_span', 'chunk'):
    _need(e[k] >= 1, f'eval.{k}', f'must be >= 1, got {e[k]}')
  _need(bool(e.name) and '/' not in e.name, 'eval.name', f'{e.name!r} is not a file name')
  _need(cfg.sample.num_samples >= 0, 'sample.num_samples', 'must be >= 0')
  _need(cfg.sample.batch_size >= 1, 'sample.batch_size', 'must be >= 1')
  _need(0 <= cfg.sample.length <= d.seq_len, 'sample.length', 'must be in [0, data.seq_len]')
  try:
    sampling.check_config(cfg)
  except SampleError as err:
    raise ConfigError(f'config.{err}') from None
  for k in ('data', 'fsdp', 'tensor'):
    _need(cfg.mesh[k] == -1 or cfg.mesh[k] >= 1, f'mesh.{k}', 'must be -1 (the rest) or >= 1')
  _need(t.grad_accum >= 1, 'train.grad_accum', f'must be >= 1, got {t.grad_accum}')
  return cfg


def _check_embed_alias(m):
  """model.embed_alias: PAD / BOS / EOS may read another id's row (that id neither aliased nor
  [MASK]), and are then never predicted (model.unpredicted): their own row is never read."""
  pairs = [p.strip() for p in m.embed_alias.split(',') if p.strip()]
  ok = all(len(p.split(':')) == 2 and all(v.strip().isdigit() for v in p.split(':'))
           for p in pairs)
  _need(ok, 'model.embed_alias', f"{m.embed_alias!r} is not a comma list of ID:ROW ('1:2')")
  pairs = [tuple(int(v) for v in p.split(':')) for p in pairs]
  ids = [i for i, _ in pairs]
  for i, row in pairs:
    _need(i in (objectives.PAD, objectives.BOS, objectives.EOS) and ids.count(i) == 1,
          'model.embed_alias', f'{i}:{row}: only the special ids PAD={objectives.PAD}, '
          f'BOS={objectives.BOS}, EOS={objectives.EOS} may read another row, once each')
    _need(row not in ids and row != objectives.MASK and row != i and (
        m.vocab_size == 0 or row < m.vocab_size), 'model.embed_alias',
          f'{i}:{row}: row {row} must be another id below model.vocab_size, not [MASK] '
          f'({objectives.MASK}) and not itself aliased')
    _need(str(i) in [x.strip() for x in m.unpredicted.split(',')], 'model.embed_alias',
          f'{i}:{row}: id {i} must be in model.unpredicted={m.unpredicted!r} (it reads row '
          f'{row}: predicting it too would split that token\'s probability)')


def check_window(sliding_window, seq_len):
  """model.sliding_window W > 0: the checkpoint attends to the last W positions only, and full
  attention (all dlm_jax has) is the same function only while data.seq_len <= W."""
  _need(sliding_window >= 0, 'model.sliding_window', f'must be >= 0 (0: none), got '
        f'{sliding_window}')
  _need(not sliding_window or seq_len <= sliding_window, 'data.seq_len',
        f'{seq_len} is larger than model.sliding_window={sliding_window}: the checkpoint attends '
        f'over its last {sliding_window} positions only and dlm_jax attends over all of them, '
        f'which is the same model only up to the window (use data.seq_len <= {sliding_window})')


def resolve(cfg: ml_collections.ConfigDict, vocab_size: int, training=True,
            vocab_real=0) -> ml_collections.ConfigDict:
  """Fills derived values (named size, vocab, mlp width) so config.json records what ran;
  vocab_real: the tokenizer's ids in use when it pads its vocabulary."""
  cfg = ml_collections.ConfigDict(cfg.to_dict())
  m = cfg.model
  if m.size:
    s = flops.SIZES[m.size]
    m.d_model, m.num_layers, m.num_heads, m.mlp_dim = s.d_model, s.num_layers, s.num_heads, s.mlp_dim
  if m.vocab_size == 0:
    m.vocab_size = vocab_size
  if m.vocab_real == 0 and vocab_real not in (0, m.vocab_size):
    m.vocab_real = vocab_real
  elif m.vocab_size < vocab_size:
    raise ConfigError(f'config.model.vocab_size: {m.vocab_size} is smaller than the tokenizer '
                      f'vocabulary ({vocab_size})')
  if m.mlp_dim == 0:
    m.mlp_dim = flops.default_mlp_dim(m.d_model)
  validate(cfg, training)
  return cfg


# Keys the schema gained after runs were written, with the value that reproduces what those runs
# did when it differs from today's default: (key, value, condition on the old config).
LEGACY = (('diffusion.pad', 'visible', lambda d: d.get('data', {}).get('packing') == 'pad'),)


def complete(d: dict) -> ml_collections.ConfigDict:
  """A run's config.json over the schema: keys the schema gained since the run was written take
  their legacy value (LEGACY) or their default; unknown keys are errors."""
  def merge(schema, values, prefix):
    for k, v in values.items():
      if k not in schema:
        raise ConfigError(f'config.{prefix}{k}: unknown key in the run\'s config.json')
      if isinstance(schema[k], ml_collections.ConfigDict) and isinstance(v, dict):
        merge(schema[k], v, f'{prefix}{k}.')
      else:
        schema[k] = v
  cfg = base()
  for key, value, applies in LEGACY:
    group, leaf = key.split('.')
    if leaf not in d.get(group, {leaf: None}) and applies(d):
      cfg[group][leaf] = value
  merge(cfg, d, '')
  return cfg


def from_run(d: dict) -> ml_collections.ConfigDict:
  """A run's config.json as a validated config (for evaluating or sampling it)."""
  return validate(complete(d), training=False)


# Keys that may differ between a run's config.json and the command resuming it.
# train.num_steps too, but only under a constant learning rate (diff_for_resume)
RESUMABLE_CHANGES = ('model.attention', 'model.remat', 'model.scan_unroll', 'train.compile_cache',
                     'train.preempt_timeout', 'train.num_steps', 'train.log_every', 'train.eval_every',
                     'train.checkpoint_every', 'train.max_to_keep', 'train.keep_period',
                     'train.nan_policy', 'train.nan_max_skips', 'train.trackers',
                     'train.wandb_', 'sample.', 'eval.num_batches',
                     'data.cache_dir', 'data.prefetch', 'mesh.', 'train.grad_accum',
                     'eval.name', 'eval.estimators', 'eval.likelihood_rows', 'eval.corpus',
                     'eval.nelbo_samples', 'eval.pll_span', 'eval.chunk', 'eval.task')


def diff_for_resume(old: dict, new: dict) -> list[str]:
  """Keys whose values differ in a way that makes resuming a different run."""
  a, b = dict(_walk(complete(old))), dict(_walk(ml_collections.ConfigDict(new)))
  out = []
  for k in sorted(set(a) | set(b)):
    if a.get(k) != b.get(k) and not any(k.startswith(p) for p in RESUMABLE_CHANGES):
      out.append(f'{k}: {a.get(k)!r} -> {b.get(k)!r}')
  k = 'train.num_steps'
  if a.get(k) != b.get(k) and b.get('train.lr_schedule') != 'constant':
    out.append(f'{k}: {a.get(k)!r} -> {b.get(k)!r} (the {b.get("train.lr_schedule")} learning '
               "rate depends on it, so resuming would reshape it mid-run; continue in a new "
               "--workdir with init_from, or train with lr_schedule='constant')")
  return out
