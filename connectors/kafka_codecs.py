"""Kafka message values <-> Arrow: IPC stream payloads (read zero-copy) and JSON ticks; no broker.

Two payloads carry ticks:

- **Arrow**: a message value is one whole Arrow IPC *stream* (schema, dictionaries, exactly one
  record batch, end-of-stream marker). :func:`decode_arrow` reads it from the message bytes
  through ``pa.py_buffer``, so the batch's columns are views of the message (no copy); the batch
  keeps the bytes alive. The batch passes through as it is (any columns, dictionary symbols).
- **JSON**: a message value is one tick, a JSON object such as
  ``{"ts": 1704205800000000000, "symbol": "BTCUSDT", "price": 42000.5}``, or a JSON array of
  such objects (for producers that batch). ``ts`` is integer nanoseconds since the epoch or
  ISO-8601 text (no zone means UTC); values are numbers, decimal strings (``"42000.50"``) or
  null; other fields are ignored. :class:`JsonTickBatcher` turns the ticks of many messages into
  one record batch (``ts`` timestamp[ns, UTC], ``symbol`` utf8, float64 values), so per-tick
  Python objects live only here, at the edge. Producers here write one tick per message
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

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias

import orjson
import pyarrow as pa

from tickpool.connectors.sinks import json_lines
from tickpool.operators.items import DeadLetter, TickBatch
from tickpool.operators.symbols import split_by_symbol

__all__ = [
    "ARROW_STREAM_MAGIC",
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

MAX_RAW_CHARS: Final = 1_000
"""Raw text kept in a dead letter (longer messages are cut, with a note of their size)."""

_ARROW_EXPECTED: Final = "an Arrow IPC stream holding exactly one record batch"
_JSON_EXPECTED: Final = "a JSON tick object or a JSON array of tick objects"
_TS_EXPECTED: Final = "integer nanoseconds since the epoch or ISO-8601 text"
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
    <what>``.

    Attributes:
        ref: the message's topic, partition and offset.
        found: what was wrong.
        expected: what the value should have been.
        row: the tick's index in a JSON array (None: the whole message).
    """

    def __init__(self, ref: MessageRef, found: str, expected: str, row: int | None = None) -> None:
        where = str(ref) if row is None else f"{ref}, tick {row}"
        super().__init__(f"{where}: {found}; expected {expected}")
        self.ref = ref
        self.found = found
        self.expected = expected
        self.row = row

    def __reduce__(
        self,
    ) -> tuple[type[KafkaDecodeError], tuple[MessageRef, str, str, int | None]]:
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
            self.ref.source, self.ref.offset, self.row, str(self), value=_raw_text(raw)
        )


