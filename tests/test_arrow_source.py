"""ArrowReplaySource replays every row exactly once, without copies, resumes where it stopped."""

from __future__ import annotations

import glob
import os
import pickle
import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import bytewax.operators as op
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, cluster_main, run_main

from tests.common import REAL_DATA
from tickpool.connectors.arrow_source import (
    ArrowReplaySource,
    TickSourceError,
    count_rows,
    expand_paths,
    iter_tick_batches,
)
from tickpool.operators.items import TickBatch

REAL = REAL_DATA
REAL_BATCH_ROWS = 16_384
BATCH_ROWS = 250  # rows per batch of the small IPC files, rows per row group of the Parquet one
SMALL_ROWS = 1_100  # 4 full batches and a short one
FORMATS = ["ipc_file", "ipc_stream", "parquet"]


# --- data -----------------------------------------------------------------------------------


def tick_table(
    rows: int = SMALL_ROWS,
    *,
    step_ns: int = 1_000_000,
    ts_type: pa.DataType | None = None,
) -> pa.Table:
    """Ticks of three symbols, ``step_ns`` apart, prices that say which row they are."""
    ts_type = pa.timestamp("ns", tz="UTC") if ts_type is None else ts_type
    ts_ns = 1_600_000_000_000_000_000 + np.arange(rows, dtype=np.int64) * step_ns
    if pa.types.is_timestamp(ts_type):
        factor = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}[ts_type.unit]
        ts = pa.array(ts_ns // factor, pa.int64()).cast(ts_type)
    else:
        ts = pa.array(ts_ns, ts_type)
    symbols = np.array(["AAA", "BBB", "CCC"])[np.arange(rows) % 3]
    return pa.table(
        {
            "ts": ts,
            "symbol": pa.array(symbols).dictionary_encode(),
            "price": 100.0 + np.arange(rows, dtype=np.float64) / 100,
        }
    )


def write(table: pa.Table, path: Path, fmt: str, batch_rows: int = BATCH_ROWS) -> Path:
    if fmt == "ipc_file":
        with pa.ipc.new_file(path, table.schema) as writer:
            writer.write_table(table, max_chunksize=batch_rows)
    elif fmt == "ipc_stream":
        with pa.ipc.new_stream(path, table.schema) as writer:
            writer.write_table(table, max_chunksize=batch_rows)
    else:
        pq.write_table(table, path, row_group_size=batch_rows)
    return path


SUFFIX = {"ipc_file": ".arrow", "ipc_stream": ".arrows", "parquet": ".parquet"}


@pytest.fixture
def small_table() -> pa.Table:
    return tick_table()


@pytest.fixture(params=FORMATS)
def small_file(request: pytest.FixtureRequest, tmp_path: Path, small_table: pa.Table) -> Path:
    fmt: str = request.param
    return write(small_table, tmp_path / f"ticks{SUFFIX[fmt]}", fmt)


@pytest.fixture
def ipc_file(tmp_path: Path, small_table: pa.Table) -> Path:
    return write(small_table, tmp_path / "ticks.arrow", "ipc_file")


@pytest.fixture
def lean() -> Path:
    return REAL / "lean_us_equity_trades_20131007.arrow"


@pytest.fixture
def databento() -> Path:
    return REAL / "databento_glbx_esh4_mbo_20231225.arrow"


@pytest.fixture
def real_files() -> list[Path]:
    return sorted(REAL.glob("*.arrow"))


# --- helpers --------------------------------------------------------------------------------


def replay(source: ArrowReplaySource) -> list[TickBatch]:
    out: list[TickBatch] = []
    flow = Dataflow("replay")
    op.output("out", op.input("in", flow, source), TestingSink(out))
    run_main(flow)
    return out


def key_columns(x: pa.RecordBatch | pa.Table) -> tuple[list[int], list[str], list[float]]:
    """ts (as int), symbol (as str), price: what must survive a replay unchanged."""
    return (
        x.column("ts").cast(pa.int64()).to_pylist(),
        x.column("symbol").cast(pa.string()).to_pylist(),
        x.column("price").to_pylist(),
    )


def assert_covers_exactly(pieces: list[TickBatch], table: pa.Table, batch_rows: int) -> None:
    """The pieces, in order, are the table's rows once each, at the positions they claim."""
    total = table.num_rows
    position = (0, 0)
    for tb in pieces:
        assert (tb.index, tb.row_offset) == position, f"{tb.where}: gap or repeat"
        start = tb.index * batch_rows + tb.row_offset
        assert key_columns(tb.batch) == key_columns(table.slice(start, tb.batch.num_rows))
        end = tb.row_offset + tb.batch.num_rows
        batch_len = min(batch_rows, total - tb.index * batch_rows)
        assert end <= batch_len
        position = (tb.index, end) if end < batch_len else (tb.index + 1, 0)
    assert position == (-(-total // batch_rows), 0), "rows missing at the end"


def drain(part: Any) -> list[TickBatch]:
    out: list[TickBatch] = []
    while True:
        try:
            out.extend(part.next_batch())
        except StopIteration:
            return out


def read_table(path: Path) -> pa.Table:
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_file(source).read_all()


# --- every row once -------------------------------------------------------------------------


def test_real_files_replay_every_row_once_in_file_batches(real_files: list[Path]) -> None:
    pieces = replay(ArrowReplaySource([str(REAL / "*.arrow")]))
    by_source: dict[str, list[TickBatch]] = {}
    for tb in pieces:
        by_source.setdefault(tb.source, []).append(tb)
    assert sorted(by_source) == [str(p) for p in real_files]
    for path in real_files:
        got = by_source[str(path)]
        assert [tb.index for tb in got] == list(range(len(got)))
        assert all(tb.row_offset == 0 for tb in got)
        assert_covers_exactly(got, read_table(path), REAL_BATCH_ROWS)


def test_each_format_replays_every_row_once(small_file: Path, small_table: pa.Table) -> None:
    pieces = replay(ArrowReplaySource([small_file]))
    assert {tb.source for tb in pieces} == {str(small_file)}
    assert_covers_exactly(pieces, small_table, BATCH_ROWS)


@pytest.mark.parametrize("max_batch_rows", [1, 37, BATCH_ROWS, 10_000])
def test_max_batch_rows_slices_cover_every_row_with_their_offsets(
    small_file: Path, small_table: pa.Table, max_batch_rows: int
) -> None:
    pieces = replay(ArrowReplaySource([small_file], max_batch_rows=max_batch_rows))
    assert max(tb.batch.num_rows for tb in pieces) == min(max_batch_rows, BATCH_ROWS)
    assert_covers_exactly(pieces, small_table, BATCH_ROWS)


def test_real_file_sliced_covers_every_row(databento: Path) -> None:
    pieces = list(iter_tick_batches(databento, max_batch_rows=5_000))
    assert {tb.row_offset for tb in pieces} == {0, 5_000, 10_000, 15_000}
    assert_covers_exactly(pieces, read_table(databento), REAL_BATCH_ROWS)


def test_several_files_across_two_workers_emit_every_batch_once(
    real_files: list[Path],
) -> None:
    seen: list[tuple[str, int, int, int]] = []

    def note(_step: str, tb: TickBatch, _epoch: int, worker: int) -> None:
        seen.append((tb.source, tb.index, tb.row_offset, worker))

    flow = Dataflow("two_workers")
    ticks = op.input("in", flow, ArrowReplaySource(real_files, max_batch_rows=8_192))
    op.inspect_debug("where", ticks, note)
    cluster_main(flow, [], 0, worker_count_per_proc=2)

    positions = [s[:3] for s in seen]
    assert len(positions) == len(set(positions)), "a batch was emitted twice"
    expected = {
        (str(tb.source), tb.index, tb.row_offset)
        for path in real_files
        for tb in iter_tick_batches(path, max_batch_rows=8_192)
    }
    assert set(positions) == expected
    workers_by_file: dict[str, set[int]] = {}
    for source, _index, _row, worker in seen:
        workers_by_file.setdefault(source, set()).add(worker)
    assert all(len(w) == 1 for w in workers_by_file.values()), "a file was read twice"
    assert set().union(*workers_by_file.values()) == {0, 1}, "files did not spread"


def test_globs_expand_sorted_and_deduplicated(real_files: list[Path]) -> None:
    parts = ArrowReplaySource([str(REAL / "*.arrow"), str(real_files[1]), str(REAL / "l*")])
    assert parts.list_parts() == [str(p) for p in real_files]


def test_count_rows_matches_what_is_replayed(small_file: Path, real_files: list[Path]) -> None:
    assert count_rows(small_file) == SMALL_ROWS
    assert count_rows(str(REAL / "*.arrow")) == 388_417 + 68_792 + 9_999 + 1_000
    replayed = replay(ArrowReplaySource(real_files[:1]))
    assert count_rows(real_files[:1]) == sum(tb.batch.num_rows for tb in replayed)


# --- zero copy ------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["ipc_file", "ipc_stream"])
def test_ipc_batches_are_views_of_the_memory_mapped_file(
    tmp_path: Path, small_table: pa.Table, fmt: str
) -> None:
    path = write(small_table, tmp_path / f"ticks{SUFFIX[fmt]}", fmt)
    allocated = pa.total_allocated_bytes()
    part = ArrowReplaySource([path], max_batch_rows=100).build_part("in", str(path), None)
    first, second, *rest = drain(part)
    assert pa.total_allocated_bytes() == allocated  # no batch of the file was copied
    assert sum(tb.batch.num_rows for tb in [first, second, *rest]) == SMALL_ROWS
    price = first.batch.column("price").to_numpy(zero_copy_only=True)
    # Overwrite row 3's price in the file on disk: a view of the shared mapping sees it.
    data = path.read_bytes()
    offset = data.find(small_table.column("price").to_numpy()[:BATCH_ROWS].tobytes())
    assert offset > 0
    with open(path, "r+b") as f:
        f.seek(offset + 3 * 8)
        f.write(np.float64(-1.5).tobytes())
    assert price[3] == -1.5
    # Slices of one file batch share its buffer: same data buffer, different offsets.
    assert second.row_offset == 100
    buffers = [tb.batch.column("price").buffers()[1] for tb in (first, second)]
    assert buffers[0].address == buffers[1].address
    part.close()


def test_replaying_a_real_file_allocates_no_arrow_memory(lean: Path) -> None:
    before = pa.total_allocated_bytes()
    pieces = list(iter_tick_batches(lean, max_batch_rows=4_096))
    prices = [tb.batch.column("price").to_numpy(zero_copy_only=True) for tb in pieces]
    assert sum(len(p) for p in prices) == 388_417
    assert pa.total_allocated_bytes() - before < 4_096  # 11 MB read, nothing allocated


def test_parquet_is_decoded_not_mapped(tmp_path: Path, small_table: pa.Table) -> None:
    path = write(small_table, tmp_path / "ticks.parquet", "parquet")
    pieces = list(iter_tick_batches(path))
    assert [tb.index for tb in pieces] == [0, 1, 2, 3, 4]  # one batch per row group
    assert not np.shares_memory(
        pieces[0].batch.column("price").to_numpy(), np.frombuffer(path.read_bytes(), np.uint8)
    )


# --- resume ---------------------------------------------------------------------------------


@pytest.mark.parametrize("max_batch_rows", [None, 37])
@pytest.mark.parametrize("stop_after", [0, 1, 3, 5])
def test_resume_from_a_snapshot_continues_exactly_there(
    small_file: Path, small_table: pa.Table, max_batch_rows: int | None, stop_after: int
) -> None:
    source = ArrowReplaySource([small_file], max_batch_rows=max_batch_rows)
    part = source.build_part("in", str(small_file), None)
    before = [part.next_batch()[0] for _ in range(stop_after)]
    snapshot = part.snapshot()
    part.close()  # the "crash"; what follows the snapshot is never seen by this run
    resumed = source.build_part("in", str(small_file), snapshot)
    after = drain(resumed)
    resumed.close()
    assert_covers_exactly(before + after, small_table, BATCH_ROWS)


def test_resume_mid_batch_starts_at_that_row(small_file: Path, small_table: pa.Table) -> None:
    source = ArrowReplaySource([small_file], max_batch_rows=100)
    part = source.build_part("in", str(small_file), (2, 17))
    first = part.next_batch()[0]
    assert (first.index, first.row_offset, first.batch.num_rows) == (2, 17, 100)
    assert key_columns(first.batch) == key_columns(small_table.slice(2 * BATCH_ROWS + 17, 100))
    assert part.snapshot() == (2, 117)
    rest = drain(part)
    assert sum(tb.batch.num_rows for tb in [first, *rest]) == SMALL_ROWS - 2 * BATCH_ROWS - 17
    assert part.snapshot() == (5, 0)


def test_resume_at_the_end_emits_nothing(small_file: Path) -> None:
    part = ArrowReplaySource([small_file]).build_part("in", str(small_file), (5, 0))
    assert drain(part) == []


@pytest.mark.parametrize("position", [(6, 0), (5, 1), (1, BATCH_ROWS + 1)])
def test_resume_past_the_file_is_an_error(small_file: Path, position: tuple[int, int]) -> None:
    part = ArrowReplaySource([small_file]).build_part("in", str(small_file), position)
    with pytest.raises(TickSourceError, match=rf"{small_file.name}: cannot resume at batch"):
        drain(part)


def test_snapshot_is_the_position_after_the_last_emitted_piece(ipc_file: Path) -> None:
    part = ArrowReplaySource([ipc_file], max_batch_rows=200).build_part("in", str(ipc_file), None)
    positions = [part.snapshot()]
    for _ in range(4):
        part.next_batch()
        positions.append(part.snapshot())
    assert positions == [(0, 0), (0, 200), (1, 0), (1, 200), (2, 0)]


# --- pacing ---------------------------------------------------------------------------------


def awake_times(part: Any) -> Iterator[tuple[datetime, TickBatch]]:
    """Each piece with the time the partition said it was due (polling until it is)."""
    while True:
        due = part.next_awake()
        try:
            got = part.next_batch()
        except StopIteration:
            return
        while not got:
            got = part.next_batch()
        yield due, got[0]


@pytest.mark.parametrize(
    "ts_type", [pa.timestamp("ns", tz="UTC"), pa.timestamp("ms"), pa.int64()], ids=str
)
def test_speed_paces_batches_by_their_first_timestamp(tmp_path: Path, ts_type: Any) -> None:
    # 2 s of market time (10 ms apart) at 1000x: due times spread over 2 ms.
    table = tick_table(201, step_ns=10_000_000, ts_type=ts_type)
    path = write(table, tmp_path / "paced.arrow", "ipc_file", batch_rows=20)
    part = ArrowReplaySource([path], speed=1_000).build_part("in", str(path), None)
    pairs = list(awake_times(part))
    start = pairs[0][0]
    assert start <= datetime.now(start.tzinfo)
    offsets = [due - start for due, _ in pairs]
    expected = [timedelta(microseconds=10 * 20 * i) for i in range(len(pairs))]
    assert offsets == expected  # batch i starts 200 ms of market time later: 200 µs
    assert offsets[-1] == timedelta(milliseconds=2)


def test_a_batch_is_not_emitted_before_it_is_due(ipc_file: Path) -> None:
    # 250 rows 1 ms apart per batch: at 0.01x the second batch is due 25 s after the first.
    part = ArrowReplaySource([ipc_file], speed=0.01).build_part("in", str(ipc_file), None)
    first_due = part.next_awake()
    assert len(part.next_batch()) == 1
    assert part.next_awake() - first_due == timedelta(seconds=25)
    assert part.next_batch() == []
    assert part.snapshot() == (1, 0)


def test_speed_zero_never_waits(ipc_file: Path) -> None:
    part = ArrowReplaySource([ipc_file]).build_part("in", str(ipc_file), None)
    assert part.next_awake() is None
    assert len(drain(part)) == 5


def test_pacing_needs_a_timestamp_column(tmp_path: Path) -> None:
    table = tick_table(10).rename_columns(["time", "symbol", "price"])
    path = write(table, tmp_path / "no_ts.arrow", "ipc_file")
    source = ArrowReplaySource([path], speed=10.0)
    with pytest.raises(TickSourceError, match=r"no_ts\.arrow: no column 'ts' to pace"):
        source.build_part("in", str(path), None)
    assert len(drain(ArrowReplaySource([path]).build_part("in", str(path), None))) == 1


# --- errors ---------------------------------------------------------------------------------


def build(path: Path | str) -> Any:
    return ArrowReplaySource([path]).build_part("in", str(path), None)


def test_missing_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.arrow"
    with pytest.raises(TickSourceError, match=r"nope\.arrow: no such file") as info:
        ArrowReplaySource([missing]).list_parts()
    assert info.value.path == str(missing)
    assert info.value.batch is None


def test_glob_matching_nothing_is_named(tmp_path: Path) -> None:
    pattern = str(tmp_path / "x" / "*.arrow")
    with pytest.raises(TickSourceError, match=re.escape(f"no file matches {pattern!r}")):
        ArrowReplaySource([pattern]).list_parts()


def test_csv_is_not_arrow_nor_parquet(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("ts,symbol,price\n1,AAA,1.5\n")
    expected = r"x\.csv is not an Arrow IPC file or stream, nor Parquet \(first bytes b'ts,symbo'\)"
    with pytest.raises(TickSourceError, match=expected):
        build(path)


def test_empty_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "empty.arrow"
    path.touch()
    with pytest.raises(TickSourceError, match=r"empty\.arrow is empty \(0 bytes\)"):
        build(path)


def test_ipc_file_cut_in_half_names_the_file_and_the_batch(tmp_path: Path, lean: Path) -> None:
    data = lean.read_bytes()
    path = tmp_path / "half.arrow"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(TickSourceError, match=r"half\.arrow, batch 11: truncated") as info:
        build(path)
    assert (info.value.path, info.value.batch) == (str(path), 11)
    assert "11 batches are whole, batch 11 is cut short" in str(info.value)


def test_ipc_stream_cut_short_fails_at_the_cut_batch(tmp_path: Path, small_table: pa.Table) -> None:
    whole = write(small_table, tmp_path / "whole.arrows", "ipc_stream").read_bytes()
    path = tmp_path / "cut.arrows"
    path.write_bytes(whole[: int(len(whole) * 0.7)])
    part = build(path)
    good = [part.next_batch()[0] for _ in range(3)]
    assert [tb.index for tb in good] == [0, 1, 2]
    with pytest.raises(TickSourceError, match=r"cut\.arrows, batch 3: truncated") as info:
        part.next_batch()
    assert info.value.batch == 3


def test_parquet_cut_short_is_named(tmp_path: Path, small_table: pa.Table) -> None:
    whole = write(small_table, tmp_path / "whole.parquet", "parquet").read_bytes()
    path = tmp_path / "cut.parquet"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(TickSourceError, match=r"cut\.parquet: truncated or corrupt Parquet"):
        build(path)


def test_errors_pickle_with_their_attributes() -> None:
    error = TickSourceError("x.arrow, batch 3: bad", "x.arrow", 3)
    copy = pickle.loads(pickle.dumps(error))
    assert (str(copy), copy.path, copy.batch) == ("x.arrow, batch 3: bad", "x.arrow", 3)


def test_format_is_found_by_content_not_name(tmp_path: Path, small_table: pa.Table) -> None:
    # A stream saved as .arrow and Parquet saved as .dat are still read.
    stream = write(small_table, tmp_path / "really_a_stream.arrow", "ipc_stream")
    parquet = write(small_table, tmp_path / "ticks.dat", "parquet")
    for path in (stream, parquet):
        assert_covers_exactly(list(iter_tick_batches(path)), small_table, BATCH_ROWS)


def test_expand_paths_accepts_one_path_or_many(real_files: list[Path]) -> None:
    assert expand_paths(real_files[0]) == [str(real_files[0])]
    assert expand_paths(str(REAL / "*.arrow")) == sorted(glob.glob(os.path.join(REAL, "*.arrow")))
    assert expand_paths([f"{REAL}/./{real_files[0].name}", real_files[0]]) == [str(real_files[0])]
