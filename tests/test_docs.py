"""Docs that are generated or quoted must match the code."""

from __future__ import annotations

from agent.config import load_config
from agent.config.docs import render
from tests.conftest import ROOT


def test_config_reference_is_up_to_date():
    assert (ROOT / "docs" / "config.md").read_text() == render(), (
        "docs/config.md is stale: run `python -m agent.config.docs > docs/config.md`"
    )


def test_example_configs_are_valid():
    for path in sorted((ROOT / "examples").glob("*.toml")):
        load_config(path, environ={})
