"""Hugging Face interop against the transformers implementation as the oracle: tiny random Llama
(GQA), Qwen2 (q/k/v biases, no bos, pad = eos) and Mistral models built here, no network.

Import -> dlm_jax logits equal transformers' (float32, 1e-4) on the same ids; export ->
transformers logits equal dlm_jax's; import -> export is bit-identical; KV-cached greedy decoding
equals transformers' generate token for token. In every special-token layout of LAYOUTS (Llama 2,
Llama 3, SmolLM2, Qwen2.5) log p(text) equals transformers' given the checkpoint's first token,
and lm-eval's own HF model, called as the README says, gives the adapter's numbers. Needs the
[hf] extra (transformers, CPU torch) and lm_eval's HF model (accelerate)."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT
from dlm_jax import config as config_lib
from dlm_jax import hf as hf_command
from dlm_jax.core import flops
from dlm_jax.core import model as model_lib
from dlm_jax.core import sampling
from dlm_jax.data import tokenizers
from dlm_jax.interop import convert as hf_cli
from dlm_jax.interop import safetensors
from dlm_jax.run import checkpoint
from dlm_jax.run import resume

pytestmark = pytest.mark.extras
torch = pytest.importorskip(
    'torch', reason='needs the [hf] extra and a CPU torch (README: "Install")')
transformers = pytest.importorskip(
    'transformers', reason='needs the [hf] extra (README: "Install")')

ENV = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu')
V = 300


def _tokenizer(path, specials, end=(), prepend=None):
  """A small byte-level BPE trained on the embedded corpus, with the checkpoint's specials first
  (and `end` ones after the trained tokens, as Llama 3 and Qwen have them); `prepend`: a token the
  tokenizer adds in front (Llama's post-processor)."""
  import tokenizers as tk  # pylint: disable=g-import-not-at-top
  from dlm_jax.data import corpus  # pylint: disable=g-import-not-at-top
  texts = [d.text for d in corpus.load_documents('embedded')[:200]]
  tok = tk.Tokenizer(tk.models.BPE())
  tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = tk.decoders.ByteLevel()
  tok.train_from_iterator(texts, tk.trainers.BpeTrainer(
      vocab_size=V - 20, special_tokens=specials, show_progress=False,
      initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet()))
  tok.add_special_tokens(list(end))
  if prepend:
    tok.post_processor = tk.processors.TemplateProcessing(
        single=f'{prepend} $A', pair=f'{prepend} $A {prepend} $B',
        special_tokens=[(prepend, tok.token_to_id(prepend))])
  tok.save(path)
  return tok


KINDS = {
    'llama_gqa': ('LlamaConfig', dict(num_key_value_heads=2, tie_word_embeddings=False)),
    'llama_tied': ('LlamaConfig', dict(num_key_value_heads=4, tie_word_embeddings=True)),
    'qwen2_bias': ('Qwen2Config', dict(num_key_value_heads=2, tie_word_embeddings=False,
                                       bos_token_id=None, pad_token_id=2,
                                       use_sliding_window=False)),
    'llama3_rope': ('LlamaConfig', dict(  # Llama 3.1 / 3.2's long-context RoPE frequencies
        num_key_value_heads=2, tie_word_embeddings=True, rope_parameters=dict(
            rope_type='llama3', rope_theta=5000.0, factor=8.0, low_freq_factor=1.0,
            high_freq_factor=4.0, original_max_position_embeddings=16))),
    'mistral': ('MistralConfig', dict(num_key_value_heads=1, tie_word_embeddings=False,
                                      sliding_window=None)),
    # Qwen3: head_dim 24 != hidden / heads = 16, RMSNorm on q and k, GQA
    'qwen3': ('Qwen3Config', dict(num_key_value_heads=2, head_dim=24, tie_word_embeddings=False,
                                  use_sliding_window=False)),
    # Mistral v0.1: a sliding window, exact (so accepted) at the run's seq_len=64
    'mistral_window': ('MistralConfig', dict(num_key_value_heads=2, tie_word_embeddings=True,
                                             sliding_window=64)),
}


# The special-token layouts of the checkpoints researchers adapt: model kind; the tokenizer's
# specials before and after its trained tokens; the bos / eos / pad tokens config.json and
# tokenizer_config.json name (None: none); whether the tokenizer prepends bos; embedding rows past
# the tokenizer's size; and the token the imported model conditions on first (dlm_jax's BOS).
LAYOUTS = {
    'llama2': dict(kind='llama_gqa', front=['<unk>', '<s>', '</s>'], end=[], bos='<s>',
                   eos='</s>', pad=None, adds_bos=True, extra_rows=0, first='<s>'),
    'llama3': dict(kind='llama3_rope', front=[], end=[
        '<|begin_of_text|>', '<|end_of_text|>', '<|reserved_special_token_0|>'],
                   bos='<|begin_of_text|>', eos='<|end_of_text|>', pad=None, adds_bos=True,
                   extra_rows=0, first='<|begin_of_text|>'),
    'smollm2': dict(kind='llama_tied', front=['<|endoftext|>', '<|im_start|>', '<|im_end|>'],
                    end=[], bos='<|endoftext|>', eos='<|endoftext|>', pad=None, adds_bos=False,
                    extra_rows=0, first='<|endoftext|>'),
    # Qwen2.5 base: config.json's bos_token_id is its eos, the tokenizer names no bos and pads
    # with <|endoftext|>; the embedding has rows past the tokenizer (151936 > 151665)
    'qwen2.5': dict(kind='qwen2_bias', front=[], end=['<|endoftext|>', '<|im_start|>',
                                                      '<|im_end|>'],
                    bos=None, config_bos='<|endoftext|>', eos='<|endoftext|>',
                    pad='<|endoftext|>', adds_bos=False, extra_rows=21, first='<|endoftext|>'),
}


def _layout_files(directory, layout):
  """tokenizer.json and tokenizer_config.json of a layout; the config.json keys they imply."""
  L = LAYOUTS[layout]
  os.makedirs(directory, exist_ok=True)
  tok = _tokenizer(os.path.join(directory, 'tokenizer.json'), L['front'], L['end'],
                   L['bos'] if L['adds_bos'] else None)
  with open(os.path.join(directory, 'tokenizer_config.json'), 'w', encoding='utf-8') as f:
    json.dump(dict(tokenizer_class='PreTrainedTokenizerFast', bos_token=L['bos'],
                   eos_token=L['eos'], pad_token=L['pad']), f)
  ids = lambda t: None if t is None else tok.token_to_id(t)
  return dict(vocab_size=tok.get_vocab_size() + L['extra_rows'],
              bos_token_id=ids(L.get('config_bos', L['bos'])), eos_token_id=ids(L['eos']),
              pad_token_id=None, tie_word_embeddings=L['kind'] != 'llama_gqa')


def build_hf(directory, kind, dtype=None, layout=None):
  """A random tiny HF model of `kind` saved as safetensors with its tokenizer.json (and
  tokenizer_config.json: the special-token layout of LAYOUTS[layout], when given)."""
  cls, extra = KINDS[kind]
  kw = dict(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=128, rms_norm_eps=1e-5,
            rope_theta=5000.0, bos_token_id=1, eos_token_id=2)
  kw.update(extra)
  if layout is not None:
    kw.update(_layout_files(directory, layout))
  conf = getattr(transformers, cls)(**kw)
  torch.manual_seed(0)
  model = transformers.AutoModelForCausalLM.from_config(conf).eval()
  with torch.no_grad():  # biases and norm scales away from their init, so a mix-up shows
    for name, p in model.named_parameters():
      if name.endswith('bias'):
        p.normal_(0, 0.5)
      elif 'norm' in name:
        p.uniform_(0.5, 1.5)
  if dtype is not None:
    model = model.to(dtype)
  model.save_pretrained(directory, safe_serialization=True)
  if layout is None:
    _tokenizer(os.path.join(directory, 'tokenizer.json'), ['<unk>', '<s>', '</s>'])
  return model


def hf_logits(model, ids):
  with torch.no_grad():
    return model(torch.tensor(ids)).logits.float().numpy()


def dlm_model(run):
  cfg = resume.from_run(json.load(open(os.path.join(run, 'config.json'))))
  params, _ = checkpoint.load_params(run, cfg)
  return cfg, model_lib.Transformer(cfg.model), params


@pytest.fixture(scope='module', params=list(KINDS))
def imported(request, tmp_path_factory):
  d = tmp_path_factory.mktemp(request.param)
  model = build_hf(str(d / 'hf'), request.param)
  hf_cli.import_checkpoint(str(d / 'hf'), str(d / 'run'), seq_len=64)
  return request.param, d, model


def test_import_logits_equal_transformers(imported):
  kind, d, model = imported
  cfg, dlm, params = dlm_model(str(d / 'run'))
  vmap = tokenizers.get_tokenizer(cfg.data.tokenizer).map
  ids = np.random.default_rng(0).integers(0, V, (2, 24))
  want = hf_logits(model, ids)
  got = np.asarray(dlm.apply({'params': params}, jnp.asarray(vmap.to_dlm[ids]), 'causal'))
  np.testing.assert_allclose(got[..., vmap.to_dlm], want, atol=1e-4, rtol=1e-4)
  # [MASK] and the padding rows are never predicted; the vocabulary stays shardable
  never = np.setdiff1d(np.arange(cfg.model.vocab_size), vmap.to_dlm)
  never = never[never >= tokenizers.MASK]
  assert cfg.model.vocab_size % 128 == 0 and np.all(got[..., never] < -1e8)
  assert cfg.model.num_kv_heads == model.config.num_key_value_heads
  assert cfg.model.qkv_bias == (kind == 'qwen2_bias')
  assert cfg.model.rope_scaling == ('llama3:8.0,1.0,4.0,16' if kind == 'llama3_rope' else '')
  assert (cfg.model.head_dim, cfg.model.qk_norm) == ((24, True) if kind == 'qwen3' else (0, False))
  assert cfg.model.sliding_window == (64 if kind == 'mistral_window' else 0)
  n_hf = sum(p.numel() for p in model.parameters())
  added = (cfg.model.vocab_size - V) * cfg.model.d_model * (1 if cfg.model.tie_embeddings else 2)
  assert flops.from_config(cfg.model, 64)['N_total'] == n_hf + added


@pytest.mark.slow  # the llama2 / smollm2 layouts' tests cover it by default
def test_imported_likelihood_is_the_checkpoints(tmp_path):
  """The AR log-likelihood of a text under the imported model (its own tokenizer, BOS first as
  dlm_jax shifts inputs) equals transformers' on [bos] + ids: the new PAD row and [MASK] take no
  probability (model.unpredicted)."""
  from dlm_jax.infer import likelihood  # pylint: disable=g-import-not-at-top
  model = build_hf(str(tmp_path / 'hf'), 'llama_tied')
  hf_cli.import_checkpoint(str(tmp_path / 'hf'), str(tmp_path / 'run'), seq_len=64)
  cfg, dlm, params = dlm_model(str(tmp_path / 'run'))
  assert cfg.model.unpredicted == '0'  # Llama has bos and eos, no pad
  tok = tokenizers.get_tokenizer(cfg.data.tokenizer)
  ids = tok.encode_batch(['The cat sat on the mat, and the dog sat on the log.'])[0]
  got = likelihood.Scorer(dlm, params)('ar', ids[None], np.ones((1, len(ids)), bool))['logp'][0]
  hf_ids = tok.map.from_dlm[ids]
  with torch.no_grad():
    lp = torch.log_softmax(model(torch.tensor([[1] + list(hf_ids)])).logits[0, :-1].double(), -1)
  want = float(lp[torch.arange(len(ids)), torch.tensor(hf_ids)].sum())
  assert got == pytest.approx(want, rel=1e-5)
  assert tok.decode(ids) == 'The cat sat on the mat, and the dog sat on the log.'
  try:  # the lm-eval adapter reads the imported run too: the same number
    from dlm_jax.infer import lmeval  # pylint: disable=g-import-not-at-top
  except ImportError:
    return
  req = type('Req', (), dict(args=('The cat sat on the mat, and the dog sat on the log.',)))
  rolling = lmeval.DlmJaxLM(str(tmp_path / 'run'), estimator='ar').loglikelihood_rolling([req])
  assert rolling[0] == pytest.approx(want, rel=1e-5)


def test_import_then_export_is_bit_identical_and_loads(imported, tmp_path):
  _, d, model = imported
  out = str(tmp_path / 'out')
  hf_cli.export_run(str(d / 'run'), out)
  a, b = safetensors.Reader(str(d / 'hf')), safetensors.Reader(out)
  assert sorted(a.files) == sorted(b.files)
  for name in a.files:
    assert a[name].dtype == b[name].dtype and np.array_equal(a[name], b[name]), name
  back = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
  ids = np.random.default_rng(1).integers(0, V, (1, 16))
  np.testing.assert_array_equal(hf_logits(back, ids), hf_logits(model, ids))
  tok = transformers.AutoTokenizer.from_pretrained(out)
  assert tok('the cat')['input_ids']  # the checkpoint's own tokenizer travels with it


def test_bf16_checkpoint_imports_and_round_trips(tmp_path):
  model = build_hf(str(tmp_path / 'hf'), 'llama_gqa', dtype=torch.bfloat16)
  hf_cli.import_checkpoint(str(tmp_path / 'hf'), str(tmp_path / 'run'), seq_len=64)
  hf_cli.export_run(str(tmp_path / 'run'), str(tmp_path / 'out'), dtype='bfloat16')
  a, b = safetensors.Reader(str(tmp_path / 'hf')), safetensors.Reader(str(tmp_path / 'out'))
  for name in a.files:
    assert str(a[name].dtype) == 'bfloat16' and np.array_equal(a[name], b[name]), name
  cfg, dlm, params = dlm_model(str(tmp_path / 'run'))
  vmap = tokenizers.get_tokenizer(cfg.data.tokenizer).map
  ids = np.random.default_rng(0).integers(0, V, (1, 12))
  want = hf_logits(model.float(), ids)  # the same bf16 weights, computed in float32
  got = np.asarray(dlm.apply({'params': params}, jnp.asarray(vmap.to_dlm[ids]), 'causal'))
  np.testing.assert_allclose(got[..., vmap.to_dlm], want, atol=1e-4, rtol=1e-4)


def test_sharded_checkpoint_imports_like_one_file(tmp_path):
  model = build_hf(str(tmp_path / 'one'), 'llama_gqa')
  model.save_pretrained(str(tmp_path / 'sharded'), max_shard_size='60KB')
  assert os.path.exists(tmp_path / 'sharded' / safetensors.INDEX)
  os.link(tmp_path / 'one' / 'tokenizer.json', tmp_path / 'sharded' / 'tokenizer.json')
  hf_cli.import_checkpoint(str(tmp_path / 'one'), str(tmp_path / 'r1'), seq_len=64)
  hf_cli.import_checkpoint(str(tmp_path / 'sharded'), str(tmp_path / 'r2'), seq_len=64)
  (_, _, p1), (_, _, p2) = dlm_model(str(tmp_path / 'r1')), dlm_model(str(tmp_path / 'r2'))
  jax.tree_util.tree_map(np.testing.assert_array_equal, p1, p2)


@pytest.mark.parametrize('objective,tie,kv', [('ar', False, 2), ('mdm', True, 1),
                                               ('dual', False, 4)])
def test_export_of_a_native_model_loads_in_transformers(tmp_path, objective, tie, kv):
  """A dlm_jax model (random init, any objective) exported: transformers' logits equal dlm_jax's
  on every column but [MASK], whose logit dlm_jax never predicts."""
  from conftest import tiny_config  # pylint: disable=g-import-not-at-top
  from dlm_jax.run import rundir  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  c = tiny_config(objective)
  c.model.num_kv_heads, c.model.tie_embeddings = kv, tie
  c.model.num_heads = 4
  cfg = config_lib.resolve(c, tokenizers.get_tokenizer(c.data.tokenizer).vocab_size)
  _, params = model_lib.init_params(cfg.model, jax.random.PRNGKey(3), 16)
  run = str(tmp_path / 'run')
  os.makedirs(run)
  rundir.atomic_json(os.path.join(run, 'config.json'), cfg.to_dict())
  mngr = ocp.CheckpointManager(os.path.join(run, 'checkpoints'))
  mngr.save(7, args=ocp.args.Composite(state=ocp.args.StandardSave({'params': params})))
  mngr.wait_until_finished()
  hf_cli.export_run(run, str(tmp_path / 'out'))
  back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / 'out')).eval()
  ids = np.random.default_rng(0).integers(0, cfg.model.vocab_size, (2, 16))
  got = hf_logits(back, ids)
  want = np.asarray(model_lib.Transformer(cfg.model).apply({'params': params}, jnp.asarray(ids),
                                                           'causal'))
  keep = np.arange(cfg.model.vocab_size) != tokenizers.MASK
  np.testing.assert_allclose(got[..., keep], want[..., keep], atol=1e-4, rtol=1e-4)
  tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / 'out'))
  text = 'The cat sat on the mat.'
  assert tok(text)['input_ids'] == list(tokenizers.get_tokenizer('bpe').encode_batch([text])[0])
  assert 'bidirectional' in open(tmp_path / 'out' / 'README.md').read()


