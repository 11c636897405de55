"""Hugging Face checkpoints in and out: a transformers model directory (Llama, Mistral, Qwen2,
Qwen3) -> a dlm_jax run directory at step 0, and any run -> a directory
AutoModelForCausalLM.from_pretrained loads (interop/hf.py says how the weights map; safetensors.py
reads and writes them with numpy only, no torch)."""
import os
import shutil
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

from dlm_jax import config as config_lib
from dlm_jax.core import flops
from dlm_jax.core import model_config
from dlm_jax.core import objectives
from dlm_jax.data import tokenizers
from dlm_jax.errors import DataError, InteropError
from dlm_jax.interop import hf
from dlm_jax.interop import safetensors
from dlm_jax.run import checkpoint
from dlm_jax.run import resume
from dlm_jax.run import rundir

DTYPES = {'float32': np.float32, 'bfloat16': jax.numpy.bfloat16}
INIT_CONFIG = 'init_config.py'
INIT_TEMPLATE = '''"""Written by `python -m dlm_jax.hf import {src}`: runs that start from this
checkpoint. As written, AR2Diff (masked diffusion, bidirectional attention, from the AR weights):
  python -m dlm_jax.main --config {run}/init_config.py --workdir runs/<new> \\
      --config.data.corpus=<data> --config.train.num_steps=<N>
--config.objective=ar continues autoregressive pretraining instead. The same file evaluates or
samples the imported model itself: --workdir {run} --mode eval (or sample) --config.objective=ar.
"""
from dlm_jax import config


def get_config():
  c = config.base()
  c.objective = 'mdm'
  c.init_from = {run!r}
  c.model.update({model!r})
  c.data.tokenizer = {tokenizer!r}
  c.data.seq_len = {seq_len!r}
  return c
'''

MDM_NOTE = """This model was trained by dlm_jax ({objective}). Its weights load as a {arch}; note:
- inputs are shifted: the logits at position i predict token i+1, as in any causal LM;
- an MDM (or dual) model is a masked-diffusion model: it predicts with *bidirectional* attention
  (pass a full attention mask, not the causal one) and reads masked positions as the token id
  {mask}, whose own logit must be set to -inf before sampling;
- {ids}; sample with `python -m dlm_jax.main --mode sample` for the MDM samplers (ancestral,
  confidence, guidance).
"""


def _imported_ids(vocab, mask):
  """The README note's special ids of an imported checkpoint's export: its own."""
  first = vocab.bos if vocab.bos is not None else vocab.eos
  return dict(mask=f'{vocab.rows} ([MASK]: mask_token_id, a row past the tokenizer\'s tokens)'
              if mask else f'{vocab.mask} ([MASK])' if vocab.mask is not None else
              '[MASK] (this run is autoregressive: no [MASK] row is exported)',
              ids=f'the checkpoint\'s own ids: eos {vocab.eos}; dlm_jax started every sequence '
              f'from id {first} (its {"bos" if first != vocab.eos else "eos"})')


def _empty_target(path, what):
  if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
    raise InteropError(f'{what} {path} already exists and is not empty (use a new directory)')


