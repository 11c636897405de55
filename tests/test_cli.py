"""The command layer (issue 29): every command module answers --help and refuses a bad argument
in one line; setup.py's console scripts name real entry points; library modules hold no CLI."""
import ast
import importlib
import os
import runpy

import pytest
import setuptools
from absl import flags

from conftest import ROOT

# each command module, the argv its main() takes (absl ones include the program name) for
# --help and for a bad argument
ABSL = ('main', 'bench')
COMMANDS = ('main', 'sweep', 'scaling', 'plot', 'probes', 'hf', 'prepare', 'bench', 'lmeval',
            'flops')
BAD = {'main': ['--config', 'default', '--workdir', 'x', '--no_such_flag'],
       'bench': ['step', '--no_such_flag'], 'scaling': ['fit', '--law', 'nope'],
       'plot': ['nope'], 'probes': ['reversal'], 'hf': ['import'], 'prepare': ['--split', 'x'],
       'flops': ['8192', 'many'], 'lmeval': ['--model_args', 'x'], 'sweep': ['nope', 'x.py']}
# imported here, not under a test's capsys: some dependency keeps the stdout it was imported with
MODULES = {c: importlib.import_module(f'dlm_jax.{c}') for c in COMMANDS}


def call(command, argv):
  """main(argv) of dlm_jax.<command>: its exit status (0 when it returned)."""
  module = MODULES[command]
  argv = ([f'dlm_jax.{command}'] if command in ABSL else []) + list(argv)
  try:
    module.main(argv)
  except SystemExit as e:
    return e.code
  finally:
    flags.FLAGS.unparse_flags()
  return 0


@pytest.mark.parametrize('command', COMMANDS)
def test_every_command_answers_help(command, capsys):
  assert call(command, ['--help']) in (0, None)
  out = capsys.readouterr().out
  assert f'dlm_jax.{command}' in out, out  # its usage names the command


@pytest.mark.parametrize('command', sorted(BAD))
def test_a_bad_argument_is_one_line_and_exit_2(command, capsys):
  if command == 'lmeval':
    pytest.importorskip('lm_eval', reason='the [lmeval] extra')
  capsys.readouterr()
  assert call(command, BAD[command]) == 2
  err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
  assert len(err) == 1 and err[0].startswith('error: '), err


def test_lmeval_without_the_extra_names_it_in_one_line(capsys):
  if MODULES['lmeval'].MISSING is None:
    pytest.skip('lm_eval is installed')
  assert call('lmeval', ['--tasks', 'piqa']) == 1
  (line,) = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
  assert line.startswith('error: ') and 'dlm_jax[lmeval]' in line


def test_console_scripts_name_the_command_entry_points(monkeypatch):
  got = {}
  monkeypatch.setattr(setuptools, 'setup', lambda **kw: got.update(kw))
  monkeypatch.chdir(ROOT)
  runpy.run_path(os.path.join(ROOT, 'setup.py'), run_name='__main__')
  scripts = dict(s.replace(' ', '').split('=') for s in got['entry_points']['console_scripts'])
  assert scripts['dlm-jax'] == 'dlm_jax.main:main'
  assert {f'dlm-jax-{c}' for c in COMMANDS if c != 'main'} <= set(scripts)
  for name, target in scripts.items():
    module, attr = target.split(':')
    assert callable(getattr(importlib.import_module(module), attr)), name


def _library_modules():
  pkg = os.path.join(ROOT, 'dlm_jax')
  for d, _, files in os.walk(pkg):
    for f in files:
      rel = os.path.relpath(os.path.join(d, f), pkg)
      if f.endswith('.py') and (os.sep in rel or rel in ('config.py', 'errors.py')):
        yield rel


