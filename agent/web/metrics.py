"""/metrics for sites that scrape: Prometheus metric families built from the status report at scrape
time, in a registry of our own (nothing in the process-global registry, nothing updated between
scrapes), so a scrape costs one status collection and an idle node pays nothing."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.health.status import camera_flags

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _gauge(name: str, doc: str, value: Any) -> Iterator[Metric]:
    """One gauge, or nothing when the value is unknown (no thermal zone, no modem…)."""
    if value is None:
        return
    family = GaugeMetricFamily(name, doc)
    family.add_metric([], float(value))
    yield family


class StatusMetrics(Collector):
    def __init__(self, status: Callable[[], dict[str, Any]], unauthorized: Callable[[], int]) -> None:
        self._status = status
        self._unauthorized = unauthorized

    def collect(self) -> Iterator[Metric]:
        s = self._status()
        yield from self._identity(s)
        yield from self._pipeline(s)
        yield from self._system(s["system"])
        yield from self._spool(s["spool"])
        yield from self._stages(s["stages"])
        refused = CounterMetricFamily("vigil_http_unauthorized", "Status page requests refused without a valid token.")
        refused.add_metric([], self._unauthorized())
        yield refused

    def _identity(self, s: dict[str, Any]) -> Iterator[Metric]:
        info = InfoMetricFamily("vigil_agent", "Node identity and versions.")
        versions = s["versions"]
        info.add_metric([], {
            "node": s["node"],
            "agent": versions["agent"] or "",
            "model": versions["model"] or "",
            "model_sha256": versions["model_sha256"] or "",
            "onnxruntime": versions["onnxruntime"] or "",
        })
        yield info
        yield from _gauge("vigil_uptime_seconds", "Seconds since the agent started.", s["uptime_s"])
        yield from _gauge("vigil_clock_trusted", "1 when the wall clock is synchronised (NTP or GNSS).",
                     int(s["clock"]["trusted"]))

    def _pipeline(self, s: dict[str, Any]) -> Iterator[Metric]:
        p, c = s["pipeline"], s["capture"]
        counters = (
            ("vigil_capture_frames", "Frames read from the source.", c["frames_read"]),
            ("vigil_capture_dropped_frames", "Frames dropped because analysis was busy (newest wins).", c["dropped"]),
            ("vigil_capture_reconnects", "Times a live source was reopened.", c["reconnects"]),
            ("vigil_capture_stream_drops", "Times a live source that delivered frames went away.", c["drops"]),
            ("vigil_capture_down_seconds", "Seconds a live source was away (the current outage included).",
             c["down_s"]),
            ("vigil_analysed_frames", "Frames analysed.", p["frames"]),
            ("vigil_detector_runs", "Detector runs (motion-gated).", p["detector"]["runs"]),
            ("vigil_events", "Events emitted by the pipeline.", p["events"]),
        )
        for name, doc, value in counters:
            family = CounterMetricFamily(name, doc)
            family.add_metric([], value)
            yield family
        fps = GaugeMetricFamily("vigil_fps", "Recent frames per second by stage.", labels=["stage"])
        for stage, value in p["fps"].items():
            if value is not None:
                fps.add_metric([stage], value)
        yield fps
        inference = GaugeMetricFamily("vigil_inference_ms", "Detector inference time, recent quantiles.",
                                      labels=["quantile"])
        for q, key in (("0.5", "p50"), ("0.95", "p95")):
            if p["inference_ms"][key] is not None:
                inference.add_metric([q], p["inference_ms"][key])
        yield inference
        yield from _gauge("vigil_motion_gate_ratio", "Share of frames sent to the detector.",
                     p["motion_gate"]["ratio"])

    def _system(self, system: dict[str, Any]) -> Iterator[Metric]:
        for name, doc, key in (
            ("vigil_cpu_percent", "CPU used by the agent (100 = one core).", "cpu_percent"),
            ("vigil_cpu_temperature_celsius", "CPU temperature.", "cpu_temp_c"),
            ("vigil_memory_rss_bytes", "Resident memory of the agent.", "rss_bytes"),
            ("vigil_disk_free_bytes", "Free space on the state directory's filesystem.", "disk_free_bytes"),
        ):
            yield from _gauge(name, doc, system.get(key))
        if system.get("throttled") is not None:
            yield from _gauge("vigil_throttled", "vcgencmd get_throttled bits (0: never throttled).",
                         int(system["throttled"], 16))

    def _spool(self, spool: dict[str, Any]) -> Iterator[Metric]:
        if "classes" not in spool:
            return
        depth = GaugeMetricFamily("vigil_spool_records", "Records waiting in the spool.", labels=["class"])
        size = GaugeMetricFamily("vigil_spool_payload_bytes", "Payload bytes waiting in the spool.", labels=["class"])
        drops = CounterMetricFamily("vigil_spool_drops", "Records dropped by the spool.", labels=["class", "reason"])
        for name, c in spool["classes"].items():
            depth.add_metric([name], c["depth"])
            size.add_metric([name], c["bytes"])
            for reason, d in c["drops"].items():
                drops.add_metric([name, reason], d["count"])
        yield depth
        yield size
        yield drops

    def _stages(self, stages: dict[str, Any]) -> Iterator[Metric]:
        flags = camera_flags(stages)
        yield from _gauge("vigil_camera_ok", "1 when the camera streams, changes and is not tampered with.",
                     int(flags["ok"]))
        uplink = stages.get("uplink")
        if uplink and "link" in uplink:
            yield from _gauge("vigil_uplink_connected", "1 while connected to the broker.",
                         int(bool(uplink.get("connected"))))
            yield from _gauge("vigil_uplink_rate_bytes_per_second", "Measured uplink (acknowledged bytes/s).",
                              uplink["link"].get("rate_bps"))
            published = CounterMetricFamily("vigil_uplink_published", "Records acknowledged by the broker.")
            published.add_metric([], uplink.get("published") or 0)
            yield published
        link = (stages.get("modem") or {}).get("link") or {}
        if link:
            yield from _gauge("vigil_modem_up", "1 while the LTE link is registered and attached.",
                         int(bool(link.get("up"))))
            signal = link.get("signal") or {}
            for key, name in (("rssi_dbm", "vigil_modem_rssi_dbm"), ("rsrp_dbm", "vigil_modem_rsrp_dbm"),
                              ("sinr_db", "vigil_modem_sinr_db")):
                yield from _gauge(name, f"Modem signal: {key}.", signal.get(key))
        gnss = (stages.get("modem") or {}).get("gnss") or {}
        if gnss:
            fix = gnss.get("fix") or {}
            yield from _gauge("vigil_gnss_fix_mode", "GNSS fix mode (1 none, 2 2D, 3 3D).",
                         fix.get("mode") or 1)
            yield from _gauge("vigil_gnss_satellites_used", "Satellites used in the fix.", fix.get("sats_used"))


class MetricsEndpoint:
    """Owns the registry; `render()` is the body of GET /metrics."""

    def __init__(self, status: Callable[[], dict[str, Any]], unauthorized: Callable[[], int]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StatusMetrics(status, unauthorized))

    def render(self) -> bytes:
        return generate_latest(self.registry)
