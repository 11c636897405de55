"""Recipes the config files share (not part of the package: configs import it by path)."""
from dlm_jax import config


def cpu_experiment(objective: str, d_model: int, num_layers: int, num_steps: int,
                   eval_every: int):
  """The shared base of the CPU-scale experiment configs (configs/experiments/): BPE-8192,
  L=128, batch 32, AdamW 3e-3 with 10% warmup, one checkpoint at the end, no samples."""
  c = config.base()
  c.objective = objective
  small_model(c, d_model, num_layers, d_model // 32)
  c.data.seq_len = 128
  c.train.batch_size = 32
  c.train.num_steps = num_steps
  c.train.lr = 3e-3
  c.train.warmup_steps = num_steps // 10
  c.train.eval_every = eval_every
  c.train.checkpoint_every = num_steps
  c.eval.num_batches = 8
  c.sample.num_samples = 0
  return c


def published_recipe(corpus: str, packing: str, seq_len: int, num_steps: int):
  """The MDLM / MD4 training recipe shared by configs/lm1b.py and configs/owt.py: 12 x 768 model,
  GPT-2 tokens, batch 512, AdamW 3e-4 with 2.5k warmup then constant, no weight decay, dropout
  0.1, EMA 0.9999, log-linear schedule, bfloat16 compute."""
  c = config.base()
  c.objective = 'mdm'
  c.model.size = 'base'
  c.model.dtype = 'bfloat16'
  c.model.resid_dropout = 0.1
  c.diffusion.schedule = 'loglinear'
  c.data.corpus, c.data.packing, c.data.seq_len = corpus, packing, seq_len
  c.data.tokenizer = 'gpt2'
  c.train.batch_size = 512
  c.train.num_steps = num_steps
  c.train.lr = 3e-4
  c.train.lr_schedule = 'constant'
  c.train.warmup_steps = 2500
  c.train.weight_decay = 0.0
  c.train.ema_decay = 0.9999
  c.train.log_every = 100
  c.train.eval_every = 10_000
  c.train.checkpoint_every = 5_000
  c.eval.num_batches = 64
  return c


def small_model(c, d_model, num_layers, num_heads):
  """The width, depth and heads of the small CPU models the experiment configs train."""
  c.model.d_model, c.model.num_layers, c.model.num_heads = d_model, num_layers, num_heads
  return c
