import os
import subprocess
import sys

import pytest

from dlm_jax import config
from dlm_jax.run import resume

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))


def run_main(*args, workdir):
  return subprocess.run([sys.executable, '-m', 'dlm_jax.main', '--config',
                         os.path.join(ROOT, 'configs', 'default.py'), '--workdir', str(workdir),
                         *args], capture_output=True, text=True, cwd=ROOT, timeout=300)


@pytest.mark.parametrize('override,needle', [
    ('--config.model.num_layer=3',
     'error: --config.model.num_layer: unknown key (did you mean config.model.num_layers?)'),
    ('--config.foo.bar=1', 'error: --config.foo.bar: unknown key'),
    pytest.param('--config.data.tokenizer=bpee', "config.data.tokenizer: 'bpee' is not bpe, gpt2, byte", marks=pytest.mark.slow),
    pytest.param('--config.train.lr=inf', 'config.train.lr: inf is not a finite number', marks=pytest.mark.slow),
    pytest.param('--config.diffusion.eps=nan', 'config.diffusion.eps: nan is not a finite number',
                 marks=pytest.mark.slow),
    pytest.param('--config.sample.prompts=data:-5', "config.sample.prompts: 'data:-5': data:N needs", marks=pytest.mark.slow),
    pytest.param('--config.sample.prompts=data:abc', "config.sample.prompts: 'data:abc': data:N needs",
                 marks=pytest.mark.slow),
    ('--config.sample.prompts=/nonexistent/p.txt', 'config.sample.prompts: file not found: '
                                                  '/nonexistent/p.txt'),
    ('--config.train.num_steps=abc', 'num_steps'),
    pytest.param('--config.train.num_steps=-5', 'config.train.num_steps', marks=pytest.mark.slow),
    pytest.param('--config.dual.ar_weight=3/2', 'config.dual.ar_weight', marks=pytest.mark.slow),
    pytest.param('--config.dual.ar_weight=abc', 'config.dual.ar_weight', marks=pytest.mark.slow),
    pytest.param('--config.data.unique_tokens=-1', 'config.data.unique_tokens',
                 marks=pytest.mark.slow),
    pytest.param('--config.model.num_heads=5', 'config.model.num_heads', marks=pytest.mark.slow),
    pytest.param('--config.objective=gan', 'config.objective', marks=pytest.mark.slow),
    pytest.param('--config.data.seq_len=1', 'config.data.seq_len', marks=pytest.mark.slow),
    # a time sampler whose NELBO weights float32 sampling cannot make unbiased
    ('--config.diffusion.time_sampler=logit_normal', 'config.diffusion.time_sampler'),
    pytest.param('--config.diffusion.pad=hidden', 'config.diffusion.pad', marks=pytest.mark.slow),
])
def test_bad_config_exits_2_with_one_line_and_writes_nothing(tmp_path, override, needle):
  wd = tmp_path / 'run'
  r = run_main(override, workdir=wd)
  assert r.returncode == 2, r.stderr
  lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
  assert len(lines) == 1 and needle in lines[0], r.stderr
  assert not wd.exists()


# Each message validate gives, in-process; the CLI path that prints any of them as one line with
# exit 2 is the same for all (covered above by the unslowed cases)
@pytest.mark.parametrize('key,value,needle', [
    ('data.tokenizer', 'bpee', "config.data.tokenizer: 'bpee' is not bpe, gpt2, byte"),
    ('train.lr', float('inf'), 'config.train.lr: inf is not a finite number'),
    ('diffusion.eps', float('nan'), 'config.diffusion.eps: nan is not a finite number'),
    ('sample.prompts', 'data:-5', "config.sample.prompts: 'data:-5': data:N needs"),
    ('sample.prompts', 'data:abc', "config.sample.prompts: 'data:abc': data:N needs"),
    ('train.num_steps', -5, 'config.train.num_steps'),
    ('dual.ar_weight', '3/2', 'config.dual.ar_weight'),
    ('dual.ar_weight', 'abc', 'config.dual.ar_weight'),
    ('data.unique_tokens', -1, 'config.data.unique_tokens'),
    ('model.num_heads', 5, 'config.model.num_heads'),
    ('objective', 'gan', 'config.objective'),
    ('data.seq_len', 1, 'config.data.seq_len'),
    ('diffusion.time_sampler', 'logit_normal', 'config.diffusion.time_sampler'),
    ('diffusion.pad', 'hidden', 'config.diffusion.pad'),
])
def test_validate_refuses_each_bad_value_naming_its_key(key, value, needle):
  c = _default_config()
  *path, leaf = key.split('.')
  section = c
  for p in path:
    section = section[p]
  section[leaf] = value
  with pytest.raises(config.ConfigError) as e:
    config.validate(c)
  assert needle in str(e.value) and '\n' not in str(e.value), str(e.value)


