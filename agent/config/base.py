"""The base of every config table (kept apart so stage-specific config modules can import it)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """Base for every config table: unknown keys are errors, and a table is never changed once validated
    (a live change builds a new `Config` and swaps it in whole: agent.control.live)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
