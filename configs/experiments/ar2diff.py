"""AR2Diff at CPU scale (issue 4): the shared base of every stage in
scripts/ar2diff_experiment.py (pretraining on the embedded corpus, then fine-tuning on the cloze
task built from it). Stages change objective, init_from, data.task and num_steps only."""
from dlm_jax import config


def get_config():
  c = config.base()
  c.objective = 'ar'
  c.model.d_model = 128
  c.model.num_layers = 4
  c.model.num_heads = 4
  c.data.seq_len = 128
  c.train.batch_size = 32
  c.train.num_steps = 250
  c.train.lr = 3e-3
  c.train.warmup_steps = 25
  c.train.eval_every = 50
  c.train.checkpoint_every = 250
  c.eval.num_batches = 8
  c.sample.num_samples = 0
  return c
