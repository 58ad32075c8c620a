"""Prometheus exposition of pool statistics: a sink that turns stats records into gauges.

``PrometheusStatsSink`` sets one gauge per statistic, labelled by ``worker``, from each stats
record (the dicts the pipeline's statistics emit), and serves them over HTTP with
``prometheus_client``. Monotonic totals (hits, ticks, ...) are exposed as gauges named
``*_total`` because the records carry absolute totals, which a Prometheus counter cannot be set
to. ``rate()`` works on them as on counters.

A live source's counters (``feed_*``, ``kafka_*``: :data:`SOURCE_TOTALS`) belong to the
process, not to a worker: every worker's record repeats the same numbers. They are exported
*without* the ``worker`` label, once per process, so ``sum()`` over them does not count them
once per worker.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any, Final
from weakref import WeakKeyDictionary

from bytewax.outputs import DynamicSink, StatelessSinkPartition
from prometheus_client import REGISTRY, CollectorRegistry, Gauge, start_http_server
from typing_extensions import override

from tickpool.connectors.sinks import SupportsToDict, unwrap_item

__all__ = ["GAUGES", "LATENCY_QUANTILES", "SOURCE_TOTALS", "TOTALS", "PrometheusStatsSink"]

GAUGES: Final[Mapping[str, tuple[str, str, float]]] = {
    "hit_rate": ("tickpool_pool_hit_rate", "Pool hit rate since start.", 1.0),
    "interval_hit_rate": (
        "tickpool_pool_interval_hit_rate",
        "Pool hit rate over the last interval.",
        1.0,
    ),
    "limit": ("tickpool_pool_limit", "Pool buffer count limit.", 1.0),
    "leased": ("tickpool_pool_leased", "Pool buffers leased out.", 1.0),
    "free": ("tickpool_pool_free", "Pool buffers free.", 1.0),
    "bytes_held": ("tickpool_pool_bytes_held", "Bytes held by the pool.", 1.0),
    "ticks_per_s": ("tickpool_ticks_per_second", "Ticks processed per second.", 1.0),
    "predictions_per_s": (
        "tickpool_predictions_per_second",
        "Predictions emitted per second.",
        1.0,
    ),
}
"""Stats key -> (metric name, help, scale) for instantaneous values."""

TOTALS: Final[Mapping[str, tuple[str, str]]] = {
    "hits": ("tickpool_pool_hits_total", "Pool leases served from a free buffer."),
    "misses": ("tickpool_pool_misses_total", "Pool leases that allocated."),
    "grows": ("tickpool_pool_grows_total", "Times the pool limit grew."),
    "shrinks": ("tickpool_pool_shrinks_total", "Times the pool limit shrank."),
    "evictions": ("tickpool_pool_evictions_total", "Idle buffers evicted."),
    "unpooled": ("tickpool_pool_unpooled_total", "Leases served outside the pool."),
    "ticks": ("tickpool_ticks_total", "Ticks processed."),
    "predictions": ("tickpool_predictions_total", "Predictions emitted."),
    "dead_letters": ("tickpool_dead_letters_total", "Rows sent to dead letters."),
}
"""Stats key -> (metric name, help) for monotonic totals (exposed as gauges, per worker)."""

SOURCE_TOTALS: Final[Mapping[str, tuple[str, str]]] = {
    "feed_received": ("tickpool_feed_received_total", "Feed records received (ticks + rejects)."),
    "feed_rejected": ("tickpool_feed_rejected_total", "Feed messages sent to dead letters."),
    "feed_dropped": ("tickpool_feed_dropped_total", "Feed frames dropped on a full queue."),
    "feed_oversize": ("tickpool_feed_oversize_total", "Feed frames over the size limit."),
    "feed_reconnects": ("tickpool_feed_reconnects_total", "Feed reconnections."),
    "kafka_messages": ("tickpool_kafka_messages_total", "Kafka messages consumed."),
    "kafka_undecodable": (
        "tickpool_kafka_undecodable_total",
        "Kafka messages or JSON ticks sent to dead letters.",
    ),
    "kafka_copied_rows": (
        "tickpool_kafka_copied_rows_total",
        "Tick rows copied to merge a poll's small Arrow messages into one item.",
    ),
}
"""Stats key -> (metric name, help) for a live source's process-wide totals: no worker label
(present in feed and Kafka runs; 0 otherwise)."""

LATENCY_QUANTILES: Final[Mapping[str, str]] = {
    "latency_ms_p50": "0.5",
    "latency_ms_p90": "0.9",
    "latency_ms_p99": "0.99",
}
"""Stats key (milliseconds) -> quantile label of ``tickpool_batch_latency_seconds``."""

_LATENCY: Final = ("tickpool_batch_latency_seconds", "Per-batch latency quantiles.")


class _Metrics:
    """The gauges, registered once in one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.gauges = {
            key: (Gauge(name, doc, ["worker"], registry=registry), scale)
            for key, (name, doc, scale) in GAUGES.items()
        }
        self.gauges.update(
            (key, (Gauge(name, doc, ["worker"], registry=registry), 1.0))
            for key, (name, doc) in TOTALS.items()
        )
        self.latency = Gauge(*_LATENCY, ["worker", "quantile"], registry=registry)
        self.process = {
            key: Gauge(name, doc, registry=registry) for key, (name, doc) in SOURCE_TOTALS.items()
        }

    def update(self, stats: Mapping[str, Any], worker: str) -> None:
        for key, (gauge, scale) in self.gauges.items():
            value = stats.get(key)
            if value is not None:
                gauge.labels(worker=worker).set(float(value) * scale)
        for key, quantile in LATENCY_QUANTILES.items():
            value = stats.get(key)
            if value is not None:
                self.latency.labels(worker=worker, quantile=quantile).set(float(value) / 1_000)
        for key, process_gauge in self.process.items():
            value = stats.get(key)
            if value is not None:
                process_gauge.set(float(value))


