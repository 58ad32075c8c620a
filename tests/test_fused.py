"""The fused kernels give the plain reference's predictions without a window matrix."""

from __future__ import annotations

import gc
import pickle
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.common import REAL_DATA, price_walks
from tests.reference import engine_by_symbol, reference_table
from tests.test_engine import assert_matches_reference, make_model, plain_for, run_engine
from tickpool.operators.engine import EngineConfig, WindowPredictor
from tickpool.operators.fused import (
    FFT_MIN_WINDOW,
    SUMS_GEMM_MAX_WINDOW,
    FusedKernel,
    fused_kernel,
)
from tickpool.operators.items import TickBatch
from tickpool.operators.layout import block_layout
from tickpool.operators.models import Ensemble, LastValue, LinearModel, WindowMean
from tickpool.pipeline.pool import BufferPool

FUSED_CASES = [
    ("window-zscore", "linear"),
    ("window-zscore", "mean"),
    ("window-zscore", "last"),
    ("none", "linear"),
]
BTCUSDT = REAL_DATA / "tardis_binance_futures_btcusdt_trades_20200222.arrow"


@st.composite
def walk_tables(draw: st.DrawFn) -> pa.Table:
    """1-3 symbols, each a tick-like walk with exact flat runs, interleaved at random."""
    walks = [draw(price_walks(min_size=1, max_size=160)) for _ in range(draw(st.integers(1, 3)))]
    owner = np.concatenate([np.full(w.shape[0], k) for k, w in enumerate(walks)])
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    rng.shuffle(owner)
    price = np.empty(owner.shape[0])
    for k, w in enumerate(walks):
        price[owner == k] = w
    n = price.shape[0]
    return pa.table(
        {
            "ts": pa.array(np.arange(n, dtype=np.int64) * 1000, pa.timestamp("ns", tz="UTC")),
            "symbol": pa.array([f"S{k}" for k in owner]).dictionary_encode(),
            "price": price,
        }
    )


def fused_run(
    table: pa.Table, cuts: list[int], cfg: EngineConfig, spec: str, seed: int = 0
) -> tuple[list[pa.RecordBatch], Any, BufferPool]:
    model = make_model(spec, cfg.window, cfg.horizon, cfg.normalize, seed)
    assert WindowPredictor(cfg, model, BufferPool()).fused
    pool = BufferPool.for_tier("small")
    return run_engine(table, cuts, cfg, model, pool), model, pool


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    table=walk_tables(),
    # Both sides of each switch: window sums by band GEMM / by prefix sums, then GEMM / FFT.
    window=st.one_of(
        st.integers(1, SUMS_GEMM_MAX_WINDOW + 24),
        st.integers(FFT_MIN_WINDOW - 2, FFT_MIN_WINDOW + 20),
    ),
    stride=st.integers(1, 3),
    horizon=st.integers(1, 3),
    case=st.sampled_from(FUSED_CASES),
    data=st.data(),
)
def test_fused_predictions_match_plain_reference_whatever_the_batch_cuts(
    table: pa.Table,
    window: int,
    stride: int,
    horizon: int,
    case: tuple[str, str],
    data: st.DataObject,
) -> None:
    mode, spec = case
    cuts = data.draw(st.lists(st.integers(0, table.num_rows), max_size=12))
    if data.draw(st.booleans()):
        cuts = list(range(table.num_rows))  # one tick per batch
    cfg = EngineConfig(window=window, stride=stride, horizon=horizon, normalize=mode)  # type: ignore[arg-type]
    batches, model, pool = fused_run(table, cuts, cfg, spec)
    assert_matches_reference(table, batches, cfg, model)
    del batches
    gc.collect()
    assert pool.stats().leased == 0


# Window sums by band GEMM (16, 64) and by prefix sums (96); correlation by FFT (256).
@pytest.mark.parametrize("window", [16, 64, 96, 256])
@pytest.mark.parametrize("mode", ["window-zscore", "none"])
def test_real_btcusdt_fused_predictions_match_reference(window: int, mode: str) -> None:
    # BTCUSDT near 9,700 with a 64-tick std down to 0.0017: raw-price running sums fail here.
    table = pa.ipc.open_file(pa.memory_map(str(BTCUSDT))).read_all()
    cfg = EngineConfig(window=window, horizon=2, normalize=mode)  # type: ignore[arg-type]
    batches, model, _ = fused_run(table, [1, 2, 700, 4096, 4097, 9000], cfg, "linear", seed=7)
    assert_matches_reference(table, batches, cfg, model)


def test_linear_mean_last_take_the_fused_path_and_user_models_do_not() -> None:
    pool = BufferPool()

    def fused(model: Any, mode: str = "window-zscore") -> bool:
        cfg = EngineConfig(window=8, horizon=1, normalize=mode)  # type: ignore[arg-type]
        return WindowPredictor(cfg, model, pool).fused

    linear = make_model("linear", 8, 1, "window-zscore")
    assert fused(linear) and fused(WindowMean()) and fused(LastValue())
    assert fused(make_model("linear", 8, 1, "none"), "none")
    assert not fused(make_model("linear", 8, 1, "robust"), "robust")
    assert not fused(make_model("linear", 8, 1, "zscore"), "zscore")

    class UserModel:  # the protocol, not a built-in class
        window, horizon, normalize, needs_contiguous = 8, 1, "window-zscore", False

        def predict(self, windows: Any, out: Any) -> None:
            np.mean(windows, axis=1, out=out[:, 0])

    class Shifted(LinearModel):  # a subclass may change predict: general path
        def predict(self, windows: Any, out: Any) -> None:
            super().predict(windows, out)
            out += 1.0

    shifted = Shifted(np.ones(8) / 8, 0.0, window=8, horizon=1, normalize="window-zscore")
    assert not fused(UserModel())
    assert not fused(shifted)
    assert not fused(Ensemble([LastValue(), WindowMean()], scratch=pool))
    cfg = EngineConfig(window=8, normalize="window-zscore")
    assert not WindowPredictor(cfg, linear, pool, fused=False).fused


@pytest.mark.parametrize(
    ("window", "stride", "spec", "mode", "fused"),
    [
        (16, 4, "linear", "window-zscore", True),
        (16, 8, "linear", "window-zscore", False),
        (64, 4, "linear", "window-zscore", True),
        (64, 16, "linear", "window-zscore", False),
        (256, 16, "linear", "window-zscore", True),
        (256, 32, "linear", "window-zscore", False),
        (64, 4, "linear", "none", True),
        (64, 16, "linear", "none", False),
        (64, 64, "mean", "window-zscore", True),  # mean and last: fused at any stride
        (64, 64, "last", "window-zscore", True),
    ],
)
def test_large_strides_take_the_general_path_where_it_is_cheaper(
    window: int, stride: int, spec: str, mode: str, fused: bool
) -> None:
    # A linear kernel computes every start and keeps 1 in S; the general path only the n/S
    # windows (docs/optimizations.md section 15). Either way the predictions are the reference's.
    cfg = EngineConfig(window=window, stride=stride, horizon=2, normalize=mode)  # type: ignore[arg-type]
    model = make_model(spec, window, 2, mode, seed=3)
    assert WindowPredictor(cfg, model, BufferPool()).fused is fused
    rng = np.random.default_rng(window + stride)
    n = 3_000
    table = pa.table(
        {
            "ts": pa.array(np.arange(n, dtype=np.int64), pa.timestamp("ns", tz="UTC")),
            "symbol": pa.array([f"S{k}" for k in rng.integers(0, 3, n)]).dictionary_encode(),
            "price": 100.0 + np.cumsum(rng.normal(0.0, 0.05, n)),
        }
    )
    batches = run_engine(table, [700, 701, 2_000], cfg, model, BufferPool.for_tier("small"))
    assert_matches_reference(table, batches, cfg, model)


