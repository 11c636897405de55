"""pytest plugin (pytest.ini loads it): `--fail-on-skip` turns every skipped test or test module
into a failure. CI's extras step runs with it, so a missing oracle (torch, transformers, lm-eval,
W&B) fails the run instead of passing as a printed skip."""
import pytest


def pytest_addoption(parser):
  parser.addoption('--fail-on-skip', action='store_true',
                   help='a skipped test or test module fails (CI: the extras step)')


def _fail_skipped(config, report, what):
  if config.getoption('--fail-on-skip') and report.skipped and not hasattr(report, 'wasxfail'):
    reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr
    report.outcome = 'failed'
    report.longrepr = f'{what} was skipped under --fail-on-skip: {reason}'


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):  # pylint: disable=unused-argument
  outcome = yield
  _fail_skipped(item.config, outcome.get_result(), item.nodeid)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
  outcome = yield
  _fail_skipped(collector.config, outcome.get_result(), collector.nodeid)