_lock = threading.Lock()
_metrics: WeakKeyDictionary[CollectorRegistry, _Metrics] = WeakKeyDictionary()
_servers: dict[tuple[int, str, int, int], int] = {}
"""(pid, addr, requested port, id(registry)) -> bound port: one HTTP server per process."""


def _metrics_for(registry: CollectorRegistry) -> _Metrics:
    with _lock:
        metrics = _metrics.get(registry)
        if metrics is None:
            metrics = _metrics[registry] = _Metrics(registry)
        return metrics


class _PrometheusPartition(StatelessSinkPartition[Any]):
    def __init__(self, metrics: _Metrics, worker: str) -> None:
        self._metrics = metrics
        self._worker = worker

    @override
    def write_batch(self, items: list[Any]) -> None:
        for item in items:
            stats = unwrap_item(item)
            if isinstance(stats, SupportsToDict):
                stats = stats.to_dict()
            if not isinstance(stats, Mapping):
                msg = f"PrometheusStatsSink expects stats dicts, got {type(stats).__name__}"
                raise TypeError(msg)
            self._metrics.update(stats, str(stats.get("worker", self._worker)))


class PrometheusStatsSink(DynamicSink[Any]):
    """Expose stats records as Prometheus gauges labelled by ``worker``, served over HTTP.

    Each record (a dict, keyed ``(str, dict)`` or not) sets the gauges of the keys it has;
    unknown keys are ignored and missing keys leave their gauge unchanged. Latencies arrive in
    milliseconds and are exposed in seconds as ``tickpool_batch_latency_seconds{quantile=...}``.
    The HTTP server starts once per process (at the first ``build``, or ``start()``), bound to
    ``addr``; ``port=0`` picks a free port, which ``port`` then reports.

    Args:
        port: the port to serve ``/metrics`` on (0: any free port).
        addr: the address to bind; 127.0.0.1 unless told otherwise.
        registry: where the gauges live (default: prometheus_client's global registry).
    """

    def __init__(
        self, port: int, addr: str = "127.0.0.1", registry: CollectorRegistry | None = None
    ) -> None:
        self._requested_port = port
        self._addr = addr
        self._registry = REGISTRY if registry is None else registry
        self._port: int | None = None

    @property
    def port(self) -> int:
        """The port served on once started (the bound one when asked for 0), else the one asked."""
        return self._requested_port if self._port is None else self._port

    def start(self) -> int:
        """Start the HTTP server unless this process already serves this registry there."""
        key = (os.getpid(), self._addr, self._requested_port, id(self._registry))
        with _lock:
            port = _servers.get(key)
            if port is None:
                server, _thread = start_http_server(
                    self._requested_port, self._addr, self._registry
                )
                port = _servers[key] = int(server.server_port)
        self._port = port
        return port

    @override
    def build(self, step_id: str, worker_index: int, worker_count: int) -> _PrometheusPartition:
        metrics = _metrics_for(self._registry)
        self.start()
        return _PrometheusPartition(metrics, str(worker_index))
