"""``build_kafka_flow``: the window job fed from Kafka; ``build_publish_flow``: the publisher.

``build_kafka_flow(config, kafka)`` consumes tick messages (Arrow IPC or JSON, see
``connectors/kafka_codecs.py``) and hands the decoded ``TickBatch``es to
:func:`~tickpool.pipeline.flow.attach_job`, the same job and sinks as ``tickpool replay``.
Messages (or JSON ticks) that cannot be decoded never reach the job: they join its dead letters
(``--dead-letters``) with the reason, and every statistics record carries the process's
``kafka_messages`` and ``kafka_undecodable`` counts. With ``predictions_topic`` the predictions
also go to Kafka, one message per symbol and batch, keyed by symbol.

``build_publish_flow(settings)`` is the feed simulator's Kafka side: it replays an Arrow file
paced by ``ts`` (the replay source's pacing) and produces messages keyed by symbol.

Run either with ``tickpool kafka-feed`` / ``tickpool publish`` or as a Bytewax cluster::

    flow = build_kafka_flow(PipelineConfig(out="out", shards=4),
                            KafkaSettings(bootstrap="localhost:19092", topic="ticks"))
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any, Final, cast

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream

from tickpool.connectors.arrow_source import ArrowReplaySource
from tickpool.connectors.kafka import (
    KafkaTickSource,
    StartAt,
    kafka_sink,
    prediction_messages,
    tick_messages,
)
from tickpool.connectors.kafka_codecs import PayloadFormat, TickPayload
from tickpool.operators.items import DeadLetter, TickBatch
from tickpool.pipeline.config import PipelineConfig
from tickpool.pipeline.flow import RunObserver, attach_job

__all__ = ["KafkaSettings", "PublishSettings", "build_kafka_flow", "build_publish_flow"]

_TOPIC: Final = re.compile(r"[A-Za-z0-9._-]{1,249}")


def _brokers(value: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """``"a:9092,b:9092"`` or a sequence of ``host:port`` -> a checked tuple."""
    items = value.split(",") if isinstance(value, str) else list(value)
    brokers = tuple(b.strip() for b in items if b.strip())
    if not brokers:
        raise ValueError(f"bootstrap must name at least one HOST:PORT broker; got {value!r}")
    for broker in brokers:
        host, sep, port = broker.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(
                f"bootstrap broker {broker!r} is not HOST:PORT (a port in 1..65535), "
                "e.g. localhost:19092"
            )
    return brokers


def _topic(name: str, what: str) -> None:
    if not isinstance(name, str) or not _TOPIC.fullmatch(name) or name in (".", ".."):
        raise ValueError(
            f"{what} must be a Kafka topic name (1-249 of A-Z a-z 0-9 . _ -); got {name!r}"
        )


def _options(value: Any) -> tuple[tuple[str, str], ...]:
    pairs = value.items() if isinstance(value, dict) else value
    out = []
    for pair in pairs:
        if isinstance(pair, str):
            key, sep, val = pair.partition("=")
            if not sep:
                raise ValueError(f"Kafka option {pair!r} is not KEY=VALUE")
        else:
            key, val = pair
        if not key.strip():
            raise ValueError(f"Kafka option {pair!r} has an empty key")
        out.append((key.strip(), str(val)))
    return tuple(out)


def _positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1; got {value!r}")


@dataclass(frozen=True)
class KafkaSettings:
    """Where ``tickpool kafka-feed`` reads ticks and (optionally) writes predictions.

    Attributes:
        bootstrap: brokers, ``"host:port,host:port"`` or a sequence (stored as a tuple).
        topic: the topic of tick messages.
        payload: ``auto`` (each message by its first bytes), ``arrow`` or ``json``.
        predictions_topic: also write predictions here (None: no Kafka output).
        predictions_format: ``arrow`` (IPC stream per message) or ``json`` (JSON lines).
        start_at: where a partition without recovery state starts: ``beginning`` or ``end``.
        tail: wait for new messages at the end of the topic (False: stop there; for tests and
            catch-up jobs).
        batch_size: messages per poll of a partition (the largest JSON micro-batch).
        options: more librdkafka settings as ``KEY=VALUE`` strings or pairs.

    >>> KafkaSettings(bootstrap="localhost:19092", topic="ticks").bootstrap
    ('localhost:19092',)
    >>> KafkaSettings(bootstrap="localhost", topic="ticks")
    Traceback (most recent call last):
    ...
    ValueError: bootstrap broker 'localhost' is not HOST:PORT (a port in 1..65535), e.g. \
