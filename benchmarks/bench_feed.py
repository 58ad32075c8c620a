"""Live feed end to end: tick-sent-to-prediction-written latency, ticks/s and peak memory.

Run: ``python -m benchmarks.bench_feed [--seconds 30]``. Prints a markdown table; asserts nothing.

Set-up, per row: the feed simulator (``tickpool serve-feed``) runs in its own process and plays
a synthetic file of 8 symbols whose ticks are exactly 1 ms apart in market time, looping, at
``speed = target / 1000`` (``speed 0``, "max": as fast as the pipeline takes it, with
backpressure). The pipeline runs in another fresh process (so its peak RSS is its own): the
WebSocket source (``block`` policy, ``max_rows`` 4096, ``max_latency_ms`` 20), the window job
(W=64, stride 1, window z-score, ``mean`` model), predictions written to an Arrow IPC file
sink, for ``--seconds`` seconds (the source's ``duration``).

How latency is measured, and what it includes: the simulator runs with ``--stamp-send-time``,
so each tick's ``ts`` is the wall-clock time (``time.time_ns()``) just before its frame is
handed to the socket. A prediction's ``ts`` is its window's last tick, so for every prediction
``now - ts``, taken by a timing sink that Bytewax runs beside the Arrow file sink in the same
step, is the time from sending the tick that completed the window to the prediction reaching
the sinks: socket, queue, parsing, micro-batching wait (up to 20 ms), the window job, and the
dataflow. Both processes read the same clock on one machine, so no clock skew. It does not
include the file sink's own write (a few microseconds per batch, same step) and ticks that
never complete a window (the first 63 of each symbol) have no latency. Latencies go into a
log-spaced histogram (about 1% bins, so memory does not grow with the run); the first second
(connect, warm-up) is left out. ``ticks/s`` is ticks received by the pipeline over the run's
seconds (at "max" it is the highest sustainable rate: the server is held back by the
pipeline's backpressure). The last row sends 64 ticks per frame (``--batch 64``), which shows
what the pipeline can do once the per-frame cost of Python WebSockets on both ends is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import bytewax.operators as op
import numpy as np
import numpy.typing as npt
import pyarrow as pa
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from benchmarks._report import machine_line, markdown_table
from tickpool.connectors.synthetic import generate_batches

_EDGES = np.geomspace(1e-6, 1e3, 1801)  # seconds; ~1.2% per bin from 1 us to 1000 s
_REPO = Path(__file__).resolve().parents[1]


class _LatencyPartition(StatelessSinkPartition[Any]):
    def __init__(self, hist: npt.NDArray[np.int64], start_ns: int) -> None:
        self._hist = hist
        self._start_ns = start_ns

    def write_batch(self, items: list[Any]) -> None:
        now = time.time_ns()
        if now < self._start_ns:
            return
        for _key, batch in items:
            ts = batch.column("ts").cast(pa.int64()).to_numpy()
            lat = (now - ts) / 1e9
            self._hist += np.histogram(lat, bins=_EDGES)[0]


class _LatencySink(DynamicSink[Any]):
    """Histogram of ``now - ts`` (seconds) of every prediction batch that reaches it."""

    def __init__(self, start_ns: int) -> None:
        self.hist = np.zeros(len(_EDGES) - 1, dtype=np.int64)
        self._start_ns = start_ns

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _LatencyPartition:
        return _LatencyPartition(self.hist, self._start_ns)


def _percentile(hist: npt.NDArray[np.int64], q: float) -> float:
    total = int(hist.sum())
    if total == 0:
        return float("nan")
    i = int(np.searchsorted(np.cumsum(hist), q * total))
    return float(np.sqrt(_EDGES[i] * _EDGES[i + 1]))  # the bin's geometric middle


def child(url: str, seconds: float, out: str) -> dict[str, Any]:
    """Run the pipeline on ``url`` for ``seconds``; the numbers as a dict (printed as JSON)."""
    from bytewax._bytewax import cli_main

    from tickpool.connectors.websocket_source import FeedConfig, WebSocketSource
    from tickpool.pipeline.config import PipelineConfig
    from tickpool.pipeline.flow import RunObserver, attach_job

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    config = PipelineConfig(window=64, model="mean", out=out, stats_interval=3600)
    feed = FeedConfig(url, max_rows=4096, max_latency_ms=20, duration_s=seconds)
    flow = Dataflow("bench_feed")
    source = WebSocketSource(feed)
    items = op.input("feed", flow, source)
    split = op.branch("ticks", items, lambda x: not hasattr(x, "reason"))
    observer = RunObserver()
    streams = attach_job(split.trues, config, observer=observer, extra_stats=source.stats)
    sink = _LatencySink(time.time_ns() + 1_000_000_000)
    op.output("latency", streams.predictions, sink)
    t0 = time.perf_counter()
    cli_main(flow, workers_per_process=1)
    elapsed = time.perf_counter() - t0
    c = source.counters
    return {
        "ticks": c.ticks,
        "seconds": elapsed,
        "ticks_per_s": c.ticks / seconds,
        "p50_ms": _percentile(sink.hist, 0.50) * 1e3,
        "p99_ms": _percentile(sink.hist, 0.99) * 1e3,
        "predictions": int(sink.hist.sum()),
        "dropped": c.dropped,
        "rss_before_mb": rss_before,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write_file(path: Path, ticks: int) -> None:
    """Synthetic prices for 8 symbols, ticks exactly 1 ms apart (1,000 ticks/s of market time)."""
    schema = None
    with pa.OSFile(str(path), "wb") as sink:
        writer = None
        offset = 0
        for batch in generate_batches(ticks, 8, seed=5, batch_rows=65_536):
            n = batch.num_rows
            ts = pa.array(np.arange(offset, offset + n, dtype=np.int64) * 1_000_000)
            batch = batch.set_column(0, "ts", ts.cast(pa.timestamp("ns", tz="UTC")))
            batch = batch.set_column(1, "symbol", batch.column(1).cast(pa.string()))
            if writer is None:
                schema = batch.schema
                writer = pa.ipc.new_file(sink, schema)
            writer.write_batch(batch)
            offset += n
        assert writer is not None
        writer.close()


def run_row(path: Path, speed: float, batch: int, seconds: float) -> dict[str, Any]:
    port = _free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tickpool.pipeline.cli",
            "serve-feed",
            str(path),
            "--port",
            str(port),
            "--speed",
            str(speed),
            "--batch",
            str(batch),
            "--loop",
            "--stamp-send-time",
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stderr is not None
        line = server.stderr.readline()  # "serving ... on ws://..." once it listens
        if "serving" not in line:
            raise RuntimeError(f"serve-feed did not start: {line}")
        with tempfile.TemporaryDirectory(prefix="bench-feed-") as out:
            result = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "benchmarks.bench_feed",
                    "--child",
                    f"ws://127.0.0.1:{port}",
                    "--seconds",
                    str(seconds),
                    "--out",
                    out,
                ],
                cwd=_REPO,
                env=env,
                capture_output=True,
                text=True,
                timeout=seconds * 3 + 60,
                check=False,
            )
        if result.returncode != 0:
            raise RuntimeError(f"pipeline failed:\n{result.stderr}")
        row: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
        return row
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds per row (30)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.seconds, args.out)))
        return

    rows_spec = [
        ("10k/s", 10.0, 1),
        ("100k/s", 100.0, 1),
        ("max (speed 0)", 0.0, 1),
        ("max, 64 ticks/frame", 0.0, 64),
    ]
    with tempfile.TemporaryDirectory(prefix="bench-feed-") as tmp:
        path = Path(tmp) / "ticks.arrow"
        _write_file(path, 500_000)
        rows = []
        for label, speed, batch in rows_spec:
            r = run_row(path, speed, batch, args.seconds)
            rows.append(
                [
                    label,
                    r["ticks_per_s"],
                    r["p50_ms"],
                    r["p99_ms"],
                    r["predictions"],
                    r["peak_rss_mb"],
                    r["rss_before_mb"],
                ]
            )
    print(f"# live feed, {args.seconds:g} s per row: W=64 window-zscore, mean model, 8 symbols")
    print(machine_line())
    print()
    print(
        markdown_table(
            [
                "target",
                "ticks/s achieved",
                "latency p50 ms",
                "latency p99 ms",
                "predictions timed",
                "peak RSS MB",
                "RSS before run MB",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
