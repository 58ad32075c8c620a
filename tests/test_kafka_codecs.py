"""Kafka message codecs, no broker: round trips, zero-copy reads, dead letters with reasons."""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tickpool.connectors.feed_messages import RAW_TEXT_LIMIT, FeedParser, MessageError
from tickpool.connectors.kafka_codecs import (
    JsonTickBatcher,
    KafkaDecodeError,
    MessageRef,
    TickDecoder,
    decode_arrow,
    decode_predictions,
    encode_arrow,
    encode_json_ticks,
    encode_predictions,
    split_by_key,
)
from tickpool.operators.items import DeadLetter, TickBatch, prediction_schema

REF = MessageRef("ticks", 3, 41)
UTC_NS = pa.timestamp("ns", tz="UTC")


@st.composite
def tick_batches(draw: st.DrawFn, *, finite: bool = False, dictionary: bool = False) -> Any:
    n = draw(st.integers(1, 60))
    ts = np.cumsum(draw(st.lists(st.integers(0, 10**9), min_size=n, max_size=n)))
    ts = ts + draw(st.integers(0, 1_800_000_000)) * 10**9
    symbols = draw(
        st.lists(st.sampled_from(["BTCUSDT", "ESH4", "é/€", "A"]), min_size=n, max_size=n)
    )
    prices = draw(
        st.lists(
            st.floats(allow_nan=not finite, allow_infinity=not finite, width=64),
            min_size=n,
            max_size=n,
        )
    )
    symbol_array = pa.array(symbols, pa.string())
    if dictionary:
        symbol_array = symbol_array.dictionary_encode()
    return pa.record_batch(
        {
            "ts": pa.array(ts, pa.int64()).view(UTC_NS),
            "symbol": symbol_array,
            "price": pa.array(prices, pa.float64()),
        }
    )


# -- Arrow ---------------------------------------------------------------------------------------


@given(tick_batches(dictionary=True))
@settings(max_examples=60, deadline=None)
def test_arrow_payload_round_trips_every_column(batch: pa.RecordBatch) -> None:
    decoded = decode_arrow(encode_arrow(batch), REF)
    assert decoded.schema.equals(batch.schema)
    assert decoded.select(["ts", "symbol"]).equals(batch.select(["ts", "symbol"]))
    np.testing.assert_array_equal(  # NaN == NaN here, unlike in RecordBatch.equals
        decoded.column("price").to_numpy(), batch.column("price").to_numpy()
    )


def test_arrow_decode_reads_the_message_bytes_without_copying() -> None:
    batch = pa.record_batch(
        {
            "ts": pa.array(np.arange(1_000, dtype=np.int64)).view(UTC_NS),
            "symbol": pa.array(["A"] * 1_000),
            "price": pa.array(np.linspace(100.0, 101.0, 1_000)),
        }
    )
    value = encode_arrow(batch)
    decoded = decode_arrow(value, REF)
    message = np.frombuffer(value, dtype=np.uint8)
    prices = decoded.column("price").to_numpy()
    assert np.shares_memory(prices, message)
    assert np.shares_memory(decoded.column("ts").cast(pa.int64()).to_numpy(), message)
    np.testing.assert_array_equal(prices, np.linspace(100.0, 101.0, 1_000))


def test_a_sliced_batch_encodes_only_its_rows() -> None:
    batch = pa.record_batch({"symbol": ["A", "B", "C", "D"], "price": [1.0, 2.0, 3.0, 4.0]})
    decoded = decode_arrow(encode_arrow(batch.slice(1, 2)), REF)
    assert decoded.column("price").to_pylist() == [2.0, 3.0]


# -- JSON ticks ----------------------------------------------------------------------------------


@given(tick_batches(finite=True))
@settings(max_examples=60, deadline=None)
def test_json_ticks_round_trip_one_tick_per_message(batch: pa.RecordBatch) -> None:
    messages = encode_json_ticks(batch)
    assert len(messages) == batch.num_rows
    batcher = JsonTickBatcher()
    for offset, value in enumerate(messages):
        assert batcher.add(value, MessageRef("ticks", 0, offset)) == []
    item = batcher.flush()
    assert item is not None
    assert item.source == "kafka:ticks/0" and item.index == 0
    for name in ("ts", "symbol", "price"):
        assert item.batch.column(name).equals(batch.column(name))
    assert item.batch.column("size").null_count == batch.num_rows  # no size in these ticks
    assert batcher.flush() is None  # flushed means empty


