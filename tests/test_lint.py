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
    res = subprocess.run([ruff, "check", "agent", "fleet", "tests", "provisioning", "hw_tests", "bench"],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stdout + res.stderr


IMPORT_GUARD = """
import builtins, os, socket, sys
touched = []
def guard(what):
    def refuse(*args, **kwargs):
        touched.append(f"{what}{args[:2]!r}")
        raise RuntimeError(f"{what} at import time")
    return refuse
real_open, real_os_open = builtins.open, os.open
def checked_open(path, *args, **kwargs):
    if str(path).startswith(("/dev/", "/sys/class/gpio")):
        return guard("open")(path)
    return real_open(path, *args, **kwargs)
def checked_os_open(path, *args, **kwargs):
    if str(path).startswith(("/dev/", "/sys/class/gpio")):
        return guard("os.open")(path)
    return real_os_open(path, *args, **kwargs)
builtins.open, os.open = checked_open, checked_os_open
socket.socket.connect = guard("socket.connect")
socket.socket.bind = guard("socket.bind")
import cv2
cv2.VideoCapture = guard("cv2.VideoCapture")
import serial
serial.Serial.open = guard("serial.Serial.open")
import importlib, pkgutil, agent
for m in pkgutil.walk_packages(agent.__path__, "agent."):
    if not m.name.endswith("__main__"):
        importlib.import_module(m.name)
importlib.import_module("provisioning")
import fleet
for m in pkgutil.walk_packages(fleet.__path__, "fleet."):
    if not m.name.endswith("__main__"):
        importlib.import_module(m.name)
assert not touched, touched
assert "picamera2" not in sys.modules and "gpiozero" not in sys.modules and "lgpio" not in sys.modules
"""


def test_package_imports_without_hardware():
    """Importing every module opens no device, socket, camera or serial port, and loads no Pi-only library."""
    res = subprocess.run([sys.executable, "-c", IMPORT_GUARD], capture_output=True, text=True, cwd=ROOT,
                         timeout=120)
    assert res.returncode == 0, res.stderr
