"""AR2Diff at CPU scale (issue 4): the shared base of every stage in
scripts/ar2diff_experiment.py (pretraining on the embedded corpus, then fine-tuning on the cloze
task built from it). Stages change objective, init_from, data.task and num_steps only."""
from dlm_jax.configs import common


def get_config():
  return common.cpu_experiment('ar', d_model=128, num_layers=4, num_steps=250, eval_every=50)
