"""The provisioned-node checklist (hw_tests/checklist) as pytest checks, for a Pi installed with
install.sh. Skips everywhere else.

VIGIL_HW_CONFIG_DIR=/etc/vigil (default) VIGIL_HW_CHECK_TIMEOUT=10 (seconds per check)
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
from pathlib import Path

import pytest

CONFIG_DIR = Path(os.environ.get("VIGIL_HW_CONFIG_DIR", "/etc/vigil"))
TIMEOUT = float(os.environ.get("VIGIL_HW_CHECK_TIMEOUT", "10"))


def _checklist():
    path = Path(__file__).with_name("checklist")
    loader = importlib.machinery.SourceFileLoader("vigil_checklist", str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


checklist = _checklist()


@pytest.fixture(scope="module")
def node():
    if not (CONFIG_DIR / "config.toml").is_file():
        pytest.skip(f"{CONFIG_DIR}/config.toml is absent: this runs on a node installed with install.sh")
    if not os.access(CONFIG_DIR / "node.key", os.R_OK):
        pytest.skip(f"cannot read {CONFIG_DIR}/node.key: run as root (sudo)")
    return checklist.Node(CONFIG_DIR, None, TIMEOUT)


@pytest.mark.timeout(TIMEOUT + 30)
@pytest.mark.parametrize("name", list(checklist.CHECKS))
def test_node(node, name: str):
    try:
        detail = checklist.CHECKS[name](node)
    except checklist.Skip as exc:
        pytest.skip(str(exc))
    except checklist.Fail as exc:
        pytest.fail(f"{name}: {exc}")
    print(f"{name}: {detail}")
