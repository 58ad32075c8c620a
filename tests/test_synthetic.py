"""Synthetic ticks keep their promises: deterministic, cut-independent, realistic, bounded."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from tickpool.connectors.synthetic import (
    CHUNK_ROWS,
    generate_batches,
    symbol_specs,
    write_ticks,
)


def read(path: Path) -> pa.Table:
    with pa.memory_map(str(path), "r") as source:
        return pa.ipc.open_file(source).read_all()


def table(ticks: int, symbols: int, **kwargs: object) -> pa.Table:
    return pa.Table.from_batches(generate_batches(ticks, symbols, **kwargs))  # type: ignore[arg-type]


def codes_of(t: pa.Table) -> np.ndarray:
    return np.concatenate([chunk.indices.to_numpy() for chunk in t.column("symbol").chunks])


# --- determinism ---------------------------------------------------------------------------------


def test_same_seed_writes_byte_identical_files(tmp_path: Path) -> None:
    a, b = tmp_path / "a.arrow", tmp_path / "b.arrow"
    assert write_ticks(a, 100_000, 12, seed=3, batch_rows=10_000) == 100_000
    assert write_ticks(b, 100_000, 12, seed=3, batch_rows=10_000) == 100_000
    assert a.read_bytes() == b.read_bytes()


def test_another_seed_gives_other_ticks() -> None:
    first, second = table(5_000, 4, seed=1), table(5_000, 4, seed=2)
    assert first.schema == second.schema
    assert not first.column("price").equals(second.column("price"))
    assert not first.column("ts").equals(second.column("ts"))


@pytest.mark.parametrize("batch_rows", [1, 7, 1_000, CHUNK_ROWS - 1, CHUNK_ROWS, 200_000])
def test_rows_do_not_depend_on_batch_rows(batch_rows: int) -> None:
    ticks = 2 * CHUNK_ROWS + 1_234 if batch_rows > 1 else 3_000
    reference = table(ticks, 6, seed=5, batch_rows=ticks)
    cut = table(ticks, 6, seed=5, batch_rows=batch_rows)
    sizes = [b.num_rows for b in cut.to_batches()]
    assert sizes[:-1] == [batch_rows] * (len(sizes) - 1)
    assert cut.num_rows == ticks
    assert cut.combine_chunks().equals(reference.combine_chunks())


def test_a_shorter_run_is_a_prefix_of_a_longer_one() -> None:
    short = table(70_000, 5, seed=9).combine_chunks()
    long = table(150_000, 5, seed=9).combine_chunks()
    assert long.slice(0, 70_000).equals(short)


def test_adding_a_value_column_leaves_the_others_unchanged() -> None:
    one = table(20_000, 3, seed=4)
    two = table(20_000, 3, seed=4, value_columns=("price", "mid"))
    assert two.schema.names == ["ts", "symbol", "price", "mid", "size"]
    for name in ("ts", "symbol", "price", "size"):
        assert two.column(name).equals(one.column(name))
    assert not two.column("mid").equals(two.column("price"))


# --- shape ----------------------------------------------------------------------------------------


def test_file_has_the_promised_schema_and_one_shared_dictionary(tmp_path: Path) -> None:
    path = tmp_path / "ticks.arrow"
    write_ticks(path, 50_000, 3, batch_rows=8_192, start=1_700_000_000_000_000_000)
    with pa.memory_map(str(path), "r") as source:
        reader = pa.ipc.open_file(source)
        assert reader.num_record_batches == 7
        schema = reader.schema
        assert schema.field("ts").type == pa.timestamp("ns", tz="UTC")
        assert schema.field("symbol").type == pa.dictionary(pa.int32(), pa.string())
        assert schema.field("price").type == pa.float64()
        assert schema.field("size").type == pa.float64()
        assert schema.names == ["ts", "symbol", "price", "size"]
        assert b"tickpool.source" in (schema.metadata or {})
        dictionaries = {
            tuple(reader.get_batch(i).column(1).dictionary.to_pylist())
            for i in range(reader.num_record_batches)
        }
        assert dictionaries == {("SYM000", "SYM001", "SYM002")}
        first = reader.get_batch(0)
        # uncompressed: price maps zero-copy from the file
        first.column(2).to_numpy(zero_copy_only=True)
        assert first.column(0).cast(pa.int64())[0].as_py() >= 1_700_000_000_000_000_000


def test_start_accepts_iso_text_and_nanoseconds() -> None:
    iso = table(10, 1, start="2024-01-02T14:30:00Z").column("ts").cast(pa.int64())
    naive = table(10, 1, start="2024-01-02T14:30:00").column("ts").cast(pa.int64())
    ns = table(10, 1, start=1_704_205_800_000_000_000).column("ts").cast(pa.int64())
    assert iso.equals(naive) and iso.equals(ns)
    assert iso[0].as_py() >= 1_704_205_800_000_000_000


def test_timestamps_never_go_back_and_sometimes_repeat() -> None:
    ts = table(200_000, 10, seed=2).column("ts").cast(pa.int64()).to_numpy()
    gaps = np.diff(ts)
    assert (gaps >= 0).all()
    assert 0.05 < (gaps == 0).mean() < 0.5
    assert 0.1e6 < gaps.mean() < 10e6  # about a millisecond
    assert (ts % 1_000 == 0).all()  # whole microseconds


def test_every_symbol_trades_and_activity_differs() -> None:
    symbols = 50
    counts = np.bincount(codes_of(table(300_000, symbols, seed=8)), minlength=symbols)
    assert (counts > 0).all()
    assert counts.max() / counts.min() > 10


def test_prices_are_positive_on_each_symbols_grid_with_runs_of_equal_prices() -> None:
    specs = symbol_specs(20, seed=11)
    t = table(200_000, 20, seed=11)
    codes = codes_of(t)
    price = t.column("price").to_numpy()
    size = t.column("size").to_numpy()
    assert (price > 0).all()
    assert (size >= 1).all() and (size == np.rint(size)).all()
    per_unit = np.array([s.ticks_per_unit for s in specs], dtype=np.float64)[codes]
    assert (np.rint(price * per_unit) / per_unit == price).all()
    levels = np.array([s.level for s in specs])
    assert levels.min() < 30 and levels.max() > 15_000
    for code, spec in enumerate(specs):
        own = price[codes == code]
        assert abs(np.log(own[0] / spec.level)) < 0.01  # starts at its level
        assert 0.2 < (np.diff(own) == 0).mean() < 0.95  # runs of equal prices


def test_more_symbols_than_ticks_is_fine() -> None:
    t = table(5, 40, seed=1)
    assert t.num_rows == 5
    assert len(t.column("symbol").chunk(0).dictionary) == 40


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ticks": 0}, "ticks must be an integer >= 1"),
        ({"symbols": 0}, "symbols must be an integer >= 1"),
        ({"batch_rows": 0}, "batch_rows must be an integer >= 1"),
        ({"start": "yesterday"}, "cannot read start='yesterday'"),
        ({"value_columns": ()}, "value_columns is empty"),
        ({"value_columns": ("price", "size")}, "'size' is not allowed"),
        ({"value_columns": ("a", "a")}, "repeats a name"),
    ],
)
def test_bad_arguments_are_clear_errors_and_leave_no_file(
    tmp_path: Path, kwargs: dict[str, object], message: str
) -> None:
    args: dict[str, object] = {"ticks": 10, "symbols": 2, **kwargs}
    path = tmp_path / "ticks.arrow"
    with pytest.raises(ValueError, match=message):
        write_ticks(path, **args)  # type: ignore[arg-type]
    assert not os.listdir(tmp_path)


# --- writing --------------------------------------------------------------------------------------


def test_progress_reports_cumulative_rows_and_the_write_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "ticks.arrow"
    path.write_bytes(b"old")
    seen: list[int] = []
    assert write_ticks(path, 25_000, 4, batch_rows=10_000, progress=seen.append) == 25_000
    assert seen == [10_000, 20_000, 25_000]
    assert sorted(os.listdir(tmp_path)) == ["ticks.arrow"]
    assert read(path).num_rows == 25_000


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path: Path) -> None:
    path = tmp_path / "ticks.arrow"
    path.write_bytes(b"old")

    def interrupt(rows: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_ticks(path, 25_000, 4, batch_rows=10_000, progress=interrupt)
    assert path.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["ticks.arrow"]


def test_memory_while_writing_is_bounded_by_batch_rows_not_ticks(tmp_path: Path) -> None:
    ticks, batch_rows = 2_000_000, 65_536
    write_ticks(tmp_path / "warm.arrow", 10, 2)  # one-time imports (pyarrow loads pandas) aside
    tracemalloc.start()
    try:
        write_ticks(tmp_path / "big.arrow", ticks, 16, batch_rows=batch_rows)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # the whole table would be 2e6 x 28 bytes = 56 MB; a chunk plus a batch is a few MB
    assert peak < 40 * 2**20
    assert peak < 200 * (CHUNK_ROWS + batch_rows)
    assert read(tmp_path / "big.arrow").num_rows == ticks


def test_generate_batches_checks_its_arguments_before_the_first_batch() -> None:
    with pytest.raises(ValueError, match="symbols must be an integer >= 1"):
        generate_batches(10, 0)  # no next() needed
