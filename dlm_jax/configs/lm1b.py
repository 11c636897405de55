"""LM1B at the published scale (MDLM / MD4 setup): L=128, one sentence per example (`pad`),
a 12-layer 768-wide model (GPT-2-small / DiT-small size), batch 512, 500k steps = 33B tokens,
AdamW 3e-4 with 2.5k warmup then constant, no weight decay, dropout 0.1, EMA 0.9999.

Prepare the data once (tfds lm1b built locally in array_record format; it has train and test):
  python -m dlm_jax.prepare --source tfds:lm1b --split train=train --split validation=test \
      --tokenizer gpt2 --out ~/dlm_data/lm1b_gpt2
Published numbers use bert-base-uncased (AR 22.32 PPL, MDLM <= 27.04 at 33B tokens); no package
ships that vocabulary offline, so this config uses GPT-2 BPE: per-token perplexities differ from
the papers', bits per byte (reported too) compare across tokenizers.
Switch objective with --config.objective=ar|mdm|dual.
"""
from dlm_jax.configs import common


def get_config():
  c = common.published_recipe('~/dlm_data/lm1b_gpt2', 'pad', seq_len=128, num_steps=500_000)
  c.eval.batch_size = 512
  c.mesh.data, c.mesh.fsdp = -1, 1
  return c
