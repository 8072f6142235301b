"""Bounded, policy-checked fetching of model files for `model/update`.

A node on a pole sits inside a mobile operator's or a city's network. A remote command that makes
it fetch a URL must not become a way to look around that network or to fill its disk:

- only `http` and `https`, at the start and after every redirect (urllib would follow a redirect to
  `ftp://`, and its opener also speaks `file:` and `data:`; this opener speaks HTTP(S) alone);
- only the hosts in `control.model_hosts`, when it is set, checked at every hop;
- whatever goes wrong once a connection is tried (refused, reset, timed out, TLS, an HTTP status,
  a redirect that is not allowed, too big, the wrong digest) is one and the same `FetchError` for
  the requester; what really happened goes to the local log only;
- the bytes written are bounded twice: by the room left under the updates folder's cap, and by the
  free space the spool may still need (its floor plus what its budget still allows it to grow), so
  a download can never push the spool into evicting events;
- a file with the wrong digest is deleted at once; a download cut short keeps its `.part` (inside
  the cap) so the same request resumes it, and any other leftover is deleted before a new update.

Local files (`path`) come from one import folder only and are copied through the same checks; a
file whose digest is not the requested one is refused without saying what its digest is.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import agent

log = logging.getLogger(__name__)

CHUNK = 1 << 16
MAX_REDIRECTS = 5
TIMEOUT_S = 30.0
SCHEMES = ("http", "https")
GENERIC = "model download failed; the previous model stays (the reason is in the node's log)"

Progress = Callable[[int], None]


class FetchError(Exception):
    """A fetch that failed. `str()` is what the requester may see; `detail` is for the local log."""

    def __init__(self, public: str, detail: str | None = None) -> None:
        super().__init__(public)
        self.detail = detail or public


class _Refused(Exception):
    """Raised inside the opener when a redirect goes where the policy does not allow."""


class _NoRoom(Exception):
    """The file does not fit under the updates folder's cap or the spool's reserve."""


@dataclass
class FetchPolicy:
    hosts: list[str] = field(default_factory=list)  # host or host:port; empty: any
    max_bytes: int = 512 * 1024 * 1024  # the most this file may have
    reserve: Callable[[], int] = lambda: 0  # bytes that must stay free on the filesystem

    def url_problem(self, url: str) -> str | None:
        """Why `url` may not be fetched (checked before any connection), or None."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            return "url is not a valid URL"
        if parts.scheme not in SCHEMES:
            return f"url must be http:// or https://, not {parts.scheme or 'no scheme'}"
        host = (parts.hostname or "").rstrip(".")
        if not host:
            return "url has no host"
        if parts.username or parts.password:
            return "url must not carry a user name or password"
        effective = port if port is not None else (443 if parts.scheme == "https" else 80)
        if self.hosts and not any(_host_matches(host, effective, allowed) for allowed in self.hosts):
            return f"host {host} is not one of control.model_hosts ({', '.join(self.hosts)})"
        return None


def _host_matches(host: str, port: int, allowed: str) -> bool:
    """`allowed` is host or host:port ([v6]:port); a bare host allows any port."""
    try:
        parts = urlsplit("//" + allowed)
        allowed_port = parts.port
    except ValueError:
        return False
    return host.lower() == (parts.hostname or "") and (allowed_port is None or allowed_port == port)


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    max_redirections = MAX_REDIRECTS

    def __init__(self, policy: FetchPolicy) -> None:
        self.policy = policy

    def redirect_request(
        self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str, headers: Any, newurl: str
    ) -> urllib.request.Request | None:
        problem = self.policy.url_problem(newurl)
        if problem is not None:
            raise _Refused(f"redirect ({code}) to {newurl[:200]} refused: {problem}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def opener(policy: FetchPolicy) -> urllib.request.OpenerDirector:
    """HTTP(S) only: no ftp:, file: or data: handlers, redirects checked against the policy."""
    director = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler(),
        urllib.request.UnknownHandler(),
        urllib.request.HTTPHandler(),
        urllib.request.HTTPSHandler(context=ssl.create_default_context()),
        urllib.request.HTTPDefaultErrorHandler(),
        _CheckedRedirects(policy),
        urllib.request.HTTPErrorProcessor(),
    ):
        director.add_handler(handler)
    return director


def _room(folder: Path, reserve: int) -> int:
    stat = os.statvfs(folder)
    return stat.f_bavail * stat.f_frsize - reserve