def _assert_greedy_equals_generate(run, model, length, prompt=(5, 17, 42, 99, 7)):
  """KV-cached greedy decoding of an imported (Llama-2-layout: BOS = 1) run equals `generate`."""
  cfg, dlm, params = dlm_model(run)
  vmap = tokenizers.get_tokenizer(cfg.data.tokenizer).map
  prompt = list(prompt)
  st = sampling.Settings(mode='ar', length=length, temperature=0.0, stop_at_eos=False)
  out = sampling.Sampler(dlm, params, context=64).generate(
      jax.random.PRNGKey(0), [vmap.to_dlm[prompt]], st)['tokens'][0]
  with torch.no_grad():  # dlm_jax never generates PAD or BOS: neither may transformers
    gen = model.generate(torch.tensor([[1] + prompt]), max_new_tokens=length, do_sample=False,
                         suppress_tokens=[1], eos_token_id=None, pad_token_id=0)
  np.testing.assert_array_equal(vmap.from_dlm[np.asarray(out)], gen[0, 1 + len(prompt):].numpy())


@pytest.mark.slow  # test_layout_kv_cached_greedy_decoding_equals_generate[llama2] by default
def test_kv_cached_greedy_decoding_equals_transformers_generate(tmp_path):
  model = build_hf(str(tmp_path / 'hf'), 'llama_gqa')
  hf_cli.import_checkpoint(str(tmp_path / 'hf'), str(tmp_path / 'run'), seq_len=64)
  _assert_greedy_equals_generate(str(tmp_path / 'run'), model, 20)


