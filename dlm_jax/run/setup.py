"""Everything a run, an evaluation, a sampler or a benchmark needs, built once from a config:
the resolved config, tokenizer, model, mesh and data splits (`build`)."""
import dataclasses
import os
from typing import Any

import jax
import numpy as np

from dlm_jax import config as config_lib
from dlm_jax.core import flops
from dlm_jax.core import model as model_lib
from dlm_jax.core import objectives
from dlm_jax.core import sharding
from dlm_jax.data import pipeline
from dlm_jax.data import tasks
from dlm_jax.data import tokenizers
from dlm_jax.run import trackers
from dlm_jax.errors import MeshError


@dataclasses.dataclass
class Setup:
  """Everything a run, an evaluation or a sampler needs, built once from a resolved config."""
  cfg: Any
  tokenizer: Any
  model: Any
  mesh: Any
  train_windows: np.ndarray
  val_windows: np.ndarray
  data_info: dict
  counts: dict
  train_prefix: Any = None   # prompt lengths of task examples (data.task), else None
  val_prefix: Any = None
  val_target_bytes: Any = None  # task data: UTF-8 bytes of each validation target + its EOS


def compile_cache_dir(tcfg) -> str:
  if tcfg.compile_cache != 'auto':
    return tcfg.compile_cache
  return os.environ.get('JAX_COMPILATION_CACHE_DIR',  # e.g. a sweep's shared <root>/.xla_cache
                        os.path.join(os.path.expanduser('~'), '.cache', 'dlm_jax', 'xla'))


def enable_compile_cache(tcfg):
  """Persistent XLA compilation cache: a rerun, a resumed run or a sweep's next run of the same
  shapes loads its executables instead of compiling them (programs that compile in > 1 s)."""
  path = compile_cache_dir(tcfg)
  if path:
    jax.config.update('jax_compilation_cache_dir', path)


def build(cfg) -> Setup:
  """The Setup of a config: resolved, with its mesh checked and its data loaded."""
  trackers.check_config(cfg)  # before any work (run/trackers.py owns the names)
  tok = tokenizers.get_tokenizer(cfg.data.tokenizer)
  cfg = config_lib.resolve(cfg, tok.vocab_size, vocab_real=tok.vocab_real)
  model_lib.attention_impl(cfg.model)  # a kernel this backend cannot run: a ConfigError
  enable_compile_cache(cfg.train)
  mesh = sharding.make_mesh(cfg.mesh)
  sharding.check_batch(mesh, cfg.train.batch_size, grad_accum=cfg.train.grad_accum)
  sharding.check_batch(mesh, cfg.eval.batch_size, 'eval.batch_size')
  if cfg.train.batch_size % jax.process_count():
    raise MeshError(f'config.train.batch_size: {cfg.train.batch_size} is not divisible '
                             f'by the {jax.process_count()} processes')
  train_w, val_w, info = pipeline.load_splits(
      cfg.data, cfg.eval.num_batches * cfg.eval.batch_size, cfg.model.vocab_size)
  if cfg.train.epochs > 0:  # R epochs of the U unique tokens
    cfg.train.num_steps = int(cfg.train.epochs * len(train_w) // cfg.train.batch_size)
  train_p = val_p = val_b = None
  if cfg.data.task:  # prompt -> target fine-tuning replaces the LM windows
    tr, va = tasks.load_task(cfg.data.task, cfg.data.val_fraction)
    train_w, train_p, dropped_tr, _ = tasks.encode(tr, tok, cfg.data.seq_len, 'train')
    val_w, val_p, dropped_va, val_b = tasks.encode(va, tok, cfg.data.seq_len, 'validation')
    info = dict(info, task=cfg.data.task, task_train=len(train_p), task_val=len(val_p),
                task_dropped_too_long=dropped_tr + dropped_va,
                unique_tokens=int((train_w != tokenizers.PAD).sum()),
                train_windows=int(train_w.shape[0]))
    if cfg.train.epochs > 0:
      cfg.train.num_steps = int(cfg.train.epochs * train_w.shape[0] // cfg.train.batch_size)
  return Setup(cfg, tok, model_lib.Transformer(cfg.model, mesh), mesh, train_w, val_w, info,
               flops.from_config(cfg.model, cfg.data.seq_len, objectives.input_factor(cfg)),
               train_p, val_p, val_b)


def train_iterator(setup):
  """The training batches of this process: shuffled, reshuffled every epoch, its rows of every
  global batch (a grain iterator whose position the checkpoint holds)."""
  cfg = setup.cfg
  ds = pipeline.train_dataset(setup.train_windows, cfg.train.batch_size, cfg.seed,
                              setup.train_prefix,
                              rows=sharding.local_rows(setup.mesh, cfg.train.batch_size))
  return pipeline.train_iterator(ds, cfg.data.prefetch)
