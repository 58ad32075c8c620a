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
log-spaced histogram (about 1% bins, so memory does not grow with the run). Only ticks sent
inside the timed window count: the first second is left out (connect, warm-up: those ticks
wait while Bytewax starts), and so is the last (at the end of the run the source closes the
socket, a close handshake of up to 1 s, before it drains the frames still queued).

``ticks/s achieved`` counts only the ticks the pipeline took in inside the timed window (from
1 s after the start to the end of ``--seconds``), over that window's length: not the ticks
drained from the queue after it, nor the connect time.

"Highest sustainable" is defined here as the highest *offered* rate (ticks/s the simulator is
asked to send, from the ladder 10k, 20k, 50k, 100k, 200k, 500k, 1M) at which the pipeline keeps
up: latency p99 stays under 1 s **and** it takes in at least 95% of the offered rate. Above
that rate ticks queue up (socket, simulator) and latency grows with the run, so a faster
"max" number would only measure a backlog. The ladder stops at the first rate that fails. It
is searched twice: one tick per frame, and 64 ticks per frame (``--batch 64``), which shows what
the pipeline can do once the per-frame cost of Python WebSockets on both ends is shared.
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
import threading
import time
from pathlib import Path
from typing import Any, TypeGuard

import bytewax.operators as op
import numpy as np
import numpy.typing as npt
import pyarrow as pa
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from benchmarks._report import machine_line, markdown_table
from tickpool.connectors.synthetic import generate_batches
from tickpool.operators.items import DeadLetter, TickBatch

_EDGES = np.geomspace(1e-6, 1e3, 1801)  # seconds; ~1.2% per bin from 1 us to 1000 s
_REPO = Path(__file__).resolve().parents[1]


class _LatencyPartition(StatelessSinkPartition[Any]):
    def __init__(self, hist: npt.NDArray[np.int64], start_ns: int, end_ns: int) -> None:
        self._hist = hist
        self._start_ns = start_ns
        self._end_ns = end_ns

    def write_batch(self, items: list[Any]) -> None:
        now = time.time_ns()
        if now < self._start_ns:
            return
        for _key, batch in items:
            ts = batch.column("ts").cast(pa.int64()).to_numpy()
            ts = ts[(ts >= self._start_ns) & (ts < self._end_ns)]  # sent in the timed window
            lat = (now - ts) / 1e9
            self._hist += np.histogram(lat, bins=_EDGES)[0]


class _LatencySink(DynamicSink[Any]):
    """Histogram of ``now - ts`` (seconds) of every prediction batch that reaches it."""

    def __init__(self, start_ns: int, end_ns: int) -> None:
        self.hist = np.zeros(len(_EDGES) - 1, dtype=np.int64)
        self._start_ns = start_ns
        self._end_ns = end_ns

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _LatencyPartition:
        return _LatencyPartition(self.hist, self._start_ns, self._end_ns)


def _percentile(hist: npt.NDArray[np.int64], q: float) -> float:
    total = int(hist.sum())
    if total == 0:
        return float("nan")
    i = int(np.searchsorted(np.cumsum(hist), q * total))
    return float(np.sqrt(_EDGES[i] * _EDGES[i + 1]))  # the bin's geometric middle


def _is_ticks(item: TickBatch | DeadLetter) -> TypeGuard[TickBatch]:
    return isinstance(item, TickBatch)


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
    split = op.branch("ticks", items, _is_ticks)
    observer = RunObserver()
    streams = attach_job(split.trues, config, observer=observer, extra_stats=source.stats)
    # Ticks sent in the first second wait while Bytewax starts; those sent in the last second
    # may wait in the queue while the source's shutdown closes the socket (a close handshake of
    # up to 1 s) before they are drained: neither is steady state, so neither is timed.
    edge_s = 1.0 if seconds >= 3 else seconds / 3
    now_ns = time.time_ns()
    sink = _LatencySink(now_ns + int(edge_s * 1e9), now_ns + int((seconds - edge_s) * 1e9))
    op.output("latency", streams.predictions, sink)
    c = source.counters
    window: list[tuple[float, int]] = []  # (time, ticks taken in) at the window's two ends

    def sample() -> None:
        start = time.perf_counter()
        for at in (min(1.0, seconds / 2), seconds):
            time.sleep(max(0.0, start + at - time.perf_counter()))
            window.append((time.perf_counter(), c.ticks))

    sampler = threading.Thread(target=sample, daemon=True)
    t0 = time.perf_counter()
    sampler.start()
    cli_main(flow, workers_per_process=1)  # type: ignore[no-untyped-call]
    elapsed = time.perf_counter() - t0
    sampler.join()
    (t_a, n_a), (t_b, n_b) = window
    return {
        "ticks": c.ticks,
        "seconds": elapsed,
        "ticks_per_s": (n_b - n_a) / (t_b - t_a),
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


_LADDER = (10_000, 20_000, 50_000, 100_000, 200_000, 500_000, 1_000_000)
"""Offered rates (ticks/s) tried, in order, for the highest sustainable one."""
_P99_LIMIT_MS = 1_000.0


def _sustained(r: dict[str, Any], offered: int) -> bool:
    """Kept up: p99 under a second and at least 95% of the offered rate taken in."""
    p99 = float(r["p99_ms"])
    return p99 == p99 and p99 < _P99_LIMIT_MS and r["ticks_per_s"] >= 0.95 * offered


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds per row (30)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.seconds, args.out)))
        return

    def row(label: str, r: dict[str, Any]) -> list[Any]:
        return [
            label,
            r["ticks_per_s"],
            r["p50_ms"],
            r["p99_ms"],
            r["predictions"],
            r["peak_rss_mb"],
            r["rss_before_mb"],
        ]

    with tempfile.TemporaryDirectory(prefix="bench-feed-") as tmp:
        path = Path(tmp) / "ticks.arrow"
        _write_file(path, 500_000)
        rows = []
        for label, offered in (("10k/s", 10_000), ("100k/s", 100_000)):
            rows.append(row(label, run_row(path, offered / 1000, 1, args.seconds)))
        for batch in (1, 64):
            best: tuple[int, dict[str, Any]] | None = None
            for offered in _LADDER:
                r = run_row(path, offered / 1000, batch, args.seconds)
                ok = _sustained(r, offered)
                print(
                    f"{batch} ticks/frame, offered {offered:,}/s: took in "
                    f"{r['ticks_per_s']:,.0f}/s, p99 {r['p99_ms']:,.0f} ms: "
                    f"{'sustained' if ok else 'not sustained'}",
                    file=sys.stderr,
                )
                if not ok:
                    break
                best = (offered, r)
            frame = "1 tick/frame" if batch == 1 else f"{batch} ticks/frame"
            if best is None:
                rows.append([f"highest sustainable, {frame}: none"] + [float("nan")] * 4 + [0, 0])
            else:
                rows.append(row(f"highest sustainable, {frame}: {best[0]:,}/s", best[1]))
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