@pytest.fixture(scope='module', params=list(LAYOUTS))
def layout(request, tmp_path_factory):
  """(name, directory, HF model, imported (cfg, model, params), tokenizer, HF id of the first
  token the checkpoint conditions on)."""
  d = tmp_path_factory.mktemp(request.param.replace('.', '_'))
  model = build_hf(str(d / 'hf'), LAYOUTS[request.param]['kind'], layout=request.param)
  hf_cli.import_checkpoint(str(d / 'hf'), str(d / 'run'), seq_len=64)
  cfg, dlm, params = dlm_model(str(d / 'run'))
  tok = tokenizers.get_tokenizer(cfg.data.tokenizer)
  first = tok._tok.token_to_id(LAYOUTS[request.param]['first'])  # pylint: disable=protected-access
  return request.param, d, model, (cfg, dlm, params), tok, first


TEXT = 'The cat sat on the mat, and the dog sat on the log.'


def test_layout_imports_with_the_checkpoints_own_rows(layout):
  """Only [MASK] (and a PAD the checkpoint lacks) is a new row: BOS reads the row of the token
  the checkpoint conditions on first, PAD the row of the one it pads with; logits on the same
  sequence, that token first, equal transformers' to 1e-4."""
  name, _, model, (cfg, dlm, params), tok, first = layout
  vmap = tok.map
  want_alias = {'llama2': '', 'llama3': '', 'smollm2': '1:2', 'qwen2.5': '0:2,1:2'}[name]
  assert (cfg.model.embed_alias, cfg.model.unpredicted) == (want_alias,
                                                             '0,1' if want_alias else '0')
  assert vmap.new_specials() == ([tokenizers.MASK] if name == 'qwen2.5' else
                                 [tokenizers.PAD, tokenizers.MASK])
  eos = tok._tok.token_to_id(LAYOUTS[name]['eos'])  # pylint: disable=protected-access
  assert vmap.from_dlm[tokenizers.EOS] == eos
  rows = model.config.vocab_size
  ids = np.random.default_rng(0).integers(0, rows, (2, 23))
  ids[:, 5] = first  # the first token inside a sequence too
  want = hf_logits(model, np.concatenate([np.full((2, 1), first), ids], 1))
  dlm_ids = np.concatenate([np.full((2, 1), tokenizers.BOS), vmap.to_dlm[ids]], 1)
  got = np.asarray(dlm.apply({'params': params}, jnp.asarray(dlm_ids), 'causal'))
  np.testing.assert_allclose(got[..., vmap.to_dlm], want, atol=1e-4, rtol=1e-4)


