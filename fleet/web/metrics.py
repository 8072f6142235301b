"""/metrics of the operators' page: Prometheus families built from the database at scrape time (one
snapshot per scrape, in a registry of our own), so several `serve` processes agree and nothing is
counted in memory that a restart would lose.

Names: `vigil_fleet_nodes{state}`, per node `vigil_fleet_node_online`, `vigil_fleet_node_events_total`,
`vigil_fleet_node_events_per_second` (last 5 minutes), `vigil_fleet_node_open_gaps`,
`vigil_fleet_node_missing_events`, `vigil_fleet_node_alarms`, `vigil_fleet_node_backlog_records`,
`vigil_fleet_node_backlog_oldest_seconds`, `vigil_fleet_node_last_seen_seconds`; and
`vigil_fleet_ingest_lag_seconds` (median delay from a live, trusted-clock event to its storage),
`vigil_fleet_ingester_heartbeat_age_seconds{ingester}`, `vigil_fleet_ingester_queue{ingester}`,
`vigil_fleet_quarantined_total{reason}`, `vigil_fleet_thumbnails{state}`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fleet.store.reader import NodeRow

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
NODE_GAUGES: tuple[tuple[str, str, Callable[[NodeRow, float], float | None]], ...] = (
    (
        "vigil_fleet_node_online",
        "1 when the node is online (retained status, heard from recently).",
        lambda r, now: float(r.state == "online"),
    ),
    (
        "vigil_fleet_node_open_gaps",
        "Open seq gaps (ranges of events not received).",
        lambda r, now: r.open_gaps,
    ),
    ("vigil_fleet_node_missing_events", "Events missing in open gaps.", lambda r, now: r.missing),
    ("vigil_fleet_node_alarms", "Open alarms (gaps open too long, seq reuse).", lambda r, now: r.alarms),
    (
        "vigil_fleet_node_backlog_records",
        "Records waiting in the node's spool (its last telemetry).",
        lambda r, now: r.backlog,
    ),
    (
        "vigil_fleet_node_backlog_oldest_seconds",
        "Age of the oldest record waiting in the node's spool.",
        lambda r, now: r.backlog_oldest_s,
    ),
    (
        "vigil_fleet_node_last_seen_seconds",
        "Seconds since anything arrived from the node.",
        lambda r, now: None if r.last_seen is None else max(0.0, now - r.last_seen),
    ),
)


class FleetMetrics(Collector):
    def __init__(self, snapshot: Callable[[], dict[str, Any]], unauthorized: Callable[[], int]) -> None:
        self._snapshot = snapshot
        self._unauthorized = unauthorized

    def collect(self) -> Iterator[Metric]:
        now = time.time()
        s = self._snapshot()
        nodes: list[NodeRow] = s["nodes"]
        by_state = GaugeMetricFamily("vigil_fleet_nodes", "Nodes by state.", labels=["state"])
        for state in ("online", "silent", "offline", "unknown"):
            by_state.add_metric([state], sum(1 for r in nodes if r.state == state))
        yield by_state
        for name, doc, value in NODE_GAUGES:
            family = GaugeMetricFamily(name, doc, labels=["node"])
            for row in nodes:
                found = value(row, now)
                if found is not None:
                    family.add_metric([row.node], float(found))
            yield family
        total = CounterMetricFamily(
            "vigil_fleet_node_events", "Distinct events stored per node.", labels=["node"]
        )
        rate = GaugeMetricFamily(
            "vigil_fleet_node_events_per_second",
            "Events stored per second (last 5 minutes).",
            labels=["node"],
        )
        for row in nodes:
            total.add_metric([row.node], row.received)
            rate.add_metric([row.node], s["events_per_s"].get(row.node, 0.0))
        yield total
        yield rate
        if s["ingest_lag_s"] is not None:
            lag = GaugeMetricFamily(
                "vigil_fleet_ingest_lag_seconds",
                "Median seconds from a live event (trusted clock) to its storage, last 5 minutes.",
            )
            lag.add_metric([], s["ingest_lag_s"])
            yield lag
        heartbeat = GaugeMetricFamily(
            "vigil_fleet_ingester_heartbeat_age_seconds",
            "Seconds since each ingest process last wrote its heartbeat.",
            labels=["ingester"],
        )
        queue = GaugeMetricFamily(
            "vigil_fleet_ingester_queue",
            "Messages each ingest process holds uncommitted.",
            labels=["ingester"],
        )
        connected = GaugeMetricFamily(
            "vigil_fleet_ingester_connected", "1 when the ingest process is connected.", labels=["ingester"]
        )
        for ing in s["ingesters"]:
            heartbeat.add_metric([ing["name"]], max(0.0, now - ing["heartbeat_at"]))
            queue.add_metric([ing["name"]], float(ing["stats"].get("queue", 0)))
            connected.add_metric([ing["name"]], float(ing["connected"]))
        yield heartbeat
        yield queue
        yield connected
        quarantined = CounterMetricFamily(
            "vigil_fleet_quarantined", "Messages refused by the ingest, by reason.", labels=["reason"]
        )
        for reason, count in sorted(s["quarantined"].items()):
            quarantined.add_metric([reason], count)
        yield quarantined
        thumbs = GaugeMetricFamily("vigil_fleet_thumbnails", "Stored thumbnails by state.", labels=["state"])
        for state, count in sorted(s["thumbs"].items()):
            thumbs.add_metric([state], count)
        yield thumbs
        refused = CounterMetricFamily(
            "vigil_fleet_http_unauthorized", "Page requests refused without a valid token."
        )
        refused.add_metric([], self._unauthorized())
        yield refused


class MetricsEndpoint:
    def __init__(self, snapshot: Callable[[], dict[str, Any]], unauthorized: Callable[[], int]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(FleetMetrics(snapshot, unauthorized))

    def render(self) -> bytes:
        return generate_latest(self.registry)
