"""URL helpers shared by the stages that take one from the user (camera streams, brokers)."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def hide_userinfo(url: str) -> str:
    """The URL with any `user:password@` replaced by `***@`, for logs, errors and status pages.

    Only the authority part is looked at, so an `@` in a path or query is left alone.
    """
    try:
        parts = urlsplit(url)
    except ValueError:  # a malformed URL is reported as given, minus anything before its last '@'
        return url if "@" not in url else "***@" + url.rsplit("@", 1)[1]
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"***@{host}"))