def _raw_text(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    text = bytes(raw[:MAX_RAW_CHARS]).decode("utf-8", errors="replace")
    if len(raw) > MAX_RAW_CHARS:
        text += f"... ({len(raw):,} bytes in all)"
    return text


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


def _number(value: Any) -> float | None:
    """A float from a JSON number or decimal string; None for null. Raises ValueError."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"a boolean ({value})")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"the text {value!r}") from None
    raise ValueError(f"a JSON {type(value).__name__}")


def _iso_to_ns(texts: Sequence[str]) -> list[int | None]:
    """ISO-8601 texts as int nanoseconds (None where unreadable); no zone means UTC."""
    if not texts:
        return []
    try:
        return pa.array(texts, pa.string()).cast(_UTC_NS).cast(pa.int64()).to_pylist()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    out: list[int | None] = []
    for text in texts:  # the slow path finds which ones are bad
        value: int | None = None
        for target in (_UTC_NS, pa.timestamp("ns")):
            try:
                value = pa.array([text], pa.string()).cast(target).cast(pa.int64())[0].as_py()
                break
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                continue
        out.append(value)
    return out


class JsonTickBatcher:
    """Collects JSON ticks from many messages and hands them out as one record batch.

    Each tick must have ``ts`` (int nanoseconds or ISO-8601 text) and ``symbol`` (non-empty
    text); each of ``values`` is a number, a decimal string, null or missing (null: the window
    operator then dead-letters that row with its own reason). A tick that breaks these rules
    becomes a dead letter naming the topic, partition, offset and tick; the others are kept.

    Args:
        ts, symbol: field names of the time and the symbol.
        values: field names of the float64 value columns (other fields are ignored).

    >>> b = JsonTickBatcher()
    >>> b.add(b'[{"ts": 1, "symbol": "A", "price": 2}, {"ts": 2, "symbol": "A"}]',
    ...       MessageRef("t", 0, 7))
    []
    >>> b.add(b'{"ts": true, "symbol": "A", "price": 1}', MessageRef("t", 0, 8))[0].reason
    "Kafka topic 't', partition 0, offset 8, tick 0: ts is a boolean (True); expected integer \
nanoseconds since the epoch or ISO-8601 text"
    >>> item = b.flush()
    >>> item.source, item.index, item.batch.column("price").to_pylist()
    ('kafka:t/0', 7, [2.0, None])
    """

    def __init__(
        self, ts: str = "ts", symbol: str = "symbol", values: Sequence[str] = ("price",)
    ) -> None:
        names = (ts, symbol, *values)
        if len(set(names)) != len(names) or not all(names):
            raise ValueError(f"JSON tick fields must be distinct non-empty names; got {names}")
        self.ts = ts
        self.symbol = symbol
        self.values = tuple(values)
        self._first: MessageRef | None = None
        self._ts: list[int | None] = []
        self._iso: list[tuple[int, str, MessageRef, int, bytes]] = []
        self._symbols: list[str] = []
        self._columns: list[list[float | None]] = [[] for _ in self.values]

    @property
    def pending(self) -> int:
        """Ticks collected and not yet flushed."""
        return len(self._symbols)

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
        for i, tick in enumerate(ticks):
            try:
                self._add_tick(tick, ref, i)
            except KafkaDecodeError as err:
                raw = bytes(value or b"") if single else orjson.dumps(tick, default=str)
                rejected.append((err, raw))
        return rejected

    def _add_tick(self, tick: Any, ref: MessageRef, row: int) -> None:
        if not isinstance(tick, dict):
            found = f"the array holds a JSON {type(tick).__name__}"
            raise KafkaDecodeError(ref, found, "a JSON object per tick", row)
        symbol = tick.get(self.symbol)
        if not isinstance(symbol, str) or not symbol:
            found = f"{self.symbol} is {'missing' if symbol is None else repr(symbol)}"
            raise KafkaDecodeError(ref, found, "a non-empty symbol text", row)
        ts = tick.get(self.ts)
        if ts is None or isinstance(ts, bool) or not isinstance(ts, int | str):
            found = f"{self.ts} is " + ("missing" if ts is None else f"{_describe(ts)}")
            raise KafkaDecodeError(ref, found, _TS_EXPECTED, row)
        numbers: list[float | None] = []
        for name in self.values:
            try:
                numbers.append(_number(tick.get(name)))
            except ValueError as exc:
                raise KafkaDecodeError(ref, f"{name} is {exc}", "a number or null", row) from None
        if self._first is None:
            self._first = ref
        if isinstance(ts, str):
            self._iso.append((len(self._ts), ts, ref, row, orjson.dumps(tick, default=str)))
            self._ts.append(None)
        else:
            self._ts.append(ts)
        self._symbols.append(symbol)
        for column, number in zip(self._columns, numbers, strict=True):
            column.append(number)

    def flush(self) -> TickBatch | None:
        """The ticks collected so far as one batch (None if there are none); starts afresh.

        The batch's ``source`` and ``index`` are those of the first message that gave a tick
        (``index`` is its offset). Ticks whose ISO-8601 text turns out unreadable are left out
        here; see :meth:`flush_with_dead`.
        """
        return self.flush_with_dead()[0]

    def flush_with_dead(self) -> tuple[TickBatch | None, list[DeadLetter]]:
        """:meth:`flush`, and the dead letters of ticks whose ISO-8601 ``ts`` is unreadable."""
        item, rejected = self.flush_rejected()
        return item, [err.dead_letter(raw) for err, raw in rejected]

    def flush_rejected(self) -> tuple[TickBatch | None, list[tuple[KafkaDecodeError, bytes]]]:
        """:meth:`flush_with_dead`, with errors and raw JSON instead of dead letters."""
        first = self._first
        if first is None:
            return None, []
        dead: list[tuple[KafkaDecodeError, bytes]] = []
        keep: list[int] | None = None
        if self._iso:
            parsed = _iso_to_ns([text for _, text, _, _, _ in self._iso])
            bad: set[int] = set()
            for (at, text, ref, row, raw), ns in zip(self._iso, parsed, strict=True):
                if ns is None:
                    bad.add(at)
                    err = KafkaDecodeError(ref, f"{self.ts} is {text!r}", _TS_EXPECTED, row)
                    dead.append((err, raw))
                else:
                    self._ts[at] = ns
            if bad:
                keep = [i for i in range(len(self._ts)) if i not in bad]
        ts, symbols, columns = self._ts, self._symbols, self._columns
        self._reset()
        if keep is not None:
            ts = [ts[i] for i in keep]
            symbols = [symbols[i] for i in keep]
            columns = [[c[i] for i in keep] for c in columns]
        if not symbols:
            return None, dead
        try:
            ts_array = pa.array(ts, pa.int64()).view(_UTC_NS)
        except OverflowError as exc:  # an int that does not fit int64 nanoseconds
            found = f"a ts out of the int64 range ({exc}) in the ticks from here on"
            err = KafkaDecodeError(first, found, _TS_EXPECTED)
            return None, [(err, b""), *dead]
        arrays: list[pa.Array[Any]] = [ts_array, pa.array(symbols, pa.string())]
        arrays.extend(pa.array(c, pa.float64()) for c in columns)
        batch = pa.RecordBatch.from_arrays(arrays, names=[self.ts, self.symbol, *self.values])
        return TickBatch(batch, first.source, first.offset), dead

    def _reset(self) -> None:
        self._first = None
        self._ts = []
        self._iso = []
        self._symbols = []
        self._columns = [[] for _ in self.values]


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"a boolean ({value})"
    if isinstance(value, float):
        return f"the float {value!r} (ambiguous units)"
    return f"a JSON {type(value).__name__}"


# -- one poll of one partition ---------------------------------------------------------------------


class TickDecoder:
    """Turns the messages of one partition poll into ``TickBatch`` items and dead letters.

    Arrow payloads pass through as they are (one item per message, zero-copy); the JSON ticks of
    one poll become one micro-batch (flushed before any Arrow message that follows them, so
    order is kept). Undecodable messages become :class:`DeadLetter`s (``bad_rows="drop"``) or
    raise :class:`KafkaDecodeError` (``bad_rows="error"``).

    Args:
        payload: ``auto`` (by the first bytes), ``arrow`` or ``json``.
        batcher: how JSON ticks map to columns.
        bad_rows: ``drop`` (dead letters) or ``error``.
    """

    def __init__(
        self,
        payload: TickPayload = "auto",
        batcher: JsonTickBatcher | None = None,
        bad_rows: str = "drop",
    ) -> None:
        if payload not in ("auto", "arrow", "json"):
            raise ValueError(f"payload must be auto, arrow or json; got {payload!r}")
        if bad_rows not in ("drop", "error"):
            raise ValueError(f"bad_rows must be 'drop' or 'error'; got {bad_rows!r}")
        self.payload = payload
        self.batcher = batcher if batcher is not None else JsonTickBatcher()
        self.bad_rows = bad_rows

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
                    out.append(TickBatch(batch, ref.source, ref.offset))
                else:
                    self._dead(out, self.batcher.take(value, ref))
            except KafkaDecodeError as err:
                self._dead(out, [(err, value)])
        self._flush(out)
        return out

    def _flush(self, out: list[TickBatch | DeadLetter]) -> None:
        if self.batcher.pending:
            item, rejected = self.batcher.flush_rejected()
            if item is not None:
                out.append(item)
            self._dead(out, rejected)

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
        if name == "ts":
            arrays.append(pa.array(column, pa.int64()).view(_UTC_NS))
        elif name == "symbol":
            arrays.append(pa.array(column, pa.string()))
        else:
            arrays.append(pa.array(column, pa.float64()))
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
