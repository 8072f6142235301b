"""Verified, resumable, size-capped downloads: models (`agent models fetch`, `model/update`) and agent
releases (`agent/update`) come over the same metered, flaky LTE link and go through this one function.

The data goes to ``DEST.part`` first and is fsync'd as it comes; a cut link leaves the part file for
the next attempt, which asks for the rest with a Range request. Only a file with the expected sha256
is renamed into place, so a cut link or a wrong file never replaces anything that works. A source
that announces or sends more than ``max_bytes`` is refused (the node's disk also holds the spool).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import agent

Progress = Callable[[int, int | None], None]
CHUNK = 1 << 16


class DownloadError(Exception):
    """The download failed or was refused; `kept` is how many bytes wait in the part file for a resume."""

    def __init__(self, message: str, *, kept: int = 0, resumable: bool = False) -> None:
        super().__init__(message)
        self.kept = kept
        self.resumable = resumable


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def download(
    url: str,
    dest: Path,
    sha256: str,
    *,
    max_bytes: int,
    progress: Progress | None = None,
    timeout: float = 30.0,
    hint: str = "",
) -> Path:
    """Fetch `url` into `dest` (resuming `dest.part`), check its sha256, rename it into place.

    `progress(done, total)` is called after every chunk (it may raise to cancel; the part file is
    kept). `hint` is added to connection errors (e.g. how to use a mirror).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    have = part.stat().st_size if part.exists() else 0
    if have > max_bytes:
        part.unlink()
        have = 0
    request = urllib.request.Request(url, headers={"User-Agent": f"vigil-agent/{agent.__version__}"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if have and getattr(response, "status", None) != 206:  # the server ignored the range
                have = 0
            length = response.headers.get("Content-Length")
            total = have + int(length) if length is not None else None
            if total is not None and total > max_bytes:
                raise DownloadError(f"{url} is {total} bytes, more than the {max_bytes} allowed; refused")
            _receive(response, part, have, total, max_bytes, url, progress)
    except urllib.error.HTTPError as exc:
        if not (exc.code == 416 and have):  # 416 with a part file: it may already be complete
            raise DownloadError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        kept = part.stat().st_size if part.exists() else 0
        extra = f"{hint}; " if hint else ""
        raise DownloadError(
            f"cannot download {url}: {reason} ({extra}{kept} bytes kept for resuming)", kept=kept, resumable=True
        ) from None
    got = sha256_of(part)
    if got != sha256:
        bad = part.with_name(part.name + ".rejected")
        part.replace(bad)
        raise DownloadError(f"download of {url} has sha256 {got}, expected {sha256}; refused (kept as {bad.name})")
    part.replace(dest)
    return dest


def _receive(
    response: http.client.HTTPResponse,
    part: Path,
    have: int,
    total: int | None,
    max_bytes: int,
    url: str,
    progress: Progress | None,
) -> None:
    with part.open("ab" if have else "wb") as out:
        done = have
        try:
            while chunk := response.read(CHUNK):
                done += len(chunk)
                if done > max_bytes:
                    out.close()
                    part.unlink(missing_ok=True)
                    raise DownloadError(f"{url} sends more than {max_bytes} bytes; refused")
                out.write(chunk)
                if progress is not None:
                    progress(done, total)
        finally:
            if not out.closed:
                out.flush()
                os.fsync(out.fileno())
    if total is not None and done < total:
        raise ConnectionError(f"connection closed after {done} of {total} bytes")
