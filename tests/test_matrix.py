"""The general path, batched: any model gets every symbol's windows in chunks of one matrix.

The predictions must be the plain float64 reference's whatever the batch cuts and however the
windows fall into chunks (inside one symbol, or across several), in every mode (running ones
included); a model must be called once per chunk, not once per symbol; a failing model must
leave the state as it was and every pooled buffer returned.
"""

from __future__ import annotations

import gc
from unittest import mock

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_engine import (
    MODES,
    assert_matches_reference,
    make_model,
    run_engine,
    tick_tables,
)
from tickpool.operators import matrix
from tickpool.operators.engine import EngineConfig, WindowPredictor
from tickpool.operators.items import TickBatch
from tickpool.operators.matrix import WindowMatrix
from tickpool.operators.models import WindowMean
from tickpool.pipeline.pool import BufferPool


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    table=tick_tables(),
    window=st.integers(1, 12),
    stride=st.integers(1, 4),
    horizon=st.integers(1, 3),
    mode=st.sampled_from(MODES),
    spec=st.sampled_from(["last", "mean", "linear", "user"]),
    chunk_values=st.integers(1, 60),
    data=st.data(),
)
def test_chunked_windows_match_the_plain_reference_whatever_the_cuts(
    table: pa.Table,
    window: int,
    stride: int,
    horizon: int,
    mode: str,
    spec: str,
    chunk_values: int,
    data: st.DataObject,
) -> None:
    cuts = data.draw(st.lists(st.integers(0, table.num_rows), max_size=12))
    cfg = EngineConfig(window=window, stride=stride, horizon=horizon, normalize=mode)  # type: ignore[arg-type]
    model = ContiguousMean(horizon) if spec == "user" else make_model(spec, window, horizon, mode)
    pool = BufferPool.for_tier("small")
    # Chunks of a few windows: mostly a symbol's own, and in about a third of the examples
    # also chunks across symbols (gathered).
    with mock.patch.object(matrix, "CHUNK_VALUES", chunk_values):
        batches = run_engine(table, cuts, cfg, model, pool, fused=False)  # the window matrix
    assert_matches_reference(table, batches, cfg, model)
    del batches
    gc.collect()
    assert pool.stats().leased == 0


class ContiguousMean:
    """A user's model that wants rows of its own (the window mean: the reference's "mean")."""

    window = None
    normalize = None
    needs_contiguous = True

    def __init__(self, horizon: int = 1) -> None:
        self.horizon = horizon

    def predict(self, windows: np.ndarray, out: np.ndarray) -> None:
        assert windows.flags.c_contiguous
        WindowMean(self.horizon).predict(windows, out)


class CountingMean:
    """A user's model (the window mean), counting its calls and the rows of each."""

    horizon = 1
    window = None
    normalize = None
    needs_contiguous = False

    def __init__(self) -> None:
        self.calls: list[int] = []

    def predict(self, windows: np.ndarray, out: np.ndarray) -> None:
        self.calls.append(windows.shape[0])
        WindowMean().predict(windows, out)


def many_symbols_batch(symbols: int, per_symbol: int, seed: int = 0) -> pa.RecordBatch:
    rng = np.random.default_rng(seed)
    n = symbols * per_symbol
    codes = np.tile(np.arange(symbols, dtype=np.int32), per_symbol)
    return pa.record_batch(
        {
            "ts": pa.array(np.arange(n, dtype=np.int64), pa.timestamp("ns", tz="UTC")),
            "symbol": pa.DictionaryArray.from_arrays(
                pa.array(codes), pa.array([f"S{i:04d}" for i in range(symbols)])
            ),
            "price": 100.0 + rng.normal(0, 1, n).cumsum(),
        }
    )


@pytest.mark.parametrize("mode", ["window-minmax", "robust", "window-zscore"])
def test_a_model_is_called_once_per_chunk_not_once_per_symbol(mode: str) -> None:
    model = CountingMean()
    cfg = EngineConfig(window=8, normalize=mode)  # type: ignore[arg-type]
    wp = WindowPredictor(cfg, model, BufferPool.for_tier("medium"))
    batch = many_symbols_batch(symbols=500, per_symbol=12)
    result = wp.process(TickBatch(batch, "test", 0))
    assert result.predictions is not None
    windows = 500 * (12 - 8 + 1)
    assert result.predictions.num_rows == windows
    assert model.calls == [windows]  # one call for 500 symbols (it was one per symbol)
    with mock.patch.object(matrix, "CHUNK_VALUES", 8 * 1000):
        model.calls.clear()
        wp.process(TickBatch(many_symbols_batch(500, 3, seed=1), "test", 1))
        assert model.calls == [1000, 500]  # 1,500 windows, at most 1,000 per call


