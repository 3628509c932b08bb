"""The suite's own rule: no test may skip unless its reason is listed in ALLOWED_SKIPS.

A run of a throwaway test module with this suite's conftest hooks, in a separate process
(the hooks keep session state, which must not leak into the run that hosts this test).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

TESTS_DIR = Path(__file__).parent


def _run(pytester: pytest.Pytester, body: str) -> pytest.RunResult:
    # The suite's conftest under another module name (this file is itself a "conftest").
    pytester.makeconftest(
        f"""
        import importlib.util

        spec = importlib.util.spec_from_file_location("suite_conftest", {str(TESTS_DIR / "conftest.py")!r})
        suite = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(suite)
        pytest_collectreport = suite.pytest_collectreport
        pytest_runtest_logreport = suite.pytest_runtest_logreport
        pytest_sessionfinish = suite.pytest_sessionfinish
        pytest_terminal_summary = suite.pytest_terminal_summary
        """
    )
    pytester.makepyfile(test_sample=textwrap.dedent(body))
    return pytester.runpytest_subprocess("-p", "no:cacheprovider")


@pytest.mark.parametrize(
    "body",
    [
        "import pytest\n\ndef test_a():\n    pytest.skip('checkpoint missing')\n",
        "import pytest\npytest.skip('no data', allow_module_level=True)\n\ndef test_a():\n    pass\n",
        "import pytest\nnot_there = pytest.importorskip('a_module_that_is_not_installed')\n\n"
        "def test_a():\n    pass\n",
        "import pytest\n\n@pytest.mark.xfail(reason='broken')\ndef test_a():\n    assert False\n",
    ],
    ids=["in-test", "module-level", "importorskip", "xfail"],
)
def test_an_unlisted_skip_fails_the_session(pytester: pytest.Pytester, body: str) -> None:
    result = _run(pytester, body + "\ndef test_b():\n    pass\n")
    assert result.ret == 1, result.stdout.str()
    result.stdout.fnmatch_lines(["*unexpected skips*"])


def test_a_listed_skip_and_a_clean_run_pass(pytester: pytest.Pytester) -> None:
    result = _run(
        pytester,
        "import pytest\n\ndef test_a():\n    pytest.skip('needs dpkg-deb')\n\ndef test_b():\n    pass\n",
    )
    assert result.ret == 0, result.stdout.str()
    result.stdout.no_fnmatch_line("*unexpected skips*")
