"""The one exception type the command line turns into a clean message and a non-zero exit."""

from __future__ import annotations


class ProvisionError(Exception):
    """Bad input or fleet state the operator must fix; the message says what and where."""