def test_layout_likelihood_is_the_checkpoints_given_its_first_token(layout):
  """log p(text) through the likelihood scorer and the lm-eval adapter = transformers'
  log p(text | the first token) to 1e-5."""
  from dlm_jax.infer import likelihood  # pylint: disable=g-import-not-at-top
  from dlm_jax.infer import lmeval  # pylint: disable=g-import-not-at-top
  _, d, model, (_, dlm, params), tok, first = layout
  ids = tok.encode_batch([TEXT])[0]
  got = likelihood.Scorer(dlm, params)('ar', ids[None], np.ones((1, len(ids)), bool))['logp'][0]
  hf_ids = tok.map.from_dlm[ids]
  with torch.no_grad():
    lp = torch.log_softmax(model(torch.tensor([[first] + list(hf_ids)])).logits[0, :-1].double(),
                           -1)
  want = float(lp[torch.arange(len(ids)), torch.tensor(hf_ids)].sum())
  assert got == pytest.approx(want, rel=1e-5) and tok.decode(ids) == TEXT
  req = type('Req', (), dict(args=(TEXT,)))
  rolling = lmeval.DlmJaxLM(str(d / 'run'), estimator='ar').loglikelihood_rolling([req])
  assert rolling[0] == pytest.approx(want, rel=1e-5)


