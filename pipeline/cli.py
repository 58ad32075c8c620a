"""The ``tickpool`` command line: one subcommand per user path.

``generate`` synthetic ticks, ``fit`` a linear window model, ``replay`` Arrow files
through the pipeline, ``feed`` a live WebSocket feed through it (``serve-feed`` simulates
one from a file), ``stats`` to summarize a statistics file, and ``demo``, the embedded
default that needs no data and no server.  Bad input ends with a one-line
error on stderr and exit code 2 (set ``TICKPOOL_TRACEBACK=1`` for the traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pyarrow as pa
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tickpool.operators.normalize import parse_mode
from tickpool.pipeline.allocator import keep_freed_memory

__all__ = ["build_parser", "main"]

_err = Console(stderr=True)
MODES = ("none", "zscore", "window-zscore", "minmax", "window-minmax", "robust")


def _version() -> str:
    try:
        return version("tickpool")
    except PackageNotFoundError:  # a source tree that is not installed
        return "unknown"


# -- parser --------------------------------------------------------------------


def _window_options(p: argparse.ArgumentParser, *, defaults: bool) -> None:
    d: Any = (lambda v: v) if defaults else (lambda v: None)
    p.add_argument("--value", default=d("price"), help="value column (default: price)")
    p.add_argument("--window", type=int, default=d(64), help="ticks per window (default: 64)")
    p.add_argument("--horizon", type=int, default=d(1), help="steps predicted per window")
    p.add_argument(
        "--normalize",
        choices=MODES,
        default=d("window-zscore"),
        help="normalization (default: window-zscore)",
    )


def add_job_options(p: argparse.ArgumentParser) -> None:
    """The options every pipeline command shares (``replay``, ``feed``): job, sinks, run."""
    p.add_argument("--config", help="TOML file of settings (command-line options win)")
    _window_options(p, defaults=False)
    p.add_argument("--stride", type=int)
    p.add_argument("--model", help="last, mean, or the path of a linear .npz")
    p.add_argument("--out", help="directory for predictions-<shard>.arrows, or - for stdout")
    p.add_argument("--stats", help="pool statistics JSON-lines file")
    p.add_argument("--stats-interval", type=float, help="seconds between stats records")
    p.add_argument("--dead-letters", help="rejected rows as JSON lines")
    p.add_argument("--bad-rows", choices=("drop", "error"))
    p.add_argument("--recovery-dir", help="Bytewax recovery directory (resume after a crash)")
    p.add_argument("--snapshot-interval", type=float, help="seconds between snapshots")
    p.add_argument("--workers", type=int, help="Bytewax workers in this process")
    p.add_argument("--shards", type=int, help="shard count (default: one per worker)")
    p.add_argument("--pool-tier", choices=("small", "medium", "large", "streaming"))
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    p.add_argument("--metrics-addr", help="address for the metrics server (127.0.0.1)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")


def _feed_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=("generic", "coinbase"), default="generic")
    p.add_argument("--subscribe", help="JSON message to send after each connect")
    p.add_argument("--max-rows", type=int, default=4096, help="ticks per batch at most (4096)")
    p.add_argument(
        "--max-latency-ms", type=float, default=50.0, help="a tick waits at most this long (50)"
    )
    p.add_argument("--queue-size", type=int, default=65_536, help="frames between socket and flow")
    p.add_argument(
        "--queue-bytes",
        type=int,
        default=32 << 20,
        help="bytes between socket and flow (32 MiB); full when either bound is reached",
    )
    p.add_argument(
        "--when-full",
        choices=("block", "drop-oldest"),
        default="block",
        help="full queue: block the reader (default) or drop the oldest frame (counted)",
    )
    p.add_argument("--max-message-bytes", type=int, default=1 << 20, help="frame size limit")
    p.add_argument("--max-ticks", type=int, help="stop after N records (ticks + dead letters)")
    p.add_argument("--duration", type=float, help="stop after S seconds")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="tickpool",
        description=(
            "Streaming market-data pipeline: zero-copy Arrow ticks, pooled buffers, "
            "windowed normalization and prediction on Bytewax."
        ),
    )
    parser.add_argument("--version", action="version", version=f"tickpool {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    g = sub.add_parser("generate", help="write synthetic random-walk ticks to an Arrow file")
    g.add_argument("out", help="the Arrow IPC file to write")
    g.add_argument("--ticks", type=int, default=1_000_000)
    g.add_argument("--symbols", type=int, default=8)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--batch-rows", type=int, default=65_536)

    f = sub.add_parser("fit", help="fit a linear window model (ridge) on an Arrow file")
    f.add_argument("file", nargs="+", help="Arrow/Parquet files of ticks")
    _window_options(f, defaults=True)
    f.add_argument("-o", "--output", required=True, help="the .npz model to write")
    f.add_argument("--alpha", type=float, default=1e-3, help="ridge penalty per window")
    f.add_argument("--val-fraction", type=float, default=0.2)
    f.add_argument("--fit-stride", type=int, default=1, help="use every n-th window")

    r = sub.add_parser("replay", help="replay Arrow files through the window pipeline")
    r.add_argument("files", nargs="*", help="Arrow IPC files/streams, Parquet files or globs")
    r.add_argument("--max-batch-rows", type=int)
    r.add_argument("--speed", type=float, help="0: as fast as possible, 1: market speed")
    add_job_options(r)

    fd = sub.add_parser("feed", help="run the window pipeline on a live WebSocket feed")
    fd.add_argument("url", help="ws:// or wss:// URL of the feed")
    _feed_options(fd)
    add_job_options(fd)

    sf = sub.add_parser("serve-feed", help="serve an Arrow file of ticks as a WebSocket feed")
    sf.add_argument("file", help="Arrow IPC file/stream or Parquet file of ticks")
    sf.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    sf.add_argument("--port", type=int, default=8765, help="port (default 8765; 0: any free)")
    sf.add_argument("--speed", type=float, default=1.0, help="x market speed; 0: max (1)")
    sf.add_argument("--format", choices=("generic", "coinbase"), default="generic")
    sf.add_argument("--batch", type=int, default=1, help="ticks per frame at most (generic)")
    sf.add_argument("--loop", action="store_true", help="replay the file forever")
    sf.add_argument(
        "--stamp-send-time",
        action="store_true",
        help="ts = wall-clock send time (generic; for latency benchmarks)",
    )

    s = sub.add_parser("stats", help="summarize a pool statistics JSON-lines file")
    s.add_argument("file")
    s.add_argument("--plot", help="also draw hit rate, pool limit and throughput to this PNG")

    d = sub.add_parser("demo", help="generate, fit and replay about a million ticks")
    d.add_argument("--ticks", type=int, default=1_000_000)
    d.add_argument("--symbols", type=int, default=8)
    d.add_argument("--window", type=int, default=64)
    d.add_argument("--keep", help="keep the demo's files in this directory")

    # Kafka's commands live beside their flow (they import this module's helpers).
    from tickpool.pipeline.kafka_cli import register as register_kafka

    COMMANDS.update(register_kafka(sub))
    return parser


# -- commands ------------------------------------------------------------------


def cmd_generate(args: argparse.Namespace) -> int:
    from tickpool.connectors.synthetic import write_ticks

    with _progress() as progress:
        task = progress.add_task("generating", total=args.ticks)
        rows = write_ticks(
            args.out,
            args.ticks,
            args.symbols,
            seed=args.seed,
            batch_rows=args.batch_rows,
            progress=lambda n: progress.update(task, completed=n),
        )
    _err.print(f"wrote {rows:,} ticks of {args.symbols} symbols to {args.out}")
    return 0


def series_by_symbol(
    paths: Sequence[str], value: str, *, rows: slice | None = None
) -> dict[str, npt.NDArray[np.float64]]:
    """Each symbol's finite values, in arrival order, from tick files."""
    from tickpool.connectors.arrow_source import iter_tick_batches
    from tickpool.operators.symbols import split_by_symbol

    batches = [tb.batch for p in paths for tb in iter_tick_batches(p)]
    if not batches:
        raise ValueError(f"no ticks in {', '.join(paths)}")
    table = pa.Table.from_batches(batches)
    if rows is not None:
        table = table.slice(rows.start or 0, (rows.stop or table.num_rows) - (rows.start or 0))
    if value not in table.column_names:
        raise ValueError(f"{paths[0]} has no column {value!r}; columns: {table.column_names}")
    batch = table.combine_chunks().to_batches()[0]
    values = batch.column(value).cast(pa.float64()).to_numpy(zero_copy_only=False)
    out = {}
    for sym, idx in split_by_symbol(batch).items():
        x = values[idx]
        out[sym] = x[np.isfinite(x)]
    return out


