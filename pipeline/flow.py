"""``build_flow(config) -> Dataflow``: the replay job, usable with ``python -m bytewax.run``.

``build_feed_flow(config, feed)`` is the same job on a live WebSocket feed (``tickpool feed``).

Source (Arrow files) -> key by shard -> window normalization and prediction ->
sinks for predictions, dead letters, statistics (JSON lines, Prometheus).  One
buffer pool per process, shared by its workers.

Run it as a Bytewax cluster with ``from_toml`` (below) or a module that exposes the flow::

    # myflow.py
    from tickpool.pipeline.config import PipelineConfig
    from tickpool.pipeline.flow import build_flow
    flow = build_flow(PipelineConfig(sources=("ticks/*.arrow",), out="out", shards=4))

    python -m bytewax.run myflow:flow -w 2 -i 0 -a "$A" &   # A="host0:port;host1:port"
    python -m bytewax.run myflow:flow -w 2 -i 1 -a "$A"     # 4 workers in all, 4 shards
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeGuard

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from tickpool.connectors.arrow_source import ArrowReplaySource
from tickpool.connectors.metrics import PrometheusStatsSink
from tickpool.connectors.sinks import ArrowStreamSink, JsonLinesSink, StdoutSink
from tickpool.operators.dataflow import WindowStreams, shard_batches, window_predict
from tickpool.operators.items import DeadLetter, TickBatch, prediction_schema
from tickpool.operators.models import resolve_model
from tickpool.pipeline.config import PipelineConfig
from tickpool.pipeline.pool import BufferPool

if TYPE_CHECKING:  # the live feed (and websockets) is imported by build_feed_flow only
    from tickpool.connectors.websocket_source import FeedConfig, FeedItem

__all__ = [
    "RunObserver",
    "attach_job",
    "build_feed_flow",
    "build_flow",
    "from_toml",
    "process_pool",
]

_POOLS: dict[tuple[str, int], BufferPool] = {}
_POOLS_LOCK = threading.Lock()


def process_pool(config: PipelineConfig) -> BufferPool:
    """The process-wide pool for this configuration's tier and budget (workers share it)."""
    key = (config.pool_tier, config.pool_max_bytes)
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            pool = _POOLS[key] = BufferPool.for_tier(
                config.pool_tier, max_bytes=config.pool_max_bytes
            )
        return pool