def test_layout_kv_cached_greedy_decoding_equals_generate(layout):
  """Unconditional (the first token alone decides the first step) and prompted."""
  _, _, model, (_, dlm, params), tok, first = layout
  prompts = [np.zeros(0, np.int32), tok.encode_batch(['The cat sat'])[0]]
  st = sampling.Settings(mode='ar', length=16, temperature=0.0, stop_at_eos=False)
  outs = sampling.Sampler(dlm, params, context=64).generate(
      jax.random.PRNGKey(0), prompts, st)['tokens']
  own = [int(tok.map.from_dlm[i]) for i in (tokenizers.PAD, tokenizers.BOS)
         if tok.map.from_dlm[i] >= 0]  # dlm_jax never generates PAD or BOS where they are own rows
  for prompt, out in zip(prompts, outs):
    x = torch.tensor([[first] + list(tok.map.from_dlm[prompt])])
    with torch.no_grad():
      gen = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=16,
                           do_sample=False, suppress_tokens=own or None, eos_token_id=None,
                           pad_token_id=first)
    np.testing.assert_array_equal(tok.map.from_dlm[np.asarray(out)], gen[0, x.shape[1]:].numpy())


def test_layout_import_then_export_is_bit_identical(layout, tmp_path):
  _, d, _, _, _, _ = layout
  hf_cli.export_run(str(d / 'run'), str(tmp_path / 'out'))
  a, b = safetensors.Reader(str(d / 'hf')), safetensors.Reader(str(tmp_path / 'out'))
  assert sorted(a.files) == sorted(b.files)
  for name in a.files:
    assert a[name].dtype == b[name].dtype and np.array_equal(a[name], b[name]), name


def test_layout_lm_eval_hf_model_gives_the_adapters_numbers(layout, tmp_path):
  """lm-eval's own HF model on the exported checkpoint, called as the README says
  (add_bos_token=True for loglikelihood requests, False for loglikelihood_rolling; a checkpoint
  without a bos token, Qwen2.5, with a tokenizer naming its eos as bos), gives the numbers of
  the lm-eval adapter on the imported run, empty contexts included."""
  import shutil  # pylint: disable=g-import-not-at-top
  from lm_eval.api.instance import Instance  # pylint: disable=g-import-not-at-top
  from lm_eval.models.huggingface import HFLM  # pylint: disable=g-import-not-at-top
  from dlm_jax.infer import lmeval  # pylint: disable=g-import-not-at-top
  name, d, _, _, _, _ = layout
  out, tok_dir = str(tmp_path / 'out'), str(tmp_path / 'tok')
  hf_cli.export_run(str(d / 'run'), out)
  if LAYOUTS[name]['bos'] is None:
    os.makedirs(tok_dir)
    shutil.copy(os.path.join(out, 'tokenizer.json'), tok_dir)
    with open(os.path.join(tok_dir, 'tokenizer_config.json'), 'w', encoding='utf-8') as f:
      json.dump(dict(json.load(open(os.path.join(out, 'tokenizer_config.json'))),
                     bos_token=LAYOUTS[name]['eos']), f)
  reqs = lambda kind, args: [Instance(request_type=kind, doc={}, arguments=a, idx=i)
                             for i, a in enumerate(args)]
  pairs = reqs('loglikelihood', [('The cat sat on the', ' mat'), ('', 'The cat sat'),
                                 ('Once upon a', ' time there')])
  texts = reqs('loglikelihood_rolling', [(TEXT,), ('Call me Ishmael.',)])
  ours = lmeval.DlmJaxLM(str(d / 'run'), estimator='ar')
  hf = lambda **kw: HFLM(pretrained=out, batch_size=1, device='cpu', dtype='float32',
                         max_length=64, **kw)
  got = [ll for ll, _ in hf(add_bos_token=True, **(
      {'tokenizer': tok_dir} if os.path.isdir(tok_dir) else {})).loglikelihood(pairs, True)]
  np.testing.assert_allclose(got, [ll for ll, _ in ours.loglikelihood(pairs)], rtol=1e-5)
  got = hf(add_bos_token=False).loglikelihood_rolling(texts, True)
  np.testing.assert_allclose(got, ours.loglikelihood_rolling(texts), rtol=1e-5)