def _fit(
    paths: Sequence[str], args: argparse.Namespace, output: str, rows: slice | None = None
) -> None:
    from tickpool.operators.training import fit_linear

    series = series_by_symbol(paths, args.value, rows=rows)
    model, report = fit_linear(
        series,
        window=args.window,
        horizon=args.horizon,
        normalize=parse_mode(args.normalize),
        stride=getattr(args, "fit_stride", 1),
        alpha=getattr(args, "alpha", 1e-3),
        val_fraction=getattr(args, "val_fraction", 0.2),
    )
    model.save(output)
    t = Table(title=f"fit: linear W={args.window} H={args.horizon} {args.normalize}")
    t.add_column("model")
    t.add_column("validation RMSE", justify="right")
    t.add_column("validation MAE", justify="right")
    t.add_row("linear", f"{report.rmse_linear:.6g}", f"{report.mae_linear:.6g}")
    t.add_row("naive (last value)", f"{report.rmse_naive:.6g}", f"{report.mae_naive:.6g}")
    _err.print(t)
    _err.print(
        f"{report.symbols} symbols, {report.train_windows:,} training and "
        f"{report.val_windows:,} validation windows; RMSE {report.improvement:+.1%} vs naive; "
        f"wrote {output}"
    )


def cmd_fit(args: argparse.Namespace) -> int:
    _fit(args.file, args, args.output)
    return 0


