"""The window operator inside Bytewax: same predictions as the reference, also across a resume."""

from __future__ import annotations

import gc
from datetime import timedelta
from pathlib import Path
from typing import Any

import bytewax.operators as op
import numpy as np
import pyarrow as pa
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, run_main

from tests.reference import engine_by_symbol, reference_table
from tests.test_engine import make_model, plain_for
from tickpool.operators.dataflow import shard_batches, split_shards, window_predict
from tickpool.operators.engine import EngineConfig
from tickpool.operators.items import DeadLetter, TickBatch
from tickpool.operators.models import Model
from tickpool.pipeline.pool import BufferPool


def ticks(n: int = 3000, symbols: int = 3, seed: int = 5) -> pa.Table:
    rng = np.random.default_rng(seed)
    sym = rng.integers(0, symbols, size=n)
    price = 100.0 * (1 + sym) + np.cumsum(rng.choice([-0.01, 0.0, 0.01], size=n))
    price[[17, 1200]] = np.nan
    return pa.table(
        {
            "ts": pa.array(np.arange(n, dtype=np.int64) * 1_000_000, pa.timestamp("ns", tz="UTC")),
            "symbol": pa.array([f"SYM{s}" for s in sym]).dictionary_encode(),
            "price": price,
        }
    )


def batches_of(table: pa.Table, rows: int) -> list[TickBatch]:
    return [
        TickBatch(b, "mem.arrow", i) for i, b in enumerate(table.to_batches(max_chunksize=rows))
    ]


def build(
    items: list[Any],
    cfg: EngineConfig,
    model: Model,
    pool: BufferPool,
    preds: list[tuple[str, pa.RecordBatch]],
    dead: list[tuple[str, DeadLetter]],
    stats: list[tuple[str, dict[str, Any]]],
    shards: int = 1,
) -> Dataflow:
    flow = Dataflow("window_test")
    src = op.input("ticks", flow, TestingSource(items))
    keyed = shard_batches("shard", src, shards)
    out = window_predict("window", keyed, cfg, model, pool, stats_interval=None)
    op.output("preds", out.predictions, TestingSink(preds))
    op.output("dead", out.dead_letters, TestingSink(dead))
    op.output("stats", out.stats, TestingSink(stats))
    return flow


CFG = EngineConfig(window=16, stride=2, horizon=2, normalize="window-zscore")


def test_flow_predictions_match_reference_and_every_row_is_accounted_for() -> None:
    table = ticks()
    model = make_model("linear", 16, 2, "window-zscore")
    pool = BufferPool.for_tier("small")
    preds: list[tuple[str, pa.RecordBatch]] = []
    dead: list[tuple[str, DeadLetter]] = []
    stats: list[tuple[str, dict[str, Any]]] = []
    run_main(build(batches_of(table, 256), CFG, model, pool, preds, dead, stats))

    ref = reference_table(
        table, window=16, stride=2, normalize="window-zscore", model=plain_for(model, 2)
    )
    got = engine_by_symbol([b for _, b in preds])
    for sym, (ts, p) in ref.items():
        np.testing.assert_array_equal(got[sym][0], ts)
        np.testing.assert_allclose(got[sym][1], p, rtol=1e-9)
    # Positions point back into the source: (batch index, row within that batch).
    assert sorted(d.batch * 256 + (d.row or 0) for _, d in dead) == [17, 1200]
    ((key, rec),) = stats
    assert rec["ticks"] == table.num_rows
    assert rec["dead_letters"] == 2
    assert rec["predictions"] == sum(b.num_rows for _, b in preds)
    assert rec["schema"] == 1 and rec["worker"] == key == "0"
    del preds
    gc.collect()
    assert pool.stats().leased == 0


def test_sharded_flow_gives_the_same_predictions() -> None:
    table = ticks(symbols=5)
    model = make_model("mean", 16, 2, "window-zscore")
    results = []
    for shards in (1, 3):
        preds: list[tuple[str, pa.RecordBatch]] = []
        run_main(build(batches_of(table, 500), CFG, model, BufferPool(), preds, [], [], shards))
        results.append(engine_by_symbol([b for _, b in preds]))
    one, three = results
    assert one.keys() == three.keys()
    for s in one:
        np.testing.assert_array_equal(one[s][0], three[s][0])
        np.testing.assert_allclose(one[s][1], three[s][1], rtol=1e-12)


def test_split_shards_keeps_every_row_once() -> None:
    table = ticks(symbols=7)
    item = TickBatch(table.combine_chunks().to_batches()[0], "x", 0)
    parts = split_shards(item, 4)
    assert sum(b.batch.num_rows for _, b in parts) == table.num_rows
    for key, b in parts:
        syms = set(b.batch.column("symbol").to_pylist())
        assert all(str(hash_shard(s, 4)) == key for s in syms)


def hash_shard(symbol: str, shards: int) -> int:
    from tickpool.operators.symbols import stable_shard

    return stable_shard(symbol, shards)


def test_resume_from_recovery_snapshot_gives_the_same_predictions(tmp_path: Path) -> None:
    table = ticks(n=2400)
    model = make_model("linear", 16, 2, "window-zscore", seed=9)
    items: list[Any] = batches_of(table, 200)
    uninterrupted: list[tuple[str, pa.RecordBatch]] = []
    run_main(build(list(items), CFG, model, BufferPool(), uninterrupted, [], []))

    db = tmp_path / "recovery"
    db.mkdir()
    init_db_dir(db, 1)
    with_abort = [*items[:7], TestingSource.ABORT(), *items[7:]]
    first: list[tuple[str, pa.RecordBatch]] = []
    second: list[tuple[str, pa.RecordBatch]] = []
    rc = RecoveryConfig(str(db))
    flow1 = build(with_abort, CFG, model, BufferPool(), first, [], [])
    # TestingSource.ABORT stops this execution where it stands (as a crash would),
    # after the snapshots of the epochs before it; run_main returns quietly.
    run_main(flow1, epoch_interval=timedelta(0), recovery_config=rc)
    flow2 = build(with_abort, CFG, model, BufferPool(), second, [], [])
    run_main(flow2, epoch_interval=timedelta(0), recovery_config=rc)

    assert first and second, "the run must have been interrupted and resumed"
    whole = pa.Table.from_batches([b for _, b in uninterrupted])
    resumed_part = pa.Table.from_batches([b for _, b in second])
    # The resumed run starts where the snapshot was: it does not redo the first batches...
    assert resumed_part.num_rows < whole.num_rows
    # ...and together with the first run covers every prediction, each equal to the
    # uninterrupted run's (a resume without the per-symbol tails would miss windows).
    combined: dict[tuple[str, int], list[float]] = {}
    for t in [pa.Table.from_batches([b for _, b in first]), resumed_part]:
        for s, ts, y1, y2 in zip(
            t.column("symbol").to_pylist(),
            t.column("ts").cast(pa.int64()).to_pylist(),
            t.column("yhat_1").to_pylist(),
            t.column("yhat_2").to_pylist(),
            strict=True,
        ):
            combined[(s, ts)] = [y1, y2]
    expected = {
        (s, ts): [y1, y2]
        for s, ts, y1, y2 in zip(
            whole.column("symbol").to_pylist(),
            whole.column("ts").cast(pa.int64()).to_pylist(),
            whole.column("yhat_1").to_pylist(),
            whole.column("yhat_2").to_pylist(),
            strict=True,
        )
    }
    assert combined.keys() == expected.keys()
    for k, v in expected.items():
        np.testing.assert_allclose(combined[k], v, rtol=1e-12)