def test_nan_and_infinite_prices_travel_as_json_null_and_are_dead_lettered() -> None:
    batch = pa.record_batch(
        {
            "ts": pa.array([1, 2, 3], pa.int64()).view(UTC_NS),
            "symbol": ["A", "A", "A"],
            "price": [float("nan"), float("inf"), 1.5],
        }
    )
    batcher = JsonTickBatcher()
    letters = [d for value in encode_json_ticks(batch) for d in batcher.add(value, REF)]
    assert [d.value for d in letters] == [
        '{"ts":1,"symbol":"A","price":null}',
        '{"ts":2,"symbol":"A","price":null}',
    ]
    assert all("price is NoneType, expected a number" in d.reason for d in letters)
    item = batcher.flush()
    assert item is not None and item.batch.column("price").to_pylist() == [1.5]


def test_a_json_array_message_carries_many_ticks() -> None:
    value = orjson.dumps([{"ts": i, "symbol": "A", "price": float(i)} for i in range(5)])
    batcher = JsonTickBatcher()
    assert batcher.add(value, REF) == []
    item = batcher.flush()
    assert item is not None and item.batch.column("price").to_pylist() == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_json_ticks_take_iso_times_and_decimal_strings() -> None:
    ticks = [
        {"ts": "2024-01-02T14:30:00.123456789Z", "symbol": "BTC-USD", "price": "42000.50"},
        {"ts": "2024-01-02T15:30:00+01:00", "symbol": "BTC-USD", "price": 42001},
        {"ts": "2024-01-02T14:30:01", "symbol": "BTC-USD", "price": 3},  # no zone: UTC
        {"ts": "2024-01-02T19:30:02+05", "symbol": "BTC-USD", "price": 4, "size": "0.5"},
    ]
    batcher = JsonTickBatcher()
    assert batcher.add(orjson.dumps(ticks), REF) == []
    item = batcher.flush()
    assert item is not None
    ts = item.batch.column("ts")
    assert ts.type == UTC_NS
    base = 1_704_205_800 * 10**9
    assert ts.cast(pa.int64()).to_pylist() == [
        base + 123_456_789,
        base,
        base + 10**9,
        base + 2 * 10**9,
    ]
    assert item.batch.column("price").to_pylist() == [42000.5, 42001.0, 3.0, 4.0]
    assert item.batch.column("size").to_pylist() == [None, None, None, 0.5]


def test_json_fields_are_configurable_and_others_ignored() -> None:
    batcher = JsonTickBatcher(ts="time", symbol="product_id", price="bid", size="qty")
    value = b'{"time": 5, "product_id": "X", "bid": 1, "ask": "2", "type": "ticker"}'
    assert batcher.add(value, REF) == []
    item = batcher.flush()
    assert item is not None
    assert item.batch.schema.names == ["time", "product_id", "bid", "qty"]
    assert item.batch.to_pylist()[0]["bid"] == 1.0


def test_one_out_of_range_ts_costs_only_its_own_tick() -> None:
    good = [orjson.dumps({"ts": i, "symbol": "A", "price": float(i)}) for i in range(5)]
    bad = orjson.dumps({"ts": 2**64 - 1, "symbol": "A", "price": 1.0})  # orjson reads it as int
    messages = [*good[:3], bad, *good[3:]]
    items = TickDecoder().decode((v, MessageRef("t", 0, o)) for o, v in enumerate(messages))
    batches = [i for i in items if isinstance(i, TickBatch)]
    (letter,) = [i for i in items if isinstance(i, DeadLetter)]
    assert [b.batch.num_rows for b in batches] == [5]
    assert letter.batch == 3 and "out of the int64 nanosecond range" in letter.reason
    assert letter.value == bad.decode()


