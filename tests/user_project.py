"""A new user's own project folder, as the wheel test (test_notebooks.py) and the sweep tests
build it: a sweep file, a base config beside it importing a helper beside it, a relative corpus."""

USER_HELPER = '''
def tiny(c):
  """A model small enough for a test, and a corpus path relative to the working directory."""
  c.model.d_model, c.model.num_layers, c.model.num_heads = 32, 2, 2
  c.data.tokenizer, c.data.seq_len, c.data.val_fraction = 'byte', 32, 0.2
  c.data.corpus = 'data/corpus.txt'
  c.train.batch_size, c.train.num_steps, c.train.warmup_steps = 8, 4, 2
  c.train.log_every, c.train.eval_every, c.train.checkpoint_every = 1, 100, 100
  c.eval.num_batches, c.eval.batch_size, c.sample.num_samples = 1, 8, 0
  return c
'''
USER_BASE = '''
from dlm_jax import config
import helper  # next to this file, on the user's PYTHONPATH as `main` alone would need it
def get_config():
  c = config.base()
  c.objective = 'ar'
  return helper.tiny(c)
'''
USER_SWEEP = '''
from dlm_jax.sweep import Sweep
def get_sweep():  # two sizes of one objective: a fit with all but A fixed is determined
  return Sweep('mine', 'base.py', {'d32': {'model.d_model': 32}, 'd48': {'model.d_model': 48}})
'''
def user_project(scratch):
  """A user's own folder: exp/{sweep,base,helper}.py and a corpus under data/ (relative to the
  working directory, as data.corpus names it)."""
  (scratch / 'exp').mkdir()
  (scratch / 'exp' / 'helper.py').write_text(USER_HELPER)
  (scratch / 'exp' / 'base.py').write_text(USER_BASE)
  (scratch / 'exp' / 'sweep.py').write_text(USER_SWEEP)
  (scratch / 'data').mkdir()
  words = 'the cat sat on a mat while every dog ran far from home and then came back'.split()
  docs = [' '.join(words[(i + j) % len(words)] for j in range(60)) + '.' for i in range(40)]
  (scratch / 'data' / 'corpus.txt').write_text('\n\n\n'.join(docs) + '\n')
