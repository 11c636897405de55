"""AR2Diff at CPU scale (issue 4): the shared base of every stage in
scripts/ar2diff_experiment.py (pretraining on the embedded corpus, then fine-tuning on the cloze
task built from it). Stages change objective, init_from, data.task and num_steps only."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))
from configs import common  # pylint: disable=wrong-import-position


def get_config():
  return common.cpu_experiment('ar', d_model=128, num_layers=4, num_steps=250, eval_every=50)