# The WebSocket feed and Kafka JSON read a tick by one set of rules: same ticks, same reasons.
AGREEMENT = [
    {"ts": 5, "symbol": "A", "price": 1.5, "size": 2},
    {"ts": "2024-01-02T14:30:00.5+05", "symbol": "A", "price": "1.5"},
    {"ts": "2024-01-02T14:30:00-0130", "symbol": "A", "price": 1},
    {"ts": "2024-01-02", "symbol": "A", "price": 1},
    {"ts": "9999-12-31T23:59:59Z", "symbol": "A", "price": 1},
    {"ts": -(2**63), "symbol": "A", "price": 1},
    {"ts": 2**63, "symbol": "A", "price": 1},
    {"ts": 5, "symbol": "A", "price": "nan"},
    {"ts": 5, "symbol": "A", "price": None},
    {"ts": 5, "symbol": "A"},
    {"ts": 5, "symbol": "A", "price": 1, "size": "big"},
]


@pytest.mark.parametrize("tick", AGREEMENT)
def test_kafka_json_and_the_websocket_feed_agree_on_every_tick(tick: dict[str, Any]) -> None:
    raw = orjson.dumps(tick)
    try:
        expected: Any = FeedParser("generic").parse(raw)
    except MessageError as err:
        expected = str(err)
    batcher = JsonTickBatcher()
    letters = batcher.add(raw, REF)
    item = batcher.flush()
    if isinstance(expected, str):
        (letter,) = letters
        assert item is None
        assert letter.reason == f"{REF}, tick 0: {expected}"
    else:
        assert letters == [] and item is not None
        got = item.batch.to_pylist()
        assert [
            (
                r["ts"].value if hasattr(r["ts"], "value") else r["ts"],
                r["symbol"],
                r["price"],
                r["size"],
            )
            for r in got
        ] == [(t[0], t[1], t[2], t[3]) for t in expected]


# -- dead letters and errors ---------------------------------------------------------------------


def _two_batches() -> bytes:
    batch = pa.record_batch({"price": [1.0]})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def _empty_stream() -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, pa.schema([("price", pa.float64())])):
        pass
    return sink.getvalue().to_pybytes()


BAD_MESSAGES = [
    pytest.param(b"", "empty message value", id="empty"),
    pytest.param(None, "empty message value", id="tombstone"),
    pytest.param(b"\x00\x01garbage", "neither an Arrow IPC stream nor JSON", id="garbage"),
    pytest.param(
        encode_arrow(pa.record_batch({"price": [1.0, 2.0]}))[:-40],
        "not a readable Arrow IPC stream",
        id="arrow-cut-short",
    ),
    pytest.param(_two_batches(), "more than one record batch", id="arrow-two-batches"),
    pytest.param(_empty_stream(), "no record batch", id="arrow-no-batch"),
    pytest.param(b'{"ts": 1, "symbol": ', "not valid JSON", id="json-cut-short"),
    pytest.param(b"[1", "not valid JSON", id="json-array-cut-short"),
]


@pytest.mark.parametrize(("value", "found"), BAD_MESSAGES)
def test_an_undecodable_message_becomes_a_dead_letter_with_its_reason(
    value: bytes | None, found: str
) -> None:
    good = encode_arrow(pa.record_batch({"symbol": ["A"], "price": [1.0]}))
    items = TickDecoder().decode([(good, MessageRef("ticks", 3, 40)), (value, REF)])
    assert isinstance(items[0], TickBatch)
    (letter,) = items[1:]
    assert isinstance(letter, DeadLetter)
    assert (letter.source, letter.batch, letter.row) == ("kafka:ticks/3", 41, None)
    assert letter.reason.startswith("Kafka topic 'ticks', partition 3, offset 41: ")
    assert found in letter.reason and "expected" in letter.reason
    if value:
        assert letter.value == value[:RAW_TEXT_LIMIT].decode("utf-8", errors="replace")
    assert orjson.dumps(letter.to_dict())  # writable by the dead-letter sink


BAD_TICKS = [
    pytest.param({"symbol": "A", "price": 1}, "missing field 'ts'", id="no-ts"),
    pytest.param({"ts": True, "symbol": "A", "price": 1}, "ts is bool", id="bool-ts"),
    pytest.param({"ts": 1.7e18, "symbol": "A", "price": 1}, "ts is float", id="float-ts"),
    pytest.param({"ts": "yesterday", "symbol": "A", "price": 1}, "ts 'yesterday' is not", id="iso"),
    pytest.param({"ts": 1, "price": 1}, "missing field 'symbol'", id="no-symbol"),
    pytest.param({"ts": 1, "symbol": "", "price": 1}, "symbol is ''", id="empty-symbol"),
    pytest.param({"ts": 1, "symbol": "A", "price": "n/a"}, "price 'n/a' is not a", id="text"),
    pytest.param({"ts": 1, "symbol": "A", "price": [1]}, "price is list", id="list-price"),
    pytest.param({"ts": 1, "symbol": "A"}, "missing field 'price'", id="no-price"),
    pytest.param({"ts": 2**64 - 1, "symbol": "A", "price": 1}, "int64 nanosecond", id="big-ts"),
    pytest.param(7, "array element is int, expected an object", id="not-an-object"),
]


