"""The agent, the provisioning tool and the back office type-check (the settings are in pyproject.toml)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.conftest import ROOT


def test_mypy_reports_nothing():
    mypy = shutil.which("mypy") or str(ROOT / ".venv" / "bin" / "mypy")
    if not shutil.which(mypy):
        pytest.skip("mypy is not installed (it comes with the dev extra)")
    res = subprocess.run([mypy], capture_output=True, text=True, cwd=ROOT, timeout=600)  # files: pyproject.toml
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr
    assert "agent" in res.stdout or "Success" in res.stdout, res.stdout