def job_config(args: argparse.Namespace) -> Any:
    """PipelineConfig from ``--config`` (if any) with the command-line options on top."""
    from tickpool.pipeline.config import PipelineConfig, load_config

    base = load_config(args.config) if args.config else PipelineConfig()
    return base.replace(
        sources=tuple(getattr(args, "files", ())) or None,
        value=args.value,
        window=args.window,
        horizon=args.horizon,
        normalize=args.normalize,
        stride=args.stride,
        model=args.model,
        out=args.out,
        stats=args.stats,
        stats_interval=args.stats_interval,
        dead_letters=args.dead_letters,
        bad_rows=args.bad_rows,
        recovery_dir=args.recovery_dir,
        snapshot_interval=args.snapshot_interval,
        workers=args.workers,
        shards=args.shards,
        pool_tier=args.pool_tier,
        max_batch_rows=getattr(args, "max_batch_rows", None),
        speed=getattr(args, "speed", None),
        metrics_port=args.metrics_port,
        metrics_addr=args.metrics_addr,
    )


def clear_outputs(config: Any) -> None:
    """Remove the files a fresh run writes, so none of an earlier run's survive.

    A sink partition creates its file only when its first item arrives: without this, a
    shard that gets no symbols this time would leave last run's predictions in place.
    """
    if config.out not in (None, "-"):
        for old in Path(config.out).glob("predictions-*.arrows"):
            old.unlink()
    for name in (config.stats, config.dead_letters):
        if name is not None:
            Path(name).unlink(missing_ok=True)


def recovery_for(config: Any) -> tuple[Any, bool]:
    """Bytewax's RecoveryConfig for ``config`` (or None) and whether this run resumes.

    An empty or missing recovery directory is initialized (one partition), so the first
    run with ``--recovery-dir`` needs no separate set-up step.
    """
    from bytewax.recovery import RecoveryConfig, init_db_dir

    if config.recovery_dir is None:
        return None, False
    db = Path(config.recovery_dir)
    resuming = db.is_dir() and any(db.iterdir())
    if not resuming:
        db.mkdir(parents=True, exist_ok=True)
        init_db_dir(db, 1)  # type: ignore[no-untyped-call]
    return RecoveryConfig(str(db)), resuming  # type: ignore[no-untyped-call]