@pytest.mark.parametrize('case', ['architecture', 'tensor', 'shape', 'eos', 'workdir'])
def test_bad_checkpoints_are_one_line_and_write_nothing(tmp_path, case):
  src, run = tmp_path / 'hf', tmp_path / 'run'
  build_hf(str(src), 'llama_gqa')
  conf = json.load(open(src / 'config.json'))
  tensors = {k: np.array(v) for k, v in ((k, safetensors.Reader(str(src))[k])
                                         for k in safetensors.Reader(str(src)).files)}
  expect = {'architecture': 'architecture GPT2LMHeadModel is not supported (supported: '
                            'LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, '
                            'Qwen3ForCausalLM)',
            'tensor': 'tensor model.layers.1.mlp.up_proj.weight (shape [96, 64]) is missing',
            'shape': 'tensor model.layers.0.self_attn.k_proj.weight has shape [64, 64], '
                     'expected [32, 64]',
            'eos': 'no token has the end-of-text id eos_token_id=1000',
            'workdir': 'already exists and is not empty'}[case]
  if case == 'architecture':
    conf['architectures'] = ['GPT2LMHeadModel']
  elif case == 'tensor':
    del tensors['model.layers.1.mlp.up_proj.weight']
  elif case == 'shape':
    tensors['model.layers.0.self_attn.k_proj.weight'] = np.zeros((64, 64), np.float32)
  elif case == 'eos':
    conf['eos_token_id'] = 1000
    tensors['model.embed_tokens.weight'] = np.zeros((1001, 64), np.float32)
    tensors['lm_head.weight'] = np.zeros((1001, 64), np.float32)
  else:
    os.makedirs(run / 'old')
  json.dump(conf, open(src / 'config.json', 'w'))
  safetensors.write(str(src / 'model.safetensors'), tensors, {'format': 'pt'})
  r = subprocess.run([sys.executable, '-m', 'dlm_jax.hf', 'import', str(src),
                      f'--workdir={run}'], env=ENV, capture_output=True, text=True)
  assert r.returncode == 2, r.stderr[-2000:]
  assert 'Traceback' not in r.stderr
  (line,) = [l for l in r.stderr.splitlines() if l.strip()]
  assert line.startswith('error: ') and expect in line, line
  assert (os.listdir(run) == ['old']) if case == 'workdir' else not os.path.exists(run)


@pytest.mark.parametrize('case,expect', [
    ('bos_id', "tokenizer.json: no token has the id bos_token_id=290 that the checkpoint names"),
    ('pad_id', 'config.json: pad_token_id=5000 is outside the 300 embedding rows'),
    ('pad_name', "tokenizer_config.json: pad_token='<nope>' is not a token of tokenizer.json")])
def test_bad_special_tokens_are_one_line_and_write_nothing(tmp_path_factory, tmp_path, capsys,
                                                           case, expect):
  """A bos / pad id outside the embedding or not in tokenizer.json (row 290 of 300 is past the
  tokenizer's 280 tokens), or a name tokenizer.json lacks: exit 2, one line, no workdir."""
  import shutil  # pylint: disable=g-import-not-at-top
  base = tmp_path_factory.getbasetemp() / 'bad_special_src'
  if not base.exists():
    build_hf(str(base), 'llama_tied')
  src, run = tmp_path / 'hf', tmp_path / 'run'
  shutil.copytree(base, src)
  conf = json.load(open(src / 'config.json'))
  if case == 'pad_name':
    json.dump(dict(pad_token='<nope>'), open(src / 'tokenizer_config.json', 'w'))
  else:
    conf[{'bos_id': 'bos_token_id', 'pad_id': 'pad_token_id'}[case]] = {
        'bos_id': 290, 'pad_id': 5000}[case]
  json.dump(conf, open(src / 'config.json', 'w'))
  capsys.readouterr()  # building printed its progress
  with pytest.raises(SystemExit) as e:
    hf_command.main(['import', str(src), f'--workdir={run}'])
  assert e.value.code == 2
  (line,) = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
  assert line.startswith('error: ') and expect in line, line
  assert not os.path.exists(run)


SHORT = ['--config.train.num_steps=4', '--config.train.batch_size=8', '--config.eval.batch_size=8',
         '--config.eval.num_batches=2', '--config.train.eval_every=4',
         '--config.train.checkpoint_every=4', '--config.train.warmup_steps=1',
         '--config.eval.likelihood_rows=8', '--config.sample.num_samples=2',
         '--config.sample.length=12', '--config.sample.steps=6']


