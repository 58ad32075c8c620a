"""The window engine: same predictions as a plain float64 reference, whatever the batch cuts."""

from __future__ import annotations

import gc
import itertools
import pickle

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.common import REAL_DATA
from tests.reference import engine_by_symbol, plain_model, reference_table
from tickpool.operators.engine import EngineConfig, WindowPredictor
from tickpool.operators.items import TickBatch
from tickpool.operators.models import LastValue, LinearModel, Model, WindowMean
from tickpool.pipeline.pool import BufferPool

MODES = ["none", "zscore", "window-zscore", "minmax", "window-minmax", "robust"]
REAL = REAL_DATA


def make_model(spec: str, window: int, horizon: int, normalize: str, seed: int = 0) -> Model:
    if spec == "last":
        return LastValue(horizon)
    if spec == "mean":
        return WindowMean(horizon)
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.3, size=(window, horizon))
    b = rng.normal(0, 0.1, size=horizon)
    return LinearModel(w, b, window=window, horizon=horizon, normalize=normalize)


def plain_for(model: Model, horizon: int):  # type: ignore[no-untyped-def]
    if isinstance(model, LinearModel):
        return plain_model("linear", horizon, model.weights, model.intercept)
    return plain_model("last" if isinstance(model, LastValue) else "mean", horizon)


def run_engine(
    table: pa.Table,
    cuts: list[int],
    cfg: EngineConfig,
    model: Model,
    pool: BufferPool,
    *,
    fused: bool = True,
) -> list[pa.RecordBatch]:
    """The engine's prediction batches for ``table`` cut at ``cuts``."""
    wp = WindowPredictor(cfg, model, pool, fused=fused)
    out = []
    bounds = [0, *sorted(set(cuts)), table.num_rows]
    for i, (a, b) in enumerate(itertools.pairwise(bounds)):
        if b <= a:
            continue
        batch = table.slice(a, b - a).combine_chunks().to_batches()[0]
        r = wp.process(TickBatch(batch, "test", i))
        if r.predictions is not None:
            out.append(r.predictions)
    return out


def assert_matches_reference(
    table: pa.Table, batches: list[pa.RecordBatch], cfg: EngineConfig, model: Model
) -> None:
    ref = reference_table(
        table,
        window=cfg.window,
        stride=cfg.stride,
        normalize=cfg.normalize,
        model=plain_for(model, cfg.horizon),
    )
    got = engine_by_symbol(batches)
    for sym, (ts, preds) in ref.items():
        if preds.shape[0] == 0:
            assert sym not in got
            continue
        g_ts, g_preds = got[sym]
        np.testing.assert_array_equal(g_ts, ts)
        scale = max(1.0, float(np.max(np.abs(preds))))
        np.testing.assert_allclose(g_preds, preds, rtol=1e-9, atol=1e-9 * scale)
    assert set(got) <= set(ref)


@st.composite
def tick_tables(draw: st.DrawFn) -> pa.Table:
    n = draw(st.integers(1, 120))
    k = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    sym = rng.integers(0, k, size=n)
    level = draw(st.sampled_from([1e-3, 1.0, 100.0, 9700.0, 1e5]))
    steps = rng.choice([0.0, 0.0, 1.0, -1.0, 3.0], size=n) * level * 1e-4
    price = np.empty(n)
    for s in range(k):  # each symbol its own random walk, with exact flat runs
        idx = np.flatnonzero(sym == s)
        price[idx] = level * (1 + s) + np.cumsum(steps[idx])
    return pa.table(
        {
            "ts": pa.array(np.arange(n, dtype=np.int64) * 1000, pa.timestamp("ns", tz="UTC")),
            "symbol": pa.array([f"S{s}" for s in sym]).dictionary_encode(),
            "price": price,
        }
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    table=tick_tables(),
    window=st.integers(1, 12),
    stride=st.integers(1, 4),
    horizon=st.integers(1, 3),
    mode=st.sampled_from(MODES),
    spec=st.sampled_from(["last", "mean", "linear"]),
    data=st.data(),
)
def test_predictions_match_plain_reference_whatever_the_batch_cuts(
    table: pa.Table,
    window: int,
    stride: int,
    horizon: int,
    mode: str,
    spec: str,
    data: st.DataObject,
) -> None:
    cuts = data.draw(st.lists(st.integers(0, table.num_rows), max_size=12))
    if data.draw(st.booleans()):
        cuts = list(range(table.num_rows))  # one tick per batch
    cfg = EngineConfig(window=window, stride=stride, horizon=horizon, normalize=mode)  # type: ignore[arg-type]
    model = make_model(spec, window, horizon, mode)
    pool = BufferPool.for_tier("small")
    batches = run_engine(table, cuts, cfg, model, pool)
    assert_matches_reference(table, batches, cfg, model)
    del batches
    gc.collect()
    assert pool.stats().leased == 0