localhost:19092
    """

    bootstrap: tuple[str, ...]
    topic: str
    payload: TickPayload = "auto"
    predictions_topic: str | None = None
    predictions_format: PayloadFormat = "arrow"
    start_at: StartAt = "beginning"
    tail: bool = True
    batch_size: int = 10_000
    options: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "bootstrap", _brokers(self.bootstrap))
        object.__setattr__(self, "options", _options(self.options))
        _topic(self.topic, "topic")
        if self.predictions_topic is not None:
            _topic(self.predictions_topic, "predictions_topic")
            if self.predictions_topic == self.topic:
                raise ValueError(
                    f"predictions_topic must differ from the tick topic; both are {self.topic!r}"
                )
        if self.payload not in ("auto", "arrow", "json"):
            raise ValueError(f"payload must be auto, arrow or json; got {self.payload!r}")
        if self.predictions_format not in ("arrow", "json"):
            raise ValueError(
                f"predictions_format must be arrow or json; got {self.predictions_format!r}"
            )
        if self.start_at not in ("beginning", "end"):
            raise ValueError(f"start_at must be beginning or end; got {self.start_at!r}")
        _positive("batch_size", self.batch_size)

    def add_config(self) -> dict[str, str]:
        """The librdkafka settings beyond the bootstrap servers."""
        return dict(self.options)


@dataclass(frozen=True)
class PublishSettings:
    """What ``tickpool publish`` sends where.

    Attributes:
        file: the Arrow IPC file (or stream, or Parquet file) of ticks.
        bootstrap, topic, options: as in :class:`KafkaSettings`.
        speed: 0 as fast as possible; S > 0 at S times market speed by ``ts_column``.
        format: ``arrow`` (one message per symbol per piece) or ``json`` (one per tick).
        batch_rows: rows per piece of the file (the pacing step; Arrow messages hold at most
            this many ticks, a piece's share of one symbol).
        ts_column, symbol_column: the pacing column and the key column.
    """

    file: str
    bootstrap: tuple[str, ...]
    topic: str
    speed: float = 0.0
    format: PayloadFormat = "arrow"
    batch_rows: int = 8_192
    ts_column: str = "ts"
    symbol_column: str = "symbol"
    options: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "bootstrap", _brokers(self.bootstrap))
        object.__setattr__(self, "options", _options(self.options))
        _topic(self.topic, "topic")
        if not self.speed >= 0 or self.speed == float("inf"):
            raise ValueError(
                f"speed must be 0 (as fast as possible) or finite > 0; got {self.speed}"
            )
        if self.format not in ("arrow", "json"):
            raise ValueError(f"format must be arrow or json; got {self.format!r}")
        _positive("batch_rows", self.batch_rows)


def build_kafka_flow(
    config: PipelineConfig,
    kafka: KafkaSettings,
    observer: RunObserver | None = None,
    *,
    stop: threading.Event | None = None,
) -> Dataflow:
    """The window job fed from Kafka: ``kafka.topic`` in, ``config``'s sinks (and Kafka) out.

    Args:
        config: the window job and its sinks (``sources`` and ``speed`` are not used).
        kafka: brokers, topics, payload formats.
        observer: receives row counts and stats records.
        stop: set it to end the run cleanly (each partition ends at its next poll, the flow
            reaches EOF: sinks flushed, final statistics written).

    Raises:
        KafkaUnavailable: confluent-kafka is not installed.
    """
    flow = Dataflow("tickpool_kafka")
    source = KafkaTickSource(
        kafka.bootstrap,
        [kafka.topic],
        payload=kafka.payload,
        ts=config.ts_column,
        symbol=config.symbol_column,
        price=config.value,
        bad_rows=config.bad_rows,
        tail=kafka.tail,
        start_at=kafka.start_at,
        batch_size=kafka.batch_size,
        add_config=kafka.add_config(),
        stop=stop,
    )
    items = op.input("kafka_ticks", flow, source)
    decoded = op.branch("decoded", items, lambda item: isinstance(item, TickBatch))
    ticks = cast("Stream[TickBatch]", decoded.trues)
    undecodable = cast("Stream[DeadLetter]", decoded.falses)
    out = attach_job(
        ticks, config, observer=observer, rejected=undecodable, extra_stats=source.stats
    )
    if kafka.predictions_topic is not None:
        fmt = kafka.predictions_format
        predictions = op.key_rm("predictions_unkey", out.predictions)
        messages = op.flat_map(
            "predictions_to_kafka", predictions, lambda batch: prediction_messages(batch, fmt)
        )
        op.output(
            "predictions_kafka",
            messages,
            kafka_sink(kafka.bootstrap, kafka.predictions_topic, kafka.add_config()),
        )
    return flow


def build_publish_flow(settings: PublishSettings, observer: RunObserver | None = None) -> Dataflow:
    """Replay ``settings.file`` paced by ts and produce its ticks to Kafka, keyed by symbol.

    Raises:
        KafkaUnavailable: confluent-kafka is not installed.
    """
    flow = Dataflow("tickpool_publish")
    ticks = op.input(
        "file",
        flow,
        ArrowReplaySource(
            [settings.file],
            max_batch_rows=settings.batch_rows,
            speed=settings.speed,
            ts_column=settings.ts_column,
        ),
    )
    if observer is not None:
        op.inspect("observe", ticks, lambda _s, item: observer.saw(item))
    fmt, symbol = settings.format, settings.symbol_column
    messages = op.flat_map("messages", ticks, lambda item: tick_messages(item.batch, fmt, symbol))
    op.output(
        "kafka", messages, kafka_sink(settings.bootstrap, settings.topic, dict(settings.options))
    )
    return flow
