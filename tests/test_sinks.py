"""File sinks write every item exactly once across a crash and a resume; stats reach Prometheus."""

from __future__ import annotations

import errno
import io
import math
import re
import threading
import urllib.request
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import bytewax.operators as op
import numpy as np
import orjson
import pyarrow as pa
import pytest
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSource, run_main
from prometheus_client import CollectorRegistry

from tickpool.connectors import file_writer, sinks
from tickpool.connectors.arrow_source import ArrowReplaySource
from tickpool.connectors.metrics import PrometheusStatsSink
from tickpool.connectors.sinks import (
    IPC_STREAM_EOS,
    ArrowStreamSink,
    JsonLinesSink,
    SinkError,
    StdoutSink,
    json_lines,
)
from tickpool.operators.items import DeadLetter, TickBatch, prediction_schema

SCHEMA = prediction_schema(1)

# A crash is the partition dropped without close(): its open file is left to the collector.
crash_warnings = pytest.mark.filterwarnings("ignore::ResourceWarning")


def predictions(start: int, rows: int) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays(
        [
            pa.array(1_600_000_000_000_000_000 + np.arange(start, start + rows), pa.int64()).cast(
                pa.timestamp("ns", tz="UTC")
            ),
            pa.array([f"S{i % 3}" for i in range(start, start + rows)], pa.string()),
            pa.array(np.arange(start, start + rows) / 8.0),
        ],
        schema=SCHEMA,
    )


BATCHES = [predictions(i * 10, 10) for i in range(6)]
RECORDS = [{"worker": "0", "i": i, "x": i / 4, "tag": f"r{i}"} for i in range(6)]


def write_all(sink: Any, values: list[Any], part: str = "0") -> None:
    """An uninterrupted run: build, write one value per batch, close."""
    partition = sink.build_part("out", part, None)
    for value in values:
        partition.write_batch([value])
    partition.close()


def writer_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("tickpool-writer-")}


def finish_dropped_writers(before: set[threading.Thread]) -> None:
    """After a partition is dropped without close(), wait for its writer thread's backlog.

    A crashed process either wrote its backlog (its writer thread finishes before it exits) or
    died with it; the harder case for a resume is the first: the bytes after the snapshot are
    in the file and must be cut. In one process, waiting makes that case happen every time.
    """
    for thread in writer_threads() - before:
        thread.join(timeout=30)
        assert not thread.is_alive(), f"{thread.name} did not finish its backlog"


def crash_and_resume(sink: Any, values: list[Any], snap_after: int, lost: int) -> None:
    """Write ``snap_after`` values, snapshot, write ``lost`` more, crash; resume and finish."""
    before = writer_threads()
    partition = sink.build_part("out", "0", None)
    for value in values[:snap_after]:
        partition.write_batch([value])
    offset = partition.snapshot()
    partition.write_batch(values[snap_after : snap_after + lost])  # written, never snapshotted
    del partition  # crash: no close(), no end-of-stream marker
    finish_dropped_writers(before)
    resumed = sink.build_part("out", "0", offset)
    for value in values[snap_after:]:  # Bytewax replays everything after the snapshot
        resumed.write_batch([value])
    resumed.close()


# --- ArrowStreamSink ------------------------------------------------------------------------


def test_arrow_stream_file_is_a_stream_of_the_batches(tmp_path: Path) -> None:
    sink = ArrowStreamSink(tmp_path, ["0"], SCHEMA)
    write_all(sink, BATCHES)
    path = tmp_path / "predictions-0.arrows"
    assert sink.path("0") == path
    assert path.read_bytes().endswith(IPC_STREAM_EOS)
    with pa.ipc.open_stream(path) as reader:
        assert reader.read_all().equals(pa.Table.from_batches(BATCHES))


