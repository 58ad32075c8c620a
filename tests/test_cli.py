"""``tickpool`` end to end: files in, prediction files out, equal to a plain numpy reference.

Runs go through ``tickpool.pipeline.cli.main`` in this process (the same code the console
script runs, and much faster than a subprocess per run); the contract that needs a real
process (exit codes, SIGKILL and restart, a metrics endpoint scraped while running) is
checked with subprocesses.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import pyarrow as pa
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from tests.common import REAL_DATA
from tickpool.operators.models import LinearModel
from tickpool.pipeline.cli import main

FloatArray = npt.NDArray[np.float64]
CONST_RTOL = 1e-12  # the engine's rule: std <= 1e-12 * |mean| is a constant window

REAL_FILES = sorted(REAL_DATA.glob("*.arrow"))


# -- helpers -------------------------------------------------------------------------------------


def tickpool(*args: str | Path) -> int:
    """Run ``tickpool ARGS`` in this process; its exit code."""
    return main([str(a) for a in args])


def read_table(path: Path) -> pa.Table:
    with pa.memory_map(str(path)) as source:
        if path.suffix == ".arrows":
            return pa.ipc.open_stream(source).read_all()
        return pa.ipc.open_file(source).read_all()


def write_file(table: pa.Table, path: Path, *, batch_rows: int, stream: bool = False) -> Path:
    with pa.OSFile(str(path), "wb") as sink:
        opener = pa.ipc.new_stream if stream else pa.ipc.new_file
        with opener(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=batch_rows)
    return path


def predictions(out: Path) -> dict[str, tuple[npt.NDArray[np.int64], FloatArray]]:
    """Per symbol: (ts, yhat (m, H)) from every ``predictions-*.arrows`` file in ``out``."""
    files = sorted(out.glob("predictions-*.arrows"))
    assert files, f"no prediction files in {out}"
    table = pa.concat_tables([read_table(f) for f in files])
    symbols = np.asarray(table.column("symbol").to_pylist(), dtype=object)
    ts = table.column("ts").cast(pa.int64()).to_numpy()
    ycols = [c for c in table.column_names if c.startswith("yhat")]
    y = np.column_stack([table.column(c).to_numpy() for c in ycols])
    result = {}
    for s in dict.fromkeys(symbols.tolist()):
        mask = symbols == s
        result[str(s)] = (ts[mask], y[mask])
    return result


def numpy_reference(
    table: pa.Table,
    *,
    window: int,
    stride: int = 1,
    model: str | Path = "last",
) -> dict[str, tuple[npt.NDArray[np.int64], FloatArray]]:
    """Window z-score predictions the plain way: all windows of a symbol at once, two-pass.

    Per symbol (finite prices only, in file order): the windows ending at ticks W-1, W-1+S, ...;
    each is z-scored by its own mean and population std (a constant window gives z = 0, so
    the prediction is the mean), fed to the model, and mapped back to price units.
    """
    symbols = np.asarray(table.column("symbol").cast(pa.string()).to_pylist(), dtype=object)
    ts = table.column("ts").cast(pa.int64()).to_numpy()
    price = table.column("price").cast(pa.float64()).to_numpy(zero_copy_only=False)
    good = np.isfinite(price)
    if isinstance(model, Path):
        npz = np.load(model)
        weights = npz["weights"].reshape(window, -1)
        intercept = np.broadcast_to(npz["intercept"], (weights.shape[1],))
    result = {}
    for s in dict.fromkeys(symbols.tolist()):
        idx = np.flatnonzero((symbols == s) & good)
        x = price[idx]
        if x.size < window:
            continue
        wins = sliding_window_view(x, window)[::stride]
        mean = wins.mean(axis=1, keepdims=True)
        std = np.sqrt(((wins - mean) ** 2).mean(axis=1, keepdims=True))
        const = std <= CONST_RTOL * np.abs(mean)
        z = np.where(const, 0.0, (wins - mean) / np.where(const, 1.0, std))
        if model == "last":
            yz = z[:, -1:]
        elif model == "mean":
            yz = z.mean(axis=1, keepdims=True)
        else:
            yz = z @ weights + intercept
        y = yz * np.where(const, 0.0, std) + mean
        result[str(s)] = (ts[idx[window - 1 :: stride]], y)
    return result


def assert_same_predictions(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert sorted(got) == sorted(want)
    for s, (ts, y) in want.items():
        gts, gy = got[s]
        np.testing.assert_array_equal(gts, ts, err_msg=f"ts of {s}")
        np.testing.assert_allclose(gy, y, rtol=1e-9, atol=0, err_msg=f"predictions of {s}")


def stats_records(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


# -- generated data ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pa.Table, Path]:
    """A generated file (40k ticks, 5 symbols, batches of 4,096) and a model fitted on it."""
    work = tmp_path_factory.mktemp("generated")
    path = work / "ticks.arrow"
    assert (
        tickpool(
            "generate", path, "--ticks", 40_000, "--symbols", 5, "--seed", 3, "--batch-rows", 4096
        )
        == 0
    )
    model = work / "model.npz"
    assert tickpool("fit", path, "--window", 32, "-o", model) == 0
    return path, read_table(path), model


@pytest.mark.parametrize(
    ("workers", "batch_rows", "stream"),
    [(1, 4096, False), (2, 4096, False), (1, 777, True), (2, 1, False)],
    ids=["w1", "w2", "stream-777", "w2-1tick"],
)
def test_replay_equals_the_numpy_reference_whatever_the_workers_and_batches(
    generated: tuple[Path, pa.Table, Path],
    tmp_path: Path,
    workers: int,
    batch_rows: int,
    stream: bool,
) -> None:
    path, table, model = generated
    if batch_rows == 1:  # one-tick batches: 3,000 ticks are plenty, and the file stays small
        table = table.slice(0, 3000)
    if (batch_rows, stream) != (4096, False):
        path = write_file(
            table,
            tmp_path / f"ticks.arrow{'s' if stream else ''}",
            batch_rows=batch_rows,
            stream=stream,
        )
    out = tmp_path / "out"
    code = tickpool(
        "replay",
        path,
        "--window",
        32,
        "--model",
        model,
        "--out",
        out,
        "--workers",
        workers,
        "--quiet",
    )
    assert code == 0
    assert_same_predictions(predictions(out), numpy_reference(table, window=32, model=model))


def test_generate_is_deterministic_per_seed_whatever_the_batch_size(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.arrow", tmp_path / "b.arrow", tmp_path / "c.arrow"
    assert tickpool("generate", a, "--ticks", 5000, "--symbols", 3, "--seed", 9) == 0
    assert (
        tickpool("generate", b, "--ticks", 5000, "--symbols", 3, "--seed", 9, "--batch-rows", 333)
        == 0
    )
    assert tickpool("generate", c, "--ticks", 5000, "--symbols", 3, "--seed", 10) == 0
    assert read_table(a).equals(read_table(b))
    assert read_table(b).to_batches()[0].num_rows == 333
    assert not read_table(a).equals(read_table(c))


def test_stride_and_horizon_from_a_config_file_with_command_line_overrides(
    generated: tuple[Path, pa.Table, Path], tmp_path: Path
) -> None:
    path, table, _ = generated
    config = tmp_path / "run.toml"
    config.write_text(f'sources = ["{path}"]\nwindow = 16\nstride = 5\nmodel = "mean"\n')
    out = tmp_path / "out"
    assert tickpool("replay", "--config", config, "--window", 8, "--out", out, "--quiet") == 0
    want = numpy_reference(table, window=8, stride=5, model="mean")
    assert_same_predictions(predictions(out), want)


def test_a_fresh_run_leaves_no_file_of_an_earlier_run(
    generated: tuple[Path, pa.Table, Path], tmp_path: Path
) -> None:
    path, _, _ = generated
    out = tmp_path / "out"
    assert tickpool("replay", path, "--out", out, "--shards", 7, "--quiet") == 0
    assert len(list(out.glob("predictions-*.arrows"))) > 1
    stale = out / "predictions-6.arrows"
    stale.write_bytes(b"left over")
    assert tickpool("replay", path, "--out", out, "--shards", 1, "--quiet") == 0
    assert sorted(p.name for p in out.glob("predictions-*.arrows")) == ["predictions-0.arrows"]


# -- real data -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", REAL_FILES, ids=[p.name.split("_")[0] for p in REAL_FILES])
def test_real_files_replay_equal_to_the_numpy_reference(path: Path, tmp_path: Path) -> None:
    table = read_table(path)
    window = 64
    rng = np.random.default_rng(1)
    weights = rng.normal(0, 0.1, window)
    weights[-1] += 1.0  # near "last value", where cancellation against the mean would show
    model = tmp_path / "model.npz"
    LinearModel(weights, 0.01, window=window, horizon=1, normalize="window-zscore").save(model)
    out = tmp_path / "out"
    code = tickpool(
        "replay",
        path,
        "--window",
        window,
        "--model",
        model,
        "--out",
        out,
        "--workers",
        2,
        "--quiet",
    )
    assert code == 0
    assert_same_predictions(predictions(out), numpy_reference(table, window=window, model=model))


# -- bad input -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> pa.Table:
    work = tmp_path_factory.mktemp("small")
    assert tickpool("generate", work / "s.arrow", "--ticks", 3000, "--symbols", 2) == 0
    return read_table(work / "s.arrow")


def bad_file(kind: str, small: pa.Table, tmp: Path) -> Path:
    path = tmp / f"{kind}.arrow"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "not-arrow":
        path.write_text("ts,symbol,price\n1,AAA,10.0\n")
    elif kind == "truncated":
        whole = write_file(small, tmp / "whole.arrow", batch_rows=1000)
        path.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    elif kind == "missing-column":
        write_file(small.drop_columns(["price"]), path, batch_rows=1000)
    elif kind == "wrong-type":
        i = small.schema.get_field_index("price")
        write_file(
            small.set_column(i, "price", small["price"].cast(pa.string())), path, batch_rows=1000
        )
    return path


BAD = {
    "missing-file": ("no such file", "nowhere.arrow"),
    "empty": ("is empty (0 bytes)", "empty.arrow"),
    "not-arrow": ("is not an Arrow IPC file or stream", "not-arrow.arrow"),
    "truncated": ("truncated", "truncated.arrow"),
    "missing-column": ("column 'price'", "is missing"),
    "wrong-type": ("column 'price'", "has type string; expected a numeric type"),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_files_end_with_one_line_naming_the_file_and_the_problem(
    kind: str, small: pa.Table, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "nowhere.arrow" if kind == "missing-file" else bad_file(kind, small, tmp_path)
    out = tmp_path / "out"
    assert tickpool("replay", path, "--out", out, "--quiet") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    for needle in BAD[kind]:
        assert needle in err[0]
    assert path.name in err[0]
    assert not list(out.glob("*.arrows")), "a rejected input must not leave predictions"


def test_the_console_script_exits_non_zero_with_one_line(small: pa.Table, tmp_path: Path) -> None:
    path = bad_file("missing-column", small, tmp_path)
    run = subprocess.run(
        [sys.executable, "-m", "tickpool.pipeline.cli", "replay", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 2
    assert run.stderr.startswith("tickpool: error: column 'price' in file ")
    assert len(run.stderr.strip().splitlines()) == 1
    assert run.stdout == ""


def test_nan_prices_go_to_dead_letters_exactly_and_every_row_is_accounted_for(
    small: pa.Table, tmp_path: Path
) -> None:
    price = small["price"].to_numpy().copy()
    bad_rows = [0, 17, 1000, 1001, 2999]
    price[bad_rows] = np.nan
    table = small.set_column(small.schema.get_field_index("price"), "price", pa.array(price))
    path = write_file(table, tmp_path / "nan.arrow", batch_rows=1000)
    dead, stats, out = tmp_path / "dead.jsonl", tmp_path / "stats.jsonl", tmp_path / "out"
    code = tickpool(
        "replay",
        path,
        "--window",
        16,
        "--out",
        out,
        "--dead-letters",
        dead,
        "--stats",
        stats,
        "--workers",
        2,
        "--quiet",
    )
    assert code == 0
    letters = stats_records(dead)
    assert sorted((d["batch"] * 1000 + d["row"]) for d in letters) == bad_rows
    assert all(d["source"] == str(path) and "price" in d["reason"] for d in letters)
    final = latest_per_shard(stats_records(stats))
    assert sum(r["dead_letters"] for r in final) == len(bad_rows)
    assert sum(r["ticks"] for r in final) == table.num_rows
    assert_same_predictions(predictions(out), numpy_reference(table, window=16))


# -- statistics ----------------------------------------------------------------------------------


def latest_per_shard(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    latest: dict[str, dict[str, Any]] = {}
    for r in records:
        latest[str(r["worker"])] = r
    return list(latest.values())


def test_the_stats_file_parses_and_its_counters_are_consistent(
    generated: tuple[Path, pa.Table, Path], tmp_path: Path
) -> None:
    path, table, _ = generated
    stats, out = tmp_path / "stats.jsonl", tmp_path / "out"
    code = tickpool(
        "replay",
        path,
        "--out",
        out,
        "--stats",
        stats,
        "--stats-interval",
        0.01,
        "--workers",
        2,
        "--max-batch-rows",
        500,
        "--quiet",
    )
    assert code == 0
    records = stats_records(stats)
    assert {r["schema"] for r in records} == {1}
    by_shard: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_shard.setdefault(str(r["worker"]), []).append(r)
    for shard_records in by_shard.values():
        for key in ("ticks", "predictions", "batches", "hits", "misses"):
            seq = [r[key] for r in shard_records]
            assert seq == sorted(seq), f"{key} must never go down"
        for r in shard_records:
            assert r["hits"] + r["misses"] > 0
            assert r["hit_rate"] == pytest.approx(r["hits"] / (r["hits"] + r["misses"]))
            assert r["leased"] >= 0 and r["leased"] + r["free"] <= r["limit"] + r["unpooled"]
            assert r["bytes_held"] <= r["peak_bytes"]
            assert r["latency_ms_p50"] <= r["latency_ms_p90"] <= r["latency_ms_p99"]
    final = latest_per_shard(records)
    assert sum(r["ticks"] for r in final) == table.num_rows
    written = sum(len(ts) for ts, _ in predictions(out).values())
    assert sum(r["predictions"] for r in final) == written
    assert all(r["leased"] == 0 for r in final), "buffers not returned at the end of the run"
    assert tickpool("stats", stats) == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def metric_value(body: str, name: str) -> float:
    """The value of ``name``'s first sample in a Prometheus text exposition (0 if absent)."""
    for line in body.splitlines():
        if line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_prometheus_serves_pool_metrics_while_a_replay_runs(
    generated: tuple[Path, pa.Table, Path], tmp_path: Path
) -> None:
    path, table, _ = generated
    # Paced so the run lasts a few seconds: the endpoint is scraped while it runs.
    span_s = (table["ts"][-1].value - table["ts"][0].value) / 1e9
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tickpool.pipeline.cli",
            "replay",
            str(path),
            "--quiet",
            "--speed",
            str(span_s / 6),
            "--stats-interval",
            "0.2",
            "--metrics-port",
            str(port),
            "--out",
            str(tmp_path / "out"),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        body, deadline = "", time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    body = r.read().decode()
            except OSError:
                body = ""
            if metric_value(body, "tickpool_pool_hits_total") > 0:
                break  # a record taken after some batches went through the pool
            time.sleep(0.1)
        running = proc.poll() is None
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    assert running, f"the replay ended before its metrics were seen: {err}"
    for name in (
        "tickpool_pool_hit_rate",
        "tickpool_pool_limit",
        "tickpool_pool_leased",
        "tickpool_pool_hits_total",
        "tickpool_ticks_total",
    ):
        assert f"{name}{{" in body, name
    assert metric_value(body, "tickpool_pool_hits_total") > 0
    assert 0 < metric_value(body, "tickpool_ticks_total") < table.num_rows


