"""The node's audit log: who changed what, and every request for a full frame.

Append-only JSON lines under <state_dir>/audit/audit.jsonl, one fsync'd write per entry (entries
are rare: config and rule changes, snapshot requests, model changes, starts, admin commands).

Tamper evidence (agent/privacy/auditkey.py has the key):
- every entry carries `mac`, an HMAC-SHA256 of the rest of the line keyed with the node secret
  (`kid` names the key), and `prev`, the `mac` of the entry before it: editing, removing or
  reordering entries breaks the chain for anyone who does not hold the key, and
  `agent privacy audit --verify` says where;
- the head (seq and mac of the newest entry) goes out in every telemetry record, and the back office
  keeps the heads it saw: a log rewound or rewritten after a head was published no longer matches
  it (`vigil-fleet status` shows the alarm; `--verify --head SEQ:MAC` checks a copy against it);
- the log is rotated by size and the oldest rotated file is dropped, but never while it holds a
  privacy-relevant entry (mask, zone, rule, snapshot, config, model changes) newer than the head
  the broker has acknowledged: a flood of cheap entries cannot push a mask change out of the kept
  history before the back office has seen the head that covers it. While that many files are
  held (keep × 4: a node offline for long), the log is `full`: the control plane refuses changes
  and rule snapshots are not sent until the node is back online, so it stays bounded without ever
  dropping such an entry.

Entries written before the log was keyed (older agents) carry the sha256 of the previous line.

Time: `ts` is the wall clock with `trusted` saying whether it was synchronised; `boot` and `mono`
order entries within one boot when it was not (field notes: no RTC on a Pi).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from agent.clock import Clock, boot_id, rfc3339
from agent.fsutil import atomic_write
from agent.privacy.auditkey import KEY_NAME, AuditKeyError, key_id, read_key

log = logging.getLogger(__name__)

FILE = "audit.jsonl"
PUBLISHED = "published.json"
GENESIS = "0" * 64
# Entries that must not be rotated out before the back office has seen a head covering them.
PRIVACY_ACTIONS = ("config.", "masks.", "zones.", "rules.", "snapshot.", "model.", "privacy.")
HELD_FACTOR = 4  # past keep × this many rotated files held for publication, changes are refused

_registry: dict[Path, AuditLog] = {}
_registry_lock = threading.Lock()


def _digest(line: str) -> str:
    return hashlib.sha256(line.encode()).hexdigest()


def _dump(entry: Mapping[str, Any]) -> str:
    return json.dumps(entry, separators=(",", ":"), sort_keys=True, default=str)


def is_privacy_relevant(action: str) -> bool:
    return action.startswith(PRIVACY_ACTIONS)


class AuditLog:
    """Thread-safe, append-only audit log. Use `agent.privacy.open_audit` to share one per folder.

    `key` keys the chain; without one, the key beside the log (audit.key) is used when it exists,
    else entries are chained with plain sha256 (tools reading a log; tests)."""

    def __init__(
        self,
        folder: Path,
        *,
        max_bytes: int = 1 << 20,
        keep: int = 5,
        clock: Clock | None = None,
        key: bytes | None = None,
    ) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.keep = keep
        self._clock = clock
        self._boot = clock.boot_id if clock is not None else boot_id()
        self._lock = threading.Lock()
        self.folder.mkdir(parents=True, exist_ok=True)
        if key is None and (folder / KEY_NAME).exists():
            try:
                key = read_key(folder / KEY_NAME)
            except AuditKeyError as exc:
                log.warning("%s; the audit log is not keyed", exc)
        self._key = key
        self.kid = key_id(key) if key is not None else None
        self._seq, self._prev, self._rekeyed_from, self._prev_keyed = self._tail()
        self.published_seq, published_mac = self._read_published()
        self._anchor_looked_up = True
        self._anchor = self._check_anchor(published_mac)

    @classmethod
    def open(cls, folder: Path, **kwargs: Any) -> AuditLog:
        """The process-wide log for `folder` (two writers on one file would break the chain)."""
        key = folder.expanduser().resolve()
        with _registry_lock:
            found = _registry.get(key)
            if found is None:
                found = _registry[key] = cls(key, **kwargs)
            return found

    @classmethod
    def existing(cls, folder: Path) -> AuditLog | None:
        with _registry_lock:
            return _registry.get(folder.expanduser().resolve())

    @property
    def path(self) -> Path:
        return self.folder / FILE

    # -- the chain ------------------------------------------------------------------------------------
    def _mac(self, body: str) -> str:
        assert self._key is not None
        return hmac.new(self._key, body.encode(), hashlib.sha256).hexdigest()

    def _link(self, line: str) -> tuple[str | None, str | None]:
        """(what the next entry's `prev` must be, the other key's id when this node cannot compute it)."""
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            return _digest(line), None
        mac = entry.get("mac") if isinstance(entry, dict) else None
        if not isinstance(mac, str):
            return _digest(line), None  # an unkeyed (older) entry
        if entry.get("kid") == self.kid:
            return mac, None
        return _digest(line), str(entry.get("kid"))  # keyed by another key: start a new keyed stretch

    def _tail(self) -> tuple[int, str, str | None, bool]:
        """Sequence number and link of the newest entry (current file, else newest rotated one), the
        key it was chained with if not ours, and whether it was keyed."""
        for path in (self.path, *self._rotated()):
            last = _last_line(path)
            if last is not None:
                try:
                    parsed = json.loads(last)
                    seq = int(parsed.get("seq", 0))
                    keyed = isinstance(parsed.get("mac"), str)
                except (ValueError, AttributeError):
                    seq, keyed = 0, False
                link, other = self._link(last)
                return seq, link or GENESIS, other, keyed
        return 0, GENESIS, None, True

    def head(self) -> dict[str, Any]:
        """What telemetry publishes: the newest entry's seq and mac (its chain link), and the anchor:
        the entry at the last head the broker acknowledged, as the log holds it now (its mac must be
        what the back office recorded for that seq: a log rewritten behind the last published head,
        even one that has grown past it again, shows there)."""
        with self._lock:
            head: dict[str, Any] = {"seq": self._seq, "mac": self._prev}
            if self._anchor is None and 0 < self.published_seq <= self._seq and not self._anchor_looked_up:
                # rewound below the published head at start: the entry now at that seq is the evidence
                self._anchor_looked_up = True
                link = self._entry_link(self.published_seq)
                self._anchor = (self.published_seq, link) if link is not None else None
            if self._anchor is not None:
                head["anchor"] = {"seq": self._anchor[0], "mac": self._anchor[1]}
            return head

    def _entry_link(self, seq: int) -> str | None:
        """The chain link (mac, or digest for an unkeyed entry) of entry `seq` in the kept files."""
        for path in (self.path, *self._rotated()):
            try:
                with path.open(encoding="utf-8", errors="replace") as fh:
                    for line in fh:
                        if f'"seq":{seq},' not in line:
                            continue
                        try:
                            entry = json.loads(line)
                        except json.JSONDecodeError:
                            continue
                        if entry.get("seq") == seq:
                            mac = entry.get("mac")
                            return mac if isinstance(mac, str) else _digest(line.rstrip("\n"))
            except FileNotFoundError:
                continue
        return None

    def _check_anchor(self, published_mac: str | None) -> tuple[int, str] | None:
        """At start: is the last published entry still in the log, unchanged? A log cut short or
        rewritten while the agent was not running is an error here, and shows in the back office."""
        if not self.published_seq:
            return None
        if self.published_seq > self._seq:
            log.error(
                "audit log rewound: it ends at entry %d, but a head at %d was published before", self._seq,
                self.published_seq,
            )
            self._anchor_looked_up = False  # head() names whatever entry takes that seq again
            return None
        current = self._entry_link(self.published_seq)
        if current is None:
            return None  # rotated out since: nothing to compare
        if published_mac is not None and current != published_mac:
            log.error("audit log rewritten: entry %d is not the one whose head was published", self.published_seq)
        return self.published_seq, current

    # -- writing --------------------------------------------------------------------------------------
    def record(self, action: str, actor: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
        """Append one entry and fsync it. `action` is dotted (config.change, snapshot.request,
        snapshot.sent, model.change, rules.update, masks.update, agent.start); `actor` says who or
        what asked (e.g. "mqtt:cmd/config/set id=42 by alice (admin, certificate …)", "rule:loitering")."""
        with self._lock:
            entry = self._append(action, actor, details or {})
        log.debug("audit: %s by %s", action, actor)
        return entry

    @property
    def full(self) -> bool:
        """Whether the log holds as many rotated files as it may while waiting for publication
        (keep × 4): the control plane then refuses changes, and rule snapshots are not sent, until
        the back office has seen the head (the node is back online)."""
        with self._lock:
            return len(self._rotated()) >= max(self.keep * HELD_FACTOR, self.keep + 4)

    def _append(self, action: str, actor: str, details: dict[str, Any]) -> dict[str, Any]:
        wall = time.time()
        trusted = bool(self._clock.state().trusted) if self._clock is not None else False
        entry: dict[str, Any] = {
            "seq": self._seq + 1,
            "ts": rfc3339(wall),
            "trusted": trusted,
            "boot": self._boot,
            "mono": round(time.monotonic(), 3),
            "action": action,
            "actor": actor,
            "details": details,
            "prev": self._prev,
        }
        if self._key is not None:
            entry["kid"] = self.kid
            if self._rekeyed_from is not None:
                entry["rekeyed_from"] = self._rekeyed_from
            if self._seq and not self._prev_keyed:
                entry["after_unkeyed"] = True  # vouches (under the key) for the older, unkeyed entries
            entry["mac"] = self._mac(_dump(entry))
        line = _dump(entry)
        self._rotate_if_needed(len(line) + 1)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, (line + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        self._seq = entry["seq"]
        self._prev = entry["mac"] if self._key is not None else _digest(line)
        self._prev_keyed = self._key is not None
        self._rekeyed_from = None
        return entry

    # -- publication and rotation -----------------------------------------------------------------------
    def _read_published(self) -> tuple[int, str | None]:
        try:
            data = json.loads((self.folder / PUBLISHED).read_text())
            mac = data.get("mac")
            return int(data["seq"]), mac if isinstance(mac, str) else None
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return 0, None

    def mark_published(self, seq: int, mac: str | None = None) -> None:
        """The broker acknowledged a telemetry record carrying the head (`seq`, `mac`): entries up to it
        may be rotated out. Written only when it moves (rarely: entries are rare)."""
        with self._lock:
            if seq <= self.published_seq:
                return
            self.published_seq = seq
            if mac is not None:
                self._anchor = (seq, mac)
            try:
                body = {"seq": seq, "mac": mac}
                atomic_write(self.folder / PUBLISHED, json.dumps(body).encode(), mode=0o640)
            except OSError as exc:
                log.warning("cannot save the published audit head: %s", exc)

    def _rotated(self) -> list[Path]:
        """Rotated files, newest (audit.1.jsonl) first."""
        found = []
        for path in self.folder.glob("audit.*.jsonl"):
            middle = path.name.split(".")[1]
            if middle.isdigit():
                found.append((int(middle), path))
        return [p for _, p in sorted(found)]

    def _unpublished_in(self, path: Path) -> list[int]:
        """Seqs of privacy-relevant entries in `path` the back office has not seen a head for."""
        held = []
        with path.open(encoding="utf-8", errors="replace") as fh:
            for line in fh:
                try:
                    entry = json.loads(line)
                    seq, action = int(entry["seq"]), str(entry["action"])
                except (ValueError, KeyError, TypeError):
                    continue
                if seq > self.published_seq and is_privacy_relevant(action):
                    held.append(seq)
        return held

    def _rotate_if_needed(self, incoming: int) -> None:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return
        if size + incoming <= self.max_bytes:
            return
        for path in reversed(self._rotated()):  # audit.N.jsonl becomes audit.N+1.jsonl, oldest first
            index = int(path.name.split(".")[1])
            os.replace(path, self.folder / f"audit.{index + 1}.jsonl")
        os.replace(self.path, self.folder / "audit.1.jsonl")
        rotated = self._rotated()
        while len(rotated) > self.keep:
            oldest = rotated[-1]
            held = self._unpublished_in(oldest)
            if held:  # never dropped before the back office has seen a head covering it
                log.info("audit: keeping %s: %d entries in it are not published yet", oldest.name, len(held))
                break
            oldest.unlink()
            rotated.pop()
        _fsync_dir(self.folder)

    # -- reading ---------------------------------------------------------------------------------------
    def files(self) -> list[Path]:
        """Oldest first."""
        return [*reversed(self._rotated()), *([self.path] if self.path.exists() else [])]

    def entries(self) -> Iterator[dict[str, Any]]:
        for path in self.files():
            with path.open(encoding="utf-8") as fh:
                for line in fh:
                    if line.strip():
                        yield json.loads(line)

    def verify(self, heads: Mapping[int, str] | None = None) -> list[str]:
        """Problems in the chain (empty: intact). The oldest kept entry starts the chain. `heads`
        (seq -> mac, e.g. what the back office recorded) must match the entries they name."""
        return _Verifier(self._key, self.kid, heads or {}).run(self.files())


class _Verifier:
    def __init__(self, key: bytes | None, kid: str | None, heads: Mapping[int, str]) -> None:
        self.key, self.kid, self.heads = key, kid, dict(heads)
        self.problems: list[str] = []
        self.prev_mac: str | None = None  # the previous entry's mac (None: it was unkeyed)
        self.prev_digest: str | None = None  # the previous line's sha256 (None: at the start)
        self.last_seq: int | None = None
        self.first_seq: int | None = None
        self.keyed_seen = False
        self.unvouched: list[str] = []  # unkeyed entries no keyed entry has vouched for yet

    def run(self, files: list[Path]) -> list[str]:
        for path in files:
            with path.open(encoding="utf-8") as fh:
                for number, raw in enumerate(fh, start=1):
                    line = raw.rstrip("\n")
                    if line:
                        self.line(f"{path.name}:{number}", line)
        if self.key is not None and self.unvouched:
            self.problems.append(
                f"{self.unvouched[0]}: {len(self.unvouched)} entries are not keyed and no keyed entry vouches for "
                "them (the log was rewritten without the key, or its keyed entries were removed)"
            )
        for seq in sorted(self.heads):
            if self.last_seq is None or seq > self.last_seq:
                self.problems.append(
                    f"the log ends at seq {self.last_seq or 0}, but a head at seq {seq} was published: "
                    "entries were removed (rewound)"
                )
        return self.problems

    def _check_mac(self, where: str, entry: dict[str, Any], mac: str) -> None:
        kid = entry.get("kid")
        if self.key is None:
            self.problems.append(f"{where}: keyed entry, but there is no key to check it (audit.key)")
        elif kid != self.kid:
            self.problems.append(f"{where}: keyed with another key ({kid}); check it with that key")
        else:
            body = {k: v for k, v in entry.items() if k != "mac"}
            expected = hmac.new(self.key, _dump(body).encode(), hashlib.sha256).hexdigest()
            if not hmac.compare_digest(expected, mac):
                self.problems.append(f"{where}: entry altered (its mac does not match)")

    def line(self, where: str, line: str) -> None:
        try:
            entry = json.loads(line)
            assert isinstance(entry, dict)
        except (json.JSONDecodeError, AssertionError):
            self.problems.append(f"{where}: not JSON")
            self.prev_mac = self.prev_digest = None
            return
        seq, mac = entry.get("seq"), entry.get("mac")
        if isinstance(mac, str):
            if not self.keyed_seen and entry.get("after_unkeyed") is True:
                self.unvouched = []  # the first keyed entry, under the key, says older entries were unkeyed
            self.keyed_seen = True
            self._check_mac(where, entry, mac)
        elif self.keyed_seen:
            self.problems.append(f"{where}: unkeyed entry after keyed ones (written without the key)")
        else:
            self.unvouched.append(where)
        if self.prev_digest is not None:
            # the link is the previous mac, unless it was unkeyed or this entry starts a new key's stretch
            use_mac = self.prev_mac is not None and "rekeyed_from" not in entry
            expected = self.prev_mac if use_mac else self.prev_digest
            if entry.get("prev") != expected:
                self.problems.append(f"{where}: chain broken (an earlier entry was altered or removed)")
        if self.last_seq is not None and seq != self.last_seq + 1:
            self.problems.append(f"{where}: seq {seq} follows {self.last_seq}")
        link = mac if isinstance(mac, str) else _digest(line)
        if isinstance(seq, int) and seq in self.heads and not hmac.compare_digest(self.heads[seq], link):
            self.problems.append(f"{where}: seq {seq} is not the entry whose head was published (rewritten)")
        self.prev_mac = mac if isinstance(mac, str) else None
        self.prev_digest = _digest(line)
        if isinstance(seq, int):
            self.last_seq = seq


def _last_line(path: Path) -> str | None:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 65536))
            lines = [ln for ln in fh.read().decode(errors="replace").splitlines() if ln.strip()]
    except FileNotFoundError:
        return None
    return lines[-1] if lines else None


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