def run_replay(config: Any, *, quiet: bool = False) -> dict[str, Any]:
    """Run the replay job in this process; returns the summary numbers."""
    from tickpool.connectors.arrow_source import count_rows, expand_paths, file_schema
    from tickpool.operators.columns import check_columns
    from tickpool.pipeline.flow import RunObserver, build_flow

    # Missing files and wrong schemas fail here, with one clear line, before Bytewax starts.
    sources = expand_paths(list(config.sources))
    for path in sources:
        check_columns(file_schema(path), config.columns, f"file {path}")
    total = None if quiet else count_rows(sources)  # only the progress bar needs it
    observer = RunObserver()
    flow = build_flow(config, observer=observer)
    return run_job(flow, config, observer, total=total, quiet=quiet, label="replaying")


def run_job(
    flow: Any,
    config: Any,
    observer: Any,
    *,
    total: int | None,
    quiet: bool = False,
    label: str = "running",
) -> dict[str, Any]:
    """Run ``flow`` in this process with a progress bar; returns (and prints) the summary.

    ``observer`` is the :class:`RunObserver` the flow was built with; ``total`` the rows
    expected (None for an endless feed).  A fresh run (no recovery state to resume) first
    removes the outputs of any earlier run.
    """
    from bytewax._bytewax import cli_main

    recovery, resuming = recovery_for(config)
    if not resuming:
        clear_outputs(config)
    keep_freed_memory()  # no page faults for each batch's temporaries (pipeline/allocator.py)
    t0 = time.perf_counter()
    with observed_progress(observer, label, total=total, quiet=quiet):
        cli_main(  # type: ignore[no-untyped-call]
            flow,
            workers_per_process=config.workers,
            epoch_interval=timedelta_s(config.snapshot_interval),
            recovery_config=recovery,
        )
    summary = summarize_run(observer, time.perf_counter() - t0)
    if not quiet:
        _err.print(_summary_table(summary, config, "replay" if total is not None else "feed"))
    return summary


SOURCE_REJECTS = ("feed_rejected", "kafka_undecodable")
"""A live source's own dead letters (messages it could not map to ticks), per stats record."""
SOURCE_EXTRAS = (
    "feed_reconnects",
    "feed_dropped",
    "feed_ignored",
    "feed_discarded",
    "kafka_undecodable",
)
"""A live source's counters shown in the summary table when the run has them."""


def summarize_run(observer: Any, elapsed: float) -> dict[str, Any]:
    """The summary numbers of a finished run from its observer's latest stats records.

    A live source's records also carry its counters (``feed_*``, ``kafka_*``: process-wide,
    repeated in every record like the pool's): messages it dead-lettered itself count as ticks
    read and as dead letters, so ``processed + dead_letters = ticks`` still holds.
    """
    recs = list(observer.latest.values())
    source_dead = sum(max((r.get(key, 0) for r in recs), default=0) for key in SOURCE_REJECTS)
    ticks = sum(r["ticks"] for r in recs) + source_dead
    dead = sum(r["dead_letters"] for r in recs) + source_dead
    # Pool counters are process-wide and repeated in every shard's record: take the max.
    hits = max((r["hits"] for r in recs), default=0)
    misses = max((r["misses"] for r in recs), default=0)
    return {
        "ticks": ticks,
        "processed": ticks - dead,
        "dead_letters": dead,
        "predictions": sum(r["predictions"] for r in recs),
        "seconds": elapsed,
        "ticks_per_s": ticks / elapsed if elapsed > 0 else 0.0,
        "pool_hit_rate": hits / (hits + misses) if hits + misses else 1.0,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        **{
            key: max(r.get(key, 0) for r in recs)
            for key in SOURCE_EXTRAS
            if any(key in r for r in recs)
        },
    }


def timedelta_s(seconds: float) -> Any:
    from datetime import timedelta

    return timedelta(seconds=seconds)


def _summary_table(s: dict[str, Any], config: Any, command: str = "replay") -> Table:
    t = Table(
        title=f"{command}: W={config.window} S={config.stride} H={config.horizon} "
        f"{config.normalize}, model {config.model}"
    )
    t.add_column("measure")
    t.add_column("value", justify="right")
    t.add_row("ticks read", f"{s['ticks']:,}")
    t.add_row("processed", f"{s['processed']:,}")
    t.add_row("dead letters", f"{s['dead_letters']:,}")
    t.add_row("predictions", f"{s['predictions']:,}")
    t.add_row("wall time", f"{s['seconds']:.2f} s")
    t.add_row("ticks/s", f"{s['ticks_per_s']:,.0f}")
    t.add_row("pool hit rate", f"{s['pool_hit_rate']:.2%}")
    t.add_row("peak RSS (incl. mapped input)", f"{s['peak_rss_mb']:,.0f} MB")
    for key in SOURCE_EXTRAS:
        if key in s:
            t.add_row(key.replace("_", " "), f"{s[key]:,}")
    return t