@crash_warnings
@pytest.mark.parametrize(("snap_after", "lost"), [(0, 2), (2, 1), (3, 3), (6, 0)])
def test_arrow_stream_crash_and_resume_equals_an_uninterrupted_write(
    tmp_path: Path, snap_after: int, lost: int
) -> None:
    write_all(ArrowStreamSink(tmp_path / "once", ["0"], SCHEMA), BATCHES)
    crash_and_resume(ArrowStreamSink(tmp_path / "crash", ["0"], SCHEMA), BATCHES, snap_after, lost)
    expected = (tmp_path / "once" / "predictions-0.arrows").read_bytes()
    got = (tmp_path / "crash" / "predictions-0.arrows").read_bytes()
    assert got == expected
    with pa.ipc.open_stream(pa.py_buffer(got)) as reader:
        assert reader.read_all().equals(pa.Table.from_batches(BATCHES))


@crash_warnings
def test_arrow_stream_left_by_a_crash_is_readable(tmp_path: Path) -> None:
    sink = ArrowStreamSink(tmp_path, ["0"], SCHEMA)
    before = writer_threads()
    partition = sink.build_part("out", "0", None)
    partition.write_batch(BATCHES[:2])
    del partition
    finish_dropped_writers(before)
    with pa.ipc.open_stream(tmp_path / "predictions-0.arrows") as reader:
        assert reader.read_all().num_rows == 20


def test_arrow_stream_resumed_after_close_has_no_marker_in_the_middle(tmp_path: Path) -> None:
    sink = ArrowStreamSink(tmp_path, ["0"], SCHEMA)
    partition = sink.build_part("out", "0", None)
    partition.write_batch(BATCHES[:3])
    offset = partition.snapshot()
    partition.close()  # the run completed: end-of-stream written after the snapshot
    resumed = sink.build_part("out", "0", offset)
    resumed.write_batch(BATCHES[3:])
    resumed.close()
    data = (tmp_path / "predictions-0.arrows").read_bytes()
    assert data.count(IPC_STREAM_EOS) == 1
    with pa.ipc.open_stream(pa.py_buffer(data)) as reader:
        assert reader.read_all().num_rows == 60


def test_arrow_stream_schema_mismatch_names_partition_and_both_schemas(tmp_path: Path) -> None:
    partition = ArrowStreamSink(tmp_path, ["p7"], SCHEMA).build_part("out", "p7", None)
    wrong = BATCHES[0].rename_columns(["ts", "symbol", "prediction"])
    with pytest.raises(SinkError, match="partition 'p7'") as info:
        partition.write_batch([wrong])
    assert "schema does not match" in str(info.value)
    assert "yhat: double" in str(info.value)
    assert "prediction: double" in str(info.value)
    partition.close()


def test_arrow_stream_nullable_batch_fields_are_fine_without_nulls(tmp_path: Path) -> None:
    loose = pa.RecordBatch.from_arrays(BATCHES[0].columns, names=SCHEMA.names)
    with_null = pa.RecordBatch.from_arrays(
        [*BATCHES[0].columns[:2], pa.array([None] * 10, pa.float64())], names=SCHEMA.names
    )
    partition = ArrowStreamSink(tmp_path, ["0"], SCHEMA).build_part("out", "0", None)
    partition.write_batch([loose])
    with pytest.raises(SinkError, match=r"nulls in non-nullable columns \['yhat'\]"):
        partition.write_batch([with_null])
    partition.close()


def test_arrow_stream_rejects_dictionary_columns(tmp_path: Path) -> None:
    schema = pa.schema([("symbol", pa.dictionary(pa.int32(), pa.string()))])
    with pytest.raises(SinkError, match=r"dictionary columns \['symbol'\]"):
        ArrowStreamSink(tmp_path, ["0"], schema)


def test_arrow_stream_resume_into_another_schema_is_an_error(tmp_path: Path) -> None:
    write_all(ArrowStreamSink(tmp_path, ["0"], SCHEMA), BATCHES[:1])
    other = ArrowStreamSink(tmp_path, ["0"], prediction_schema(2))
    offset = (tmp_path / "predictions-0.arrows").stat().st_size - len(IPC_STREAM_EOS)
    with pytest.raises(SinkError, match="the file to resume has another schema"):
        other.build_part("out", "0", offset)


