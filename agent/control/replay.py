"""Freshness and replay protection for commands.

A request is refused when it is stale (its `ts` older than `control.max_age_s`) or from the future,
judged on the node's *trusted* clock (NTP, or GNSS time even when the system clock is wrong), and
when its id or nonce was seen before. Ids and nonces are remembered for as long as a replay could
still pass the freshness check, not a fixed number of them:

- with a `ts` and a time reference, until `ts` is older than the freshness window (after that the
  freshness check refuses it anyway);
- otherwise for at least the window measured in spool uptime (the node's running time, which
  survives restarts and never runs faster than real time);
- a signed request on a node that has never had a trusted clock has no time reference: it is kept
  until the memory is full, then the oldest that are past the window in running time go first.

The time reference when the clock is not trusted (a Pi that lost NTP and GNSS after a reboot) is
the last trusted time the node saw plus the running time since: a lower bound of the real time, so
it never refuses a fresh request, and old captured requests are still recognised as stale.

The memory is persisted with the spool's metadata (`put_meta`), written with the commit that carries
the command's reply: no file of its own, no extra write on the SD card.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from agent.control.protocol import FUTURE_SLACK_S, CommandError

log = logging.getLogger(__name__)

META_KEY = "control.replay"


class MetaStore(Protocol):
    def put_meta(self, key: str, value: str) -> None: ...

    def get_meta(self, key: str) -> str | None: ...


@dataclass
class Seen:
    uptime: float  # spool uptime when the request was admitted
    ts: float | None  # the request's own time, when it had one
    signed: bool


def _key(text: str) -> str:
    """64 bits of a request id or nonce: enough to recognise a replay, and a fixed small size."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class ReplayGuard:
    def __init__(
        self,
        store: MetaStore,
        uptime: Callable[[], float],
        *,
        max_age_s: float,
        capacity: int,
        legacy_file: Path | None = None,
    ) -> None:
        self.store = store
        self.uptime = uptime
        self.max_age_s = max_age_s
        self.capacity = capacity
        self._seen: dict[str, Seen] = {}
        self._floor: tuple[float, float] | None = None  # (trusted wall time, spool uptime then)
        self._lock = threading.Lock()
        self._load()
        if legacy_file is not None:
            self._adopt(legacy_file)

    # -- persistence ---------------------------------------------------------------------------------
    def _load(self) -> None:
        raw = self.store.get_meta(META_KEY)
        if not raw:
            return
        try:
            data = json.loads(raw)
            floor = data.get("floor")
            if isinstance(floor, list) and len(floor) == 2:
                self._floor = (float(floor[0]), float(floor[1]))
            for key, up, ts, signed in data.get("seen", []):
                self._seen[str(key)] = Seen(float(up), None if ts is None else float(ts), bool(signed))
        except (ValueError, TypeError, AttributeError) as exc:
            log.warning("forgetting an unreadable replay memory: %s", exc)

    def _adopt(self, path: Path) -> None:
        """Ids remembered by an older agent (control/request-ids.json): kept for one more window."""
        try:
            items = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable request-id memory %s: %s", path, exc)
            items = []
        now = self.uptime()
        for item in items if isinstance(items, list) else []:
            if isinstance(item, list) and item:
                self._seen.setdefault(_key(f"id:{item[0]}"), Seen(now, None, False))
        self._save()
        path.unlink(missing_ok=True)

    def _save(self) -> None:
        seen = [[k, round(s.uptime, 1), s.ts, int(s.signed)] for k, s in self._seen.items()]
        body: dict[str, Any] = {"v": 1, "floor": list(self._floor) if self._floor else None, "seen": seen}
        self.store.put_meta(META_KEY, json.dumps(body, separators=(",", ":")))

    # -- time -------------------------------------------------------------------------------------------
    def reference(self, trusted_now: float | None) -> float | None:
        """The current time if trusted, else a lower bound of it, else None."""
        if trusted_now is not None:
            return trusted_now
        if self._floor is None:
            return None
        wall, up = self._floor
        return wall + max(0.0, self.uptime() - up)

    # -- admission -------------------------------------------------------------------------------------
    def admit(
        self, *, request_id: str, nonce: str | None, ts: float | None, signed: bool, trusted_now: float | None
    ) -> None:
        """Refuse (CommandError) a stale, future or replayed request; otherwise remember it."""
        with self._lock:
            now_up = self.uptime()
            if trusted_now is not None:
                self._floor = (trusted_now, now_up)
            reference = self.reference(trusted_now)
            if ts is not None:
                self._check_time(ts, reference, trusted=trusted_now is not None, signed=signed)
            keys = [_key(f"id:{request_id}")] + ([_key(f"nonce:{nonce}")] if nonce else [])
            if any(k in self._seen for k in keys):
                what = "request id" if keys[0] in self._seen else "nonce"
                raise CommandError(f"duplicate {what} (a replayed or re-delivered request); nothing done")
            self._forget(now_up, reference, trusted=trusted_now is not None, room_for=len(keys))
            for key in keys:
                self._seen[key] = Seen(now_up, ts, signed)
            self._save()

    def _check_time(self, ts: float, reference: float | None, *, trusted: bool, signed: bool) -> None:
        if reference is None or (not trusted and not signed):
            return  # an unsigned ts on an untrusted clock proves nothing either way: a 1970 Pi obeys a restart
        age = reference - ts
        if age > self.max_age_s:
            basis = "" if trusted else " (by the last trusted time plus the running time since)"
            raise CommandError(
                f"stale request: made {age:.0f}s ago{basis}, more than control.max_age_s = {self.max_age_s:g}"
            )
        if trusted and -age > FUTURE_SLACK_S:
            raise CommandError(f"request time is {-age:.0f}s in the future; check the sender's clock")

    def _forget(self, now_up: float, reference: float | None, *, trusted: bool, room_for: int) -> None:
        window = self.max_age_s + FUTURE_SLACK_S

        def expired(seen: Seen) -> bool:
            if seen.ts is not None and reference is not None and (trusted or seen.signed):
                return reference - seen.ts > window  # a replay would be refused as stale now
            if seen.signed and seen.ts is not None:
                return False  # no time reference yet: only the capacity may push it out
            return now_up - seen.uptime > window

        for key in [k for k, s in self._seen.items() if expired(s)]:
            del self._seen[key]
        excess = len(self._seen) + room_for - self.capacity
        if excess <= 0:
            return
        old = sorted(
            (s.uptime, k) for k, s in self._seen.items() if now_up - s.uptime > self.max_age_s
        )[:excess]
        for _, key in old:
            del self._seen[key]
        if len(self._seen) + room_for > self.capacity:
            raise CommandError(
                f"too many recent requests to remember ({len(self._seen)}, control.remember_ids = "
                f"{self.capacity}); retry later"
            )

    def __len__(self) -> int:
        return len(self._seen)

    def keys(self) -> Iterable[str]:
        return list(self._seen)