def _cli(*args):
  r = subprocess.run([sys.executable, '-m', *args], env=ENV, capture_output=True, text=True,
                     timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  return r.stdout


def test_ar2diff_from_a_pretrained_checkpoint_end_to_end(tmp_path):
  """The README's commands: import -> MDM continued pretraining from the AR weights
  (init_config.py) -> --mode eval -> --mode sample -> export; and the imported model evaluated
  as AR. SmolLM2's layout (bos = eos): BOS trains as the eos row, which export writes back."""
  build_hf(str(tmp_path / 'hf'), 'llama_tied', layout='smollm2')
  out = _cli('dlm_jax.hf', 'import', str(tmp_path / 'hf'), f'--workdir={tmp_path / "llama"}',
             '--seq_len=64')
  assert 'imported LlamaForCausalLM' in out
  init = str(tmp_path / 'llama' / 'init_config.py')
  mdm = str(tmp_path / 'mdm')
  out = _cli('dlm_jax.main', f'--config={init}', f'--workdir={mdm}', *SHORT)
  assert f'initialised from {tmp_path / "llama"} step 0' in out
  _cli('dlm_jax.main', f'--config={init}', f'--workdir={mdm}', '--mode=eval', *SHORT)
  res = json.load(open(os.path.join(mdm, 'eval', 'scores.json')))
  assert 0 < res['likelihood']['nelbo']['nats_per_token'] < 10
  _cli('dlm_jax.main', f'--config={init}', f'--workdir={mdm}', '--mode=sample', *SHORT)
  rows = [json.loads(l) for l in open(os.path.join(mdm, 'samples.jsonl'))]
  assert len(rows) == 4 and all(r['mode'] == 'mdm' and r['tokens'] for r in rows)  # end + --mode
  # the trained model exports in the checkpoint's layout, plus the [MASK] row it reads (row
  # `rows`, mask_token_id), and imports back to the same model
  hf_cli.export_run(mdm, str(tmp_path / 'out'))
  back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / 'out')).eval()
  (c0, _, p0), (cfg, dlm, params) = dlm_model(str(tmp_path / 'llama')), dlm_model(mdm)
  vmap = tokenizers.get_tokenizer(cfg.data.tokenizer).map
  assert cfg.model.embed_alias == c0.model.embed_alias == '1:2'
  assert (back.config.vocab_size, back.config.mask_token_id) == (vmap.rows + 1, vmap.rows)
  ids = np.random.default_rng(2).integers(0, vmap.rows + 1, (2, 20))  # [MASK] among them
  want = hf_logits(back, np.concatenate([np.full((2, 1), vmap.eos), ids], 1))
  to_dlm = np.append(vmap.to_dlm, tokenizers.MASK)
  got = np.asarray(dlm.apply({'params': params}, jnp.asarray(np.concatenate(
      [np.full((2, 1), tokenizers.BOS), to_dlm[ids]], 1)), 'causal'))
  np.testing.assert_allclose(got[..., vmap.to_dlm], want[..., :vmap.rows], atol=1e-4, rtol=1e-4)
  e0, e1 = p0['embed']['embedding'], params['embed']['embedding']  # BOS's own row never read
  assert np.array_equal(e0[tokenizers.BOS], e1[tokenizers.BOS])
  assert not np.array_equal(e0[tokenizers.EOS], e1[tokenizers.EOS])
  hf_cli.import_checkpoint(str(tmp_path / 'out'), str(tmp_path / 'again'), seq_len=64)
  c2, _, p2 = dlm_model(str(tmp_path / 'again'))
  assert (c2.model.embed_alias, c2.model.unpredicted) == ('1:2', '0,1')
  read = to_dlm  # every row the model reads or predicts comes back bit for bit
  np.testing.assert_array_equal(p2['embed']['embedding'][read], e1[read])
  _cli('dlm_jax.main', f'--config={init}', f'--workdir={tmp_path / "llama"}', '--mode=eval',
       '--config.objective=ar', *SHORT)
  res = json.load(open(tmp_path / 'llama' / 'eval' / 'scores.json'))
  assert res['step'] == 0 and 0 < res['likelihood']['ar']['nats_per_token'] < np.log(V) + 1


# Qwen3 and sliding windows: the imported fixture's qwen3 and mistral_window kinds above give
# logits to 1e-4 and a bit-exact export round trip; here decoding, the window's bounds, the native
# export and the refusals.
@pytest.mark.parametrize('imported', ['qwen3', 'mistral_window'], indirect=True)
def test_qwen3_and_windowed_mistral_greedy_decoding_equals_generate(imported):
  _, d, model = imported
  _assert_greedy_equals_generate(str(d / 'run'), model, 40)


def test_sliding_window_is_exact_up_to_it_and_refused_beyond(tmp_path):
  """Mistral v0.1 with a window of 16: imported at data.seq_len=16 its logits are transformers'
  (the window hides nothing there); one position more and they are not (so the refusal is
  needed); a longer --seq_len at import, or a later --config.data.seq_len, is one line, exit 2,
  nothing written."""
  cls, extra = KINDS['mistral_window']
  KINDS['_w16'] = (cls, dict(extra, sliding_window=16))
  try:
    model = build_hf(str(tmp_path / 'hf'), '_w16')
  finally:
    del KINDS['_w16']
  run = tmp_path / 'run'
  hf_cli.import_checkpoint(str(tmp_path / 'hf'), str(run), seq_len=16)
  cfg, dlm, params = dlm_model(str(run))
  assert cfg.model.sliding_window == 16
  vmap = tokenizers.get_tokenizer(cfg.data.tokenizer).map
  ids = np.random.default_rng(0).integers(0, V, (2, 17))
  want = hf_logits(model, ids)
  got = np.asarray(dlm.apply({'params': params}, jnp.asarray(vmap.to_dlm[ids]), 'causal'))
  np.testing.assert_allclose(got[:, :16, vmap.to_dlm], want[:, :16], atol=1e-4, rtol=1e-4)
  assert np.abs(got[:, 16, vmap.to_dlm] - want[:, 16]).max() > 1e-3  # position 16 misses 0
  r = subprocess.run([sys.executable, '-m', 'dlm_jax.hf', 'import', str(tmp_path / 'hf'),
                      f'--workdir={tmp_path / "long"}', '--seq_len=17'], env=ENV,
                     capture_output=True, text=True)
  lines = [l for l in r.stderr.splitlines() if l.strip()]
  assert r.returncode == 2 and len(lines) == 1, r.stderr[-2000:]
  assert 'config.data.seq_len: 17 is larger than model.sliding_window=16' in lines[0]
  assert not (tmp_path / 'long').exists()
  r = subprocess.run([sys.executable, '-m', 'dlm_jax.main', f'--config={run / "init_config.py"}',
                      f'--workdir={tmp_path / "mdm"}', '--config.data.seq_len=32'], env=ENV,
                     capture_output=True, text=True)
  lines = [l for l in r.stderr.splitlines() if l.strip()]
  assert r.returncode == 2 and len(lines) == 1, r.stderr[-2000:]
  assert 'config.data.seq_len: 32 is larger than model.sliding_window=16' in lines[0]
  assert not (tmp_path / 'mdm').exists()