def cli_sites(src):
  """What makes a module a command, as (line, what): a top-level main(), `if __name__ ==
  '__main__'`, argparse, sys.exit, or a printed `error...` line."""
  out = []
  tree = ast.parse(src)
  for n in tree.body:
    if isinstance(n, ast.FunctionDef) and n.name == 'main':
      out.append((n.lineno, 'def main'))
    if isinstance(n, ast.If) and '__main__' in ast.dump(n.test):
      out.append((n.lineno, "if __name__ == '__main__'"))
  for n in ast.walk(tree):
    if isinstance(n, (ast.Import, ast.ImportFrom)):
      names = [a.name for a in n.names] + [getattr(n, 'module', None) or '']
      if 'argparse' in names:
        out.append((n.lineno, 'argparse'))
    if isinstance(n, ast.Call):
      f = n.func
      if isinstance(f, ast.Attribute) and f.attr == 'exit' and getattr(f.value, 'id', '') == 'sys':
        out.append((n.lineno, 'sys.exit'))
      if isinstance(f, ast.Name) and f.id == 'print' and n.args:
        first = n.args[0]
        text = (first.value if isinstance(first, ast.Constant) else
                first.values[0].value if isinstance(first, ast.JoinedStr) and first.values
                and isinstance(first.values[0], ast.Constant) else '')
        if isinstance(text, str) and text.startswith('error:'):
          out.append((n.lineno, 'print(error...)'))
  return out


def test_library_modules_have_no_cli():
  """Library modules raise errors.Error subclasses; only command modules parse arguments, print
  errors or exit (errors.cli, the one error path, is the exception that makes the rule)."""
  found = {}
  for rel in _library_modules():
    sites = cli_sites(open(os.path.join(ROOT, 'dlm_jax', rel), encoding='utf-8').read())
    if rel == 'errors.py':
      sites = [s for s in sites if s[1] != 'sys.exit']  # errors.cli
    if sites:
      found[rel] = sites
  assert not found, found


def test_the_checker_sees_each_kind_of_cli():
  src = ('import argparse\nimport sys\ndef main():\n  print(f"error: {1}")\n  sys.exit(2)\n'
         "if __name__ == '__main__':\n  main()\n")
  assert sorted(w for _, w in cli_sites(src)) == sorted([
      'argparse', 'def main', 'print(error...)', 'sys.exit', "if __name__ == '__main__'"])
  assert not cli_sites('def run():\n  print("errors: none")\n')


def test_hf_command_exports_and_reimports_a_run(tiny_run, tmp_path, capsys):
  """`python -m dlm_jax.hf export` then `import` through the command module (numpy only: the
  test_hf oracles need torch)."""
  _, run, _ = tiny_run('ar', 4, 'bpe')
  out, back = str(tmp_path / 'exported'), str(tmp_path / 'back')
  assert call('hf', ['export', run, out]) == 0
  assert call('hf', ['import', out, '--workdir', back, '--seq_len', '32']) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert lines[0].startswith(f'exported {run} (step 4, ar) as LlamaForCausalLM: ')
  assert lines[1].startswith(f'imported LlamaForCausalLM from {out}: N_total=')
  assert os.path.exists(os.path.join(back, 'init_config.py'))
  assert call('hf', ['import', out, '--workdir', back]) == 2  # not empty: one line, nothing new
  (line,) = capsys.readouterr().err.strip().splitlines()
  assert line == f'error: --workdir {back} already exists and is not empty (use a new directory)'


@pytest.mark.parametrize('command', COMMANDS)
def test_every_command_module_runs_as_python_m(command):
  """Each command module calls its errors.cli-wrapped main() under `if __name__ == '__main__'`,
  so `python -m dlm_jax.<command>` works beside the console script."""
  sites = {w for _, w in cli_sites(open(os.path.join(ROOT, 'dlm_jax', f'{command}.py'),
                                        encoding='utf-8').read())}
  assert "if __name__ == '__main__'" in sites, sites
  assert hasattr(MODULES[command].main, '__wrapped__')  # errors.cli: the one error path
