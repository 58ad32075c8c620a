"""Kafka source and sinks on Bytewax's Kafka connector: messages <-> TickBatches, predictions.

``KafkaTickSource`` wraps ``bytewax.connectors.kafka.KafkaSource``: each Kafka partition is a
source partition whose state is its next offset (the offset after the last message handed
out), and each poll's messages are decoded by a
:class:`~tickpool.connectors.kafka_codecs.TickDecoder` (the Arrow messages of a poll merged into
items of up to 64k ticks, one copy; the JSON ticks of one poll become one micro-batch;
undecodable messages become dead letters). ``prediction_messages`` and ``tick_messages`` turn
record batches into ``KafkaSinkMessage``s keyed by symbol, so a symbol always lands in one Kafka
partition (and its ticks stay in order); ``kafka_sink`` is Bytewax's ``KafkaSink``.

Broker trouble: the consumers get a logging ``error_cb``. librdkafka reconnects by itself, so an
error it does not mark fatal (``_TRANSPORT``, ``_ALL_BROKERS_DOWN``, timeouts: retriable or just
informational) is logged at WARNING and the run goes on; a fatal one ends the run with one line
naming the brokers and the topics. Errors that arrive in a poll instead of the callback follow
the same rule (Bytewax's ``raise_on_errors=False``: they reach us as items, and the partition's
offset only moves past real messages).

Bytewax's connector needs ``confluent-kafka``, an optional dependency (``pip install
'tickpool[kafka]'``). It is imported when a Kafka object is made, not with this module, and its
absence is a :class:`KafkaUnavailable` error that says what to install.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from datetime import datetime
from types import ModuleType
from typing import Any, Final, Literal

import pyarrow as pa
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from typing_extensions import override

from tickpool.connectors.kafka_codecs import (
    MERGE_ROWS,
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
    "KafkaErrors",
    "KafkaTickSource",
    "KafkaUnavailable",
    "StartAt",
    "kafka_module",
    "kafka_sink",
    "prediction_messages",
    "tick_messages",
]

log = logging.getLogger(__name__)

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


class KafkaErrors:
    """librdkafka errors of a source's consumers: transient ones logged, the first fatal kept.

    ``callback`` is the consumers' ``error_cb`` (called from inside a poll, in the worker that
    polls); :meth:`check` raises the fatal error, if any, as one line naming the brokers and
    topics. Thread-safe: the workers of a process share it.
    """

    def __init__(self, brokers: Sequence[str], topics: Sequence[str]) -> None:
        self.where = f"Kafka brokers {','.join(brokers)}, topic {','.join(topics)}"
        self._lock = threading.Lock()
        self.transient = 0
        self.fatal: str | None = None

    def callback(self, err: Any) -> None:
        """``error_cb``: log ``err`` (a ``confluent_kafka.KafkaError``); keep it if fatal."""
        self.report(err, None)

    def report(self, err: Any, topic: str | None) -> None:
        """Log a consumer error; a fatal one is kept for :meth:`check` to raise."""
        where = self.where if topic is None else f"{self.where} ({topic})"
        text = f"{where}: {err.name()}: {err.str()}"
        if err.fatal():
            log.error("fatal error: %s", text)
            with self._lock:
                if self.fatal is None:
                    self.fatal = f"fatal error from {text}"
            return
        kind = "retriable" if err.retriable() else "transient"
        log.warning("%s error (librdkafka retries by itself): %s", kind, text)
        with self._lock:
            self.transient += 1

    def check(self) -> None:
        """Raise the first fatal error seen, if any.

        Raises:
            RuntimeError: one line naming the brokers, the topic and the error.
        """
        if self.fatal is not None:
            raise RuntimeError(self.fatal)


class KafkaCounters:
    """Messages consumed, dead letters made and ticks copied to merge Arrow messages, by a
    source's partitions in this process.

    Thread-safe (the workers of a process share the source); not part of recovery state.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.messages = 0
        self.undecodable = 0
        self.copied_rows = 0

    def add(self, messages: int, undecodable: int, copied_rows: int = 0) -> None:
        with self._lock:
            self.messages += messages
            self.undecodable += undecodable
            self.copied_rows += copied_rows

    def snapshot(self) -> dict[str, int]:
        """``kafka_messages``, ``kafka_undecodable`` (messages or JSON ticks rejected) and
        ``kafka_copied_rows`` (ticks copied to merge small Arrow messages into one item)."""
        with self._lock:
            return {
                "kafka_messages": self.messages,
                "kafka_undecodable": self.undecodable,
                "kafka_copied_rows": self.copied_rows,
            }


