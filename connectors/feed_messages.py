"""Live-feed messages to Arrow: JSON field mappings (presets) and the micro-batcher. No I/O.

A live feed hands us one JSON message per tick; the rest of the pipeline wants columnar
``RecordBatch``es. This module is the edge where per-tick Python objects exist, and only briefly:

- :class:`FeedParser` reads one message (``str`` or ``bytes``, decoded with orjson) with a
  :class:`FieldMap` and returns its ticks, or says why it cannot. Two presets:

  * ``generic`` (the default): ``{"ts": <int ns or ISO-8601 text>, "symbol": "BTC-USD",
    "price": 97000.5, "size": 0.01}``; ``size`` is optional; numbers may also be decimal strings.
    A frame may also be a JSON array of such objects (several ticks in one frame; the feed
    simulator's ``--batch`` mode sends that to reach high rates).
  * ``coinbase``: Coinbase Exchange ``ticker`` and ``match``/``last_match`` messages (prices and
    sizes as decimal strings, ISO-8601 ``time``, ``product_id`` as the symbol). Control messages
    (``subscriptions``, ``heartbeat``, ``status``) are *ignored*: counted, not dead letters.
    Any other ``type`` is unmappable, so a dead letter.

- :class:`MicroBatcher` gathers parsed ticks into four column lists and cuts a
  ``RecordBatch`` (``ts`` timestamp[ns, UTC], ``symbol`` string, ``price`` float64, ``size``
  float64; names configurable) when it holds ``max_rows`` ticks or its oldest tick has waited
  ``max_latency_ms``, whichever comes first.

- :func:`dead_letter` turns a rejected message into a :class:`~tickpool.operators.items.DeadLetter`
  carrying the raw text (cut to :data:`RAW_TEXT_LIMIT` characters, with the full length noted) and
  the reason.

The rules are those of every JSON tick in tickpool (the WebSocket feed and Kafka JSON payloads
both parse with :class:`FeedParser`): ``ts`` is int nanoseconds within int64 or ISO-8601 date
*and* time (``YYYY-MM-DD[T ]HH:MM:SS[.f{1,9}]``) with an optional zone ``Z``, ``+HH:MM``,
``+HHMM`` or ``+HH`` (no zone: UTC), inside the int64-nanosecond range (1677-09-21 to
2262-04-11); a date alone is not a tick time. ``price`` must be present, and a finite number or a
decimal string (null, NaN and infinities are rejected with the reason); ``size`` is optional (null
means none). A message that breaks a rule is rejected whole (one element, for an array frame).

>>> parser = FeedParser("generic")
>>> parser.parse(b'{"ts": "2024-01-02T03:04:05.123456789Z", "symbol": "A", "price": 1.5}')
[(1704164645123456789, 'A', 1.5, None)]
>>> parser.parse_frame(b'{"ts": 5, "symbol": "A"}')
([], [Rejected(element=None, reason="missing field 'price'", raw=None)])
>>> b = MicroBatcher(max_rows=2, max_latency_ms=50)
>>> b.add(1, "A", 1.0, None) is None, b.add(2, "A", 2.0, 3.0).num_rows
(True, 2)
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, Final, NamedTuple, TypeAlias

import orjson
import pyarrow as pa

from tickpool.operators.items import DeadLetter

__all__ = [
    "PRESETS",
    "RAW_TEXT_LIMIT",
    "FeedParser",
    "FieldMap",
    "MessageError",
    "MicroBatcher",
    "Rejected",
    "Tick",
    "dead_letter",
    "parse_iso_ns",
    "raw_text",
    "tick_schema",
]

Tick: TypeAlias = tuple[int, str, float, float | None]
"""One parsed tick: ``(ts nanoseconds since the epoch UTC, symbol, price, size or None)``."""

RAW_TEXT_LIMIT: Final = 512
"""Characters of a rejected message kept in its dead letter (enough to see what it was)."""

_INT64_MAX: Final = 2**63 - 1
"""Timestamps are int64 nanoseconds; -2**63 is left out (it is NaT to pandas and numpy)."""
_ISO: Final = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:[.,](\d{1,9}))?"
    r"(Z|z|[+-]\d{2}(?::?\d{2})?)?"
)
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND: Final = timedelta(seconds=1)


class MessageError(ValueError):
    """A message that cannot be mapped to ticks; the text is the dead letter's reason."""


class Rejected(NamedTuple):
    """One rejected part of a frame: the whole frame (``element`` None) or one array element.

    ``raw`` is the offending element as JSON (None when the whole frame is the culprit: the
    caller keeps the frame's own text).
    """

    element: int | None
    reason: str
    raw: bytes | None = None


