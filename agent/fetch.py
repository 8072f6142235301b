"""Verified, resumable, bounded downloads: models (`agent models fetch`, `model/update`) and agent
releases (`agent/update`) come over the same metered, flaky LTE link and go through this one module.

A node on a pole sits inside a mobile operator's or a city's network. A remote command that makes
it fetch a URL must not become a way to look around that network or to fill its disk:

- only `http` and `https`, at the start and after every redirect (urllib's default opener would
  follow a redirect to `ftp://` and also speaks `file:` and `data:`; this opener speaks HTTP(S) alone);
- only the policy's hosts, when it names any (`control.model_hosts`), checked at every hop;
- the bytes written are bounded twice: by `max_bytes` (the updates folder's cap), and by the free
  space that must stay on the filesystem (`reserve`: the spool's floor plus what its budget still
  allows it to grow), so a download can never push the spool into evicting events;
- whatever goes wrong is a `FetchError` whose `str()` a remote requester may see (one and the same
  words for every network failure and wrong file, so a URL cannot be used to probe what answers
  where; only the node's own limits are named) and whose
  `detail` says what really happened, for the local log and for the command line.

The data goes to ``DEST.part`` and is fsync'd; a cut link keeps the part file for the next attempt,
which asks for the rest with a Range request. Only a file with the expected sha256 is renamed into
place, so a cut link or a wrong file never replaces anything that works; a wrong file, a refused
redirect or an overrun deletes the part at once.
"""

from __future__ import annotations

import hashlib
import http.client
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

CHUNK = 1 << 16
MAX_REDIRECTS = 5
TIMEOUT_S = 30.0
SCHEMES = ("http", "https")
GENERIC = "download failed (the reason is in the node's log)"  # every network failure, word for word

Progress = Callable[[int, int | None], None]  # (bytes so far, total if announced); may raise to cancel


class FetchError(Exception):
    """A fetch that failed. `str()` is what a remote requester may see; `detail` is the real reason.
    `resumable`: the link was cut and `kept` bytes wait in the part file for the next attempt."""

    def __init__(
        self, public: str, detail: str | None = None, *, kept: int = 0, resumable: bool = False
    ) -> None:
        super().__init__(public)
        self.detail = detail or public
        self.kept = kept
        self.resumable = resumable


class _Refused(Exception):
    """Raised inside the opener when a redirect goes where the policy does not allow."""


class _NoRoom(Exception):
    """The file does not fit under `max_bytes` or would eat into the reserve."""