@pytest.mark.parametrize('arch,model', [
    ('Qwen3ForCausalLM', dict(head_dim=24, qk_norm=True, num_kv_heads=2)),
    ('LlamaForCausalLM', dict(head_dim=24, num_kv_heads=2)),
    ('Qwen2ForCausalLM', dict(head_dim=24, qkv_bias=True))])
def test_native_head_dim_and_qk_norm_export_to_transformers_and_back(tmp_path, arch, model):
  """A dlm_jax model with H = 24 != d / N = 16 (and qk_norm: Qwen3) exports as `arch`:
  transformers' logits equal dlm_jax's; re-imported, the parameters come back bit for bit."""
  from conftest import tiny_config  # pylint: disable=g-import-not-at-top
  from dlm_jax.run import rundir  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  c = tiny_config('mdm')
  c.model.update(dict(num_heads=4, **model))
  cfg = config_lib.resolve(c, tokenizers.get_tokenizer(c.data.tokenizer).vocab_size)
  _, params = model_lib.init_params(cfg.model, jax.random.PRNGKey(3), 16)
  params = jax.tree_util.tree_map_with_path(  # norm scales and biases away from their init
      lambda p, x: x + 0.3 * jnp.cos(jnp.arange(x.size).reshape(x.shape)) if (
          'norm' in jax.tree_util.keystr(p) or 'bias' in jax.tree_util.keystr(p)) else x, params)
  run = str(tmp_path / 'run')
  os.makedirs(run)
  rundir.atomic_json(os.path.join(run, 'config.json'), cfg.to_dict())
  mngr = ocp.CheckpointManager(os.path.join(run, 'checkpoints'))
  mngr.save(1, args=ocp.args.Composite(state=ocp.args.StandardSave({'params': params})))
  mngr.wait_until_finished()
  hf_cli.export_run(run, str(tmp_path / 'out'))
  assert json.load(open(tmp_path / 'out' / 'config.json'))['architectures'] == [arch]
  back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / 'out')).eval()
  ids = np.random.default_rng(0).integers(0, cfg.model.vocab_size, (2, 16))
  want = np.asarray(model_lib.Transformer(cfg.model).apply({'params': params}, jnp.asarray(ids),
                                                           'causal'))
  keep = np.arange(cfg.model.vocab_size) != tokenizers.MASK
  np.testing.assert_allclose(hf_logits(back, ids)[..., keep], want[..., keep], atol=1e-4,
                             rtol=1e-4)
  hf_cli.import_checkpoint(str(tmp_path / 'out'), str(tmp_path / 'back'), seq_len=16)
  c2, _, p2 = dlm_model(str(tmp_path / 'back'))
  assert (c2.model.head_dim, c2.model.qk_norm) == (24, model.get('qk_norm', False))
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, p2)


@pytest.mark.parametrize('case', ['head_dim', 'odd_head_dim', 'heads', 'window'])
def test_bad_head_dim_or_window_is_one_line_and_writes_nothing(tmp_path, case):
  """A head_dim the q projection contradicts, an odd one, heads that do not divide the width
  with no head_dim, a window shorter than the default seq_len (128 positions)."""
  src, run = tmp_path / 'hf', tmp_path / 'run'
  build_hf(str(src), 'llama_gqa')
  conf = json.load(open(src / 'config.json'))
  if case == 'head_dim':
    conf['head_dim'] = 32
  elif case == 'odd_head_dim':
    conf['head_dim'] = 15
  elif case == 'heads':
    conf['num_attention_heads'] = 3
    conf.pop('head_dim', None)
  else:
    conf.update(architectures=['MistralForCausalLM'], model_type='mistral', sliding_window=16)
  json.dump(conf, open(src / 'config.json', 'w'))
  expect = {'head_dim': 'config.json: head_dim=32 does not match the checkpoint: '
                        'model.layers.0.self_attn.q_proj.weight has 64 rows, not '
                        'num_attention_heads x head_dim = 4 x 32 = 128',
            'odd_head_dim': 'config.json: head_dim=15 is not supported (a positive even number',
            'heads': 'config.json: num_attention_heads=3 is not supported (it does not divide '
                     'hidden_size=64 and no head_dim is given)',
            'window': 'config.data.seq_len: 128 is larger than model.sliding_window=16'}[case]
  r = subprocess.run([sys.executable, '-m', 'dlm_jax.hf', 'import', str(src),
                      f'--workdir={run}'], env=ENV, capture_output=True, text=True)
  assert r.returncode == 2, r.stderr[-2000:]
  (line,) = [l for l in r.stderr.splitlines() if l.strip()]
  assert line.startswith('error: ') and expect in line, line
  assert not run.exists()
