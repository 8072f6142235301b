"""User-facing errors: one clear message, no traceback."""


class FleetError(Exception):
    """Bad arguments, an unreachable database, an unreadable certificate: printed as one line."""
