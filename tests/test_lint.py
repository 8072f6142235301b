"""The code base stays ruff-clean (the rules are in pyproject.toml)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def test_ruff_clean():
    ruff = shutil.which("ruff") or str(ROOT / ".venv" / "bin" / "ruff")
    if not shutil.which(ruff):
        pytest.skip("ruff is not installed (it comes with the dev extra)")
    res = subprocess.run([ruff, "check", "agent", "tests", "provisioning", "hw_tests", "bench"],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stdout + res.stderr


def test_package_imports_without_hardware():
    """Importing every module must not open cameras, serial ports or sockets."""
    code = "import pkgutil, importlib, agent\n" \
        "for m in pkgutil.walk_packages(agent.__path__, 'agent.'):\n" \
        "    if not m.name.endswith('__main__'):\n" \
        "        importlib.import_module(m.name)\n"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr
