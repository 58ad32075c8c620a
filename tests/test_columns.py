"""Tests of the zero-copy column layer: views not copies, pooled casts, errors, bad rows."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.common import REAL_DATA
from tickpool.operators.columns import (
    BadRowError,
    ColumnSpec,
    TickSchemaError,
    float64_view,
    read_symbols,
    read_ticks,
)

REAL_FILES = sorted(REAL_DATA.glob("*.arrow"))
SPEC = ColumnSpec()
T0 = 1_381_132_800_000_000_000  # 2013-10-07 08:00 UTC in ns


class CountingPool:
    """A fake pool that counts leases and refuses what it did not lease (or got back already)."""

    def __init__(self) -> None:
        self.acquired = 0
        self.released = 0
        self.live: dict[int, npt.NDArray[np.float64]] = {}

    def acquire(self, n: int) -> npt.NDArray[np.float64]:
        assert n > 0, "the real pool refuses n <= 0"
        buf = np.full(n, 7.5e300)  # stale contents: the reader must overwrite every element
        self.acquired += 1
        self.live[id(buf)] = buf
        return buf

    def release(self, buf: npt.NDArray[np.float64]) -> None:
        assert self.live.pop(id(buf), None) is buf, "released an array this pool did not lease"
        self.released += 1

    @property
    def outstanding(self) -> int:
        return len(self.live)


def data_view(array: pa.Array[Any], dtype: type[np.generic]) -> npt.NDArray[Any]:
    """The whole data buffer of ``array``, from byte 0 (ignoring the offset): the reference."""
    buffer = array.buffers()[1]
    assert buffer is not None
    return np.frombuffer(buffer, dtype=dtype)


def tick_batch(
    values: pa.Array[Any] | list[Any],
    *,
    ts: pa.Array[Any] | None = None,
    symbol: pa.Array[Any] | None = None,
) -> pa.RecordBatch:
    price = values if isinstance(values, pa.Array) else pa.array(values, pa.float64())
    n = len(price)
    if ts is None:
        ts = pa.array(T0 + np.arange(n, dtype=np.int64) * 1000, pa.timestamp("ns", tz="UTC"))
    if symbol is None:
        names = [("SPY", "BAC", "AIG")[i % 3] for i in range(n)]
        symbol = pa.array(names, pa.string()).dictionary_encode()
    return pa.record_batch({"ts": ts, "symbol": symbol, "price": price})


# --- zero-copy ------------------------------------------------------------------------------------


def zero_copy_batches() -> Iterator[tuple[str, pa.RecordBatch]]:
    plain = tick_batch([100.0 + i for i in range(50)])
    yield "plain", plain
    yield "sliced", plain.slice(7, 30)
    yield "nulls", tick_batch([None if i % 5 == 0 else 1.0 * i for i in range(50)])
    yield "sliced nulls", tick_batch([None if i % 5 == 0 else 1.0 * i for i in range(50)]).slice(3)


@pytest.mark.parametrize("name,batch", list(zero_copy_batches()))
def test_float64_values_ns_ts_and_dictionary_indices_are_read_without_a_copy(
    name: str, batch: pa.RecordBatch
) -> None:
    pool = CountingPool()
    price, ts, symbol = batch.column("price"), batch.column("ts"), batch.column("symbol")
    with read_ticks(batch, SPEC, pool) as ticks:
        assert np.shares_memory(ticks.values, data_view(price, np.float64))
        assert np.shares_memory(ticks.ts, data_view(ts, np.int64))
        assert isinstance(symbol, pa.DictionaryArray)
        assert np.shares_memory(ticks.codes, data_view(symbol.indices, np.int32))
        assert not ticks.cast_values and not ticks.cast_ts
        valid = ~price.is_null().to_numpy(zero_copy_only=False)
        assert ticks.values[valid].tolist() == price.filter(pa.array(valid)).to_pylist()
        assert ticks.ts.tolist() == ts.cast(pa.int64()).to_pylist()
        symbols = [ticks.symbols[c] for c in ticks.codes.tolist()]
        assert symbols == symbol.to_pylist()
        assert not ticks.values.flags.writeable
    assert pool.acquired == 0


def test_float64_view_starts_at_the_slice_offset_and_refuses_other_types() -> None:
    array = pa.array(np.arange(10.0)).slice(4, 3)
    view = float64_view(array)
    assert view is not None
    assert view.tolist() == [4.0, 5.0, 6.0]
    assert np.shares_memory(view, data_view(array, np.float64))
    assert float64_view(pa.array([1, 2, 3])) is None
    assert float64_view(pa.array([1.0], pa.float32())) is None


def test_int64_ts_is_read_without_a_copy() -> None:
    ts = pa.array(T0 + np.arange(20, dtype=np.int64))
    pool = CountingPool()
    with read_ticks(tick_batch(np.arange(20.0).tolist(), ts=ts).slice(5), SPEC, pool) as ticks:
        assert np.shares_memory(ticks.ts, data_view(ts, np.int64))
        assert ticks.ts[0] == T0 + 5
    assert pool.acquired == 0


# --- casts into pooled buffers --------------------------------------------------------------------


@pytest.mark.parametrize(
    "arrow_type", [pa.int64(), pa.int32(), pa.uint16(), pa.int8(), pa.float32(), pa.float16()]
)
def test_other_numeric_values_are_cast_once_into_a_pooled_buffer(arrow_type: pa.DataType) -> None:
    raw = [3, 0, 7, 120, 5, 6, 1, 2]
    array = pa.array(np.array(raw, dtype=arrow_type.to_pandas_dtype()), arrow_type)
    batch = tick_batch(array).slice(1)
    pool = CountingPool()
    with read_ticks(batch, SPEC, pool) as ticks:
        assert ticks.cast_values and not ticks.cast_ts
        assert ticks.values.dtype == np.float64
        assert ticks.values.tolist() == [float(v) for v in raw[1:]]
        assert pool.acquired == 1
        assert any(ticks.values is buf for buf in pool.live.values())
    assert pool.released == 1 and pool.outstanding == 0
    assert ticks.values.size == 0  # the pooled memory is no longer reachable from the ticks


def test_decimal_values_are_converted_by_arrow_without_a_pool_lease() -> None:
    array = pa.array([Decimal("1.25"), Decimal("2.50"), None], pa.decimal128(10, 2))
    pool = CountingPool()
    ticks = read_ticks(tick_batch(array), SPEC, pool)
    assert ticks.cast_values
    assert ticks.values[:2].tolist() == [1.25, 2.5]
    assert ticks.bad_rows.tolist() == [2] and ticks.bad_reasons == ["price is null"]
    assert pool.acquired == 0


@pytest.mark.parametrize("unit,factor", [("s", 10**9), ("ms", 10**6), ("us", 10**3)])
def test_coarse_timestamps_become_int64_ns_in_a_pooled_buffer(unit: str, factor: int) -> None:
    raw = np.array([1_381_132_800, 1_381_132_801, 1_381_132_805], dtype=np.int64)
    ts = pa.array(raw, pa.timestamp(unit, tz="UTC"))
    pool = CountingPool()
    with read_ticks(tick_batch([1.0, 2.0, 3.0], ts=ts), SPEC, pool) as ticks:
        assert ticks.cast_ts and not ticks.cast_values
        assert ticks.ts.dtype == np.int64
        assert ticks.ts.tolist() == (raw * factor).tolist()
        assert (
            ticks.ts.tolist() == ts.cast(pa.timestamp("ns", tz="UTC")).cast(pa.int64()).to_pylist()
        )
        assert pool.acquired == 1
    assert pool.released == 1 and pool.outstanding == 0


def test_release_returns_every_lease_once() -> None:
    batch = tick_batch(pa.array([1, 2, 3], pa.int32()), ts=pa.array([1, 2, 3], pa.timestamp("ms")))
    pool = CountingPool()
    ticks = read_ticks(batch, SPEC, pool)
    assert pool.acquired == 2 and ticks.leased == 2
    ticks.release(pool)
    ticks.release()  # a second release gives nothing back twice
    assert pool.released == 2 and pool.outstanding == 0 and ticks.leased == 0


def test_release_refuses_another_pool() -> None:
    pool = CountingPool()
    ticks = read_ticks(tick_batch(pa.array([1, 2], pa.int64())), SPEC, pool)
    with pytest.raises(ValueError, match=r"expected .*the pool these buffers were leased from"):
        ticks.release(CountingPool())
    ticks.release(pool)
    assert pool.outstanding == 0


def test_timestamps_that_overflow_int64_ns_are_refused_before_leasing() -> None:
    ts = pa.array([0, 10**12], pa.timestamp("s"))
    pool = CountingPool()
    with pytest.raises(ValueError, match=r"column 'ts' has timestamp\[s\] values from 0 to"):
        read_ticks(tick_batch([1.0, 2.0], ts=ts), SPEC, pool)
    assert pool.outstanding == 0


def test_an_empty_batch_reads_without_leasing() -> None:
    pool = CountingPool()
    batch = tick_batch(pa.array([], pa.int32()), ts=pa.array([], pa.timestamp("us")))
    with read_ticks(batch, SPEC, pool) as ticks:
        assert ticks.num_rows == 0 and ticks.values.size == 0 and ticks.ts.size == 0
        assert ticks.keep is None and ticks.bad_rows.size == 0
    assert pool.acquired == 0


# --- symbols --------------------------------------------------------------------------------------


@pytest.mark.parametrize("string_type", [pa.string(), pa.large_string()])
def test_plain_string_symbols_are_dictionary_encoded(string_type: pa.DataType) -> None:
    names = ["IBM", "SPY", "IBM", "BAC", "SPY"]
    batch = tick_batch([1.0] * 5, symbol=pa.array(names, string_type))
    with read_ticks(batch, SPEC, CountingPool()) as ticks:
        assert [ticks.symbols[c] for c in ticks.codes.tolist()] == names
        assert sorted(ticks.symbols) == ["BAC", "IBM", "SPY"]


def test_null_dictionary_entries_count_as_null_symbols() -> None:
    symbol = pa.DictionaryArray.from_arrays(
        pa.array([0, 1, 0, None], pa.int8()), pa.array(["SPY", None])
    )
    codes = read_symbols(pa.record_batch({"symbol": symbol}))
    assert codes.symbols == ["SPY", ""]
    assert codes.nulls is not None and codes.nulls.tolist() == [False, True, False, True]
    ticks = read_ticks(tick_batch([1.0] * 4, symbol=symbol), SPEC, CountingPool())
    assert ticks.bad_rows.tolist() == [1, 3]
    assert ticks.bad_reasons == ["symbol is null", "symbol is null"]


# --- schema errors --------------------------------------------------------------------------------


def test_a_missing_column_is_named_with_the_columns_the_batch_has() -> None:
    batch = tick_batch([1.0, 2.0]).drop_columns(["price"])
    pool = CountingPool()
    with pytest.raises(TickSchemaError) as caught:
        read_ticks(batch, SPEC, pool, source="file x.arrow, batch 3")
    assert str(caught.value) == (
        "column 'price' in file x.arrow, batch 3 is missing (columns found: ts, symbol); "
        "expected a numeric type (float64 is read without a copy)"
    )
    assert caught.value.found is None and caught.value.column == "price"
    assert pool.acquired == 0


@pytest.mark.parametrize(
    "column,array,found,expected",
    [
        ("price", pa.array(["1.5", "2.5"]), "string", "a numeric type"),
        ("price", pa.array([True, False]), "bool", "a numeric type"),
        ("ts", pa.array([True, False]), "bool", "timestamp[ns] or int64 nanoseconds"),
        ("ts", pa.array([1, 2], pa.int32()), "int32", "timestamp[ns] or int64 nanoseconds"),
        ("symbol", pa.array([1, 2]), "int64", "utf8, large_utf8 or dictionary<int*, utf8"),
        (
            "symbol",
            pa.array([1, 2]).dictionary_encode(),
            "dictionary<values=int64, indices=int32, ordered=0>",
            "utf8, large_utf8 or dictionary<int*, utf8",
        ),
    ],
)
def test_a_wrong_type_is_named_with_the_type_found_and_expected(
    column: str, array: pa.Array[Any], found: str, expected: str
) -> None:
    batch = tick_batch(pa.array([1, 2], pa.int64()))  # an int64 price would be leased: must not be
    batch = batch.set_column(batch.schema.get_field_index(column), column, array)
    pool = CountingPool()
    with pytest.raises(TickSchemaError) as caught:
        read_ticks(batch, SPEC, pool, source="file x.arrow, batch 3")
    message = str(caught.value)
    assert message.startswith(f"column '{column}' in file x.arrow, batch 3 has type {found}; ")
    assert f"; expected {expected}" in message
    assert (caught.value.column, caught.value.found) == (column, found)
    assert pool.acquired == 0


def test_schema_errors_survive_pickling() -> None:
    error = TickSchemaError("price", "string", "a numeric type", "file x.arrow, batch 3")
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error) and copy.source == "file x.arrow, batch 3"
    bad = pickle.loads(pickle.dumps(BadRowError("price", 4, "price is NaN", "batch 1")))
    assert (bad.column, bad.row, bad.reason) == ("price", 4, "price is NaN")


def test_custom_column_names_are_used_in_reasons() -> None:
    batch = pa.record_batch(
        {"t": pa.array([1, 2], pa.int64()), "s": ["a", "b"], "mid": [1.0, float("nan")]}
    )
    ticks = read_ticks(batch, ColumnSpec(ts="t", symbol="s", value="mid"), CountingPool())
    assert ticks.bad_reasons == ["mid is NaN"]


# --- bad rows -------------------------------------------------------------------------------------

VALUE_KINDS = {
    "ok": 1.5,
    "nan": float("nan"),
    "+inf": float("inf"),
    "-inf": float("-inf"),
    "null": None,
}


@st.composite
def batches_with_bad_rows(draw: st.DrawFn) -> tuple[pa.RecordBatch, list[str | None]]:
    """A batch with random bad fields, and each row's expected reason (None for a good row)."""
    n = draw(st.integers(1, 60))
    kinds = draw(
        st.lists(st.sampled_from(list(VALUE_KINDS)), min_size=n, max_size=n) | st.just(["ok"] * n)
    )
    null_ts = draw(st.lists(st.booleans(), min_size=n, max_size=n) | st.just([False] * n))
    null_symbol = draw(st.lists(st.booleans(), min_size=n, max_size=n) | st.just([False] * n))
    dictionary_symbols = draw(st.booleans())
    offset = draw(st.integers(0, 3))

    pad = ["ok"] * offset
    values = pa.array([VALUE_KINDS[k] for k in pad + kinds], pa.float64())
    ts = pa.array(
        [None if bad else T0 + i for i, bad in enumerate([False] * offset + null_ts)],
        pa.timestamp("ns", tz="UTC"),
    )
    symbol = pa.array(
        [None if bad else "SPY" for bad in [False] * offset + null_symbol], pa.string()
    )
    if dictionary_symbols:
        symbol = symbol.dictionary_encode()
    batch = pa.record_batch({"ts": ts, "symbol": symbol, "price": values}).slice(offset)

    expected: list[str | None] = []
    for kind, bad_ts, bad_symbol in zip(kinds, null_ts, null_symbol, strict=True):
        if bad_ts:
            expected.append("ts is null")
        elif bad_symbol:
            expected.append("symbol is null")
        elif kind == "ok":
            expected.append(None)
        else:
            expected.append(f"price is {'NaN' if kind == 'nan' else kind}")
    return batch, expected


