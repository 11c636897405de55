"""OpenWebText at the published scale (MDLM / MD4 / SEDD setup): GPT-2 tokens, L=1024, documents
wrapped with EOS, a 12-layer 768-wide model, batch 512, 500k steps = 262B tokens, AdamW 3e-4
with 2.5k warmup then constant, no weight decay, dropout 0.1, EMA 0.9999. Published: AR 17.54
PPL, MDLM <= 23.21, MD4-S <= 22.13 (validation: the last 100k documents of the train split).

  python -m dlm_jax.prepare --source tfds:openwebtext --split 'train=train[:-100000]' \
      --split 'validation=train[-100000:]' --tokenizer gpt2 --out ~/dlm_data/owt_gpt2
  python -m dlm_jax.main --config configs/owt.py --workdir runs/owt_mdm

On one 80 GB GPU use --config.train.grad_accum=4 (or a data/fsdp mesh over several).
"""
from dlm_jax.configs import common


def get_config():
  c = common.published_recipe('~/dlm_data/owt_gpt2', 'wrap', seq_len=1024, num_steps=500_000)
  c.eval.batch_size = 64
  c.mesh.data, c.mesh.fsdp = 1, -1
  return c