@pytest.mark.parametrize(("tick", "found"), BAD_TICKS)
def test_a_bad_tick_in_an_array_is_dead_lettered_and_its_neighbours_kept(
    tick: Any, found: str
) -> None:
    good = {"ts": 1, "symbol": "A", "price": 2.5}
    items = TickDecoder().decode([(orjson.dumps([good, tick, good]), REF)])
    batches = [i for i in items if isinstance(i, TickBatch)]
    letters = [i for i in items if isinstance(i, DeadLetter)]
    assert [b.batch.num_rows for b in batches] == [2]
    (letter,) = letters
    assert letter.row == 1 and letter.batch == 41
    assert letter.reason.startswith("Kafka topic 'ticks', partition 3, offset 41, tick 1: ")
    assert found in letter.reason
    assert letter.value == orjson.dumps(tick).decode()


def test_a_json_scalar_message_is_dead_lettered() -> None:
    (letter,) = TickDecoder(payload="json").decode([(b'"hello"', REF)])
    assert isinstance(letter, DeadLetter)
    assert "a JSON str; expected a JSON tick object or a JSON array" in letter.reason


def test_decode_errors_name_topic_partition_offset_and_pickle() -> None:
    with pytest.raises(KafkaDecodeError) as caught:
        decode_arrow(b"{}", MessageRef("quotes", 7, 123_456))
    err = caught.value
    assert (err.topic, err.partition, err.offset) == ("quotes", 7, 123_456)
    assert str(err).startswith("Kafka topic 'quotes', partition 7, offset 123456: ")
    assert "expected an Arrow IPC stream holding exactly one record batch" in str(err)
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) and again.ref == err.ref


def test_bad_rows_error_raises_instead_of_dead_lettering() -> None:
    decoder = TickDecoder(bad_rows="error")
    with pytest.raises(KafkaDecodeError, match="offset 41: neither an Arrow IPC stream"):
        decoder.decode([(b"nonsense", REF)])
    with pytest.raises(KafkaDecodeError, match="offset 41, tick 0: missing field 'symbol'"):
        decoder.decode([(b'{"ts": 1, "price": 1}', REF)])


def test_a_payload_of_the_other_format_is_dead_lettered_when_one_is_expected() -> None:
    (letter,) = TickDecoder(payload="arrow").decode([(b'{"ts": 1}', REF)])
    assert isinstance(letter, DeadLetter) and "not a readable Arrow IPC stream" in letter.reason


def test_json_ticks_of_one_poll_are_one_batch_and_order_is_kept_around_arrow() -> None:
    def tick(i: int) -> bytes:
        return orjson.dumps({"ts": i, "symbol": "A", "price": float(i)})

    arrow = encode_arrow(pa.record_batch({"ts": [10], "symbol": ["A"], "price": [10.0]}))
    messages = [tick(0), tick(1), arrow, tick(2), tick(3), tick(4)]
    items = TickDecoder().decode((v, MessageRef("t", 0, o)) for o, v in enumerate(messages))
    assert all(isinstance(i, TickBatch) for i in items)
    got = [
        (i.index, i.batch.column("price").to_pylist()) for i in items if isinstance(i, TickBatch)
    ]
    assert got == [(0, [0.0, 1.0]), (2, [10.0]), (3, [2.0, 3.0, 4.0])]


# -- predictions and keys ------------------------------------------------------------------------