@pytest.mark.parametrize("mode", MODES)
def test_real_btcusdt_predictions_match_reference(mode: str) -> None:
    table = (
        pa.ipc.open_file(
            pa.memory_map(str(REAL / "tardis_binance_futures_btcusdt_trades_20200222.arrow"))
        )
        .read_all()
        .slice(0, 1500)
    )
    cfg = EngineConfig(window=64, stride=1, horizon=2, normalize=mode)  # type: ignore[arg-type]
    model = make_model("linear", 64, 2, mode, seed=3)
    pool = BufferPool.for_tier("small")
    batches = run_engine(table, [100, 101, 700, 1333], cfg, model, pool)
    assert_matches_reference(table, batches, cfg, model)


def test_value_column_is_read_without_a_copy_and_buffers_return() -> None:
    n = 5000
    batch = pa.record_batch(
        {
            "ts": pa.array(np.arange(n, dtype=np.int64), pa.timestamp("ns", tz="UTC")),
            "symbol": pa.array(["A", "B"] * (n // 2)).dictionary_encode(),
            "price": np.linspace(100, 101, n),
        }
    )
    pool = BufferPool.for_tier("small")
    cfg = EngineConfig(window=16, normalize="window-zscore")
    wp = WindowPredictor(cfg, WindowMean(), pool)
    r = wp.process(TickBatch(batch, "mem", 0))
    assert r.predictions is not None and r.predictions.num_rows == n - 2 * 15
    # The prediction columns are zero-copy views on pooled buffers: still leased.
    assert pool.stats().leased == 2
    yhat = r.predictions.column("yhat").to_numpy(zero_copy_only=True)
    assert yhat.base is not None
    del r, yhat
    gc.collect()
    assert pool.stats().leased == 0


def test_nan_rows_become_dead_letters_and_are_not_in_the_windows() -> None:
    price = np.array([1.0, 2.0, np.nan, 3.0, np.inf, 4.0])
    batch = pa.record_batch(
        {
            "ts": pa.array(np.arange(6, dtype=np.int64), pa.timestamp("ns", tz="UTC")),
            "symbol": ["A"] * 6,
            "price": price,
        }
    )
    wp = WindowPredictor(EngineConfig(window=2, normalize="none"), LastValue(), BufferPool())
    r = wp.process(TickBatch(batch, "f.arrow", 7, row_offset=100))
    assert [(d.row, d.reason) for d in r.dead_letters] == [
        (102, "price is NaN"),
        (104, "price is +inf"),
    ]
    assert all(d.source == "f.arrow" and d.batch == 7 for d in r.dead_letters)
    assert r.processed == 4 and r.dead_rows == 2 and r.rows == 6
    assert r.predictions is not None
    assert r.predictions.column("yhat").to_pylist() == [2.0, 3.0, 4.0]


def test_batch_with_a_wrong_column_type_is_dead_lettered_or_raises_by_policy() -> None:
    batch = pa.record_batch(
        {"ts": pa.array([1, 2], pa.int64()), "symbol": ["A", "A"], "price": ["1.0", "2.0"]}
    )
    wp = WindowPredictor(EngineConfig(window=2, normalize="none"), LastValue(), BufferPool())
    r = wp.process(TickBatch(batch, "bad.arrow", 0))
    assert r.dead_rows == 2 and r.processed == 0 and len(r.dead_letters) == 1
    assert "price" in r.dead_letters[0].reason and r.dead_letters[0].row is None
    strict = WindowPredictor(
        EngineConfig(window=2, normalize="none", bad_rows="error"), LastValue(), BufferPool()
    )
    with pytest.raises(ValueError, match="price"):
        strict.process(TickBatch(batch, "bad.arrow", 0))


@settings(max_examples=30, deadline=None)
@pytest.mark.parametrize("mode", ["zscore", "minmax"])
@given(table=tick_tables())
def test_snapshot_resume_continues_exactly(mode: str, table: pa.Table) -> None:
    cfg = EngineConfig(window=5, stride=2, normalize=mode)  # type: ignore[arg-type]
    model = make_model("linear", 5, 1, mode)
    pool = BufferPool()
    whole = run_engine(table, [], cfg, model, pool)
    half = table.num_rows // 2
    first = WindowPredictor(cfg, model, pool)
    out = []
    r = (
        first.process(TickBatch(table.slice(0, half).combine_chunks().to_batches()[0], "t", 0))
        if half
        else None
    )
    if r is not None and r.predictions is not None:
        out.append(r.predictions)
    snap = pickle.loads(pickle.dumps(first.snapshot()))
    second = WindowPredictor(cfg, model, pool, resume=snap)
    rest = table.slice(half).combine_chunks().to_batches()
    for i, b in enumerate(rest):
        r2 = second.process(TickBatch(b, "t", i + 1))
        if r2.predictions is not None:
            out.append(r2.predictions)
    a, b = engine_by_symbol(whole), engine_by_symbol(out)
    assert a.keys() == b.keys()
    for s in a:
        np.testing.assert_array_equal(a[s][0], b[s][0])
        np.testing.assert_allclose(a[s][1], b[s][1], rtol=1e-12)


def test_resume_with_other_settings_is_a_clear_error() -> None:
    wp = WindowPredictor(EngineConfig(window=5), WindowMean(), BufferPool())
    with pytest.raises(ValueError, match=r"window 5.*this run uses window 6"):
        WindowPredictor(EngineConfig(window=6), WindowMean(), BufferPool(), resume=wp.snapshot())


@pytest.mark.parametrize(
    ("mode", "stats", "what"),
    [
        ("zscore", (5, 2.0, 10.0), "running moments"),
        ("minmax", (5, 0.0, 4.0), "running range"),
    ],
)
def test_resume_from_running_statistics_of_another_length_is_a_clear_error(
    mode: str, stats: tuple[int, float, float], what: str
) -> None:
    """A recovery state whose running statistics count other ticks than the symbol saw is
    corrupt: refused, naming the symbol, rather than resumed with statistics that are off."""
    cfg = EngineConfig(window=3, normalize=mode)  # type: ignore[arg-type]
    batch = pa.record_batch(
        {
            "ts": pa.array(np.arange(5, dtype=np.int64), pa.timestamp("ns", tz="UTC")),
            "symbol": ["ETH"] * 5,
            "price": np.arange(5.0),
        }
    )
    wp = WindowPredictor(cfg, WindowMean(), BufferPool())
    wp.process(TickBatch(batch, "t", 0))
    snap = wp.snapshot()
    seen, tail, *running = snap["states"][0]
    k = 0 if mode == "zscore" else 1
    assert (seen, running[k], running[1 - k]) == (5, stats, None)
    running[k] = (6, *stats[1:])
    snap["states"][0] = (seen, tail, *running)
    with pytest.raises(ValueError, match=rf"'ETH' has 6 values in its {what} and 5 ticks seen"):
        WindowPredictor(cfg, WindowMean(), BufferPool(), resume=snap)


def test_prediction_symbol_column_keeps_unicode_and_empty_names() -> None:
    names = ["", "éé", "BTC/USDT"]
    codes = np.array([0, 1, 2, 1, 0, 2, 2, 1, 0], dtype=np.int32)
    batch = pa.record_batch(
        {
            "ts": pa.array(np.arange(9, dtype=np.int64), pa.timestamp("ns", tz="UTC")),
            "symbol": pa.DictionaryArray.from_arrays(pa.array(codes), pa.array(names)),
            "price": np.arange(9.0),
        }
    )
    wp = WindowPredictor(EngineConfig(window=2, normalize="none"), LastValue(), BufferPool())
    r = wp.process(TickBatch(batch, "names", 0))
    assert r.predictions is not None
    r.predictions.validate(full=True)
    got = list(
        zip(
            r.predictions.column("symbol").to_pylist(),
            r.predictions.column("yhat").to_pylist(),
            strict=True,
        )
    )
    assert got == [
        ("", 4.0),
        ("", 8.0),
        ("éé", 3.0),
        ("éé", 7.0),
        ("BTC/USDT", 5.0),
        ("BTC/USDT", 6.0),
    ]