@dataclass(frozen=True)
class FieldMap:
    """Which message fields hold the tick's columns, and which message types to take.

    Attributes:
        name: the preset's name (for messages and logs).
        ts, symbol, price: the fields that must be present (``ts`` int nanoseconds or ISO-8601
            text; ``price`` a number or a decimal string).
        size: field names tried in order for the optional size (first present wins).
        type_field: the field naming the message type, or None when every message is a tick.
        tick_types: the values of ``type_field`` that are ticks.
        ignored_types: values of ``type_field`` that are control messages: counted, not ticks,
            not dead letters.
        arrays: a JSON array frame holds several ticks (one object each).
    """

    name: str
    ts: str = "ts"
    symbol: str = "symbol"
    price: str = "price"
    size: tuple[str, ...] = ("size",)
    type_field: str | None = None
    tick_types: frozenset[str] = frozenset()
    ignored_types: frozenset[str] = frozenset()
    arrays: bool = False


PRESETS: Final[dict[str, FieldMap]] = {
    "generic": FieldMap("generic", arrays=True),
    "coinbase": FieldMap(
        "coinbase",
        ts="time",
        symbol="product_id",
        price="price",
        size=("last_size", "size"),
        type_field="type",
        tick_types=frozenset({"ticker", "match", "last_match"}),
        ignored_types=frozenset({"subscriptions", "heartbeat", "status"}),
    ),
}
"""The field maps ``--preset`` names."""


@lru_cache(maxsize=4096)
def _epoch_seconds(date: str, clock: str, zone: str | None) -> int:
    """Whole seconds since the epoch of ``date clock zone`` (cached: ticks share seconds).

    Integer arithmetic throughout (no float ``timestamp()``), so every second is exact.
    """
    if zone is None or zone in ("Z", "z"):
        zone = "+00:00"
    elif len(zone) == 3:
        zone = f"{zone}:00"
    elif ":" not in zone:
        zone = f"{zone[:3]}:{zone[3:]}"
    return (datetime.fromisoformat(f"{date}T{clock}{zone}") - _EPOCH) // _SECOND


def parse_iso_ns(text: str) -> int:
    """Nanoseconds since the epoch of ISO-8601 text; no zone means UTC; up to 9 fraction digits.

    Exact to the nanosecond (``datetime`` alone stops at microseconds), and fast for a feed:
    the date-and-second part is cached, so most ticks cost one regex match. A date alone is
    not a tick time; the result must fit int64 nanoseconds (1677-09-21 to 2262-04-11).

    >>> parse_iso_ns("1970-01-01T00:00:01.5Z"), parse_iso_ns("1970-01-01 01:00:00+01")
    (1500000000, 0)

    Raises:
        MessageError: the text is not ``YYYY-MM-DD[T ]HH:MM:SS[.f{1,9}][Z|+HH:MM|+HHMM|+HH]``,
            or not a real time, or out of the int64-nanosecond range.
    """
    return _parse_iso_ns(text, "ts")


def _parse_iso_ns(text: str, field: str) -> int:
    m = _ISO.fullmatch(text)
    if m is None:
        raise MessageError(
            f"{field} {text[:64]!r} is not ISO-8601, expected YYYY-MM-DDTHH:MM:SS[.fff][Z|+HH:MM]"
        )
    date, clock, fraction, zone = m.groups()
    try:
        seconds = _epoch_seconds(date, clock, zone)
    except (ValueError, OverflowError) as err:
        raise MessageError(f"{field} {text[:64]!r} is not a valid time: {err}") from None
    ns = 0 if fraction is None else int(fraction) * 10 ** (9 - len(fraction))
    out = seconds * 1_000_000_000 + ns
    if not -_INT64_MAX <= out <= _INT64_MAX:
        raise MessageError(
            f"{field} {text[:64]!r} is out of the int64 nanosecond range, "
            "expected a time from 1677-09-21T00:12:43.145224193Z to 2262-04-11T23:47:16.854775807Z"
        )
    return out


def _number(value: object, field: str) -> float:
    """A finite float from a JSON number or decimal string; bools are not numbers."""
    if isinstance(value, float | int) and not isinstance(value, bool):
        out = float(value)
    elif isinstance(value, str):
        try:
            out = float(value)
        except ValueError:
            raise MessageError(f"{field} {value[:64]!r} is not a number") from None
    else:
        raise MessageError(f"{field} is {type(value).__name__}, expected a number")
    if not math.isfinite(out):
        raise MessageError(f"{field} is {value!r}, expected a finite number")
    return out