def cmd_replay(args: argparse.Namespace) -> int:
    config = job_config(args)
    run_replay(config, quiet=args.quiet)
    return 0


def feed_config(args: argparse.Namespace, bad_rows: Literal["drop", "error"] = "drop") -> Any:
    """FeedConfig from the ``feed`` command's options (validated, with clear messages);
    ``bad_rows`` is the job's policy (``--bad-rows``), which the feed applies to its messages."""
    from tickpool.connectors.websocket_source import FeedConfig

    return FeedConfig(
        url=args.url,
        preset=args.preset,
        subscribe=args.subscribe,
        max_rows=args.max_rows,
        max_latency_ms=args.max_latency_ms,
        queue_size=args.queue_size,
        queue_bytes=args.queue_bytes,
        when_full=args.when_full,
        bad_rows=bad_rows,
        max_message_bytes=args.max_message_bytes,
        max_ticks=args.max_ticks,
        duration_s=args.duration,
    )


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[threading.Event]:
    """While active, SIGINT and SIGTERM set ``stop`` instead of raising KeyboardInterrupt.

    Bytewax runs Python signal handlers between steps (``check_signals``); ours only sets
    the event, so the dataflow is not torn down: the live source (``feed``'s WebSocket or
    ``kafka-feed``'s partitions) sees the event, drains what it holds and ends its partition,
    the flow reaches EOF, the window job emits its final statistics and returns its buffers,
    and the sinks flush and close. A second Ctrl-C
    raises KeyboardInterrupt at once (abort, as before). Only in the main thread (Python
    allows handlers there only); elsewhere it changes nothing.
    """

    def handle(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        name = signal.Signals(signum).name
        _err.print(f"{name}: finishing the batches in flight (Ctrl-C again to abort)")

    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handle)
    try:
        yield stop
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def run_feed(
    config: Any, feed: Any, *, quiet: bool = False, stop: threading.Event | None = None
) -> dict[str, Any]:
    """Run the live job on ``feed`` until it ends (``--max-ticks``/``--duration``) or is stopped.

    Ctrl-C or SIGTERM (or setting ``stop``) ends the run cleanly: see :func:`stop_on_signals`.
    """
    from tickpool.pipeline.flow import RunObserver, build_feed_flow

    stop = threading.Event() if stop is None else stop
    observer = RunObserver()
    flow = build_feed_flow(config, feed, observer=observer, stop=stop)
    with stop_on_signals(stop):
        return run_job(flow, config, observer, total=None, quiet=quiet, label=f"feed {feed.name}")


def cmd_feed(args: argparse.Namespace) -> int:
    config = job_config(args)
    feed = feed_config(args, config.bad_rows)
    run_feed(config, feed, quiet=args.quiet)
    return 0


