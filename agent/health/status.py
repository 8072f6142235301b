"""The node's state, assembled from the stages' own `status()` methods: the `status` command,
/status.json, /metrics and (in compact form) the periodic telemetry record all come from here.

Rates (fps) are measured over a sliding window of counter samples, so every consumer (the page every
two seconds, telemetry every minute, a Prometheus scrape) sees the same recent figures.
"""

from __future__ import annotations

import logging
import platform
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import agent
from agent.clock import rfc3339
from agent.privacy import open_audit
from agent.uplink.meter import percentile

if TYPE_CHECKING:
    from agent.app import Running
    from agent.config.schema import Config
    from agent.health.system import SystemProbe

log = logging.getLogger(__name__)

TELEMETRY_SCHEMA = "vigil.telemetry/1"


class Rates:
    """Per-second rates of monotonically increasing counters over the last `window_s` seconds."""

    def __init__(self, counters: Callable[[], dict[str, int]], *, window_s: float = 10.0) -> None:
        self._counters = counters
        self.window_s = window_s
        self._samples: deque[tuple[float, dict[str, int]]] = deque()
        self._lock = threading.Lock()

    def rates(self) -> dict[str, float | None]:
        now = time.monotonic()
        current = self._counters()
        with self._lock:
            if not self._samples or now - self._samples[-1][0] >= 0.5:
                self._samples.append((now, current))
            while len(self._samples) > 2 and now - self._samples[1][0] >= self.window_s:
                self._samples.popleft()
            first_mono, first = self._samples[0]
        elapsed = now - first_mono
        if elapsed < 0.5:
            return dict.fromkeys(current)
        # a counter that went backwards (a swapped detector starts at 0) restarts the window for it
        return {k: round(max(0, v - first.get(k, 0)) / elapsed, 2) for k, v in current.items()}


def _versions(running: Running) -> dict[str, Any]:
    try:
        import onnxruntime

        ort = onnxruntime.__version__
    except Exception:  # pragma: no cover - onnxruntime is a hard dependency
        ort = None
    import cv2

    info = running.detector.info()
    return {
        "agent": agent.__version__,
        "model": info.get("name"),
        "model_sha256": info.get("sha256"),
        "onnxruntime": ort,
        "opencv": cv2.__version__,
        "python": platform.python_version(),
    }


def _stage_status(stage: Any) -> dict[str, Any] | None:
    status = getattr(stage, "status", None)
    if status is None:
        return None
    try:
        return status()
    except Exception as exc:  # one broken stage must not take the whole report down
        log.exception("status() of %s failed", type(stage).__name__)
        return {"error": f"{type(exc).__name__}: {exc}"}