def import_checkpoint(src, workdir, param_dtype='float32', seq_len=0):
  """Converts a HF model directory into a dlm_jax run directory; returns its summary."""
  t0 = time.time()
  if not os.path.isdir(src):
    raise InteropError(f'{src}: no such model directory')
  _empty_target(workdir, '--workdir')
  cfg_path = os.path.join(src, 'config.json')
  hf_cfg = hf.read_json(cfg_path)
  m = hf.model_keys(hf_cfg, cfg_path)
  reader = safetensors.Reader(src)
  if 'model.embed_tokens.weight' not in reader:
    raise InteropError(f'{src}: tensor model.embed_tokens.weight is missing from the checkpoint')
  try:
    vocab = tokenizers.VocabMap.of_hf_config(
        hf_cfg, reader.shape('model.embed_tokens.weight')[0], cfg_path,
        named=tokenizers.named_specials(src))
    tokenizers.MappedTokenizer.check(os.path.join(src, 'tokenizer.json'), vocab)
  except DataError as e:
    raise InteropError(str(e)) from None
  params = hf.params_from_hf(reader, m, vocab, DTYPES[param_dtype])  # every tensor checked

  cfg = config_lib.base()
  cfg.objective = 'ar'
  cfg.model.update(m)
  cfg.model.vocab_size, cfg.model.vocab_real = vocab.size, vocab.real
  # BOS (PAD) reads the checkpoint's row of the token it conditions on first (pads with): its
  # bos, else its eos; a PAD it lacks is a new row. Neither is predicted, so the imported
  # model's likelihoods are exactly the checkpoint's ([MASK] never is, whatever the config)
  aliases = vocab.aliases()
  cfg.model.embed_alias = ','.join(f'{i}:{row}' for i, row in sorted(aliases.items()))
  cfg.model.unpredicted = ','.join(str(i) for i in sorted(set(vocab.new_specials()) | set(
      aliases)) if i != tokenizers.MASK)
  cfg.model.param_dtype = param_dtype
  tok_dir = os.path.join(os.path.abspath(workdir), 'tokenizer')
  cfg.data.tokenizer = f'hf:{tok_dir}'
  cfg.data.seq_len = seq_len or min(2048, int(hf_cfg.get('max_position_embeddings', 2048)))
  model_config.check_window(cfg.model.sliding_window, cfg.data.seq_len)  # before anything is written
  os.makedirs(tok_dir)
  for f in hf.TOKENIZER_FILES:
    if os.path.exists(os.path.join(src, f)):
      shutil.copy(os.path.join(src, f), tok_dir)
  rundir.atomic_json(os.path.join(tok_dir, tokenizers.VOCAB_MAP), vocab.to_json())
  rundir.atomic_json(os.path.join(tok_dir, hf.HF_CONFIG), hf_cfg)
  cfg = config_lib.validate(cfg, training=False)
  rundir.atomic_json(rundir.path(workdir, rundir.CONFIG), cfg.to_dict())
  # written synchronously from arrays that alias the converted ones (no async host copy); the
  # conversion holds one copy, orbax's serialisation up to one more (BENCHMARKS.md)
  params = jax.tree_util.tree_map(jax.device_put, params)
  mngr = ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), 'checkpoints'),
                               options=ocp.CheckpointManagerOptions(
                                   enable_async_checkpointing=False))
  mngr.save(0, args=ocp.args.Composite(state=ocp.args.StandardSave({'params': params})))
  mngr.wait_until_finished()
  counts = flops.from_config(cfg.model, cfg.data.seq_len)
  summary = dict(status='imported', source=os.path.abspath(src),
                 architecture=hf_cfg['architectures'][0], steps=0, N_total=counts['N_total'],
                 vocab=dict(checkpoint_rows=vocab.rows, dlm_rows=vocab.size,
                            mapped_specials={str(k): v for k, v in vocab.specials().items()},
                            embed_alias=cfg.model.embed_alias),
                 seconds=round(time.time() - t0, 1))
  rundir.atomic_json(rundir.path(workdir, rundir.SUMMARY), summary)
  with open(os.path.join(workdir, INIT_CONFIG), 'w', encoding='utf-8') as f:
    f.write(INIT_TEMPLATE.format(src=src, run=os.path.abspath(workdir), model={
        k: cfg.model[k] for k in checkpoint.ARCH_KEYS + ('param_dtype', 'sliding_window')},
                                 tokenizer=cfg.data.tokenizer, seq_len=cfg.data.seq_len))
  return summary


def export_run(run, out, dtype='float32'):
  """Writes a transformers model directory for a run's latest (EMA) parameters."""
  cfg_path = os.path.join(run, rundir.CONFIG)
  if not os.path.exists(cfg_path):
    raise InteropError(f'{run}: not a run directory (no config.json)')
  _empty_target(out, 'output directory')
  cfg = resume.from_run(rundir.read_json(cfg_path, kind=dict))
  params, step = checkpoint.load_params(run, cfg)
  m = cfg.model.to_dict()
  tok = cfg.data.tokenizer
  vocab = base = None
  if tok.startswith('hf:'):
    tdir = tok[3:]
    vocab = tokenizers.VocabMap.from_json(hf.read_json(os.path.join(tdir, tokenizers.VOCAB_MAP)))
    base = hf.read_json(os.path.join(tdir, hf.HF_CONFIG))
  # an MDM reads [MASK], a row an imported checkpoint lacks: appended as row `rows`
  # (mask_token_id); an AR run's export is the checkpoint's own layout, bit for bit
  mask = vocab is not None and vocab.mask is None and objectives.mdm_fraction(cfg) > 0
  tensors = hf.params_to_hf(params, m, vocab, DTYPES[dtype], mask)
  conf = hf.hf_config(m, cfg.model.vocab_size, cfg.data.seq_len, dtype, base)
  if mask:
    conf.update(vocab_size=vocab.rows + 1, mask_token_id=vocab.rows)
  os.makedirs(out, exist_ok=True)
  safetensors.write(os.path.join(out, 'model.safetensors'), tensors, {'format': 'pt'})
  rundir.atomic_json(os.path.join(out, 'config.json'), conf)
  if vocab is not None:
    for f in hf.TOKENIZER_FILES:
      if os.path.exists(os.path.join(tdir, f)):
        shutil.copy(os.path.join(tdir, f), out)
  else:
    hf.write_native_tokenizer(tok, out)
  with open(os.path.join(out, 'README.md'), 'w', encoding='utf-8') as f:
    f.write(MDM_NOTE.format(objective=cfg.objective, arch=conf['architectures'][0], **(
        _imported_ids(vocab, mask) if vocab is not None else dict(
            mask=f'{tokenizers.MASK} ([MASK], `<mask>`)', ids=f'PAD={tokenizers.PAD}, '
            f'BOS={tokenizers.BOS}, EOS={tokenizers.EOS}'))))
  return dict(step=step, architecture=conf['architectures'][0], tensors=len(tensors),
              objective=cfg.objective)