def _ts_ns(value: object, field: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        if not -_INT64_MAX <= value <= _INT64_MAX:
            raise MessageError(
                f"{field} {value} is out of the int64 nanosecond range, expected |ts| < 2**63"
            )
        return value
    if isinstance(value, str):
        return _parse_iso_ns(value, field)
    raise MessageError(
        f"{field} is {type(value).__name__}, expected int nanoseconds or ISO-8601 text"
    )


class FeedParser:
    """Map JSON messages to ticks with a :class:`FieldMap` (a preset name or a map of your own).

    :meth:`parse` returns the message's ticks (an empty list for an ignored control message) or
    raises :class:`MessageError` with the reason. An array frame (``FieldMap.arrays``) is parsed
    element by element by :meth:`parse_frame`, so one bad element does not sink the others.
    """

    def __init__(self, fields: str | FieldMap = "generic") -> None:
        if isinstance(fields, str):
            try:
                fields = PRESETS[fields]
            except KeyError:
                msg = f"unknown feed preset {fields!r}; expected one of {', '.join(PRESETS)}"
                raise ValueError(msg) from None
        self.fields = fields

    def parse(self, raw: str | bytes) -> list[Tick]:
        """The ticks of one message (all or nothing, also for an array frame)."""
        ticks, errors = self.parse_frame(raw)
        if errors:
            raise MessageError(errors[0].reason)
        return ticks

    def parse_frame(self, raw: str | bytes) -> tuple[list[Tick], list[Rejected]]:
        """The ticks of one frame, and a :class:`Rejected` for each bad part.

        A frame that is not JSON, or not an object (nor an array of objects where allowed), is
        one error with element None; a bad array element is an error with its index and its
        JSON.
        """
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as err:
            return [], [Rejected(None, f"malformed JSON: {err}")]
        if isinstance(obj, dict):
            try:
                tick = self._tick(obj)
            except MessageError as err:
                return [], [Rejected(None, str(err))]
            return ([] if tick is None else [tick]), []
        if isinstance(obj, list) and self.fields.arrays:
            ticks: list[Tick] = []
            errors: list[Rejected] = []
            for i, element in enumerate(obj):
                try:
                    tick = self.parse_object(element)
                except MessageError as err:
                    errors.append(Rejected(i, str(err), orjson.dumps(element)))
                    continue
                if tick is not None:
                    ticks.append(tick)
            return ticks, errors
        wanted = "an object or an array of objects" if self.fields.arrays else "an object"
        return [], [Rejected(None, f"message is a JSON {type(obj).__name__}, expected {wanted}")]

    def parse_object(self, obj: object) -> Tick | None:
        """The tick of one decoded JSON value (None for an ignored control message).

        Raises:
            MessageError: ``obj`` is not an object, or breaks the field map's rules.
        """
        if not isinstance(obj, dict):
            raise MessageError(f"array element is {type(obj).__name__}, expected an object")
        return self._tick(obj)

    def _tick(self, obj: dict[str, Any]) -> Tick | None:
        f = self.fields
        if f.type_field is not None:
            kind = obj.get(f.type_field)
            if kind is not None and not isinstance(kind, str):
                raise MessageError(
                    f"{f.type_field} is {type(kind).__name__}, expected a string naming the "
                    f"message type ({', '.join(sorted(f.tick_types))})"
                )
            if kind in f.ignored_types:
                return None
            if kind not in f.tick_types:
                raise MessageError(
                    f"unmappable {f.name} message: {f.type_field}={kind!r}; "
                    f"ticks are {', '.join(sorted(f.tick_types))}"
                )
        try:
            ts_raw, symbol, price_raw = obj[f.ts], obj[f.symbol], obj[f.price]
        except KeyError as err:
            raise MessageError(f"missing field {err.args[0]!r}") from None
        if not isinstance(symbol, str) or not symbol:
            raise MessageError(f"{f.symbol} is {symbol!r}, expected a non-empty string")
        size: float | None = None
        for name in f.size:
            value = obj.get(name)
            if value is not None:
                size = _number(value, name)
                break
        return _ts_ns(ts_raw, f.ts), symbol, _number(price_raw, f.price), size


def tick_schema(
    ts: str = "ts", symbol: str = "symbol", price: str = "price", size: str = "size"
) -> pa.Schema:
    """The schema of the batches :class:`MicroBatcher` cuts (column names configurable)."""
    fields: list[pa.Field[Any]] = [
        pa.field(ts, pa.timestamp("ns", tz="UTC"), nullable=False),
        pa.field(symbol, pa.string(), nullable=False),
        pa.field(price, pa.float64(), nullable=False),
        pa.field(size, pa.float64()),
    ]
    return pa.schema(fields)


class MicroBatcher:
    """Columnar lists of parsed ticks, cut into a ``RecordBatch`` by rows or by age.

    Args:
        max_rows: a batch is cut as soon as it holds this many ticks.
        max_latency_ms: ... or when its oldest tick has waited this long (checked by
            :meth:`due`/:meth:`poll`: the caller polls, at :meth:`deadline` at the latest).
        schema: the batch schema (see :func:`tick_schema`).
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(
        self,
        max_rows: int,
        max_latency_ms: float,
        *,
        schema: pa.Schema | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
            raise ValueError(f"max_rows must be an integer >= 1; got {max_rows!r}")
        if not max_latency_ms > 0:
            raise ValueError(f"max_latency_ms must be > 0; got {max_latency_ms!r}")
        self.max_rows = max_rows
        self.max_latency_s = max_latency_ms / 1000.0
        self.schema = tick_schema() if schema is None else schema
        self._clock = clock
        self._ts: list[int] = []
        self._symbol: list[str] = []
        self._price: list[float] = []
        self._size: list[float | None] = []
        self._first: float | None = None

    def __len__(self) -> int:
        return len(self._ts)

    def add(self, ts: int, symbol: str, price: float, size: float | None) -> pa.RecordBatch | None:
        """Append one tick; the full batch when this tick made ``max_rows``, else None.

        Raises:
            ValueError: ``ts`` does not fit int64 nanoseconds (the pending ticks are kept: a
                bad tick never reaches :meth:`flush`).
        """
        if not -_INT64_MAX <= ts <= _INT64_MAX:
            raise ValueError(f"ts {ts} is out of the int64 nanosecond range")
        if self._first is None:
            self._first = self._clock()
        self._ts.append(ts)
        self._symbol.append(symbol)
        self._price.append(price)
        self._size.append(size)
        if len(self._ts) >= self.max_rows:
            return self.flush()
        return None

    def deadline(self) -> float | None:
        """The clock time by which the pending ticks must be cut (None when there are none)."""
        return None if self._first is None else self._first + self.max_latency_s

    def due(self, now: float | None = None) -> bool:
        """Whether the oldest pending tick has waited ``max_latency_ms``."""
        deadline = self.deadline()
        return deadline is not None and (self._clock() if now is None else now) >= deadline

    def poll(self, now: float | None = None) -> pa.RecordBatch | None:
        """The pending ticks as a batch if they are due, else None."""
        return self.flush() if self.due(now) else None

    def flush(self) -> pa.RecordBatch | None:
        """The pending ticks as a batch now (None when there are none); starts a new batch."""
        if not self._ts:
            return None
        s = self.schema
        batch = pa.RecordBatch.from_arrays(
            [
                pa.array(self._ts, s.field(0).type),
                pa.array(self._symbol, pa.string()),
                pa.array(self._price, pa.float64()),
                pa.array(self._size, pa.float64()),
            ],
            schema=s,
        )
        self._ts, self._symbol, self._price, self._size = [], [], [], []
        self._first = None
        return batch


def dead_letter(
    source: str, message: int, element: int | None, reason: str, raw: str | bytes | None
) -> DeadLetter:
    """A dead letter for a rejected message: where it was, why, and its raw text (cut short).

    ``message`` is the frame's sequence number in the feed (it goes in ``DeadLetter.batch``),
    ``element`` its index within an array frame (``DeadLetter.row``). The raw text goes in
    ``value``: the first :data:`RAW_TEXT_LIMIT` characters, then ``... (N chars)`` when longer;
    bytes that are not UTF-8 are shown with replacement characters.
    """
    return DeadLetter(source, message, element, reason, value=raw_text(raw))


def raw_text(raw: str | bytes | None) -> str | None:
    """``raw`` as text for a dead letter: the first :data:`RAW_TEXT_LIMIT` characters, then
    ``... (N chars)`` when longer; bytes that are not UTF-8 get replacement characters.

    >>> raw_text(b"x" * 600)[-20:]
    'xxxxx... (600 chars)'
    """
    if raw is None:
        return None
    text = raw if isinstance(raw, str) else bytes(raw).decode("utf-8", "replace")
    if len(text) > RAW_TEXT_LIMIT:
        return f"{text[:RAW_TEXT_LIMIT]}... ({len(text):,} chars)"
    return text