class StatusCollector:
    """Builds the full status and the compact telemetry record of a running agent."""

    def __init__(self, config: Callable[[], Config], running: Running, system: SystemProbe) -> None:
        self._config = config  # the agent's config now (replaced whole by live changes)
        self.running = running
        self.system = system
        self.started_mono = time.monotonic()
        self.rates = Rates(self._counters)
        self.rates.rates()  # the first sample now: the first status a page or report asks for has real rates

    def _counters(self) -> dict[str, int]:
        r = self.running
        return {
            "capture": r.capture.frames_read,
            "analysis": r.pipeline.stats.frames,
            "detect": int(getattr(r.pipeline.detector, "frames", 0)),
        }

    def pipeline(self) -> dict[str, Any]:
        r = self.running
        detector = r.pipeline.detector
        timings = list(getattr(detector, "inference_ms", ()))
        gate = r.pipeline.gate.stats
        rates = self.rates.rates()
        p50, p95 = percentile(timings, 50), percentile(timings, 95)
        return {
            **r.pipeline.stats.as_dict(),
            "fps": {"capture": rates.get("capture"), "analysis": rates.get("analysis"), "detect": rates.get("detect")},
            "inference_ms": {
                "p50": round(p50, 1) if p50 is not None else None,
                "p95": round(p95, 1) if p95 is not None else None,
                "samples": len(timings),
            },
            "motion_gate": {
                "enabled": r.pipeline.gate.cfg.enabled,
                "ratio": round(gate.ratio, 3),
                "frames": gate.frames,
                "detected": gate.detected,
                "reasons": dict(gate.reasons),
            },
            "detector": {
                "runs": int(getattr(detector, "frames", 0)),
                "score_threshold": getattr(detector, "score_threshold", None),
                "classes_problem": getattr(getattr(detector, "inner", detector), "classes_problem", None),
            },
            "rate_cap": {"max_fps": r.pipeline.max_fps, "skipped": r.pipeline.rate_skipped},
        }

    def capture(self) -> dict[str, Any]:
        c = self.running.capture
        snap = c.snapshot()
        return {
            "source": getattr(c.source, "name", "?"),
            "live": c.source.live,
            "frames_read": c.frames_read,
            "dropped": c.slot.dropped,
            "delivered": c.slot.delivered,
            "reconnects": c.reconnects,
            "lost": c.lost,
            "ended": c.slot.ended,
            # where the source stands: streaming / connecting / reconnecting / ended, why, since when,
            # the next attempt, drops and downtime (agent.capture.stage.CaptureSnapshot)
            **snap.as_dict(time.monotonic()),
        }

    def full(self) -> dict[str, Any]:
        """Everything: the `status` command's reply and /status.json."""
        r = self.running
        clock = r.clock.state()
        stages: dict[str, Any] = {}
        for name, stage in list(r.services.items()):
            found = _stage_status(stage)
            if found is not None:
                stages[name] = found
        try:
            spool = r.spool.stats()
        except Exception as exc:  # the spool closing during shutdown
            spool = {"error": str(exc)}
        return {
            "node": self._config().node.id,
            "site": self._config().node.site,
            "ts": rfc3339(time.time()),
            "uptime_s": round(time.monotonic() - self.started_mono, 1),
            "clock": {**clock.as_dict(), "boot": r.clock.boot_id},
            "versions": _versions(r),
            "capture": self.capture(),
            "pipeline": self.pipeline(),
            "system": self.system.sample(),
            "spool": spool,
            "stages": stages,
        }

    def telemetry(self, full: dict[str, Any] | None = None) -> dict[str, Any]:
        """The periodic telemetry record: small (under ~1.5 kB), flat enough to chart directly."""
        s = full or self.full()
        stages = s["stages"]
        pipeline, system, spool = s["pipeline"], s["system"], s["spool"]
        return {
            "schema": TELEMETRY_SCHEMA,
            "node": s["node"],
            "ts": s["ts"],
            "clock": {"source": s["clock"]["source"], "trusted": s["clock"]["trusted"]},
            "uptime_s": s["uptime_s"],
            "fps": pipeline["fps"],
            "inference_ms": {"p50": pipeline["inference_ms"]["p50"], "p95": pipeline["inference_ms"]["p95"]},
            "frames": {"read": s["capture"]["frames_read"], "dropped": s["capture"]["dropped"],
                       "analysed": pipeline["frames"]},
            "motion_gate_ratio": pipeline["motion_gate"]["ratio"],
            "events": pipeline["events"],
            "cpu": {"percent": system["cpu_percent"], "system_percent": system["cpu_percent_system"],
                    "temp_c": system["cpu_temp_c"], "throttled": system["throttled"]},
            "memory_rss_mb": _mb(system["rss_bytes"]),
            "disk_free_mb": _mb(system["disk_free_bytes"]),
            "spool": compact_spool(spool),
            "link": compact_link(stages.get("uplink")),
            "modem": compact_modem(stages.get("modem")),
            "gnss": compact_gnss(stages.get("modem")),
            "camera": camera_flags(stages),
            "versions": {k: s["versions"][k] for k in ("agent", "model", "model_sha256", "onnxruntime")},
            "audit": self.audit_head(),
        }

    def audit_head(self) -> dict[str, Any] | None:
        """The audit log's head: the back office keeps it and raises an alarm when a node's log is
        rewound or forked (agent.privacy.audit)."""
        try:
            cfg = self._config().privacy.audit
            return open_audit(self.running.state_dir, cfg, self.running.clock).head()
        except OSError:
            return None


