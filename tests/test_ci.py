"""CI's own guarantees: under --fail-on-skip (.ci/run's extras step) a skipped test or a skipped
test module fails the run, so a missing oracle cannot pass as a printed skip."""
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.parametrize('body', [
    "import pytest\npytest.importorskip('no_such_module_for_ci')\ndef test_a():\n  pass\n",
    "import pytest\ndef test_b():\n  pytest.skip('no oracle')\ndef test_c():\n  pass\n",
])
def test_fail_on_skip_turns_skips_into_failures(tmp_path, body):
  (tmp_path / 'test_x.py').write_text(body)
  run = lambda *extra: subprocess.run(
      [sys.executable, '-m', 'pytest', '-q', '-p', 'skipguard', '-p', 'no:cacheprovider',
       str(tmp_path / 'test_x.py'), *extra], capture_output=True, text=True, cwd=tmp_path,
      env=dict(os.environ, PYTHONPATH=HERE))
  plain, strict = run(), run('--fail-on-skip')
  assert plain.returncode in (0, 5) and 'skipped' in plain.stdout, plain.stdout  # 5: none ran
  assert strict.returncode != 0, strict.stdout
  assert 'was skipped under --fail-on-skip' in strict.stdout, strict.stdout


def test_ci_extras_step_runs_with_fail_on_skip_and_never_skips_torch():
  text = open(os.path.join(HERE, '..', '.ci', 'run'), encoding='utf-8').read()
  step2 = text[text.index('# Step 2'):]
  assert '-m "extras and not slow" --fail-on-skip' in step2
  assert 'exit 0' not in step2  # no path that skips the extras and passes
  assert 'pip install --quiet "torch>=2.13.0" || exit 1' in step2  # the index's build, else fail


def test_ci_checks_the_import_structure_and_it_holds(tmp_path):
  """.ci/run runs tools/archcheck.py before the tests; the package passes it (no cycle, no
  function-level import of the package, no private import, no module over 400 lines), and the
  check fails on a module that breaks a rule (so it can fail)."""
  root = os.path.dirname(HERE)
  ci = open(os.path.join(root, '.ci', 'run'), encoding='utf-8').read()
  assert '"$PY" tools/archcheck.py . dlm_jax || exit 1' in ci
  check = lambda where: subprocess.run([sys.executable, os.path.join(root, 'tools', 'archcheck.py'),
                                        where, 'dlm_jax'], capture_output=True, text=True)
  ok = check(root)
  assert ok.returncode == 0 and '(ok)' in ok.stdout, ok.stdout
  pkg = tmp_path / 'dlm_jax'
  pkg.mkdir()
  (pkg / '__init__.py').write_text('')
  (pkg / 'a.py').write_text('def f():\n  from dlm_jax import b\n' + 'x = 1\n' * 401)
  (pkg / 'b.py').write_text('')
  bad = check(str(tmp_path))
  assert bad.returncode == 1 and 'function-level package imports 1' in bad.stdout, bad.stdout