# -- crash and recovery --------------------------------------------------------------------------


def test_a_killed_replay_resumes_and_writes_every_prediction_exactly_once(
    generated: tuple[Path, pa.Table, Path], tmp_path: Path
) -> None:
    path, table, model = generated
    args = [
        "replay",
        str(path),
        "--window",
        "32",
        "--model",
        str(model),
        "--workers",
        "2",
        "--quiet",
        "--snapshot-interval",
        "0.1",
        "--max-batch-rows",
        "1000",
    ]
    whole = tmp_path / "whole"
    assert tickpool(*args, "--out", whole) == 0

    out, rec = tmp_path / "out", tmp_path / "recovery"
    span_s = (table["ts"][-1].value - table["ts"][0].value) / 1e9
    paced = [*args, "--out", str(out), "--recovery-dir", str(rec), "--speed", str(span_s / 8)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tickpool.pipeline.cli", *paced], stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 60
        # Kill once some predictions (and so some snapshots) are on disk, well before the end.
        while time.monotonic() < deadline and proc.poll() is None:
            if sum(f.stat().st_size for f in out.glob("*.arrows")) > 20_000:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    killed_bytes = sum(f.stat().st_size for f in out.glob("*.arrows"))
    assert 0 < killed_bytes < sum(f.stat().st_size for f in whole.glob("*.arrows"))

    assert tickpool(*args, "--out", out, "--recovery-dir", rec) == 0
    names = sorted(p.name for p in whole.glob("*.arrows"))
    assert sorted(p.name for p in out.glob("*.arrows")) == names
    for name in names:
        assert read_table(out / name).equals(read_table(whole / name)), name


def test_a_live_sources_own_rejects_count_as_read_and_dead_lettered_once() -> None:
    from tickpool.pipeline.cli import summarize_run
    from tickpool.pipeline.flow import RunObserver

    observer = RunObserver()
    base = {"ticks": 100, "dead_letters": 2, "predictions": 90, "hits": 9, "misses": 1}
    # Two shards' records repeat the process-wide source counters: count them once.
    for worker in ("0", "1"):
        observer.stats({**base, "worker": worker, "feed_rejected": 3, "kafka_undecodable": 4})
    s = summarize_run(observer, 1.0)
    assert s["ticks"] == 200 + 3 + 4
    assert s["dead_letters"] == 4 + 3 + 4
    assert s["processed"] == 196
    assert s["kafka_undecodable"] == 4


def test_progress_polls_the_observer_unless_quiet() -> None:
    # The bar's thread reads the observer's count while a run goes on; a quiet run (no bar)
    # starts no thread at all.
    import threading
    from types import SimpleNamespace

    from tickpool.pipeline.cli import observed_progress

    observer = SimpleNamespace(rows_read=0)

    def pollers() -> list[str]:
        return [t.name for t in threading.enumerate() if t.name == "tickpool-progress"]

    with observed_progress(observer, "quiet", total=10, quiet=True):
        assert pollers() == []
    with observed_progress(observer, "shown", total=10):
        assert pollers() == ["tickpool-progress"]
    assert pollers() == []  # joined when the run ends