@given(st.integers(1, 3), st.integers(1, 40), st.sampled_from(["arrow", "json"]))
@settings(max_examples=40, deadline=None)
def test_predictions_round_trip_as_arrow_and_json_lines(horizon: int, n: int, fmt: Any) -> None:
    schema = prediction_schema(horizon)
    rng = np.random.default_rng(n)
    columns: list[pa.Array[Any]] = [
        pa.array(np.sort(rng.integers(0, 2**62, n))).view(UTC_NS),
        pa.array(rng.choice(["A", "B"], n).tolist(), pa.string()),
    ]
    columns += [pa.array(rng.normal(size=n)) for _ in range(horizon)]
    batch = pa.RecordBatch.from_arrays(columns, schema=schema)
    value = encode_predictions(batch, fmt)
    if fmt == "json":
        assert value.count(b"\n") == n
    decoded = decode_predictions(value, fmt, REF)
    assert [f.type for f in decoded.schema] == [f.type for f in schema]
    assert decoded.to_pydict() == batch.to_pydict()


def test_bad_prediction_lines_name_the_message() -> None:
    with pytest.raises(KafkaDecodeError, match="offset 41: lines with the fields"):
        decode_predictions(b'{"yhat": 1.0}\n', "json", REF)
    big_ts = b'{"ts": 18446744073709551615, "symbol": "A", "yhat": 1.0}\n'
    with pytest.raises(KafkaDecodeError, match="offset 41: a ts column that does not convert"):
        decode_predictions(big_ts, "json", REF)


def test_keyed_split_keeps_each_symbols_order_and_passes_one_symbol_whole() -> None:
    batch = pa.record_batch(
        {
            "symbol": pa.array(["B", "A", "B", "A"]).dictionary_encode(),
            "price": [1.0, 2.0, 3.0, 4.0],
        }
    )
    parts = dict(split_by_key(batch))
    assert parts[b"A"].column("price").to_pylist() == [2.0, 4.0]
    assert parts[b"B"].column("price").to_pylist() == [1.0, 3.0]
    one = batch.slice(1, 1)
    ((key, whole),) = split_by_key(one)
    assert key == b"A" and whole is one
    assert split_by_key(batch.slice(0, 0)) == []


def _symbol_piece(symbol: str, start: int, rows: int) -> bytes:
    ts = pa.array(range(start, start + rows), pa.int64()).cast(pa.timestamp("ns", tz="UTC"))
    symbols = pa.array([symbol] * rows).dictionary_encode()
    return encode_arrow(pa.record_batch({"ts": ts, "symbol": symbols, "price": [1.0] * rows}))


def test_the_arrow_messages_of_a_poll_become_one_item_copied_once() -> None:
    # As the publisher writes them: one message per symbol and piece, each with its own
    # dictionary of symbols.
    values = [_symbol_piece(s, 10 * i, 10) for i, s in enumerate("ABCAB")]
    decoder = TickDecoder()
    (item,) = decoder.decode((v, MessageRef("ticks", 0, 100 + i)) for i, v in enumerate(values))
    assert isinstance(item, TickBatch)
    assert (item.source, item.index, item.batch.num_rows) == ("kafka:ticks/0", 100, 50)
    assert item.batch.column("symbol").to_pylist() == [s for s in "ABCAB" for _ in range(10)]
    assert item.batch.column("ts").cast(pa.int64()).to_pylist() == list(range(50))
    assert decoder.copied_rows == 50

    # a lone message passes through as a view of the message: nothing copied
    (alone,) = decoder.decode([(values[0], MessageRef("ticks", 0, 200))])
    assert isinstance(alone, TickBatch) and alone.batch.num_rows == 10
    assert decoder.copied_rows == 50


def test_merging_stops_at_merge_rows_a_schema_change_and_json_ticks() -> None:
    other = encode_arrow(pa.record_batch({"symbol": ["A"], "price": [1.0]}))
    json_tick = orjson.dumps({"ts": 7, "symbol": "A", "price": 2.0})
    values = [
        _symbol_piece("A", 0, 10),
        _symbol_piece("B", 10, 10),
        _symbol_piece("A", 20, 10),  # would make 30 > merge_rows=25
        other,  # another schema
        json_tick,
        _symbol_piece("B", 30, 10),
    ]
    decoder = TickDecoder(merge_rows=25)
    items = decoder.decode((v, MessageRef("t", 0, i)) for i, v in enumerate(values))
    assert [(i.index, i.batch.num_rows) for i in items if isinstance(i, TickBatch)] == [
        (0, 20),
        (2, 10),
        (3, 1),
        (4, 1),
        (5, 10),
    ]
    assert decoder.copied_rows == 20
    with pytest.raises(ValueError, match="merge_rows must be an integer >= 1"):
        TickDecoder(merge_rows=0)
