"""Hugging Face interop without the [hf] extra (numpy and tokenizers only): a native run's
export re-imports bit for bit, exported tokenizers keep dlm_jax's ids, and the config mapping's
rules and refusals. The transformers-oracle tests are test_hf.py (extras)."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import ROOT
from dlm_jax import config as config_lib
from dlm_jax.core import model as model_lib
from dlm_jax.data import tokenizers
from dlm_jax.interop import convert as hf_cli
from dlm_jax.run import checkpoint
from dlm_jax.run import resume

ENV = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu')


def dlm_model(run):
  cfg = resume.from_run(json.load(open(os.path.join(run, 'config.json'))))
  params, _ = checkpoint.load_params(run, cfg)
  return cfg, model_lib.Transformer(cfg.model), params


def _cli(*args):
  r = subprocess.run([sys.executable, '-m', *args], env=ENV, capture_output=True, text=True,
                     timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  return r.stdout


def test_a_native_run_exported_and_reimported_is_the_same_model(tmp_path):
  """dlm_jax's own export carries its special ids (mask_token_id included), so re-importing it
  maps every id to itself: the parameters come back bit for bit."""
  from conftest import train_tiny_run  # pylint: disable=g-import-not-at-top
  _, run, _ = train_tiny_run(tmp_path, 'ar', steps=2, tokenizer='bpe')
  _cli('dlm_jax.hf', 'export', run, str(tmp_path / 'out'))
  _cli('dlm_jax.hf', 'import', str(tmp_path / 'out'), f'--workdir={tmp_path / "back"}',
       '--seq_len=32')
  (c1, _, p1), (c2, _, p2) = dlm_model(run), dlm_model(str(tmp_path / 'back'))
  assert c2.model.unpredicted == '' and c2.model.vocab_size == c1.model.vocab_size
  jax.tree_util.tree_map(np.testing.assert_array_equal, p1, p2)
  text = 'Ünïcode, spaces  and all: ok.'
  t1, t2 = tokenizers.get_tokenizer(c1.data.tokenizer), tokenizers.get_tokenizer(
      c2.data.tokenizer)
  np.testing.assert_array_equal(t1.encode_batch([text])[0], t2.encode_batch([text])[0])


@pytest.mark.parametrize('name', ['byte', 'gpt2'])
def test_exported_tokenizers_have_dlm_jax_ids(tmp_path, name):
  """`byte` and `gpt2` travel as tokenizers JSON files that give the same ids and text back."""
  import tokenizers as tk  # pylint: disable=g-import-not-at-top
  from dlm_jax.interop import hf  # pylint: disable=g-import-not-at-top
  hf.write_native_tokenizer(name, str(tmp_path))
  exported, ours = tk.Tokenizer.from_file(str(tmp_path / 'tokenizer.json')), \
      tokenizers.get_tokenizer(name)
  for text in ['Ünïcode, bytes \x00 and all: ok.', ' two  spaces\n\ttab', '日本語 text']:
    ids = exported.encode(text, add_special_tokens=False).ids
    assert ids == list(ours.encode_batch([text])[0]) and exported.decode(ids) == text


def test_which_layers_slide_decides_the_window():
  """Qwen2 / Qwen3 slide only with use_sliding_window, on the layers from max_window_layers on
  (or as layer_types says); Mistral always when sliding_window is set; Llama never."""
  from dlm_jax.interop import hf  # pylint: disable=g-import-not-at-top
  base = dict(hidden_size=64, num_attention_heads=4, num_hidden_layers=2, intermediate_size=96,
              sliding_window=32)
  window = lambda arch, **kw: hf.model_keys(dict(base, architectures=[arch], **kw))[
      'sliding_window']
  for arch in ('Qwen2ForCausalLM', 'Qwen3ForCausalLM'):
    assert window(arch, use_sliding_window=False) == 0
    assert window(arch, use_sliding_window=True, max_window_layers=1) == 32
    assert window(arch, use_sliding_window=True, max_window_layers=2) == 0
    assert window(arch, use_sliding_window=True, max_window_layers=2,
                  layer_types=['full_attention', 'sliding_attention']) == 32
  assert window('MistralForCausalLM') == 32
  assert window('MistralForCausalLM', sliding_window=None) == 0
  assert window('LlamaForCausalLM') == 0


def test_qk_norm_with_qkv_biases_has_no_transformers_architecture():
  from dlm_jax.interop import hf  # pylint: disable=g-import-not-at-top
  m = dict(config_lib.base().model.to_dict(), qk_norm=True, qkv_bias=True, mlp_dim=64)
  with pytest.raises(hf_cli.InteropError, match='model.qk_norm=True with model.qkv_bias=True'):
    hf.hf_config(m, 512, 128, 'float32')
