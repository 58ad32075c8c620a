"""The Kafka subcommands of ``tickpool``: ``kafka-feed`` (consume and run the job) and ``publish``.

``register(sub)`` adds them to the ``tickpool`` parser's subparsers and returns their handlers
by name; ``python -m tickpool.pipeline.kafka_cli`` runs them on their own.

    tickpool publish ticks.arrow --bootstrap localhost:19092 --topic ticks --speed 10
    tickpool kafka-feed --bootstrap localhost:19092 --topic ticks --out out/ --workers 2
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console

from tickpool.pipeline.cli import (
    add_job_options,
    job_config,
    observed_progress,
    run_job,
    stop_on_signals,
)

__all__ = ["cmd_kafka_feed", "cmd_publish", "register"]

_err = Console(stderr=True)


def _connection_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--bootstrap", required=True, metavar="HOST:PORT[,HOST:PORT]", help="Kafka brokers"
    )
    p.add_argument("--topic", required=True, help="the topic of tick messages")
    p.add_argument(
        "--kafka-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a librdkafka setting, e.g. security.protocol=SSL (repeatable)",
    )


def register(sub: Any) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Add ``kafka-feed`` and ``publish`` to ``sub`` (``parser.add_subparsers()``).

    Returns:
        The handler of each subcommand by name; each takes the parsed arguments and returns
        the exit code.
    """
    k = sub.add_parser(
        "kafka-feed", help="consume ticks from a Kafka topic and run the window pipeline"
    )
    _connection_options(k)
    k.add_argument(
        "--payload",
        choices=("auto", "arrow", "json"),
        default="auto",
        help="tick message format (auto: by each message's first bytes)",
    )
    k.add_argument("--predictions-topic", help="also write predictions to this topic")
    k.add_argument("--predictions-format", choices=("arrow", "json"), default="arrow")
    k.add_argument(
        "--start-at",
        choices=("beginning", "end"),
        default="beginning",
        help="where partitions without recovery state start (default: beginning)",
    )
    k.add_argument(
        "--stop-at-end",
        action="store_true",
        help="stop at the end of the topic instead of waiting for new messages",
    )
    k.add_argument("--batch-size", type=int, default=10_000, help="messages per poll")
    add_job_options(k)

    p = sub.add_parser("publish", help="publish an Arrow file of ticks to Kafka, paced by ts")
    p.add_argument("file", help="Arrow IPC file/stream or Parquet file of ticks")
    _connection_options(p)
    p.add_argument(
        "--speed", type=float, default=1.0, help="x market speed; 0: as fast as possible"
    )
    p.add_argument(
        "--format",
        choices=("arrow", "json"),
        default="arrow",
        help="arrow: an IPC stream per symbol and piece; json: one tick per message",
    )
    p.add_argument(
        "--batch-rows",
        type=int,
        default=8_192,
        help="rows per piece (pacing step); a message holds one symbol's share of a piece",
    )
    p.add_argument("--ts-column", default="ts")
    p.add_argument("--symbol-column", default="symbol")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    return {"kafka-feed": cmd_kafka_feed, "publish": cmd_publish}


def cmd_kafka_feed(args: argparse.Namespace) -> int:
    """Consume ``--topic`` and run the window job until interrupted (or the end, with
    ``--stop-at-end``). Ctrl-C or SIGTERM stops cleanly, as for ``feed``: each partition ends
    at its next poll, the sinks flush, the final statistics are written, files are closed."""
    from tickpool.pipeline.flow import RunObserver
    from tickpool.pipeline.kafka_flow import KafkaSettings, build_kafka_flow

    config = job_config(args)
    kafka = KafkaSettings(
        bootstrap=args.bootstrap,
        topic=args.topic,
        payload=args.payload,
        predictions_topic=args.predictions_topic,
        predictions_format=args.predictions_format,
        start_at=args.start_at,
        tail=not args.stop_at_end,
        batch_size=args.batch_size,
        options=tuple(args.kafka_option),
    )
    observer = RunObserver()
    stop = threading.Event()
    flow = build_kafka_flow(config, kafka, observer=observer, stop=stop)
    with stop_on_signals(stop):
        run_job(flow, config, observer, total=None, quiet=args.quiet, label=f"kafka {args.topic}")
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    """Produce the ticks of FILE to ``--topic``, keyed by symbol, paced by ts."""
    from bytewax._bytewax import cli_main

    from tickpool.connectors.arrow_source import count_rows, expand_paths
    from tickpool.pipeline.flow import RunObserver
    from tickpool.pipeline.kafka_flow import PublishSettings, build_publish_flow

    settings = PublishSettings(
        file=args.file,
        bootstrap=args.bootstrap,
        topic=args.topic,
        speed=args.speed,
        format=args.format,
        batch_rows=args.batch_rows,
        ts_column=args.ts_column,
        symbol_column=args.symbol_column,
        options=tuple(args.kafka_option),
    )
    total = count_rows(expand_paths([settings.file]))  # a clear error before Bytewax starts
    observer = RunObserver()
    flow = build_publish_flow(settings, observer=observer)
    t0 = time.perf_counter()
    label = f"publishing to {settings.topic}"
    with observed_progress(observer, label, total=total, quiet=args.quiet):
        cli_main(flow, workers_per_process=1)  # type: ignore[no-untyped-call]
    elapsed = time.perf_counter() - t0
    if not args.quiet:
        rate = observer.rows_read / elapsed if elapsed > 0 else 0.0
        _err.print(
            f"published {observer.rows_read:,} ticks to {settings.topic} "
            f"({settings.format}, keyed by {settings.symbol_column}) in {elapsed:.1f} s, "
            f"{rate:,.0f} ticks/s"
        )
    return 0


if __name__ == "__main__":  # the same as `tickpool`, whose parser registers these commands
    from tickpool.pipeline.cli import main

    sys.exit(main())