@settings(max_examples=200, deadline=None)
@given(batches_with_bad_rows())
def test_drop_lists_exactly_the_bad_rows_with_their_reasons(
    case: tuple[pa.RecordBatch, list[str | None]],
) -> None:
    batch, expected = case
    pool = CountingPool()
    ticks = read_ticks(batch, SPEC, pool, policy="drop")
    want_bad = [i for i, reason in enumerate(expected) if reason is not None]
    assert ticks.bad_rows.tolist() == want_bad
    assert ticks.bad_reasons == [expected[i] for i in want_bad]
    if not want_bad:
        assert ticks.keep is None
        kept = list(range(batch.num_rows))
    else:
        assert ticks.keep is not None
        kept = ticks.keep.tolist()
    assert sorted(kept + want_bad) == list(range(batch.num_rows))
    assert len(kept) + len(want_bad) == ticks.num_rows == batch.num_rows
    assert np.isfinite(ticks.values[kept]).all()
    assert pool.acquired == 0


@settings(max_examples=200, deadline=None)
@given(batches_with_bad_rows())
def test_error_names_the_first_bad_row(case: tuple[pa.RecordBatch, list[str | None]]) -> None:
    batch, expected = case
    bad = [(i, reason) for i, reason in enumerate(expected) if reason is not None]
    pool = CountingPool()
    if not bad:
        read_ticks(batch, SPEC, pool, policy="error").release()
        return
    row, reason = bad[0]
    with pytest.raises(BadRowError) as caught:
        read_ticks(batch, SPEC, pool, policy="error", source="batch 9")
    assert (caught.value.row, caught.value.reason) == (row, reason)
    assert caught.value.column == reason.split(" ")[0]
    assert str(caught.value).startswith(f"column '{caught.value.column}' in batch 9, row {row}: ")