class _Sink:
    """Writes chunks to `path` while they fit both bounds; hashes what it writes."""

    def __init__(self, path: Path, policy: FetchPolicy, *, append: bool, already: int) -> None:
        self.path = path
        self.policy = policy
        self.done = already
        self.digest = hashlib.sha256()
        if append:
            with path.open("rb") as fh:
                while chunk := fh.read(CHUNK):
                    self.digest.update(chunk)
        self.out = path.open("ab" if append else "wb")

    def write(self, chunk: bytes) -> None:
        if self.done + len(chunk) > self.policy.max_bytes:
            raise _NoRoom(f"more than the {self.policy.max_bytes} bytes the updates folder has room for")
        if _room(self.path.parent, self.policy.reserve()) < len(chunk):
            raise _NoRoom("the spool needs the remaining disk space (its free-space floor and budget)")
        self.out.write(chunk)
        self.digest.update(chunk)
        self.done += len(chunk)

    def close(self) -> None:
        self.out.flush()
        os.fsync(self.out.fileno())
        self.out.close()


def download(
    url: str, dest: Path, sha256: str, policy: FetchPolicy, *, progress: Progress | None = None,
    timeout: float = TIMEOUT_S,
) -> Path:
    """Fetch `url` into `dest` if its digest is `sha256`; FetchError (generic) otherwise.

    A cut download keeps `dest.part` for the next request of the same file (HTTP Range); a wrong
    digest, a refusal or an overrun deletes it."""
    problem = policy.url_problem(url)
    if problem is not None:
        raise FetchError(f"{problem}; nothing was fetched")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": f"vigil-agent/{agent.__version__}"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    keep_part = False
    try:
        with opener(policy).open(request, timeout=timeout) as response:
            resumed = bool(have) and response.status == 206
            length = response.headers.get("Content-Length")
            total = (have if resumed else 0) + int(length) if length is not None and length.isdigit() else None
            if total is not None and total > policy.max_bytes:
                raise _NoRoom(f"{total} bytes, more than the {policy.max_bytes} there is room for")
            sink = _Sink(part, policy, append=resumed, already=have if resumed else 0)
            try:
                keep_part = True  # from here a cut connection leaves something worth resuming
                while chunk := response.read(CHUNK):
                    sink.write(chunk)
                    if progress is not None:
                        progress(sink.done)
            finally:
                sink.close()
            if total is not None and sink.done < total:
                raise FetchError(GENERIC, f"connection closed after {sink.done} of {total} bytes (kept for resuming)")
            got = sink.digest.hexdigest()
        keep_part = False
        if got != sha256:
            raise FetchError(GENERIC, f"the file has sha256 {got}, not the requested {sha256}")
        part.replace(dest)
        return dest
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have and _digest(part) == sha256:  # asked past the end: it was complete
            part.replace(dest)
            return dest
        raise FetchError(GENERIC, f"HTTP {exc.code} {exc.reason}") from None
    except (_Refused, _NoRoom) as exc:
        keep_part = False
        raise FetchError(GENERIC, str(exc)) from None
    except FetchError as exc:
        if "kept for resuming" not in exc.detail:
            keep_part = False
        raise
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise FetchError(GENERIC, f"{type(exc).__name__}: {reason}") from None
    finally:
        if not keep_part:
            part.unlink(missing_ok=True)


def copy_verified(source: Path, dest: Path, sha256: str, policy: FetchPolicy) -> Path:
    """Copy a local file into `dest` within the same bounds; refused (and nothing kept) unless its
    digest is `sha256`. The message never says what the file's digest is."""
    tmp = dest.with_name(dest.name + ".part")
    try:
        with source.open("rb") as src:
            sink = _Sink(tmp, policy, append=False, already=0)
            try:
                while chunk := src.read(CHUNK):
                    sink.write(chunk)
            finally:
                sink.close()
        if sink.digest.hexdigest() != sha256:
            raise FetchError(f"{source.name} does not have the requested sha256; refused, the previous model stays")
        tmp.replace(dest)
        return dest
    except _NoRoom as exc:
        raise FetchError(f"cannot import {source.name}: {exc}; the previous model stays") from None
    except OSError as exc:
        raise FetchError(f"cannot read {source.name} ({exc.strerror}); the previous model stays") from None
    finally:
        tmp.unlink(missing_ok=True)


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def usage(folder: Path, skip: Iterable[Path] = ()) -> int:
    skipped = {p.resolve() for p in skip}
    total = 0
    for path in folder.glob("*") if folder.is_dir() else ():
        if path.is_file() and path.resolve() not in skipped:
            total += path.stat().st_size
    return total
