"""Tests of symbol ids, grouping rows by symbol, splitting real mixed batches, shard hashing."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tests.common import REAL_DATA
from tickpool.operators.symbols import (
    SymbolTable,
    group_by_symbol,
    split_by_symbol,
    stable_shard,
)

LEAN = REAL_DATA / "lean_us_equity_trades_20131007.arrow"
LEAN_COUNTS = {"SPY": 250_601, "BAC": 88_172, "AIG": 25_351, "IBM": 24_293}


def dictionary_column(names: list[str], dictionary: list[str]) -> pa.DictionaryArray:
    indices = pa.array([dictionary.index(name) for name in names], pa.int32())
    return pa.DictionaryArray.from_arrays(indices, pa.array(dictionary))


# --- SymbolTable ----------------------------------------------------------------------------------


def test_ids_stay_stable_across_batches_with_different_dictionaries() -> None:
    table = SymbolTable()
    first = dictionary_column(["SPY", "BAC", "SPY"], ["SPY", "BAC"])
    second = dictionary_column(["AIG", "BAC", "SPY", "AIG"], ["AIG", "BAC", "SPY"])
    rows = []
    for batch in (first, second):
        ids = table.ids_for(batch.dictionary.to_pylist())
        assert ids.dtype == np.int32
        rows.append(ids[batch.indices.to_numpy()])
    assert rows[0].tolist() == [0, 1, 0]
    assert rows[1].tolist() == [2, 1, 0, 2]
    assert [table.name(i) for i in rows[1].tolist()] == ["AIG", "BAC", "SPY", "AIG"]
    assert len(table) == 3 and "AIG" in table and "IBM" not in table


def test_a_snapshot_round_trip_keeps_every_id() -> None:
    table = SymbolTable()
    table.ids_for(["SPY", "BAC", "AIG"])
    restored = SymbolTable.from_list(table.to_list())
    assert restored.to_list() == ["SPY", "BAC", "AIG"]
    assert restored.ids_for(["AIG", "IBM", "SPY"]).tolist() == [2, 3, 0]
    assert table.ids_for(["AIG", "IBM", "SPY"]).tolist() == [2, 3, 0]
    snapshot = table.to_list()
    snapshot.append("MSFT")  # a snapshot is a copy, not a window into the table
    assert len(table) == 4


def test_bad_snapshots_and_unknown_ids_are_refused() -> None:
    with pytest.raises(ValueError, match="'SPY' is listed twice"):
        SymbolTable.from_list(["SPY", "BAC", "SPY"])
    with pytest.raises(IndexError, match=r"id 5 is unknown; expected 0 <= id < 1"):
        SymbolTable(["SPY"]).name(5)


# --- group_by_symbol ------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 300).flatmap(
        lambda n_ids: st.tuples(
            st.just(n_ids),
            hnp.arrays(
                st.sampled_from([np.int8, np.int32, np.int64, np.uint16, np.uint64]).filter(
                    lambda dtype: n_ids <= np.iinfo(dtype).max + 1
                ),
                st.integers(0, 400),
                elements=st.integers(0, n_ids - 1),
            ),
        )
    )
)
def test_grouping_equals_a_plain_stable_sort(case: tuple[int, np.ndarray[Any, Any]]) -> None:
    n_ids, ids = case
    groups = group_by_symbol(ids, n_ids)
    expected_order = sorted(
        range(ids.size), key=lambda row: int(ids[row])
    )  # Python's sort is stable
    assert groups.order.tolist() == expected_order
    assert groups.order.dtype == np.intp
    for k in range(n_ids):
        rows = groups.order[groups.starts[k] : groups.starts[k] + groups.counts[k]]
        assert rows.tolist() == [row for row in range(ids.size) if ids[row] == k]
        assert groups.rows(k).tolist() == rows.tolist()
    assert groups.present.tolist() == sorted({int(i) for i in ids})
    assert int(groups.counts.sum()) == ids.size and groups.counts.size == n_ids


def test_many_ids_still_group_stably() -> None:
    rng = np.random.default_rng(7)
    ids = rng.integers(0, 70_000, 5_000)
    groups = group_by_symbol(ids, 70_000)
    assert groups.order.tolist() == np.argsort(ids, kind="stable").tolist()


def test_ids_out_of_range_are_refused() -> None:
    with pytest.raises(ValueError, match=r"ids range from 0 to 4; expected ids in \[0, 4\)"):
        group_by_symbol(np.array([0, 4, 1]), 4)
    with pytest.raises(ValueError, match=r"ids range from -1 to 1"):
        group_by_symbol(np.array([1, -1]), 4)
    with pytest.raises(TypeError, match="expected a 1-d integer array"):
        group_by_symbol(np.array([0.0, 1.0]), 4)


# --- split_by_symbol ------------------------------------------------------------------------------


def test_split_by_symbol_handles_nulls_and_duplicate_dictionary_entries() -> None:
    indices = pa.array([0, 1, None, 2, 1, 0], pa.int8())
    symbol = pa.DictionaryArray.from_arrays(indices, pa.array(["SPY", "BAC", "SPY"]))
    batch = pa.record_batch({"symbol": symbol, "price": np.arange(6.0)})
    split = split_by_symbol(batch)
    assert {k: v.tolist() for k, v in split.items()} == {"SPY": [0, 3, 5], "BAC": [1, 4]}


def test_split_by_symbol_of_a_plain_string_column_with_another_name() -> None:
    batch = pa.record_batch({"sym": pa.array(["b", "a", "b", "c"], pa.large_string())})
    split = split_by_symbol(batch, "sym")
    assert {k: v.tolist() for k, v in split.items()} == {"b": [0, 2], "a": [1], "c": [3]}


@pytest.fixture(scope="module")
def lean() -> pa.ipc.RecordBatchFileReader:
    return pa.ipc.open_file(pa.memory_map(str(LEAN), "r"))


def test_split_of_lean_batches_matches_a_pandas_groupby(
    lean: pa.ipc.RecordBatchFileReader,
) -> None:
    table = lean.read_all()
    symbols = table.column("symbol").to_pandas().astype(str)
    expected = {
        name: rows.tolist() for name, rows in symbols.groupby(symbols, sort=False).indices.items()
    }
    got: dict[str, list[int]] = {name: [] for name in LEAN_COUNTS}
    offset = 0
    for i in range(lean.num_record_batches):
        batch = lean.get_batch(i)
        prices = batch.column("price").to_numpy()
        for name, rows in split_by_symbol(batch).items():
            got[name].extend((rows + offset).tolist())
            assert np.all(np.diff(rows) > 0)  # arrival order within the batch
            assert np.array_equal(prices[rows], batch.take(pa.array(rows)).column("price"))
        offset += batch.num_rows
    assert {name: len(rows) for name, rows in got.items()} == LEAN_COUNTS
    assert got == expected


def test_split_of_the_whole_lean_file_gives_the_known_counts(
    lean: pa.ipc.RecordBatchFileReader,
) -> None:
    whole = lean.read_all().combine_chunks().to_batches()
    assert len(whole) == 1
    split = split_by_symbol(whole[0])
    assert list(split) == ["SPY", "BAC", "AIG", "IBM"]  # dictionary order
    assert {name: rows.size for name, rows in split.items()} == LEAN_COUNTS
    symbols = pd.Series(whole[0].column("symbol").to_pylist())
    assert symbols.value_counts().to_dict() == LEAN_COUNTS


# --- stable_shard ---------------------------------------------------------------------------------


def test_shards_are_the_crc32_of_the_symbol_and_in_range() -> None:
    # zlib.crc32 of the UTF-8 bytes, pinned: a changed hash would silently reshuffle recovery state.
    crc32 = {"SPY": 968359423, "BAC": 2330521298, "AIG": 1192894106, "IBM": 1244168183}
    assert {s: stable_shard(s, 2**32) for s in crc32} == crc32
    assert [stable_shard(s, 4) for s in crc32] == [3, 2, 2, 3]
    assert stable_shard("USD/JPY", 1) == 0
    for symbol in ("SPY", "ESH4", "BTCUSDT", "Ünïcode"):
        assert 0 <= stable_shard(symbol, 7) < 7
    with pytest.raises(ValueError, match="shards is 0; expected shards >= 1"):
        stable_shard("SPY", 0)


def test_shards_do_not_depend_on_the_process_hash_seed() -> None:
    code = (
        "from tickpool.operators.symbols import stable_shard; "
        "print([stable_shard(s, 16) for s in ('SPY', 'BAC', 'AIG', 'IBM')])"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={"PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2")
    }
    assert len(outputs) == 1


def test_a_batch_of_one_symbol_keeps_its_row_order() -> None:
    groups = group_by_symbol(np.full(1000, 3, dtype=np.int32), 8)
    assert groups.order.tolist() == list(range(1000))
    assert groups.present.tolist() == [3] and groups.starts[3] == 0 and groups.counts[3] == 1000