# Every top-level field of the telemetry record, described for `agent privacy report` (a test keeps
# this in step with `StatusCollector.telemetry`).
TELEMETRY_FIELDS: dict[str, str] = {
    "schema": "record version",
    "node": "node id",
    "ts": "time of the record, with the clock's quality (`clock`)",
    "clock": "clock source and whether it is trusted",
    "uptime_s": "seconds since the agent started",
    "fps": "capture, analysis and detector frames per second",
    "inference_ms": "detector time per frame, p50/p95",
    "frames": "frames read, dropped and analysed (counts)",
    "motion_gate_ratio": "share of frames sent to the detector",
    "events": "number of events since start (no content)",
    "cpu": "CPU load, temperature, throttling",
    "memory_rss_mb": "the agent's memory",
    "disk_free_mb": "free space on the state filesystem",
    "spool": "records waiting, bytes, drops and the age of the oldest, per class",
    "link": "MQTT connection, link rate and round trip, bytes spent today",
    "modem": "LTE registration, technology, operator name, signal levels",
    "gnss": "the node's own GNSS fix (its position on the pole), satellites, HDOP",
    "camera": "camera health flags (stream, tamper)",
    "versions": "agent, model name and sha256, onnxruntime",
    "audit": "sequence number and keyed hash of the newest audit log entry (no content), so the back office "
    "can tell when the log is rewound or rewritten",
}


def _mb(value: int | None) -> float | None:
    return round(value / 1048576, 1) if value is not None else None


def compact_spool(spool: dict[str, Any]) -> dict[str, Any]:
    if "classes" not in spool:
        return {"error": spool.get("error")}
    classes = {
        name: {
            "depth": c["depth"],
            "bytes": c["bytes"],
            "drops": sum(d["count"] for d in c["drops"].values()),
            # how long the oldest record of the class has waited (spool uptime): the back office's backlog age
            "oldest_age_s": c.get("oldest_age_s"),
        }
        for name, c in spool["classes"].items()
    }
    return {"depth": spool["depth"], "bytes": spool.get("bytes"), "classes": classes}


def compact_link(uplink: dict[str, Any] | None) -> dict[str, Any] | None:
    if not uplink or "link" not in uplink:
        return None
    link = uplink["link"]
    return {
        "connected": uplink.get("connected"),
        "rate_bps": link.get("rate_bps"),
        "rtt_ms_p50": link.get("puback_rtt_ms_p50"),
        "rtt_ms_p95": link.get("puback_rtt_ms_p95"),
        "published": uplink.get("published"),
        "budget_spent_today": (uplink.get("budget") or {}).get("spent_today"),
    }


def compact_modem(modem: dict[str, Any] | None) -> dict[str, Any] | None:
    link = (modem or {}).get("link")
    if not link:
        return None
    signal = link.get("signal") or {}
    return {
        "state": link.get("state"),
        "up": link.get("up"),
        "technology": link.get("technology"),
        "operator": link.get("operator"),
        "rssi_dbm": signal.get("rssi_dbm"),
        "rsrp_dbm": signal.get("rsrp_dbm"),
        "rsrq_db": signal.get("rsrq_db"),
        "sinr_db": signal.get("sinr_db"),
    }


def compact_gnss(modem: dict[str, Any] | None) -> dict[str, Any] | None:
    gnss = (modem or {}).get("gnss")
    if not gnss:
        return None
    fix = gnss.get("fix") or {}
    return {
        "state": gnss.get("state"),
        "mode": fix.get("mode"),
        "sats": fix.get("sats_used"),
        "hdop": fix.get("hdop"),
        "lat": fix.get("lat"),
        "lon": fix.get("lon"),
        "age_s": fix.get("age_s"),
    }


def camera_flags(stages: dict[str, Any]) -> dict[str, Any]:
    """The camera's health in one place: stream (lost/stalled/frozen) and tamper (covered, moved…)."""
    camera = (stages.get("health") or {}).get("camera") or {}
    tamper = (stages.get("tamper") or {}).get("tamper") or {}
    state = camera.get("state", "unknown")
    tamper_state = tamper.get("state")
    ok = state == "ok" and tamper_state in (None, "ok", "learning")
    return {"ok": ok, "stream": state, "tamper": tamper_state}
