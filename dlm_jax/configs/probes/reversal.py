"""Base of the reversal-curse probe (python -m dlm_jax.probes reversal): a small model trained
for many epochs on a generated file of one-sentence facts, one fact per padded row; the probe
sets data.corpus to that file and the objective per run (ar, mdm, dual). The probe asks the MDM
for an answer at its true length, so it trains with PAD visible (diffusion.pad=visible: the
NELBO given the length, the setting EXPERIMENTS.md 5a was measured with); its validation NELBO is
therefore not comparable with the AR NLL, which pays for the length."""
from dlm_jax import config
from dlm_jax.configs import common


def get_config():
  c = config.base()
  c.objective = 'ar'
  c.data.tokenizer = 'bpe'
  c.data.packing = 'pad'
  c.diffusion.pad = 'visible'
  c.data.seq_len = 32
  c.data.val_fraction = 0.05
  common.small_model(c, 128, 4, 4)
  c.train.batch_size = 32
  c.train.num_steps = 3000
  c.train.lr = 2e-3
  c.train.warmup_steps = 100
  c.train.weight_decay = 0.0   # memorisation is the point
  c.train.eval_every = 1000
  c.train.checkpoint_every = 1000
  c.train.log_every = 100
  c.eval.num_batches = 2
  c.eval.batch_size = 16
  c.sample.num_samples = 0
  return c
