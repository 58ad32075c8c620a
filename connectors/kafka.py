"""Kafka source and sinks on Bytewax's Kafka connector: messages <-> TickBatches, predictions.

``KafkaTickSource`` wraps ``bytewax.connectors.kafka.KafkaSource``: each Kafka partition is a
source partition whose state is its next offset (Bytewax's own snapshot), and each poll's
messages are decoded by a :class:`~tickpool.connectors.kafka_codecs.TickDecoder` (Arrow payloads
pass through zero-copy, the JSON ticks of one poll become one micro-batch, undecodable messages
become dead letters). ``prediction_messages`` and ``tick_messages`` turn record batches into
``KafkaSinkMessage``s keyed by symbol, so a symbol always lands in one Kafka partition (and its
ticks stay in order); ``kafka_sink`` is Bytewax's ``KafkaSink``.

Bytewax's connector needs ``confluent-kafka``, an optional dependency (``pip install
'tickpool[kafka]'``). It is imported when a Kafka object is made, not with this module, and its
absence is a :class:`KafkaUnavailable` error that says what to install.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import datetime
from types import ModuleType
from typing import Any, Final, Literal

import pyarrow as pa
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from typing_extensions import override

from tickpool.connectors.kafka_codecs import (
    JsonTickBatcher,
    MessageRef,
    PayloadFormat,
    TickDecoder,
    TickPayload,
    encode_arrow,
    encode_json_ticks,
    encode_predictions,
    split_by_key,
)
from tickpool.operators.items import DeadLetter, TickBatch

__all__ = [
    "INSTALL_HINT",
    "KafkaCounters",
    "KafkaTickSource",
    "KafkaUnavailable",
    "StartAt",
    "kafka_module",
    "kafka_sink",
    "prediction_messages",
    "tick_messages",
]

INSTALL_HINT: Final = "pip install 'tickpool[kafka]'  (or: pip install 'confluent-kafka>=2.3')"

StartAt = Literal["beginning", "end"]
"""Where a partition without a snapshot starts: its first message or the next new one."""


class KafkaUnavailable(ImportError):
    """``confluent-kafka`` (needed by Bytewax's Kafka connector) is not installed."""


def kafka_module() -> ModuleType:
    """``bytewax.connectors.kafka``, imported now; a clear error if confluent-kafka is missing.

    Raises:
        KafkaUnavailable: ``confluent_kafka`` cannot be imported.
    """
    try:
        import bytewax.connectors.kafka as bytewax_kafka
    except ImportError as exc:
        msg = (
            f"the Kafka commands need the confluent-kafka package ({exc}); install the extra: "
            f"{INSTALL_HINT}"
        )
        raise KafkaUnavailable(msg) from exc
    return bytewax_kafka


def _offset(start_at: StartAt) -> int:
    import confluent_kafka

    return (
        confluent_kafka.OFFSET_BEGINNING if start_at == "beginning" else confluent_kafka.OFFSET_END
    )


Item = TickBatch | DeadLetter


class KafkaCounters:
    """Messages consumed and dead letters made by a source's partitions in this process.

    Thread-safe (the workers of a process share the source); not part of recovery state.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.messages = 0
        self.undecodable = 0

    def add(self, messages: int, undecodable: int) -> None:
        with self._lock:
            self.messages += messages
            self.undecodable += undecodable

    def snapshot(self) -> dict[str, int]:
        """``kafka_messages`` and ``kafka_undecodable`` (messages or JSON ticks rejected)."""
        with self._lock:
            return {"kafka_messages": self.messages, "kafka_undecodable": self.undecodable}


class _TickPartition(StatefulSourcePartition[Item, int | None]):
    """One Kafka partition: Bytewax's partition underneath, its messages decoded on the way out."""

    def __init__(
        self,
        inner: Any,
        decoder: TickDecoder,
        counters: KafkaCounters | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self._inner = inner
        self._decoder = decoder
        self._counters = counters
        self._stop = stop

    @override
    def next_batch(self) -> list[Item]:
        # A stop request ends the partition between polls: everything polled so far has been
        # handed out, and the snapshot (Bytewax's next offset) resumes right after it.
        if self._stop is not None and self._stop.is_set():
            raise StopIteration
        # Consumer errors raise (raise_on_errors=True); StopIteration at the end (tail=False).
        messages = self._inner.next_batch()
        items = self._decoder.decode(
            (m.value, MessageRef(m.topic or "", int(m.partition or 0), int(m.offset or 0)))
            for m in messages
        )
        if self._counters is not None and messages:
            dead = sum(isinstance(item, DeadLetter) for item in items)
            self._counters.add(len(messages), dead)
        return items

    @override
    def next_awake(self) -> datetime | None:
        awake: datetime | None = self._inner.next_awake()
        return awake

    @override
    def snapshot(self) -> int | None:
        state: int | None = self._inner.snapshot()
        return state

    @override
    def close(self) -> None:
        self._inner.close()


class KafkaTickSource(FixedPartitionedSource[Item, int | None]):
    """Consume tick messages from Kafka topics as ``TickBatch`` items (and ``DeadLetter``s).

    One source partition per Kafka partition (Bytewax's ``KafkaSource`` underneath, so its state
    is the next offset and a resumed run reads on from the snapshot: no consumer group). Each
    poll of a partition (at most ``batch_size`` messages) becomes items in message order: one
    ``TickBatch`` per Arrow message (zero-copy views of the message), one ``TickBatch`` for the
    JSON ticks of the poll, and a ``DeadLetter`` per undecodable message or tick. A
    ``TickBatch``'s ``source`` is ``kafka:<topic>/<partition>`` and its ``index`` the offset of
    its (first) message.

    Args:
        brokers: ``host:port`` of the bootstrap brokers.
        topics: topics to consume.
        payload: ``auto`` (each message by its first bytes), ``arrow`` or ``json``.
        ts, symbol, price, size: JSON tick field names (the columns of JSON micro-batches).
        bad_rows: ``drop`` (undecodable messages become dead letters) or ``error``.
        tail: wait for new messages at the end (False: stop at each partition's end).
        start_at: where a partition with no snapshot starts.
        batch_size: messages per poll, the largest JSON micro-batch.
        add_config: more librdkafka settings (``{"security.protocol": "SSL", ...}``).
        stop: set it (a signal handler, another thread) to end every partition at its next
            poll, so the flow reaches EOF cleanly (sinks flushed, final statistics).

    Raises:
        KafkaUnavailable: confluent-kafka is not installed.
    """

    def __init__(
        self,
        brokers: Sequence[str],
        topics: Sequence[str],
        *,
        payload: TickPayload = "auto",
        ts: str = "ts",
        symbol: str = "symbol",
        price: str = "price",
        size: str = "size",
        bad_rows: str = "drop",
        tail: bool = True,
        start_at: StartAt = "beginning",
        batch_size: int = 10_000,
        add_config: dict[str, str] | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        bytewax_kafka = kafka_module()
        if isinstance(brokers, str) or isinstance(topics, str):
            raise TypeError("brokers and topics must be lists of strings, not one string")
        if start_at not in ("beginning", "end"):
            raise ValueError(f"start_at must be 'beginning' or 'end'; got {start_at!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1; got {batch_size!r}")
        self._inner = bytewax_kafka.KafkaSource(
            list(brokers),
            list(topics),
            tail=tail,
            starting_offset=_offset(start_at),
            add_config=dict(add_config or {}),
            batch_size=batch_size,
            raise_on_errors=True,
        )
        TickDecoder(payload, bad_rows=bad_rows)  # validates now, not in a worker
        JsonTickBatcher(ts, symbol, price, size)
        self.counters = KafkaCounters()
        self._payload: TickPayload = payload
        self._fields = (ts, symbol, price, size)
        self._bad_rows = bad_rows
        self._stop = stop

    @override
    def list_parts(self) -> list[str]:
        parts: list[str] = self._inner.list_parts()
        return parts

    @override
    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _TickPartition:
        inner = self._inner.build_part(step_id, for_part, resume_state)
        decoder = TickDecoder(self._payload, JsonTickBatcher(*self._fields), self._bad_rows)
        return _TickPartition(inner, decoder, self.counters, self._stop)

    def stats(self) -> dict[str, int]:
        """This process's counters, for the statistics records (see :class:`KafkaCounters`)."""
        return self.counters.snapshot()


def _message(key: bytes, value: bytes) -> Any:
    return kafka_module().KafkaSinkMessage(key, value)


def prediction_messages(
    batch: pa.RecordBatch, fmt: PayloadFormat = "arrow", symbol_column: str = "symbol"
) -> list[Any]:
    """``KafkaSinkMessage``s for a prediction batch: one per symbol in it, keyed by the symbol.

    The value is the symbol's predictions as an Arrow IPC stream or as JSON lines.
    """
    return [
        _message(key, encode_predictions(part, fmt))
        for key, part in split_by_key(batch, symbol_column)
    ]


def tick_messages(
    batch: pa.RecordBatch, fmt: PayloadFormat = "arrow", symbol_column: str = "symbol"
) -> list[Any]:
    """``KafkaSinkMessage``s for a tick batch, keyed by symbol.

    ``arrow``: one message per symbol in the batch (that symbol's rows); ``json``: one message
    per tick.
    """
    out: list[Any] = []
    for key, part in split_by_key(batch, symbol_column):
        if fmt == "arrow":
            out.append(_message(key, encode_arrow(part)))
        elif fmt == "json":
            out.extend(_message(key, value) for value in encode_json_ticks(part))
        else:
            raise ValueError(f"tick format must be arrow or json; got {fmt!r}")
    return out


def kafka_sink(brokers: Sequence[str], topic: str, add_config: dict[str, str] | None = None) -> Any:
    """Bytewax's ``KafkaSink`` for ``topic`` (at-least-once; items are ``KafkaSinkMessage``s).

    Raises:
        KafkaUnavailable: confluent-kafka is not installed.
    """
    return kafka_module().KafkaSink(list(brokers), topic, dict(add_config or {}))
