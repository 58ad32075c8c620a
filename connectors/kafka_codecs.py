"""Kafka message values <-> Arrow: IPC stream payloads (read zero-copy) and JSON ticks; no broker.

Two payloads carry ticks:

- **Arrow**: a message value is one whole Arrow IPC *stream* (schema, dictionaries, exactly one
  record batch, end-of-stream marker). :func:`decode_arrow` reads it from the message bytes
  through ``pa.py_buffer``, so the batch's columns are views of the message (no copy); the batch
  keeps the bytes alive. The batch passes through as it is (any columns, dictionary symbols).
- **JSON**: a message value is one tick, a JSON object such as
  ``{"ts": 1704205800000000000, "symbol": "BTCUSDT", "price": 42000.5}``, or a JSON array of
  such objects (for producers that batch). Each tick is read by the WebSocket feed's parser
  (:class:`~tickpool.connectors.feed_messages.FeedParser`, generic preset with the configured
  field names), so a JSON tick means the same on both paths: ``ts`` int64 nanoseconds or
  ISO-8601 date and time (zone optional, no zone means UTC; a date alone is rejected),
  ``price`` a finite number or decimal string (null, missing, NaN: dead letter), ``size``
  optional; other fields are ignored. :class:`JsonTickBatcher` turns the ticks of many messages
  into one record batch (:func:`~tickpool.connectors.feed_messages.tick_schema`: ``ts``
  timestamp[ns, UTC], ``symbol`` utf8, ``price`` and ``size`` float64), so per-tick Python
  objects live only here, at the edge. Producers here write one tick per message
  (:func:`encode_json_ticks`), keyed by symbol.

Predictions go back as Arrow IPC (one batch per message) or JSON lines (one line per prediction,
newline-terminated): :func:`encode_predictions` / :func:`decode_predictions`.

A value that cannot be decoded raises :class:`KafkaDecodeError`, which names the topic, the
partition, the offset, what was found and what was expected; :class:`TickDecoder` turns it into
a :class:`~tickpool.operators.items.DeadLetter` (``source`` ``kafka:<topic>/<partition>``,
``batch`` the offset, ``row`` the tick's index in a JSON array or None for the whole message,
``reason`` the error, ``value`` the raw text) or re-raises it, by the ``bad_rows`` policy.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias

import orjson
import pyarrow as pa

from tickpool.connectors.feed_messages import (
    FeedParser,
    FieldMap,
    MessageError,
    MicroBatcher,
    raw_text,
    tick_schema,
)
from tickpool.connectors.sinks import json_lines
from tickpool.operators.items import DeadLetter, TickBatch
from tickpool.operators.symbols import split_by_symbol

__all__ = [
    "ARROW_STREAM_MAGIC",
    "MERGE_ROWS",
    "JsonTickBatcher",
    "KafkaDecodeError",
    "MessageRef",
    "PayloadFormat",
    "TickDecoder",
    "TickPayload",
    "decode_arrow",
    "decode_predictions",
    "encode_arrow",
    "encode_json_ticks",
    "encode_predictions",
    "parse_json_ticks",
    "sniff_payload",
    "split_by_key",
]

PayloadFormat: TypeAlias = Literal["arrow", "json"]
"""How a message value is encoded."""

TickPayload: TypeAlias = Literal["auto", "arrow", "json"]
"""What a tick consumer expects: one format, or ``auto`` (recognised by the first bytes)."""

ARROW_STREAM_MAGIC: Final = b"\xff\xff\xff\xff"
"""An Arrow IPC stream starts with the continuation marker (JSON starts with ``{`` or ``[``)."""

_ARROW_EXPECTED: Final = "an Arrow IPC stream holding exactly one record batch"
_JSON_EXPECTED: Final = "a JSON tick object or a JSON array of tick objects"
_UTC_NS: Final = pa.timestamp("ns", tz="UTC")


@dataclass(frozen=True, slots=True)
class MessageRef:
    """Where a message is: topic, partition, offset.

    >>> str(MessageRef("ticks", 2, 17))
    "Kafka topic 'ticks', partition 2, offset 17"
    >>> MessageRef("ticks", 2, 17).source
    'kafka:ticks/2'
    """

    topic: str
    partition: int
    offset: int

    @property
    def source(self) -> str:
        """The ``source`` of tick batches and dead letters from this partition."""
        return f"kafka:{self.topic}/{self.partition}"

    def __str__(self) -> str:
        return f"Kafka topic {self.topic!r}, partition {self.partition}, offset {self.offset}"


class KafkaDecodeError(ValueError):
    """A message value is not what the consumer expects.

    The message reads ``Kafka topic 't', partition p, offset o[, tick i]: <found>; expected
    <what>`` (a tick's reason from the feed parser says what it expected itself, so then
    ``expected`` is None and the message ends with that reason).

    Attributes:
        ref: the message's topic, partition and offset.
        found: what was wrong.
        expected: what the value should have been (None: ``found`` says it).
        row: the tick's index in a JSON array (None: the whole message).
    """

    def __init__(
        self, ref: MessageRef, found: str, expected: str | None, row: int | None = None
    ) -> None:
        where = str(ref) if row is None else f"{ref}, tick {row}"
        tail = "" if expected is None else f"; expected {expected}"
        super().__init__(f"{where}: {found}{tail}")
        self.ref = ref
        self.found = found
        self.expected = expected
        self.row = row

    def __reduce__(
        self,
    ) -> tuple[type[KafkaDecodeError], tuple[MessageRef, str, str | None, int | None]]:
        return type(self), (self.ref, self.found, self.expected, self.row)

    @property
    def topic(self) -> str:
        return self.ref.topic

    @property
    def partition(self) -> int:
        return self.ref.partition

    @property
    def offset(self) -> int:
        return self.ref.offset

    def dead_letter(self, raw: bytes | None) -> DeadLetter:
        """This error as a dead letter carrying ``raw`` (the message or the tick) as text."""
        return DeadLetter(
            self.ref.source, self.ref.offset, self.row, str(self), value=raw_text(raw)
        )


def _head(value: bytes) -> str:
    return repr(bytes(value[:16]))


# -- Arrow IPC -------------------------------------------------------------------------------------


def encode_arrow(batch: pa.RecordBatch) -> bytes:
    """``batch`` as one Arrow IPC stream (schema, the batch, end-of-stream): one message value."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def decode_arrow(value: bytes | None, ref: MessageRef) -> pa.RecordBatch:
    """The record batch in an Arrow IPC stream message value, zero-copy.

    The batch's buffers are views of ``value`` (through ``pa.py_buffer``), which the batch keeps
    alive.

    Raises:
        KafkaDecodeError: the value is empty, not an Arrow IPC stream, cut short, or holds no
            or more than one record batch.
    """
    if not value:
        raise KafkaDecodeError(ref, "empty message value", _ARROW_EXPECTED)
    try:
        reader = pa.ipc.open_stream(pa.py_buffer(value))
        batch = reader.read_next_batch()
    except StopIteration:
        found = "an Arrow IPC stream with no record batch"
        raise KafkaDecodeError(ref, found, _ARROW_EXPECTED) from None
    except (pa.ArrowException, OSError) as exc:
        found = f"not a readable Arrow IPC stream ({type(exc).__name__}: {exc}; first bytes "
        raise KafkaDecodeError(ref, found + f"{_head(value)})", _ARROW_EXPECTED) from exc
    try:
        reader.read_next_batch()
    except StopIteration:
        return batch
    except (pa.ArrowException, OSError) as exc:
        found = f"a record batch followed by unreadable bytes ({type(exc).__name__}: {exc})"
        raise KafkaDecodeError(ref, found, _ARROW_EXPECTED) from exc
    raise KafkaDecodeError(ref, "more than one record batch", _ARROW_EXPECTED)


def sniff_payload(value: bytes | None, ref: MessageRef) -> PayloadFormat:
    """``arrow`` or ``json``, by the value's first bytes (leading whitespace skipped for JSON).

    Raises:
        KafkaDecodeError: empty, or neither an Arrow IPC stream nor JSON.
    """
    if not value:
        raise KafkaDecodeError(
            ref, "empty message value", f"{_ARROW_EXPECTED}, or {_JSON_EXPECTED}"
        )
    if value[:4] == ARROW_STREAM_MAGIC:
        return "arrow"
    if bytes(value[:64]).lstrip()[:1] in (b"{", b"["):
        return "json"
    found = f"neither an Arrow IPC stream nor JSON (first bytes {_head(value)})"
    raise KafkaDecodeError(ref, found, f"{_ARROW_EXPECTED}, or {_JSON_EXPECTED}")


# -- JSON ticks ------------------------------------------------------------------------------------


def encode_json_ticks(batch: pa.RecordBatch) -> list[bytes]:
    """One JSON object per row (one message value each): timestamps as int nanoseconds,
    dictionary symbols decoded, NaN and infinities as null.

    >>> b = pa.record_batch({"ts": pa.array([5], pa.int64()), "symbol": ["A"], "price": [1.5]})
    >>> encode_json_ticks(b)
    [b'{"ts":5,"symbol":"A","price":1.5}']
    """
    return json_lines(batch).splitlines()  # orjson escapes newlines inside strings


def parse_json_ticks(value: bytes | None, ref: MessageRef) -> list[Any]:
    """The ticks of a JSON message value: ``[obj]`` for one object, the elements of an array.

    Elements are not checked here (see :class:`JsonTickBatcher`).

    Raises:
        KafkaDecodeError: empty, not UTF-8 JSON, or JSON that is neither an object nor an array.
    """
    if not value:
        raise KafkaDecodeError(ref, "empty message value", _JSON_EXPECTED)
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise KafkaDecodeError(ref, f"not valid JSON ({exc})", _JSON_EXPECTED) from None
    if isinstance(doc, dict):
        return [doc]
    if isinstance(doc, list):
        return doc
    raise KafkaDecodeError(ref, f"a JSON {type(doc).__name__}", _JSON_EXPECTED)


class JsonTickBatcher:
    """Collects JSON ticks from many messages and hands them out as one record batch.

    Each tick is read by :class:`~tickpool.connectors.feed_messages.FeedParser` (the generic
    preset's rules with these field names): ``ts`` int64 nanoseconds or ISO-8601 date and time,
    ``symbol`` non-empty text, ``price`` a finite number or decimal string, ``size`` optional.
    A tick that breaks these rules becomes a dead letter naming the topic, partition, offset and
    tick, with the parser's reason; the others are kept. Every check happens as a tick is
    taken, so :meth:`flush` cannot fail and one bad tick never costs its neighbours.

    Args:
        ts, symbol, price, size: field names of the time, the symbol, the price and the
            optional size (the batch's column names; other fields are ignored).

    >>> b = JsonTickBatcher()
    >>> b.add(b'[{"ts": 1, "symbol": "A", "price": 2}, {"ts": 2, "symbol": "A", "price": "3"}]',
    ...       MessageRef("t", 0, 7))
    []
    >>> b.add(b'{"ts": true, "symbol": "A", "price": 1}', MessageRef("t", 0, 8))[0].reason
    "Kafka topic 't', partition 0, offset 8, tick 0: ts is bool, expected int nanoseconds or \
ISO-8601 text"
    >>> item = b.flush()
    >>> item.source, item.index, item.batch.column("price").to_pylist()
    ('kafka:t/0', 7, [2.0, 3.0])
    """

    def __init__(
        self, ts: str = "ts", symbol: str = "symbol", price: str = "price", size: str = "size"
    ) -> None:
        names = (ts, symbol, price, size)
        if len(set(names)) != len(names) or not all(names):
            raise ValueError(f"JSON tick fields must be distinct non-empty names; got {names}")
        self.ts = ts
        self.symbol = symbol
        self.price = price
        self.size = size
        fields = FieldMap("json", ts=ts, symbol=symbol, price=price, size=(size,), arrays=True)
        self._parser = FeedParser(fields)
        # Cut by the caller (one batch per poll), never by rows or age.
        self._batcher = MicroBatcher(
            sys.maxsize, float("inf"), schema=tick_schema(ts, symbol, price, size)
        )
        self._first: MessageRef | None = None

    @property
    def pending(self) -> int:
        """Ticks collected and not yet flushed."""
        return len(self._batcher)

    def add(self, value: bytes | None, ref: MessageRef) -> list[DeadLetter]:
        """Take the ticks of one message; returns the dead letters of those that do not fit.

        Raises:
            KafkaDecodeError: the whole message is unreadable (see :func:`parse_json_ticks`).
        """
        return [err.dead_letter(raw) for err, raw in self.take(value, ref)]

    def take(self, value: bytes | None, ref: MessageRef) -> list[tuple[KafkaDecodeError, bytes]]:
        """:meth:`add`, returning each rejected tick's error and raw JSON instead."""
        ticks = parse_json_ticks(value, ref)
        single = len(ticks) == 1 and bytes(value or b"").lstrip()[:1] == b"{"
        rejected: list[tuple[KafkaDecodeError, bytes]] = []
        for i, obj in enumerate(ticks):
            try:
                tick = self._parser.parse_object(obj)
            except MessageError as err:
                raw = bytes(value or b"") if single else orjson.dumps(obj)
                rejected.append((KafkaDecodeError(ref, str(err), None, i), raw))
                continue
            if tick is not None:
                if self._first is None:
                    self._first = ref
                self._batcher.add(*tick)
        return rejected

    def flush(self) -> TickBatch | None:
        """The ticks collected so far as one batch (None if there are none); starts afresh.

        The batch's ``source`` and ``index`` are those of the first message that gave a tick
        (``index`` is its offset).
        """
        first, self._first = self._first, None
        batch = self._batcher.flush()
        if batch is None or first is None:
            return None
        return TickBatch(batch, first.source, first.offset)


# -- one poll of one partition ---------------------------------------------------------------------


MERGE_ROWS: Final = 65_536
"""The most ticks :class:`TickDecoder` merges consecutive Arrow messages into (DESIGN.md's
8k-64k-tick items)."""


class TickDecoder:
    """Turns the messages of one partition poll into ``TickBatch`` items and dead letters.

    Consecutive Arrow messages of one poll with the same schema become one item of at most
    ``merge_rows`` ticks: producers write small messages (one per symbol and piece, about 128
    ticks with the publisher's defaults), and the window job wants items of thousands. Merging
    copies the ticks once (counted in :attr:`copied_rows`); a message alone, or one bigger than
    ``merge_rows``, passes through zero-copy. A merged item's ``index`` is the offset of its
    first message, and its rows run on across the messages. The JSON ticks of one poll become
    one micro-batch. Order is kept: each kind is flushed before a message of the other.
    Undecodable messages become :class:`DeadLetter`s (``bad_rows="drop"``) or raise
    :class:`KafkaDecodeError` (``bad_rows="error"``).

    Args:
        payload: ``auto`` (by the first bytes), ``arrow`` or ``json``.
        batcher: how JSON ticks map to columns.
        bad_rows: ``drop`` (dead letters) or ``error``.
        merge_rows: the most ticks in one merged Arrow item (1: never merge).

    Attributes:
        copied_rows: ticks copied by merging, over the decoder's life.
    """

    def __init__(
        self,
        payload: TickPayload = "auto",
        batcher: JsonTickBatcher | None = None,
        bad_rows: str = "drop",
        merge_rows: int = MERGE_ROWS,
    ) -> None:
        if payload not in ("auto", "arrow", "json"):
            raise ValueError(f"payload must be auto, arrow or json; got {payload!r}")
        if bad_rows not in ("drop", "error"):
            raise ValueError(f"bad_rows must be 'drop' or 'error'; got {bad_rows!r}")
        if isinstance(merge_rows, bool) or not isinstance(merge_rows, int) or merge_rows < 1:
            raise ValueError(f"merge_rows must be an integer >= 1; got {merge_rows!r}")
        self.payload = payload
        self.batcher = batcher if batcher is not None else JsonTickBatcher()
        self.bad_rows = bad_rows
        self.merge_rows = merge_rows
        self.copied_rows = 0
        self._arrow: list[tuple[pa.RecordBatch, MessageRef]] = []
        self._arrow_rows = 0

    def decode(
        self, messages: Iterable[tuple[bytes | None, MessageRef]]
    ) -> list[TickBatch | DeadLetter]:
        """The items for ``messages`` (in order; JSON ticks of the call in one batch)."""
        out: list[TickBatch | DeadLetter] = []
        for value, ref in messages:
            try:
                kind = self.payload if self.payload != "auto" else sniff_payload(value, ref)
                if kind == "arrow":
                    batch = decode_arrow(value, ref)
                    self._flush(out)
                    self._add_arrow(out, batch, ref)
                else:
                    # Tick validation happens in take(), which may raise: flush Arrow first.
                    self._flush_arrow(out)
                    self._dead(out, self.batcher.take(value, ref))
            except KafkaDecodeError as err:
                self._flush_arrow(out)  # items stay in message order
                self._dead(out, [(err, value)])
        self._flush_arrow(out)
        self._flush(out)
        return out

    def _add_arrow(
        self, out: list[TickBatch | DeadLetter], batch: pa.RecordBatch, ref: MessageRef
    ) -> None:
        pending = self._arrow
        if pending and (
            ref.source != pending[0][1].source
            or self._arrow_rows + batch.num_rows > self.merge_rows
            or not batch.schema.equals(pending[0][0].schema)
        ):
            self._flush_arrow(out)
        self._arrow.append((batch, ref))
        self._arrow_rows += batch.num_rows

    def _flush_arrow(self, out: list[TickBatch | DeadLetter]) -> None:
        pending, self._arrow, self._arrow_rows = self._arrow, [], 0
        if not pending:
            return
        first = pending[0][1]
        if len(pending) == 1:
            out.append(TickBatch(pending[0][0], first.source, first.offset))  # zero-copy
            return
        table = pa.Table.from_batches([batch for batch, _ in pending]).combine_chunks()
        self.copied_rows += table.num_rows
        merged = table.to_batches()  # one chunk per column: one batch (none if no rows)
        batch = merged[0] if merged else pending[0][0]
        out.append(TickBatch(batch, first.source, first.offset))

    def _flush(self, out: list[TickBatch | DeadLetter]) -> None:
        item = self.batcher.flush()
        if item is not None:
            out.append(item)

    def _dead(
        self,
        out: list[TickBatch | DeadLetter],
        rejected: Sequence[tuple[KafkaDecodeError, bytes | None]],
    ) -> None:
        if rejected and self.bad_rows == "error":
            raise rejected[0][0]
        out.extend(err.dead_letter(raw) for err, raw in rejected)


# -- predictions and keys --------------------------------------------------------------------------


def encode_predictions(batch: pa.RecordBatch, fmt: PayloadFormat) -> bytes:
    """A prediction batch as one message value: an Arrow IPC stream, or JSON lines."""
    if fmt == "arrow":
        return encode_arrow(batch)
    if fmt == "json":
        return json_lines(batch)
    raise ValueError(f"prediction format must be arrow or json; got {fmt!r}")


def decode_predictions(value: bytes | None, fmt: PayloadFormat, ref: MessageRef) -> pa.RecordBatch:
    """A prediction message value back as a record batch (``ts`` as timestamp[ns, UTC]).

    Raises:
        KafkaDecodeError: not the format expected, or JSON lines without ``ts``/``symbol``.
    """
    if fmt == "arrow":
        return decode_arrow(value, ref)
    expected = "JSON lines of predictions with ts, symbol and yhat columns"
    if not value:
        raise KafkaDecodeError(ref, "empty message value", expected)
    try:
        rows = [orjson.loads(line) for line in bytes(value).splitlines() if line.strip()]
    except orjson.JSONDecodeError as exc:
        raise KafkaDecodeError(ref, f"not valid JSON lines ({exc})", expected) from None
    if not rows or not all(isinstance(r, dict) for r in rows):
        raise KafkaDecodeError(ref, "no JSON object lines", expected)
    names = list(rows[0])
    if "ts" not in names or "symbol" not in names:
        raise KafkaDecodeError(ref, f"lines with the fields {names}", expected)
    arrays: list[pa.Array[Any]] = []
    for name in names:
        column = [r.get(name) for r in rows]
        try:
            if name == "ts":
                arrays.append(pa.array(column, pa.int64()).view(_UTC_NS))
            elif name == "symbol":
                arrays.append(pa.array(column, pa.string()))
            else:
                arrays.append(pa.array(column, pa.float64()))
        except (pa.ArrowException, OverflowError, TypeError) as exc:
            found = f"a {name} column that does not convert ({type(exc).__name__}: {exc})"
            raise KafkaDecodeError(ref, found, expected) from None
    return pa.RecordBatch.from_arrays(arrays, names=names)


def split_by_key(
    batch: pa.RecordBatch, symbol_column: str = "symbol"
) -> list[tuple[bytes, pa.RecordBatch]]:
    """``(symbol as UTF-8 key, that symbol's rows)`` for keyed producing; arrival order kept.

    A batch of one symbol passes whole (no copy); rows with a null symbol are left out.

    >>> b = pa.record_batch({"symbol": ["B", "A", "B"], "price": [1.0, 2.0, 3.0]})
    >>> [(k, p.column("price").to_pylist()) for k, p in split_by_key(b)]
    [(b'B', [1.0, 3.0]), (b'A', [2.0])]
    """
    if batch.num_rows == 0:
        return []
    groups = split_by_symbol(batch, symbol_column)
    if len(groups) == 1:
        ((symbol, rows),) = groups.items()
        if rows.shape[0] == batch.num_rows:
            return [(symbol.encode(), batch)]
    return [(symbol.encode(), batch.take(rows)) for symbol, rows in groups.items()]
