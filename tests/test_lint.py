"""The code stays ruff-clean (lint and format), as configured in pyproject.toml."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.harness.project import REPO

RUFF = Path(sys.executable).parent / "ruff"
CODE = ["stages", "dashboard", "tests", "bench"]


def test_ruff_check():
    result = subprocess.run([RUFF, "check", *CODE], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format():
    result = subprocess.run(
        [RUFF, "format", "--check", *CODE], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