def cmd_serve_feed(args: argparse.Namespace) -> int:
    import asyncio

    from tickpool.connectors.feed_server import FeedServer

    server = FeedServer(
        args.file,
        host=args.host,
        port=args.port,
        speed=args.speed,
        fmt=args.format,
        batch=args.batch,
        loop=args.loop,
        stamp_send_time=args.stamp_send_time,
    )

    async def serve() -> None:
        task = asyncio.create_task(server.serve())
        while not server.listening.is_set() and not task.done():
            await asyncio.sleep(0.01)
        if not task.done():
            _err.print(
                f"serving {args.file} on ws://{args.host}:{server.port} "
                f"({args.format}, speed {args.speed:g}); Ctrl-C to stop"
            )
        await task

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how serve-feed stops
        asyncio.run(serve())
    _err.print(f"sent {server.ticks_sent:,} ticks in {server.frames_sent:,} frames")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from tickpool.pipeline.report import load_stats, plot_stats, print_summary, summarize

    records = load_stats(args.file)
    print_summary(summarize(records))
    if args.plot:
        plot_stats(records, args.plot)
        _err.print(f"wrote {args.plot}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Generate ticks, fit a linear model on the first fifth, replay the rest."""
    from tickpool.connectors.synthetic import write_ticks
    from tickpool.pipeline.config import PipelineConfig

    with tempfile.TemporaryDirectory(prefix="tickpool-demo-") as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        ticks_path = work / "ticks.arrow"
        with _progress() as progress:
            task = progress.add_task("generating", total=args.ticks)
            write_ticks(
                ticks_path,
                args.ticks,
                args.symbols,
                seed=7,
                progress=lambda n: progress.update(task, completed=n),
            )
        table = pa.ipc.open_file(pa.memory_map(str(ticks_path))).read_all()
        cut = args.ticks // 5
        replay_path = work / "replay.arrow"
        with (
            pa.OSFile(str(replay_path), "wb") as sink,
            pa.ipc.new_file(sink, table.schema) as writer,
        ):
            writer.write_table(table.slice(cut), max_chunksize=16_384)
        del table
        fit_args = argparse.Namespace(
            value="price",
            window=args.window,
            horizon=1,
            normalize="window-zscore",
        )
        model_path = work / "model.npz"
        _err.print(f"[bold]1/2 fit[/] on the first {cut:,} ticks")
        _fit([str(ticks_path)], fit_args, str(model_path), rows=slice(0, cut))
        _err.print(f"[bold]2/2 replay[/] of the other {args.ticks - cut:,} ticks")
        config = PipelineConfig(
            sources=(str(replay_path),),
            window=args.window,
            model=str(model_path),
            out=str(work / "out"),
            stats=str(work / "stats.jsonl"),
            dead_letters=str(work / "dead_letters.jsonl"),
            stats_interval=1.0,
        )
        run_replay(config)
        if args.keep:
            _err.print(f"files kept in {work}: predictions in out/, stats.jsonl, model.npz")
    return 0


@contextlib.contextmanager
def observed_progress(
    observer: Any, label: str, *, total: int | None, quiet: bool = False
) -> Iterator[None]:
    """A progress bar on stderr showing ``observer.rows_read`` while the block runs.

    Wrap the ``cli_main`` call of a run in it: a thread polls the observer five times a second,
    and the bar shows the final count when the block ends (even by an exception). ``total`` is
    the rows expected (None: a live feed, the count only); ``quiet`` shows nothing.
    """
    if quiet:  # nothing to show: no polling thread either
        yield
        return
    done = threading.Event()
    with _progress(endless=total is None) as progress:
        task = progress.add_task(label, total=total)

        def poll() -> None:
            while not done.wait(0.2):
                progress.update(task, completed=observer.rows_read)

        poller = threading.Thread(target=poll, name="tickpool-progress", daemon=True)
        poller.start()
        try:
            yield
        finally:
            done.set()
            poller.join()
            progress.update(task, completed=observer.rows_read)


def _progress(*, endless: bool = False) -> Progress:
    """A progress bar on stderr; ``endless`` (a live feed: no total) shows the count only."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,}" if endless else "{task.completed:,}/{task.total:,}"),
        TimeElapsedColumn(),
        console=_err,
        transient=False,
    )


COMMANDS = {
    "generate": cmd_generate,
    "fit": cmd_fit,
    "replay": cmd_replay,
    "feed": cmd_feed,
    "serve-feed": cmd_serve_feed,
    "stats": cmd_stats,
    "demo": cmd_demo,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tickpool`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("tickpool: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # one line for the user; the traceback on request
        if os.environ.get("TICKPOOL_TRACEBACK"):
            raise
        print(f"tickpool: error: {error_line(err)}", file=sys.stderr)
        return 2


def error_line(err: BaseException) -> str:
    """The one line to show for ``err``: Bytewax's wrappers (``error calling ... in step``)
    are peeled off down to the error a step raised, whose last non-empty line is shown."""
    while type(err).__module__.startswith("bytewax") and err.__cause__ is not None:
        err = err.__cause__
    lines = str(err).strip().splitlines()
    return next((line for line in reversed(lines) if line.strip()), type(err).__name__)


if __name__ == "__main__":
    sys.exit(main())
