"""URL helpers shared by the stages that take one from the user (camera streams, brokers)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit


def hide_userinfo(url: str) -> str:
    """The URL with any `user:password@` replaced by `***@`, for logs, errors and status pages.

    An `@` in a path or query is left alone, unless a `user:` before it suggests a password that
    itself holds a `/`, `?` or `#` (then everything up to the last `@` is hidden: too much, never too little).
    """
    try:
        parts = urlsplit(url)
    except ValueError:  # a malformed URL is reported as given, minus anything before its last '@'
        return url if "@" not in url else "***@" + url.rsplit("@", 1)[1]
    if "@" in parts.netloc:
        host = parts.netloc.rsplit("@", 1)[1]
        return urlunsplit(parts._replace(netloc=f"***@{host}"))
    scheme, sep, rest = url.partition("://")
    before_at = rest.rpartition("@")[0]
    if sep and ":" in before_at:  # a password with '/', '?' or '#' in it ends the authority early:
        return f"{scheme}://***@{rest.rpartition('@')[2]}"  # hide too much rather than leak it
    return url


_URL_WITH_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^\s/?#]+@")


def scrub_userinfo(text: str) -> str:
    """Free text (an exception message, a log line) with the userinfo of every URL in it hidden:
    libraries quote the URL they were given, password included."""
    return _URL_WITH_USERINFO.sub(r"\1***@", text)