def _default_config():
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location('default_config', os.path.join(
      ROOT, 'configs', 'default.py'))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def test_validate_names_misspelled_key_with_hint():
  c = config.base()
  c.unlock()
  c.train.learning_rate = 0.1
  with pytest.raises(config.ConfigError, match=r'config.train.learning_rate: unknown key'):
    config.validate(c)


def test_validate_rejects_wrong_types():
  import ml_collections  # a config file may build its own, non-type-safe ConfigDict
  c = ml_collections.ConfigDict(config.base().to_dict(), type_safe=False)
  c.model.d_model = 12.5
  with pytest.raises(config.ConfigError, match='config.model.d_model: expected int'):
    config.validate(c)


def test_all_shipped_configs_validate():
  """Every config file, and every run of every sweep file (base config + its overrides)."""
  import importlib.util
  import glob
  n_runs = 0
  for path in glob.glob(os.path.join(ROOT, 'configs', '**', '*.py'), recursive=True):
    spec = importlib.util.spec_from_file_location('c', path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if hasattr(mod, 'get_sweep'):
      sw = mod.get_sweep()
      for name, setting in sw.runs.items():
        base = importlib.util.spec_from_file_location('b', os.path.join(ROOT, sw.base_config))
        bmod = importlib.util.module_from_spec(base)
        base.loader.exec_module(bmod)
        c = bmod.get_config()
        for key, value in setting.items():
          *parents, leaf = key.split('.')
          node = c
          for part in parents:
            node = node[part]
          node[leaf] = value
        config.validate(c)
        n_runs += 1
    elif os.path.basename(path) not in ('common.py', '__init__.py'):  # shared recipes; lookup
      config.validate(mod.get_config())
  assert n_runs >= 100


def test_resume_diff_allows_only_harmless_changes():
  a = config.base().to_dict()
  b = config.base()
  b.sample.steps = 3
  b.mesh.data = 2
  assert resume.diff_for_resume(a, b.to_dict()) == []
  b.model.d_model = 512
  assert resume.diff_for_resume(a, b.to_dict()) == ['model.d_model: 256 -> 512']
  # more steps reshape a cosine schedule mid-run; under a constant learning rate they resume
  c = config.base()
  c.train.num_steps = 5000
  assert resume.diff_for_resume(a, c.to_dict())[0].startswith(
      "train.num_steps: 1000 -> 5000 (the cosine learning rate depends on it")
  a['train']['lr_schedule'] = c.train.lr_schedule = 'constant'
  assert resume.diff_for_resume(a, c.to_dict()) == []


CONFIG_FILES = {
    'dict.py': ('def get_config():\n  return {"objective": "ar"}\n',
                'get_config() returned a dict, not an ml_collections.ConfigDict'),
    'raises.py': ('def get_config():\n  raise RuntimeError("no such recipe")\n',
                  'get_config() raised RuntimeError: no such recipe'),
    'partial.py': ('import ml_collections\ndef get_config():\n  c = ml_collections.ConfigDict()\n'
                   '  c.objective = "ar"\n  return c\n',
                   'missing (build the config from dlm_jax.config.base())'),
    'syntax.py': ('def get_config(:\n', 'SyntaxError'),
    'none.py': ('x = 1\n', 'defines no get_config()'),
}


@pytest.mark.parametrize('name', [n if n in ('raises.py', 'partial.py') else
                                  pytest.param(n, marks=pytest.mark.slow) for n in CONFIG_FILES]
                         + ['missing.py'])
def test_a_bad_config_file_is_one_line_naming_it(tmp_path, name):
  """A missing --config, or one whose get_config() raises, returns a dict or a ConfigDict not
  built from base(): one line naming the file (or the missing key), exit 2, nothing written.
  (Before: chained tracebacks, exit 1, or an AttributeError deep in validation.)"""
  path = tmp_path / name
  if name in CONFIG_FILES:
    path.write_text(CONFIG_FILES[name][0])
  wd = tmp_path / 'run'
  r = subprocess.run([sys.executable, '-m', 'dlm_jax.main', '--config', str(path), '--workdir',
                      str(wd)], capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert r.returncode == 2 and 'Traceback' not in r.stderr, r.stderr
  lines = r.stderr.strip().splitlines()
  want = CONFIG_FILES[name][1] if name in CONFIG_FILES else 'no such file'
  assert len(lines) == 1 and want in lines[0], r.stderr
  assert str(path) in lines[0] or 'base()' in lines[0], r.stderr
  assert not wd.exists()


def test_missing_corpus_is_a_clear_error_and_writes_nothing(tmp_path):
  wd = tmp_path / 'run'
  r = run_main('--config.data.corpus=/nonexistent/corpus.txt', workdir=wd)
  assert r.returncode == 1
  assert r.stderr.strip().splitlines()[-1].startswith("error: corpus '/nonexistent/corpus.txt'")
  assert not wd.exists()


def test_cli_requires_workdir_and_rejects_unknown_mode(tmp_path):
  r = subprocess.run([sys.executable, '-m', 'dlm_jax.main', '--config',
                      os.path.join(ROOT, 'configs', 'default.py')],
                     capture_output=True, text=True, cwd=ROOT, timeout=120)
  assert r.returncode == 2 and 'workdir' in r.stderr
  r = run_main('--mode=dance', workdir=tmp_path / 'x')
  assert r.returncode == 2 and 'mode' in r.stderr


@pytest.mark.parametrize('key,value,needle', [
    ('nan_policy', 'ignore', "config.train.nan_policy: 'ignore' is not one of stop, skip"),
    ('nan_max_skips', -1, 'config.train.nan_max_skips: must be >= 0'),
    ('keep_period', -2, 'config.train.keep_period: must be >= 0'),
    ('preempt_timeout', 0.0, 'config.train.preempt_timeout: must be > 0'),
    ('max_to_keep', 0, 'config.train.max_to_keep: must be positive'),
])
def test_reliability_keys_are_checked(key, value, needle):
  c = config.base()
  c.train[key] = value
  with pytest.raises(config.ConfigError, match=needle.replace('(', r'\(')):
    config.validate(c)


def test_runs_written_before_a_key_existed_keep_their_behaviour():
  """diffusion.pad was added with default 'predict'; a pad-packed run written before it trained
  with PAD visible, so it loads (eval, sample, resume) as pad=visible; a wrap-packed one has no
  PAD, so today's default reproduces it. Loading a run for eval/sample does not apply the
  training-only refusal of time samplers."""
  old = config.base().to_dict()
  del old['diffusion']['pad']
  assert resume.diff_for_resume(old, config.base().to_dict()) == []
  old['data']['packing'] = 'pad'
  assert resume.from_run(old).diffusion.pad == 'visible'
  new = config.base()
  new.data.packing = 'pad'
  assert resume.diff_for_resume(old, new.to_dict()) == ["diffusion.pad: 'visible' -> 'predict'"]
  new.diffusion.pad = 'visible'
  assert resume.diff_for_resume(old, new.to_dict()) == []
  old['diffusion']['time_sampler'] = 'logit_normal'  # refused for training, loads for eval
  assert resume.from_run(old).diffusion.time_sampler == 'logit_normal'
  with pytest.raises(config.ConfigError, match='diffusion.time_sampler'):
    config.validate(resume.complete(old))


@pytest.mark.parametrize('alias,unpredicted,needle', [
    ('1:2', '0,1', None), ('0:2,1:2', '0,1', None),
    ('1:2', '0', "1:2: id 1 must be in model.unpredicted='0'"),
    ('3:2', '3', '3:2: only the special ids PAD=0, BOS=1, EOS=2 may read another row'),
    ('1:3', '1', '1:3: row 3 must be another id below model.vocab_size, not [MASK]'),
    ('0:1,1:2', '0,1', '0:1: row 1 must be another id'),
    ('1:2,1:0', '1', '1:2: only the special ids'),
    ('1-2', '', "'1-2' is not a comma list of ID:ROW"),
])
def test_embed_alias_is_only_for_special_ids(alias, unpredicted, needle):
  """model.embed_alias (hf import: BOS reads the eos row of a checkpoint whose bos is its eos);
  a run written before the key existed had none."""
  c = config.base()
  c.model.embed_alias, c.model.unpredicted = alias, unpredicted
  if needle is None:
    config.validate(c)
  else:
    with pytest.raises(config.ConfigError, match='config.model.embed_alias: ' + needle.replace(
        '[', r'\[').replace('(', r'\(')):
      config.validate(c)
  old = config.base().to_dict()
  del old['model']['embed_alias']
  assert resume.from_run(old).model.embed_alias == ''


def test_shipped_configs_are_found_by_name_from_any_directory(tmp_path, monkeypatch):
  """--config default / configs/default.py / sweeps/micro_base name the installed package's files
  when no such path exists here (a wheel, a scratch directory); an existing path wins."""
  from dlm_jax import configs
  monkeypatch.chdir(tmp_path)
  shipped = os.path.join(os.path.dirname(configs.__file__), 'default.py')
  for arg in ('default', 'default.py', 'configs/default.py'):
    assert config.check_cli(['main', '--config', arg])[2] == shipped
    assert config.check_cli(['main', f'--config={arg}'])[1] == f'--config={shipped}'
  assert 'sweeps/micro_base' in configs.names() and 'default' in configs.names()
  (tmp_path / 'configs').mkdir()
  (tmp_path / 'configs' / 'default.py').write_text(
      'from dlm_jax import config\ndef get_config():\n  return config.base()\n')
  assert config.check_cli(['main', '--config', 'configs/default.py'])[2] == 'configs/default.py'
  with pytest.raises(config.ConfigError, match='--config nope: no such file .*default, '):
    config.check_cli(['main', '--config', 'nope'])
# config.base() before its sections moved to their owners (issue 29): the assembled schema must
# stay this, key for key, type for type
FROZEN_BASE = dict(
    block=dict(size=4),
    data=dict(cache_dir='', corpus='embedded', packing='wrap', prefetch=2, segment_ids=False,
        seq_len=128, task='', tokenizer='bpe', unique_tokens=0, val_fraction=0.04),
    diffusion=dict(eps=0.001, low_discrepancy=True, logsnr_scale=1.0, logsnr_shift=0.0,
        mask_eos=True, mask_pattern='bernoulli', noise='masked', p_uniform=0.5,
        pad='predict', poly_k=2.0, sampler_params=dict(beta_a=2.0, beta_b=2.0, mu=0.0,
        sigma=1.0, uniform_mix=0.0), schedule='linear', time_sampler='uniform',
        weighting='elbo'),
    dual=dict(ar_attention='causal', ar_weight='1/2'),
    eval=dict(batch_size=32, chunk=64, corpus='', estimators='auto', likelihood_rows=32,
        name='scores', nelbo_samples=16, num_batches=8, pll_span=2, seed=1234,
        task_estimator='auto', task_limit=0, tasks='', tasks_dir='data/zeroshot'),
    init_from='',
    mesh=dict(data=-1, fsdp=1, tensor=1),
    model=dict(attention='auto', attn_dropout=0.0, d_model=256, dtype='float32', embed_alias='',
        embed_dropout=0.0, head_dim=0, mlp_dim=0, mlp_dropout=0.0, norm_eps=1e-06, num_heads=4,
        num_kv_heads=0, num_layers=4, param_dtype='float32', qk_norm=False, qkv_bias=False,
        remat='auto', resid_dropout=0.0, rope_base=10000.0, rope_scaling='', scan_layers=True,
        scan_unroll=1, size='', sliding_window=0, tie_embeddings=True, unpredicted='',
        vocab_real=0, vocab_size=0),
    objective='mdm',
    sample=dict(batch_size=16, block_size=0, grid='uniform', guidance=0.0, kv_cache=True,
        length=0, mode='auto', num_samples=4, prompts='', reuse_logits=True, scorer='', seed=0,
        steps=64, stop_at_eos=True, strategy='ancestral', temperature=1.0, top_k=0, top_p=1.0),
    seed=0,
    train=dict(adam_eps=1e-08, b1=0.9, b2=0.95, batch_size=32, checkpoint_every=200,
        compile_cache='auto', decay_embeddings=False, decay_fraction=0.2, ema_decay=0.0,
        epochs=0.0, eval_every=200, grad_accum=1, grad_clip=1.0, keep_period=0, log_every=10,
        lr=0.003, lr_schedule='cosine', max_to_keep=3, min_lr_ratio=0.1, nan_max_skips=10,
        nan_policy='stop', num_steps=1000, preempt_timeout=60.0, token_dropout=0.0,
        trackers='tensorboard', wandb_entity='', wandb_project='dlm_jax', warmup_steps=100,
        weight_decay=0.1),
)


def _flat(d, prefix=''):
  for k, v in d.items():
    if isinstance(v, dict):
      yield from _flat(v, f'{prefix}{k}.')
    else:
      yield f'{prefix}{k}', (type(v).__name__, v)


def test_base_assembled_from_the_owners_is_the_schema_it_was():
  assert dict(_flat(config.base().to_dict())) == dict(_flat(FROZEN_BASE))