class RunObserver:
    """Counts source rows as they pass and keeps each shard's latest stats record.

    The ``tickpool replay`` command reads it from another thread for its progress bar
    and its summary table.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.rows_read = 0
        self.latest: dict[str, dict[str, Any]] = {}

    def saw(self, item: TickBatch) -> None:
        with self._lock:
            self.rows_read += item.batch.num_rows

    def stats(self, record: dict[str, Any]) -> None:
        with self._lock:
            self.latest[str(record.get("worker", "0"))] = record


class _ObserverPartition(StatelessSinkPartition[Any]):
    def __init__(self, record: Callable[[dict[str, Any]], None]) -> None:
        self._record = record

    def write_batch(self, items: list[Any]) -> None:
        for item in items:
            self._record(item[1] if isinstance(item, tuple) else item)


class _ObserverSink(DynamicSink[Any]):
    def __init__(self, observer: RunObserver) -> None:
        self._observer = observer

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _ObserverPartition:
        return _ObserverPartition(self._observer.stats)


def build_flow(config: PipelineConfig, *, observer: RunObserver | None = None) -> Dataflow:
    """The replay dataflow for ``config``: Arrow files in, the window job, the sinks.

    Args:
        config: sources, window job, sinks (see :class:`PipelineConfig`).
        observer: receives row counts and stats records (for progress and summaries).
    """
    if not config.sources:
        raise ValueError("no sources: give at least one Arrow or Parquet file or glob")
    flow = Dataflow("tickpool_replay")
    ticks = op.input(
        "ticks",
        flow,
        ArrowReplaySource(
            list(config.sources),
            max_batch_rows=config.max_batch_rows,
            speed=config.speed,
            ts_column=config.ts_column,
        ),
    )
    attach_job(ticks, config, observer=observer)
    return flow


def build_feed_flow(
    config: PipelineConfig,
    feed: FeedConfig,
    *,
    observer: RunObserver | None = None,
    stop: threading.Event | None = None,
) -> Dataflow:
    """The live dataflow: a WebSocket feed in, the same window job and sinks as replay.

    The feed's unmappable messages go to the dead-letter sink beside the window job's, and the
    feed's counters (``feed_*``: received, rejected, dropped, reconnects, ...) are added to every
    statistics record, so a run accounts for every message it received.

    Args:
        config: the window job and sinks (``config.sources`` is not used).
        feed: the feed's settings.
        observer: receives row counts and stats records (for progress and summaries).
        stop: set it to end the run cleanly (the source drains, the flow reaches EOF).
    """
    from tickpool.connectors.websocket_source import WebSocketSource

    flow = Dataflow("tickpool_feed")
    source = WebSocketSource(
        feed,
        ts_column=config.ts_column,
        symbol_column=config.symbol_column,
        value_column=config.value,
        stop=stop,
    )
    items: Stream[FeedItem] = op.input("feed", flow, source)
    split = op.branch("feed_ticks", items, _is_tick_batch)
    rejected = op.map("feed_rejected", split.falses, _as_dead_letter)
    attach_job(split.trues, config, observer=observer, rejected=rejected, extra_stats=source.stats)
    return flow


def _is_tick_batch(item: FeedItem) -> TypeGuard[TickBatch]:
    return isinstance(item, TickBatch)


def _as_dead_letter(item: FeedItem) -> DeadLetter:
    assert isinstance(item, DeadLetter)
    return item


def attach_job(
    ticks: Stream[TickBatch],
    config: PipelineConfig,
    *,
    observer: RunObserver | None = None,
    rejected: Stream[DeadLetter] | None = None,
    extra_stats: Callable[[], Mapping[str, Any]] | None = None,
) -> WindowStreams:
    """Everything after the source: shard, window job, and the sinks ``config`` names.

    Any source of :class:`TickBatch` items can feed it (Arrow replay, a live feed, Kafka),
    so every entry point shares one job and one set of sinks.

    Args:
        ticks: the source's tick batches.
        config: the window job and the sinks.
        observer: receives row counts and stats records.
        rejected: dead letters the *source* made (messages it could not turn into ticks);
            they join the dead-letter sink.
        extra_stats: called for each statistics record; its fields are added to the record
            (a source's own counters, e.g. a feed's reconnects).

    Returns:
        the window job's output streams (predictions, dead letters, stats), for callers that
        want more sinks (benchmarks).
    """
    engine = config.engine()
    model = resolve_model(
        config.model, window=engine.window, horizon=engine.horizon, normalize=engine.normalize
    )
    shards = config.shard_count
    partitions = [str(i) for i in range(shards)]
    pool = process_pool(config)

    if observer is not None:
        op.inspect("observe", ticks, lambda _step, item: observer.saw(item))
    keyed = shard_batches("shard", ticks, shards, config.symbol_column)
    out = window_predict(
        "window",
        keyed,
        engine,
        model,
        pool,
        stats_interval=timedelta(seconds=config.stats_interval),
    )

    if config.out == "-":
        op.output("predictions_stdout", out.predictions, StdoutSink())
    elif config.out is not None:
        op.output(
            "predictions",
            out.predictions,
            ArrowStreamSink(config.out, partitions, prediction_schema(engine.horizon)),
        )
    if config.dead_letters is not None:
        dead_all = op.key_rm("dl_unkey", out.dead_letters)
        if rejected is not None:
            dead_all = op.merge("dl_with_source", rejected, dead_all)
        dead = op.key_on("dead_letters_one_file", dead_all, lambda _: "0")
        op.output("dead_letters", dead, JsonLinesSink(config.dead_letters, ["0"]))
    if extra_stats is not None:
        add = extra_stats
        out = WindowStreams(
            predictions=out.predictions,
            dead_letters=out.dead_letters,
            stats=op.map_value("stats_extra", out.stats, lambda rec: {**rec, **add()}),
        )
    stats_one = op.key_on("stats_one_file", op.key_rm("stats_unkey", out.stats), lambda _: "0")
    if config.stats is not None:
        op.output("stats", stats_one, JsonLinesSink(config.stats, ["0"]))
    if config.metrics_port is not None:
        op.output(
            "metrics", out.stats, PrometheusStatsSink(config.metrics_port, config.metrics_addr)
        )
    if observer is not None:
        op.output("observe_stats", out.stats, _ObserverSink(observer))
    return out


def from_toml(path: str, **overrides: Any) -> Dataflow:
    """The replay flow of a TOML config file, for ``python -m bytewax.run``.

    Bytewax's runner calls a factory named in its import string with literal arguments, so
    a cluster needs no module of the user's own::

        A="127.0.0.1:2101;127.0.0.1:2102"   # one process per address, -i its index
        python -m bytewax.run "tickpool.pipeline.flow:from_toml('run.toml')" -w 2 -i 0 -a "$A"
        python -m bytewax.run "tickpool.pipeline.flow:from_toml('run.toml')" -w 2 -i 1 -a "$A"

    With several processes, give ``shards`` (or a ``shards`` key) equal to the total
    worker count, so every worker gets a shard; outputs of an earlier run are not
    removed here (``tickpool replay`` does that), since each process builds the flow.
    Like the command line, it keeps freed memory in the process
    (`tickpool.pipeline.allocator.keep_freed_memory`).
    """
    from tickpool.pipeline.allocator import keep_freed_memory
    from tickpool.pipeline.config import load_config

    keep_freed_memory()

    return build_flow(load_config(path).replace(**overrides))
