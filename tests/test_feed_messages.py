"""Feed messages to ticks: the generic and Coinbase presets, dead letters, and micro-batching."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tickpool.connectors.feed_messages import (
    RAW_TEXT_LIMIT,
    FeedParser,
    MessageError,
    MicroBatcher,
    dead_letter,
    parse_iso_ns,
    tick_schema,
)
from tickpool.connectors.websocket_source import FeedConfig

GENERIC = FeedParser("generic")
COINBASE = FeedParser("coinbase")

# 1900..2200 in nanoseconds: inside int64, and datetime handles every second of it.
ns_times = st.integers(-2_208_988_800 * 10**9, 7_258_118_400 * 10**9 - 1)
finite = st.floats(allow_nan=False, allow_infinity=False)
symbols = st.text(min_size=1, max_size=12)


def iso(ns: int, digits: int = 9, zone: str = "Z") -> str:
    seconds, frac = divmod(ns, 10**9)
    base = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)
    text = base.strftime("%Y-%m-%dT%H:%M:%S")
    if digits:
        text += "." + f"{frac:09d}"[:digits]
    return text + zone


@given(ns_times)
def test_iso_text_parses_to_the_exact_nanosecond(ns: int) -> None:
    assert parse_iso_ns(iso(ns)) == ns
    assert parse_iso_ns(iso(ns, digits=6)) == ns - ns % 1000
    assert parse_iso_ns(iso(ns, digits=0, zone="")) == ns - ns % 10**9  # no zone: UTC


def test_iso_offsets_and_pyarrow_agree() -> None:
    texts = ["2024-03-01T12:00:00.5+02:00", "2024-03-01 10:00:00.5", "2024-03-01T09:30:00.5-0030"]
    got = [parse_iso_ns(t) for t in texts]
    assert got == [parse_iso_ns("2024-03-01T10:00:00.500Z")] * 3
    expected = pa.array(["2024-03-01T10:00:00.5"]).cast(pa.timestamp("ns")).cast(pa.int64())
    assert got[0] == expected[0].as_py()


@given(ns_times, symbols, finite, st.one_of(st.none(), finite), st.booleans())
def test_generic_message_maps_to_one_tick(
    ns: int, symbol: str, price: float, size: float | None, iso_ts: bool
) -> None:
    msg: dict[str, object] = {"ts": iso(ns) if iso_ts else ns, "symbol": symbol, "price": price}
    if size is not None:
        msg["size"] = size
    for raw in (orjson.dumps(msg), orjson.dumps(msg).decode()):
        assert GENERIC.parse(raw) == [(ns, symbol, price, size)]


@given(finite, finite)
def test_coinbase_decimal_strings_parse_exactly(price: float, size: float) -> None:
    ticker = {
        "type": "ticker",
        "sequence": 7,
        "product_id": "BTC-USD",
        "price": repr(price),
        "last_size": repr(size),
        "time": "2022-10-19T23:28:22.061769Z",
    }
    ns = parse_iso_ns("2022-10-19T23:28:22.061769Z")
    assert COINBASE.parse(orjson.dumps(ticker)) == [(ns, "BTC-USD", price, size)]
    match = {
        "type": "match",
        "trade_id": 1,
        "product_id": "ETH-USD",
        "price": repr(price),
        "size": repr(size),
        "side": "buy",
        "time": "2022-10-19T23:28:22.061769Z",
    }
    assert COINBASE.parse(orjson.dumps(match)) == [(ns, "ETH-USD", price, size)]


def test_coinbase_control_messages_are_ignored_not_rejected() -> None:
    for msg in (
        {"type": "subscriptions", "channels": [{"name": "ticker", "product_ids": ["BTC-USD"]}]},
        {"type": "heartbeat", "sequence": 1, "last_trade_id": 2, "product_id": "BTC-USD"},
    ):
        assert COINBASE.parse_frame(orjson.dumps(msg)) == ([], [])


@pytest.mark.parametrize(
    ("parser", "raw", "reason"),
    [
        (GENERIC, b"not json", "malformed JSON"),
        (GENERIC, b"\x00\xff\xfe", "malformed JSON"),
        (GENERIC, b"42", "message is a JSON int, expected an object or an array"),
        (GENERIC, b'{"ts": 1, "symbol": "A"}', "missing field 'price'"),
        (GENERIC, b'{"ts": 1, "symbol": "", "price": 1}', "symbol is '', expected a non-empty"),
        (GENERIC, b'{"ts": 1, "symbol": 5, "price": 1}', "symbol is 5"),
        (GENERIC, b'{"ts": true, "symbol": "A", "price": 1}', "ts is bool"),
        (GENERIC, b'{"ts": 1.5, "symbol": "A", "price": 1}', "ts is float"),
        (GENERIC, b'{"ts": "yesterday", "symbol": "A", "price": 1}', "is not ISO-8601"),
        (GENERIC, b'{"ts": "2024-13-45T00:00:00Z", "symbol": "A", "price": 1}', "not a valid"),
        (GENERIC, b'{"ts": 1, "symbol": "A", "price": "abc"}', "price 'abc' is not a number"),
        (GENERIC, b'{"ts": 1, "symbol": "A", "price": "NaN"}', "expected a finite number"),
        (GENERIC, b'{"ts": 1, "symbol": "A", "price": null}', "price is NoneType"),
        (GENERIC, b'{"ts": 99999999999999999999, "symbol": "A", "price": 1}', "ts is float"),
        (GENERIC, b'{"ts": 9223372036854775808, "symbol": "A", "price": 1}', "out of the int64"),
        (COINBASE, b'{"type": "l2update", "product_id": "A"}', "unmappable coinbase message"),
        (COINBASE, b'{"product_id": "A", "price": "1"}', "type=None"),
        (COINBASE, b'[{"type": "ticker"}]', "message is a JSON list, expected an object"),
        (COINBASE, b'{"type": "ticker", "product_id": "A", "price": "1"}', "missing field 'time'"),
        (COINBASE, b'{"type": ["ticker"], "product_id": "A"}', "type is list, expected a string"),
        (COINBASE, b'{"type": {"a": 1}, "product_id": "A"}', "type is dict, expected a string"),
        (COINBASE, b'{"type": 7, "product_id": "A"}', "type is int, expected a string"),
        (GENERIC, b'{"ts": "2024-01-02", "symbol": "A", "price": 1}', "is not ISO-8601"),
    ],
)
def test_bad_messages_say_why(parser: FeedParser, raw: bytes, reason: str) -> None:
    ticks, errors = parser.parse_frame(raw)
    assert ticks == []
    assert len(errors) == 1
    assert errors[0][0] is None
    assert reason in errors[0][1]


INT64_EDGES = [
    (2**63 - 1, True),
    (-(2**63) + 1, True),
    (2**63, False),
    (-(2**63), False),
    ("2262-04-11T23:47:16.854775807Z", True),
    ("2262-04-11T23:47:16.854775808Z", False),
    ("1677-09-21T00:12:43.145224193Z", True),
    ("1677-09-21T00:12:43.145224192Z", False),
    ("9999-12-31T23:59:59Z", False),
    ("0001-01-01T00:00:00Z", False),
    ("2262-04-12T00:00:00+01:00", True),  # 2262-04-11T23:00Z: inside once the offset applies
]


@pytest.mark.parametrize(("ts", "fits"), INT64_EDGES)
def test_ts_outside_int64_nanoseconds_is_rejected_and_the_batch_survives(
    ts: int | str, fits: bool
) -> None:
    batcher = MicroBatcher(max_rows=100, max_latency_ms=50)
    batcher.add(1, "A", 1.0, None)  # a pending tick the bad one must not take down
    ticks, errors = GENERIC.parse_frame(orjson.dumps({"ts": ts, "symbol": "A", "price": 1.0}))
    if fits:
        assert errors == []
        for tick in ticks:
            batcher.add(*tick)
    else:
        assert ticks == []
        assert "out of the int64 nanosecond range" in errors[0].reason
    batch = batcher.flush()
    assert batch is not None and batch.num_rows == (2 if fits else 1)


def test_batcher_refuses_an_out_of_range_ts_and_keeps_its_pending_ticks() -> None:
    b = MicroBatcher(max_rows=10, max_latency_ms=50)
    b.add(5, "A", 1.0, None)
    with pytest.raises(ValueError, match="out of the int64 nanosecond range"):
        b.add(2**63, "A", 1.0, None)
    batch = b.flush()
    assert batch is not None and batch.column("ts").cast(pa.int64()).to_pylist() == [5]


def test_iso_offsets_of_hours_only_are_read_and_a_date_alone_is_not() -> None:
    assert parse_iso_ns("2024-03-01T15:00:00+05") == parse_iso_ns("2024-03-01T10:00:00Z")
    assert parse_iso_ns("2024-03-01T05:00:00-05") == parse_iso_ns("2024-03-01T10:00:00Z")
    with pytest.raises(MessageError, match="is not ISO-8601"):
        parse_iso_ns("2024-03-01")


def test_array_frame_keeps_good_elements_and_rejects_bad_ones() -> None:
    frame = orjson.dumps(
        [
            {"ts": 1, "symbol": "A", "price": 1.0},
            {"ts": 2, "symbol": "A"},
            7,
            {"ts": 3, "symbol": "B", "price": "2.5", "size": "3"},
        ]
    )
    ticks, errors = GENERIC.parse_frame(frame)
    assert ticks == [(1, "A", 1.0, None), (3, "B", 2.5, 3.0)]
    assert [e.element for e in errors] == [1, 2]
    assert "missing field 'price'" in errors[0].reason
    assert "array element is int" in errors[1].reason
    # Each dead letter carries its own element, not the frame.
    assert [e.raw for e in errors] == [b'{"ts":2,"symbol":"A"}', b"7"]


def test_unknown_preset_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown feed preset 'kraken'; expected one of generic"):
        FeedParser("kraken")


def test_dead_letter_keeps_the_raw_text_cut_short() -> None:
    short = dead_letter("ws://x", 3, None, "malformed JSON", b"{oops")
    assert short.to_dict() == {
        "source": "ws://x",
        "batch": 3,
        "row": None,
        "reason": "malformed JSON",
        "ts": None,
        "symbol": None,
        "value": "{oops",
    }
    long = dead_letter("ws://x", 4, 2, "why", "x" * 5000)
    assert isinstance(long.value, str)
    assert long.value.startswith("x" * RAW_TEXT_LIMIT)
    assert long.value.endswith("... (5,000 chars)")
    assert len(long.value) < RAW_TEXT_LIMIT + 40
    assert dead_letter("s", 0, None, "r", b"\xff").value == "\ufffd"


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_batcher_cuts_by_rows() -> None:
    b = MicroBatcher(max_rows=3, max_latency_ms=1000)
    out = [b.add(i, "A", float(i), None) for i in range(7)]
    full = [x for x in out if x is not None]
    assert [x.num_rows for x in full] == [3, 3]
    assert len(b) == 1
    last = b.flush()
    assert last is not None
    assert last.column("ts").cast(pa.int64()).to_pylist() == [6]
    assert b.flush() is None
    assert len(b) == 0


def test_batcher_cuts_by_age_of_the_oldest_tick() -> None:
    clock = FakeClock()
    b = MicroBatcher(max_rows=1000, max_latency_ms=50, clock=clock)
    assert b.deadline() is None
    assert b.poll() is None
    b.add(1, "A", 1.0, None)
    clock.now += 0.030
    b.add(2, "A", 2.0, None)  # a later tick does not push the deadline back
    assert b.deadline() == pytest.approx(100.050)
    clock.now += 0.019
    assert not b.due()
    assert b.poll() is None
    clock.now += 0.001
    batch = b.poll()
    assert batch is not None
    assert batch.num_rows == 2
    assert b.deadline() is None  # the next tick starts a new clock
    b.add(3, "A", 3.0, None)
    assert b.deadline() == pytest.approx(clock.now + 0.050)


@given(
    st.lists(st.tuples(ns_times, symbols, finite, st.one_of(st.none(), finite)), max_size=60),
    st.integers(1, 10),
)
def test_batches_hold_exactly_the_ticks_added_in_order(
    ticks: list[tuple[int, str, float, float | None]], max_rows: int
) -> None:
    schema = tick_schema("t", "sym", "mid")
    b = MicroBatcher(max_rows=max_rows, max_latency_ms=50, schema=schema)
    batches = [x for x in (b.add(*t) for t in ticks) if x is not None]
    last = b.flush()
    if last is not None:
        batches.append(last)
    assert all(x.schema.equals(schema) for x in batches)
    assert all(x.num_rows == max_rows for x in batches[: len(ticks) // max_rows])
    table = pa.Table.from_batches(batches, schema=schema)
    rows = list(
        zip(
            table.column("t").cast(pa.int64()).to_pylist(),
            table.column("sym").to_pylist(),
            table.column("mid").to_pylist(),
            table.column("size").to_pylist(),
            strict=True,
        )
    )
    assert rows == ticks


def test_batch_schema_is_what_the_window_job_reads() -> None:
    assert tick_schema() == pa.schema(
        [
            pa.field("ts", pa.timestamp("ns", tz="UTC"), nullable=False),
            pa.field("symbol", pa.string(), nullable=False),
            pa.field("price", pa.float64(), nullable=False),
            pa.field("size", pa.float64()),
        ]
    )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"url": "http://example.com"}, "feed url must be ws://"),
        ({"preset": "kraken"}, "preset must be one of generic, coinbase; got 'kraken'"),
        ({"subscribe": "{not json"}, "subscribe must be JSON text"),
        ({"max_rows": 0}, "max_rows must be an integer >= 1; got 0"),
        ({"queue_size": 2.5}, "queue_size must be an integer >= 1; got 2.5"),
        ({"max_message_bytes": True}, "max_message_bytes must be an integer >= 1"),
        ({"max_ticks": 0}, "max_ticks must be an integer >= 1 or None; got 0"),
        ({"when_full": "drop"}, "when_full must be 'block' or 'drop-oldest'; got 'drop'"),
        ({"max_latency_ms": 0}, "max_latency_ms must be > 0; got 0"),
        ({"duration_s": -1.0}, "duration_s must be > 0 seconds or None"),
        ({"reconnect_max_s": 0.01}, "reconnect_max_s (0.01) must be >= reconnect_initial_s"),
        ({"queue_bytes": 0}, "queue_bytes must be an integer >= 1; got 0"),
        ({"queue_bytes": 1000}, "queue_bytes (1,000) must be >= max_message_bytes (1,048,576)"),
        ({"bad_rows": "skip"}, "bad_rows must be 'drop' or 'error'; got 'skip'"),
        ({"url": "ws://u:tok@[bad"}, "feed url must be ws://"),
    ],
)
def test_feed_config_rejects_bad_settings_clearly(changes: dict[str, object], message: str) -> None:
    settings: dict[str, object] = {"url": "ws://127.0.0.1:1"}
    settings.update(changes)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        FeedConfig(**settings)  # type: ignore[arg-type]


@given(st.integers(0, 80), st.floats(0.0, 1.0, exclude_max=True))
def test_backoff_doubles_up_to_the_cap_with_jitter_in_the_upper_half(
    attempt: int, rand: float
) -> None:
    cfg = FeedConfig("ws://h", reconnect_initial_s=0.1, reconnect_max_s=5.0)
    cap = min(5.0, 0.1 * 2**attempt)
    assert cap / 2 <= cfg.backoff_s(attempt, rand) <= cap