@dataclass(frozen=True)
class FetchPolicy:
    hosts: tuple[str, ...] = ()  # host or host:port; empty: any
    schemes: tuple[str, ...] = SCHEMES  # + "file" for a mirror on a local disk (`agent models fetch`)
    max_bytes: int = 512 * 1024 * 1024  # the most this file may have
    reserve: Callable[[], int] = field(default=lambda: 0)  # bytes that must stay free on the filesystem

    def url_problem(self, url: str) -> str | None:
        """Why `url` may not be fetched (checked before any connection), or None."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            return "url is not a valid URL"
        if parts.scheme not in self.schemes:
            allowed = " or ".join(f"{s}://" for s in self.schemes)
            return f"url must be {allowed}, not {parts.scheme or 'no scheme'}"
        if parts.scheme == "file":
            return None
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
    """HTTP(S) only (and file: if the policy allows it): no ftp: or data: handlers, redirects checked
    against the policy."""
    director = urllib.request.OpenerDirector()
    if "file" in policy.schemes:
        director.add_handler(urllib.request.FileHandler())
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

    def __init__(self, path: Path, policy: FetchPolicy, *, append: bool) -> None:
        self.path = path
        self.policy = policy
        self.done = 0
        self.digest = hashlib.sha256()
        if append:
            with path.open("rb") as fh:
                while chunk := fh.read(CHUNK):
                    self.digest.update(chunk)
                    self.done += len(chunk)
        self.out = path.open("ab" if append else "wb")

    def write(self, chunk: bytes) -> None:
        if self.done + len(chunk) > self.policy.max_bytes:
            raise _NoRoom(f"more than the {self.policy.max_bytes} allowed")
        if _room(self.path.parent, self.policy.reserve()) < len(chunk):
            raise _NoRoom("the spool needs the remaining disk space (its free-space floor and budget)")
        self.out.write(chunk)
        self.digest.update(chunk)
        self.done += len(chunk)

    def close(self) -> None:
        self.out.flush()
        os.fsync(self.out.fileno())
        self.out.close()


def part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def download(
    url: str,
    dest: Path,
    sha256: str,
    policy: FetchPolicy,
    *,
    progress: Progress | None = None,
    timeout: float = TIMEOUT_S,
) -> Path:
    """Fetch `url` into `dest` (resuming `dest.part`) if its digest is `sha256`; FetchError otherwise.
    `progress(done, total)` runs after every chunk; an exception it raises cancels and keeps the part."""
    problem = policy.url_problem(url)
    if problem is not None:
        raise FetchError(f"{problem}; nothing was fetched")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    have = part.stat().st_size if part.exists() else 0
    if have > policy.max_bytes:
        part.unlink()
        have = 0
    request = urllib.request.Request(url, headers={"User-Agent": f"vigil-agent/{agent.__version__}"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    keep_part = True  # a cut link, an HTTP error or a cancel keeps what came for the next attempt
    try:
        with opener(policy).open(request, timeout=timeout) as response:
            resumed = bool(have) and response.status == 206  # else the server ignored the range
            length = response.headers.get("Content-Length")
            total = (
                (have if resumed else 0) + int(length) if length is not None and length.isdigit() else None
            )
            if total is not None and total > policy.max_bytes:
                raise _NoRoom(f"{total} bytes, more than the {policy.max_bytes} allowed")
            sink = _Sink(part, policy, append=resumed)
            try:
                while chunk := response.read(CHUNK):
                    sink.write(chunk)
                    if progress is not None:
                        progress(sink.done, total)
            finally:
                sink.close()
            if total is not None and sink.done < total:
                raise ConnectionError(f"connection closed after {sink.done} of {total} bytes")
            got = sink.digest.hexdigest()
    except urllib.error.HTTPError as exc:
        if not (exc.code == 416 and have):  # asked past the end: the part may be complete
            raise FetchError(GENERIC, f"{url}: HTTP {exc.code} {exc.reason}") from None
        got = sha256_file(part)
    except _Refused as exc:
        keep_part = False
        raise FetchError(GENERIC, f"{url}: {exc}; refused") from None
    except _NoRoom as exc:  # the node's own limits: safe to say, and what the requester must change
        keep_part = False
        raise FetchError(f"{exc}; refused", f"{url}: {exc}; refused") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        kept = part.stat().st_size if part.exists() else 0
        raise FetchError(
            GENERIC,
            f"cannot download {url}: {reason} ({kept} bytes kept for resuming)",
            kept=kept,
            resumable=True,
        ) from None
    finally:
        if not keep_part:
            part.unlink(missing_ok=True)
    if got != sha256:
        part.unlink(missing_ok=True)
        raise FetchError(GENERIC, f"{url} has sha256 {got}, not the requested {sha256}; refused and deleted")
    part.replace(dest)
    return dest


def copy_verified(source: Path, dest: Path, sha256: str, policy: FetchPolicy) -> Path:
    """Copy a local file into `dest` within the same bounds; refused (and nothing kept) unless its
    digest is `sha256`. The message never says what the file's digest is."""
    tmp = part_path(dest)
    try:
        with source.open("rb") as src:
            sink = _Sink(tmp, policy, append=False)
            try:
                while chunk := src.read(CHUNK):
                    sink.write(chunk)
            finally:
                sink.close()
        if sink.digest.hexdigest() != sha256:
            raise FetchError(f"{source.name} does not have the requested sha256; refused")
        tmp.replace(dest)
        return dest
    except _NoRoom as exc:
        raise FetchError(f"cannot import {source.name}: {exc}") from None
    except OSError as exc:
        raise FetchError(f"cannot read {source.name} ({exc.strerror})") from None
    finally:
        tmp.unlink(missing_ok=True)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def usage(folder: Path, skip: Iterable[Path] = ()) -> int:
    """Bytes the files directly in `folder` take, except `skip`."""
    skipped = {p.resolve() for p in skip}
    total = 0
    for path in folder.glob("*") if folder.is_dir() else ():
        if path.is_file() and path.resolve() not in skipped:
            total += path.stat().st_size
    return total
