"""mypy over src/attnmap with the settings in pyproject.toml (strict on the numpy core).

Runs in process through ``mypy.api``. The cache lives in the repository's ``.mypy_cache``
(mypy writes a ``.gitignore`` into it), so a second run only re-checks what changed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _mypy_api():
    try:
        from mypy import api
    except ImportError:
        # CI installs the test extra; a missing checker must not pass as a skipped test.
        pytest.fail("mypy is not installed: pip install -e '.[test]'", pytrace=False)
    return api


def test_mypy_reports_no_errors(monkeypatch):
    api = _mypy_api()
    monkeypatch.chdir(ROOT)  # `files` in the config is relative to the repository root
    monkeypatch.delenv("MYPY_CONFIG_FILE_DIR", raising=False)  # mypy sets it; undone after
    monkeypatch.delenv("MYPY_CACHE_DIR", raising=False)
    stdout, stderr, status = api.run([
        "--config-file", str(ROOT / "pyproject.toml"),
        "--cache-dir", str(ROOT / ".mypy_cache"),
        "--no-error-summary",
        "--no-pretty",
    ])
    report = f"mypy exited with status {status}\n{stdout}{stderr}"
    assert status == 0, report
    assert "error:" not in stdout, report
    # A section that matches no module (a renamed module in the strict list, say) would
    # silently stop applying; mypy notes it because of warn_unused_configs.
    assert "unused section" not in stdout + stderr, report
