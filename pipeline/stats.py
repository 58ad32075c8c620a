"""Pool-statistics records: one per shard per interval, for the JSON-lines and Prometheus sinks.

A :class:`StatsTracker` turns the pool's cumulative counters and the stream's
counters into :class:`StatsRecord` s with interval rates (hit rate, ticks/s,
predictions/s) and per-batch latency percentiles.  Imports nothing from
``operators`` or ``connectors``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from tickpool.pipeline.pool import PoolStats

__all__ = ["SCHEMA_VERSION", "StatsRecord", "StatsTracker"]

SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True)
class StatsRecord:
    """One shard's statistics for one interval (schema version :data:`SCHEMA_VERSION`).

    Pool fields are the process-wide pool's (workers of one process share it);
    ``ticks``, ``predictions`` and ``dead_letters`` are this shard's running
    totals; ``*_per_s`` and ``latency_ms_*`` are over the interval.
    """

    schema: int
    time: str
    worker: str
    interval_s: float
    hits: int
    misses: int
    hit_rate: float
    interval_hit_rate: float
    leased: int
    free: int
    limit: int
    bytes_held: int
    peak_bytes: int
    grows: int
    shrinks: int
    evictions: int
    unpooled: int
    ticks: int
    predictions: int
    dead_letters: int
    batches: int
    ticks_per_s: float
    predictions_per_s: float
    latency_ms_p50: float
    latency_ms_p90: float
    latency_ms_p99: float

    def to_dict(self) -> dict[str, Any]:
        """The record as a JSON-ready dict."""
        return asdict(self)


class StatsTracker:
    """Accumulates per-batch latencies and emits interval records.

    Args:
        worker: the label records carry (the shard key).
        keep_latencies: how many recent batch latencies the percentiles use.
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(
        self,
        worker: str = "0",
        *,
        keep_latencies: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.worker = worker
        self._clock = clock
        self._latencies: deque[int] = deque(maxlen=keep_latencies)
        self._t_last = clock()
        self._last: tuple[int, int, int, int] | None = None  # ticks, predictions, hits, misses

    def observe(self, latency_ns: int) -> None:
        """Record one batch's processing time."""
        self._latencies.append(latency_ns)

    def record(
        self,
        pool: PoolStats,
        *,
        ticks: int,
        predictions: int,
        dead_letters: int,
        batches: int,
    ) -> StatsRecord:
        """A record of the interval since the previous call (or since creation)."""
        now = self._clock()
        dt = max(now - self._t_last, 1e-9)
        t0, p0, h0, m0 = self._last if self._last is not None else (0, 0, 0, 0)
        if self._last is None:
            # First interval: the pool may predate this tracker; count its leases anyway.
            h0, m0 = 0, 0
        dh, dm = pool.hits - h0, pool.misses - m0
        lat = np.fromiter(self._latencies, dtype=np.float64) / 1e6
        p50, p90, p99 = (
            (float(v) for v in np.percentile(lat, [50, 90, 99])) if lat.size else (0.0, 0.0, 0.0)
        )
        rec = StatsRecord(
            schema=SCHEMA_VERSION,
            time=datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            worker=self.worker,
            interval_s=round(dt, 6),
            hits=pool.hits,
            misses=pool.misses,
            hit_rate=pool.hit_rate,
            interval_hit_rate=dh / (dh + dm) if dh + dm else 1.0,
            leased=pool.leased,
            free=pool.free,
            limit=pool.limit,
            bytes_held=pool.bytes_held,
            peak_bytes=pool.peak_bytes,
            grows=pool.grows,
            shrinks=pool.shrinks,
            evictions=pool.evictions,
            unpooled=pool.unpooled,
            ticks=ticks,
            predictions=predictions,
            dead_letters=dead_letters,
            batches=batches,
            ticks_per_s=(ticks - t0) / dt,
            predictions_per_s=(predictions - p0) / dt,
            latency_ms_p50=p50,
            latency_ms_p90=p90,
            latency_ms_p99=p99,
        )
        self._t_last = now
        self._last = (ticks, predictions, pool.hits, pool.misses)
        self._latencies.clear()
        return rec