def test_resume_into_a_file_that_is_no_arrow_stream_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "predictions-0.arrows"
    path.write_bytes(b"not arrow at all")
    before = writer_threads()
    with pytest.raises(
        SinkError, match=rf"\({re.escape(str(path))}\): the file to resume does not"
    ):
        ArrowStreamSink(tmp_path, ["0"], SCHEMA).build_part("out", "0", 8)
    assert writer_threads() <= before, "the refused partition left its writer thread running"


def test_snapshot_covers_every_batch_handed_over(tmp_path: Path) -> None:
    sink = ArrowStreamSink(tmp_path, ["0"], SCHEMA)
    partition = sink.build_part("out", "0", None)
    for batch in BATCHES:
        partition.write_batch([batch])  # the writer thread may still have some in its backlog
    offset = partition.snapshot()
    assert offset == sink.path("0").stat().st_size
    with pa.ipc.open_stream(sink.path("0").read_bytes()[:offset]) as reader:
        assert reader.read_all().num_rows == sum(b.num_rows for b in BATCHES)
    partition.close()


class FullDisk(io.FileIO):
    """A file on a full disk: every write fails with ENOSPC."""

    def write(self, data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_is_raised_naming_the_file_and_close_still_releases_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files: list[io.BufferedRandom] = []

    def open_on_full_disk(path: Path, mode: str) -> io.BufferedRandom:
        files.append(io.BufferedRandom(FullDisk(path, "r+")))
        return files[-1]

    monkeypatch.setattr(sinks, "open", open_on_full_disk, raising=False)
    before = writer_threads()
    path = tmp_path / "rows.jsonl"
    partition = JsonLinesSink(path, ["0"]).build_part("out", "0", None)
    partition.write_batch([{"i": i, "pad": "x" * 10_000} for i in range(2)])
    with pytest.raises(OSError, match=rf"{re.escape(str(path))}: write failed: No space left"):
        partition.snapshot()
    with pytest.raises(OSError, match=rf"{re.escape(str(path))}: write failed: No space left"):
        partition.close()  # the sink's own error, not a bare one from closing the file
    assert files[0].closed, "the file was left open"
    assert writer_threads() <= before, "the writer thread was left running"


def test_a_failed_fsync_at_snapshot_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    partition = JsonLinesSink(tmp_path / "rows.jsonl", ["0"]).build_part("out", "0", None)
    partition.write_batch(RECORDS)

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(file_writer.os, "fsync", failing)
    with pytest.raises(OSError, match=r"rows.jsonl: fsync failed: Input/output error"):
        partition.snapshot()
    monkeypatch.undo()
    partition.close()


def test_resume_past_the_end_of_the_file_is_an_error(tmp_path: Path) -> None:
    write_all(ArrowStreamSink(tmp_path, ["0"], SCHEMA), BATCHES[:1])
    size = (tmp_path / "predictions-0.arrows").stat().st_size
    with pytest.raises(SinkError, match=rf"cannot resume at byte {size + 1}: the file has only"):
        ArrowStreamSink(tmp_path, ["0"], SCHEMA).build_part("out", "0", size + 1)


def test_items_go_to_the_partition_their_key_names(tmp_path: Path) -> None:
    # Bytewax indexes part_fn into the *sorted* partitions: "10" < "2" < "9".
    names = ["2", "9", "10"]
    sink = ArrowStreamSink(tmp_path, names, SCHEMA)
    assert [sorted(sink.list_parts())[sink.part_fn(n)] for n in names] == names
    with pytest.raises(SinkError, match="item key 'x' is not one of its partitions"):
        sink.part_fn("x")
    flow = Dataflow("routing")
    items = [(names[i % 3], batch) for i, batch in enumerate(BATCHES)]
    op.output("out", op.input("in", flow, TestingSource(items)), sink)
    run_main(flow)
    for i, name in enumerate(names):
        with pa.ipc.open_stream(sink.path(name)) as reader:
            assert reader.read_all().equals(pa.Table.from_batches(BATCHES[i::3]))


# --- JsonLinesSink --------------------------------------------------------------------------


def lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


@crash_warnings
@pytest.mark.parametrize("values", [RECORDS, BATCHES], ids=["dicts", "batches"])
@pytest.mark.parametrize(("snap_after", "lost"), [(0, 1), (2, 2), (5, 1)])
def test_json_lines_crash_and_resume_equals_an_uninterrupted_write(
    tmp_path: Path, values: list[Any], snap_after: int, lost: int
) -> None:
    write_all(JsonLinesSink(tmp_path / "once.jsonl", ["0"]), values)
    crash_and_resume(JsonLinesSink(tmp_path / "crash.jsonl", ["0"]), values, snap_after, lost)
    got = (tmp_path / "crash.jsonl").read_bytes()
    assert got == (tmp_path / "once.jsonl").read_bytes()
    assert len(got.splitlines()) == (6 if values is RECORDS else 60)


def test_json_lines_nan_is_null_and_ts_is_int_ns(tmp_path: Path) -> None:
    ts = pa.array([1_600_000_000_123_456_789, 1_600_000_000_123_456_790], pa.int64())
    batch = pa.record_batch(
        {
            "ts": ts.cast(pa.timestamp("ns", tz="UTC")),
            "ts_ms": pa.array([5, 6], pa.timestamp("ms")),
            "symbol": pa.array(["BTC", "ETH"]).dictionary_encode(),
            "price": [float("nan"), 2.5],
        }
    )
    sink = JsonLinesSink(tmp_path / "out.jsonl", ["0"])
    write_all(sink, [batch, {"a": math.nan, "b": np.float64("inf"), "c": np.array([1.0, np.nan])}])
    assert lines(tmp_path / "out.jsonl") == [
        {"ts": 1_600_000_000_123_456_789, "ts_ms": 5_000_000, "symbol": "BTC", "price": None},
        {"ts": 1_600_000_000_123_456_790, "ts_ms": 6_000_000, "symbol": "ETH", "price": 2.5},
        {"a": None, "b": None, "c": [1.0, None]},
    ]


def test_json_lines_writes_records_with_to_dict(tmp_path: Path) -> None:
    letter = DeadLetter("x.arrow", 3, 17, "NaN price", ts=5, symbol="SPY", value=math.nan)
    write_all(JsonLinesSink(tmp_path / "dl.jsonl", ["0"]), [letter])
    assert lines(tmp_path / "dl.jsonl") == [letter.to_dict()]


def test_json_lines_file_names(tmp_path: Path) -> None:
    assert JsonLinesSink(tmp_path / "stats.jsonl", ["0"]).path("0") == tmp_path / "stats.jsonl"
    several = JsonLinesSink(tmp_path / "stats.jsonl", ["0", "1"])
    assert several.path("1") == tmp_path / "stats-1.jsonl"
    in_dir = JsonLinesSink(tmp_path, ["0", "1"], prefix="dead")
    assert in_dir.path("0") == tmp_path / "dead-0.jsonl"
    new_dir = JsonLinesSink(f"{tmp_path}/new/", ["a"])
    assert new_dir.path("a") == tmp_path / "new" / "predictions-a.jsonl"


def test_json_lines_rejects_what_it_cannot_write() -> None:
    with pytest.raises(TypeError, match="cannot write int as JSON lines"):
        json_lines(cast(Any, 3))


def test_stdout_sink_writes_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    partition = StdoutSink().build("out", 0, 1)
    partition.write_batch([("0", RECORDS[0]), BATCHES[0].slice(0, 1)])
    out = capsys.readouterr().out.splitlines()
    assert [orjson.loads(line) for line in out] == [
        RECORDS[0],
        {"ts": 1_600_000_000_000_000_000, "symbol": "S0", "yhat": 0.0},
    ]


# --- exactly once through Bytewax recovery --------------------------------------------------


CRASH_AT = 30


def replay_to_sinks(ticks: Path, out: Path, recovery: RecoveryConfig | None, crash: bool) -> int:
    """Replay ``ticks`` into an Arrow stream and a JSON-lines file; maybe crash at a batch."""
    seen = 0

    def to_output(tb: TickBatch) -> tuple[str, pa.RecordBatch]:
        nonlocal crash, seen
        seen += 1
        if crash and tb.index == CRASH_AT:
            crash = False
            raise RuntimeError("simulated crash")
        return "0", tb.batch.select(["ts", "price"])

    schema = pa.schema([("ts", pa.timestamp("ns", tz="UTC")), ("price", pa.float64())])
    flow = Dataflow("exactly_once")
    # speed=20 spreads the 44 batches over 55 ms (one per 1.25 ms) and epochs close every
    # 10 ms, so the crash comes after some snapshots and after writes no snapshot covers.
    keyed = op.map("key", op.input("in", flow, ArrowReplaySource(ticks, speed=20.0)), to_output)
    op.output("arrow", keyed, ArrowStreamSink(out, ["0"], schema))
    op.output("jsonl", keyed, JsonLinesSink(out / "rows.jsonl", ["0"]))
    run_main(flow, epoch_interval=timedelta(milliseconds=10), recovery_config=recovery)
    return seen


def causes(error: BaseException | None) -> list[BaseException]:
    chain = []
    while error is not None:
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


def test_crash_and_recovery_write_every_row_exactly_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUST_BACKTRACE", "0")  # the simulated crash is expected
    ticks = tmp_path / "ticks.arrow"
    n, batch_rows = 1_100, 25
    table = pa.table(
        {
            "ts": pa.array(1_600_000_000_000_000_000 + np.arange(n) * 1_000_000, pa.int64()).cast(
                pa.timestamp("ns", tz="UTC")
            ),
            "price": np.arange(n, dtype=np.float64),
        }
    )
    with pa.ipc.new_file(ticks, table.schema) as writer:
        writer.write_table(table, max_chunksize=batch_rows)
    replay_to_sinks(ticks, tmp_path / "once", None, crash=False)

    db = tmp_path / "db"
    db.mkdir()
    init_db_dir(db, 1)
    recovery = RecoveryConfig(str(db))
    out = tmp_path / "crash"
    with pytest.raises(Exception) as info:  # Bytewax wraps the error; the cause is ours
        replay_to_sinks(ticks, out, recovery, crash=True)
    assert "simulated crash" in repr(causes(info.value))
    rows_at_crash = (out / "rows.jsonl").read_bytes().count(b"\n")
    assert rows_at_crash == CRASH_AT * batch_rows
    resumed_from = n // batch_rows - replay_to_sinks(ticks, out, recovery, crash=False)
    # Usually 23-29: the sinks truncate the batches written after that snapshot. (Where the last
    # epoch closes is up to the clock; truncation itself is tested deterministically above.)
    assert 0 < resumed_from <= CRASH_AT, "the source restarted from the beginning"

    for name in ("predictions-0.arrows", "rows.jsonl"):
        assert (out / name).read_bytes() == (tmp_path / "once" / name).read_bytes()
    with pa.ipc.open_stream(out / "predictions-0.arrows") as reader:
        assert reader.read_all().column("price").to_pylist() == list(map(float, range(n)))


# --- Prometheus -----------------------------------------------------------------------------

STATS = {
    "schema": 1,
    "time": "2024-01-01T00:00:00Z",
    "worker": "0",
    "hits": 970,
    "misses": 30,
    "hit_rate": 0.97,
    "interval_hit_rate": 0.99,
    "leased": 3,
    "free": 5,
    "limit": 16,
    "bytes_held": 1_048_576,
    "grows": 2,
    "shrinks": 1,
    "evictions": 4,
    "unpooled": 0,
    "ticks": 123_456,
    "predictions": 120_000,
    "dead_letters": 7,
    "ticks_per_s": 1.5e7,
    "predictions_per_s": 1.4e7,
    "latency_ms_p50": 1.25,
    "latency_ms_p90": 2.5,
    "latency_ms_p99": 10.0,
    "something_new": "ignored",
}


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def metric(text: str, name: str, labels: str) -> float:
    found = re.search(rf"^{name}\{{{labels}\}} (\S+)$", text, re.MULTILINE)
    assert found, f"{name}{{{labels}}} not exposed"
    return float(found.group(1))


def test_prometheus_exposes_stats_by_worker() -> None:
    sink = PrometheusStatsSink(0, registry=CollectorRegistry())
    partition = sink.build("stats", 0, 1)
    assert sink.port > 0
    assert sink.start() == sink.port  # once per process
    partition.write_batch([STATS])
    text = scrape(sink.port)
    assert 'tickpool_pool_hit_rate{worker="0"} 0.97' in text
    assert metric(text, "tickpool_pool_interval_hit_rate", 'worker="0"') == 0.99
    assert metric(text, "tickpool_pool_limit", 'worker="0"') == 16
    assert metric(text, "tickpool_pool_bytes_held", 'worker="0"') == 1_048_576
    assert metric(text, "tickpool_ticks_per_second", 'worker="0"') == 1.5e7
    assert metric(text, "tickpool_pool_hits_total", 'worker="0"') == 970
    assert metric(text, "tickpool_dead_letters_total", 'worker="0"') == 7
    assert metric(text, "tickpool_batch_latency_seconds", 'quantile="0.99",worker="0"') == 0.01
    assert "something_new" not in text

    # Another worker's record, keyed; a later record without some keys leaves them unchanged.
    partition.write_batch([("1", {**STATS, "worker": "1", "hit_rate": 0.5})])
    partition.write_batch([{"worker": "0", "ticks": 200_000}])
    text = scrape(sink.port)
    assert metric(text, "tickpool_pool_hit_rate", 'worker="1"') == 0.5
    assert metric(text, "tickpool_pool_hit_rate", 'worker="0"') == 0.97
    assert metric(text, "tickpool_ticks_total", 'worker="0"') == 200_000


def test_prometheus_exposes_a_live_sources_counters_when_records_carry_them() -> None:
    sink = PrometheusStatsSink(0, registry=CollectorRegistry())
    partition = sink.build("stats", 0, 1)
    partition.write_batch([STATS])
    assert "tickpool_feed_reconnects_total{" not in scrape(sink.port)  # no per-worker feed gauges
    partition.write_batch([{**STATS, "feed_received": 1000, "feed_reconnects": 2}])
    text = scrape(sink.port)
    assert unlabelled(text, "tickpool_feed_received_total") == 1000
    assert unlabelled(text, "tickpool_feed_reconnects_total") == 2


def unlabelled(text: str, name: str) -> float:
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert found, f"{name} not exposed without labels"
    return float(found.group(1))


def test_a_live_sources_counters_are_exported_once_per_process_not_per_worker() -> None:
    # Two workers' records repeat the process's counters: sum() must not count them twice.
    sink = PrometheusStatsSink(0, registry=CollectorRegistry())
    partition = sink.build("stats", 0, 2)
    source = {"feed_rejected": 5, "kafka_undecodable": 3, "kafka_copied_rows": 1024}
    partition.write_batch([("0", {**STATS, "worker": "0", **source})])
    partition.write_batch([("1", {**STATS, "worker": "1", **source})])
    text = scrape(sink.port)
    assert not re.search(r"^tickpool_(feed|kafka)_\w+\{", text, re.MULTILINE)
    assert unlabelled(text, "tickpool_feed_rejected_total") == 5
    assert unlabelled(text, "tickpool_kafka_undecodable_total") == 3
    assert unlabelled(text, "tickpool_kafka_copied_rows_total") == 1024
    assert metric(text, "tickpool_dead_letters_total", 'worker="1"') == 7  # still per worker