def predict_symbols(pieces: list[np.ndarray], w: int, chunk_windows: int) -> np.ndarray:
    """`MatrixLayout.predict` (robust, window mean) on symbols with these values, no tails."""
    n_sym = len(pieces)
    tail_len = np.zeros(n_sym, dtype=np.intp)
    n_new = np.array([p.shape[0] for p in pieces], dtype=np.intp)
    count = n_new - (w - 1)
    layout = WindowMatrix(WindowMean(), "robust", window=w, copy_rows=True).plan(
        tail_len, n_new, np.zeros(n_sym, dtype=np.intp), count, 1
    )
    series = np.zeros(layout.series_len)
    layout.fill(series, np.zeros((n_sym, w - 1)), tail_len, np.concatenate(pieces), n_new)
    out = np.zeros((1, int(count.sum())))
    with mock.patch.object(matrix, "CHUNK_VALUES", chunk_windows * w):
        layout.predict(series, out, np.zeros(layout.scratch_size()))
    return out[0]


def test_chunks_of_one_symbol_and_chunks_across_symbols_give_the_same_values() -> None:
    # The same 57 windows as one symbol (chunks of 7 of its own: strided slices of the series),
    # and as 19 symbols of 3 windows each (chunks of 7 shared by three symbols: gathers).
    rng = np.random.default_rng(3)
    w, n = 5, 61
    values = 50.0 + rng.normal(0, 1, n).cumsum()
    one = predict_symbols([values], w, chunk_windows=7)
    pieces = [values[i : i + w + 2] for i in range(0, n - w + 1, 3)]
    many = predict_symbols(pieces, w, chunk_windows=7)
    assert one.shape == many.shape == (n - w + 1,)
    np.testing.assert_array_equal(many, one)
    # Robust scaling, the window mean, then back to units: the plain window mean, to rounding.
    plain = [values[i : i + w].mean() for i in range(n - w + 1)]
    np.testing.assert_allclose(one, plain, rtol=1e-12)


class FailingMean:
    """The window mean, until told to fail."""

    horizon = 1
    window = None
    normalize = None
    needs_contiguous = False
    fail = False

    def predict(self, windows: np.ndarray, out: np.ndarray) -> None:
        if self.fail:
            raise RuntimeError("model failed")
        WindowMean().predict(windows, out)


@pytest.mark.parametrize("mode", MODES)
def test_a_failing_model_leaves_the_state_and_the_pool_as_they_were(mode: str) -> None:
    model = FailingMean()
    pool = BufferPool.for_tier("medium")
    cfg = EngineConfig(window=4, stride=2, normalize=mode)  # type: ignore[arg-type]
    wp = WindowPredictor(cfg, model, pool)
    wp.process(TickBatch(many_symbols_batch(50, 6), "test", 0))
    before = wp.snapshot()
    model.fail = True
    with pytest.raises(RuntimeError, match="model failed"):
        wp.process(TickBatch(many_symbols_batch(50, 6, seed=1), "test", 1))
    gc.collect()
    assert pool.stats().leased == 0
    after = wp.snapshot()
    assert after["states"] == before["states"]  # tails, counts, running statistics
    # And the stream goes on from there as if the failed batch had not come.
    model.fail = False
    again = wp.process(TickBatch(many_symbols_batch(50, 6, seed=1), "test", 1))
    fresh = WindowPredictor(cfg, FailingMean(), pool)
    fresh.process(TickBatch(many_symbols_batch(50, 6), "test", 0))
    expected = fresh.process(TickBatch(many_symbols_batch(50, 6, seed=1), "test", 1))
    assert again.predictions is not None and expected.predictions is not None
    assert again.predictions.equals(expected.predictions)


class StridesSeen:
    """The window mean, noting the strides of the windows it is given."""

    horizon = 1
    window = None
    normalize = None
    needs_contiguous = False

    def __init__(self) -> None:
        self.strides: list[tuple[int, ...]] = []

    def predict(self, windows: np.ndarray, out: np.ndarray) -> None:
        self.strides.append(windows.strides)
        WindowMean().predict(windows, out)


@pytest.mark.parametrize(
    ("mode", "stride", "chunk"), [("none", 1, 97), ("none", 3, 81), ("zscore", 2, 81)]
)
def test_a_model_that_takes_views_reads_one_symbols_windows_in_place(
    mode: str, stride: int, chunk: int
) -> None:
    # Modes that change no row: each symbol's windows (485 / 162 / 243 of them, in chunks of its
    # own) reach the model as overlapping rows of the series (strides (8 * S, 8)), not copied
    # into a matrix (strides (8 * W, 8)).
    model = StridesSeen()
    cfg = EngineConfig(window=16, stride=stride, normalize=mode)  # type: ignore[arg-type]
    wp = WindowPredictor(cfg, model, BufferPool.for_tier("medium"))
    assert not wp.fused
    with mock.patch.object(matrix, "CHUNK_VALUES", chunk * 16):
        wp.process(TickBatch(many_symbols_batch(4, 500), "test", 0))
    assert len(model.strides) == 4 * ((499 - 15) // stride + 1) // chunk
    assert set(model.strides) == {(8 * stride, 8)}