def test_a_bad_row_error_returns_the_leases_already_taken() -> None:
    batch = tick_batch(
        pa.array([1, None, 3], pa.int32()), ts=pa.array([1, 2, 3], pa.timestamp("s"))
    )
    pool = CountingPool()
    with pytest.raises(BadRowError, match="row 1: price is null"):
        read_ticks(batch, SPEC, pool, policy="error")
    assert pool.acquired == 2 and pool.outstanding == 0


def test_a_huge_finite_sum_is_not_a_bad_row() -> None:
    # The sum overflows to inf, so the elementwise check runs and finds every value finite.
    ticks = read_ticks(tick_batch([1e308, 1e308, -1.0]), SPEC, CountingPool())
    assert ticks.keep is None and ticks.bad_rows.size == 0


# --- real data ------------------------------------------------------------------------------------


@pytest.fixture(params=REAL_FILES, ids=[path.stem for path in REAL_FILES])
def real_file(request: pytest.FixtureRequest) -> pa.ipc.RecordBatchFileReader:
    path: Path = request.param
    return pa.ipc.open_file(pa.memory_map(str(path), "r"))


def test_every_real_batch_reads_without_a_copy_or_a_lease(
    real_file: pa.ipc.RecordBatchFileReader,
) -> None:
    assert real_file.num_record_batches > 0
    pool = CountingPool()
    for i in range(real_file.num_record_batches):
        batch = real_file.get_batch(i)
        with read_ticks(batch, SPEC, pool, policy="error", source=f"batch {i}") as ticks:
            price = batch.column("price")
            assert np.shares_memory(ticks.values, data_view(price, np.float64))
            assert np.shares_memory(ticks.ts, data_view(batch.column("ts"), np.int64))
            assert ticks.keep is None and ticks.num_rows == batch.num_rows
            assert ticks.values[-1] == price[-1].as_py()
    assert pool.acquired == 0