def test_fused_kernel_runs_on_every_batch_with_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    predict = FusedKernel.predict

    def counting(self: FusedKernel, *args: Any, **kwargs: Any) -> None:
        calls.append(args[1].shape[0])
        predict(self, *args, **kwargs)

    monkeypatch.setattr(FusedKernel, "predict", counting)
    n = 300
    table = pa.table(
        {
            "ts": pa.array(np.arange(n, dtype=np.int64), pa.timestamp("ns", tz="UTC")),
            "symbol": pa.array(["A", "B", "C"] * (n // 3)).dictionary_encode(),
            "price": 100.0 + np.cumsum(np.random.default_rng(0).normal(0, 0.01, n)),
        }
    )
    cfg = EngineConfig(window=16, normalize="window-zscore")
    batches = run_engine(
        table, [100, 200], cfg, make_model("linear", 16, 1, "window-zscore"), BufferPool()
    )
    assert calls == [b.num_rows for b in batches] and sum(calls) == n - 3 * 15


@pytest.mark.parametrize("case", FUSED_CASES)
def test_fused_and_general_snapshots_resume_each_other(case: tuple[str, str]) -> None:
    mode, spec = case
    rng = np.random.default_rng(5)
    n = 2000
    table = pa.table(
        {
            "ts": pa.array(np.arange(n, dtype=np.int64), pa.timestamp("ns", tz="UTC")),
            "symbol": pa.array(rng.choice(["A", "B", "C"], n)).dictionary_encode(),
            "price": 9700.0 + np.cumsum(rng.choice([0.0, 0.0, 0.5, -0.5], n)),
        }
    )
    cfg = EngineConfig(window=24, stride=2, horizon=2, normalize=mode)  # type: ignore[arg-type]
    model = make_model(spec, 24, 2, mode)
    pool = BufferPool()
    whole = run_engine(table, [], cfg, model, pool)
    batches = table.to_batches(max_chunksize=333)
    for first_fused in (True, False):
        first = WindowPredictor(cfg, model, pool, fused=first_fused)
        out = [first.process(TickBatch(b, "t", i)).predictions for i, b in enumerate(batches[:3])]
        snap = pickle.loads(pickle.dumps(first.snapshot()))
        second = WindowPredictor(cfg, model, pool, resume=snap, fused=not first_fused)
        out += [second.process(TickBatch(b, "t", i)).predictions for i, b in enumerate(batches[3:])]
        a, b = engine_by_symbol(whole), engine_by_symbol([p for p in out if p is not None])
        assert a.keys() == b.keys()
        for s in a:
            np.testing.assert_array_equal(a[s][0], b[s][0])
            np.testing.assert_allclose(a[s][1], b[s][1], rtol=1e-12)


def test_block_layout_starts_every_symbol_on_a_block() -> None:
    bases, nb = block_layout(np.array([5, 64, 1, 65], dtype=np.intp), 32)
    assert bases.tolist() == [0, 32, 96, 128] and nb == 7
    assert block_layout(np.array([], dtype=np.intp), 32)[1] == 0


def test_fused_kernel_keeps_the_models_weights() -> None:
    model = LinearModel(
        np.arange(12.0).reshape(6, 2), [1.0, 2.0], window=6, horizon=2, normalize="none"
    )
    k = fused_kernel(model, window=6, normalize="none")
    assert k is not None and k.kind == "linear" and not k.fft
    np.testing.assert_array_equal(k.wsum, [30.0, 36.0])
    np.testing.assert_array_equal(k.intercept, [1.0, 2.0])
    assert k.toeplitz is not None
    np.testing.assert_array_equal(k.toeplitz[0][:6, 0], np.arange(0.0, 12.0, 2.0))
    np.testing.assert_array_equal(k.toeplitz[0][1:7, 1], np.arange(0.0, 12.0, 2.0))
    assert fused_kernel(WindowMean(), window=6, normalize="none") is None


@pytest.mark.parametrize("extra", [-1, 0, 1])
@pytest.mark.parametrize("chunks", [0, 1, 3])
def test_serial_gemm_writes_every_row_of_the_product(chunks: int, extra: int) -> None:
    # The fused kernel's GEMM goes through _serial_gemm with d a column slice of its shifted
    # block matrix (not contiguous) and out a view of scratch: the full chunks in one stacked
    # matmul, the remainder apart. Every row count around the chunk size must give d @ t.
    from tickpool.operators.fused import _BLAS_SERIAL_MNK, _serial_gemm

    rng = np.random.default_rng([chunks, extra + 1])
    b, w = 128, 64
    k, n = b + w - 1, b
    step = _BLAS_SERIAL_MNK // (k * n)
    rows = max(0, chunks * step + extra)
    dz = rng.standard_normal((rows, b + w))
    d, t = dz[:, 1:], rng.standard_normal((k, n))
    scratch = np.full(rows * n + 5, np.nan)
    out = scratch[: rows * n].reshape(rows, n)
    _serial_gemm(d, t, out)
    np.testing.assert_allclose(out, d @ t, rtol=1e-12, atol=1e-12)
    assert np.isnan(scratch[rows * n :]).all()  # nothing written past out


@pytest.mark.parametrize("window", [24, 96, FFT_MIN_WINDOW])  # band sums, prefix sums, FFT
def test_many_symbols_with_dead_rows_match_reference(window: int) -> None:
    # 150 symbols at price levels from 1 to 50,000, a few busy and many rare (most batches hold
    # symbols that end no window yet), 1% NaN rows (dead letters, not in any window), random
    # cuts: the fused path lays every present symbol out in one series, side by side.
    rng = np.random.default_rng(window)
    n_sym, n = 150, 12_000
    rates = rng.pareto(1.0, n_sym) + 0.05
    owner = rng.choice(n_sym, size=n, p=rates / rates.sum())
    price = np.empty(n)
    for k, level in enumerate(np.geomspace(1.0, 50_000.0, n_sym)):
        mine = owner == k
        price[mine] = level + np.cumsum(rng.choice([-0.01, 0.0, 0.0, 0.01], int(mine.sum())))
    price[rng.random(n) < 0.01] = np.nan
    table = pa.table(
        {
            "ts": pa.array(np.arange(n, dtype=np.int64), pa.timestamp("ns", tz="UTC")),
            "symbol": pa.array([f"S{k:03d}" for k in owner]).dictionary_encode(),
            "price": price,
        }
    )
    cfg = EngineConfig(window=window, stride=2, horizon=2, normalize="window-zscore")
    cuts = sorted(rng.choice(n, 30, replace=False).tolist())
    batches, model, pool = fused_run(table, cuts, cfg, "linear", seed=3)
    assert sum(b.num_rows for b in batches) > 0
    clean = table.filter(pa.array(~np.isnan(price)))
    assert_matches_reference(clean, batches, cfg, model)
    # Tighter than the 1e-9 contract: neighbours at other price levels must not leak rounding
    # into a symbol's windows (the FFT rows read past their block: 4e-12 before it was fixed).
    ref = reference_table(
        clean, window=window, stride=2, normalize="window-zscore", model=plain_for(model, 2)
    )
    got = engine_by_symbol(batches)
    worst = max(
        float(np.max(np.abs(got[sym][1] - preds) / np.maximum(1.0, np.abs(preds))))
        for sym, (_, preds) in ref.items()
        if preds.shape[0]
    )
    assert worst < 1e-13, worst
    del batches
    gc.collect()
    assert pool.stats().leased == 0