class _TickPartition(StatefulSourcePartition[Item, int | None]):
    """One Kafka partition: Bytewax's partition underneath, its messages decoded on the way out."""

    def __init__(
        self,
        inner: Any,
        decoder: TickDecoder,
        counters: KafkaCounters | None = None,
        stop: threading.Event | None = None,
        errors: KafkaErrors | None = None,
    ) -> None:
        self._inner = inner
        self._decoder = decoder
        self._counters = counters
        self._stop = stop
        self._errors = errors if errors is not None else KafkaErrors([], [])
        self._error_type: type[Any] = kafka_module().KafkaError
        self._copied = decoder.copied_rows
        # Our own position: Bytewax's moves past error events too, whose offsets are invalid.
        self._offset: int | None = inner.snapshot()

    @override
    def next_batch(self) -> list[Item]:
        # A stop request ends the partition between polls: everything polled so far has been
        # handed out, and the snapshot (the next offset) resumes right after it.
        if self._stop is not None and self._stop.is_set():
            raise StopIteration
        self._errors.check()  # a fatal error from the error_cb of any consumer
        # StopIteration at the end (tail=False); errors come as items (raise_on_errors=False).
        polled = self._inner.next_batch()
        messages = []
        for m in polled:
            if isinstance(m, self._error_type):
                self._errors.report(m.err, m.msg.topic)
            else:
                messages.append(m)
        self._errors.check()
        if messages:
            self._offset = int(messages[-1].offset) + 1
        items = self._decoder.decode(
            (m.value, MessageRef(m.topic or "", int(m.partition or 0), int(m.offset or 0)))
            for m in messages
        )
        if self._counters is not None and messages:
            dead = sum(isinstance(item, DeadLetter) for item in items)
            copied = self._decoder.copied_rows
            self._counters.add(len(messages), dead, copied - self._copied)
            self._copied = copied
        return items

    @override
    def next_awake(self) -> datetime | None:
        awake: datetime | None = self._inner.next_awake()
        return awake

    @override
    def snapshot(self) -> int | None:
        return self._offset

    @override
    def close(self) -> None:
        self._inner.close()


class KafkaTickSource(FixedPartitionedSource[Item, int | None]):
    """Consume tick messages from Kafka topics as ``TickBatch`` items (and ``DeadLetter``s).

    One source partition per Kafka partition (Bytewax's ``KafkaSource`` underneath, so its state
    is the next offset and a resumed run reads on from the snapshot: no consumer group). Each
    poll of a partition (at most ``batch_size`` messages) becomes items in message order: one
    ``TickBatch`` per run of Arrow messages with one schema (up to ``merge_rows`` ticks, copied
    once; a lone message stays a zero-copy view), one ``TickBatch`` for the JSON ticks of the
    poll, and a ``DeadLetter`` per undecodable message or tick. A
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
        merge_rows: consecutive Arrow messages of a poll (same schema) are merged into items of
            at most this many ticks, one copy (``kafka_copied_rows``); 1: never merge.
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
        merge_rows: int = MERGE_ROWS,
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
        self.errors = KafkaErrors(brokers, topics)
        config: dict[str, Any] = {"error_cb": self.errors.callback, **(add_config or {})}
        self._inner = bytewax_kafka.KafkaSource(
            list(brokers),
            list(topics),
            tail=tail,
            starting_offset=_offset(start_at),
            add_config=config,
            batch_size=batch_size,
            # Errors come to us as items: transient ones are logged, fatal ones end the run.
            raise_on_errors=False,
        )
        TickDecoder(payload, bad_rows=bad_rows, merge_rows=merge_rows)  # validates now
        JsonTickBatcher(ts, symbol, price, size)
        self.counters = KafkaCounters()
        self._payload: TickPayload = payload
        self._fields = (ts, symbol, price, size)
        self._bad_rows = bad_rows
        self._merge_rows = merge_rows
        self._stop = stop

    @override
    def list_parts(self) -> list[str]:
        parts: list[str] = self._inner.list_parts()
        return parts

    @override
    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _TickPartition:
        inner = self._inner.build_part(step_id, for_part, resume_state)
        decoder = TickDecoder(
            self._payload, JsonTickBatcher(*self._fields), self._bad_rows, self._merge_rows
        )
        return _TickPartition(inner, decoder, self.counters, self._stop, self.errors)

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
