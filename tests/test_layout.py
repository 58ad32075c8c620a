"""The fused kernel's two series layouts (operators/layout.py) give the same predictions.

Dense puts each symbol on a multiple of the kernel's block and lets the grid be the series;
packed puts the symbols back to back and reads one row per ``block`` windows of each. Which one
a batch takes, and at which block, is a cost estimate: the predictions must not depend on it.
"""

from __future__ import annotations

import itertools
import pickle

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_engine import assert_matches_reference
from tests.test_many_symbols import model_for
from tickpool.connectors.synthetic import generate_batches
from tickpool.operators import layout
from tickpool.operators.engine import EngineConfig, WindowPredictor
from tickpool.operators.fused import FusedKernel, StartRuns, fused_kernel
from tickpool.operators.items import TickBatch
from tickpool.operators.layout import (
    KernelSet,
    Layout,
    dense_layout,
    fill_packed,
    packed_layout,
)
from tickpool.operators.models import LinearModel, Model, WindowMean
from tickpool.pipeline.pool import BufferPool

ALWAYS_DENSE, ALWAYS_PACKED = 1e300, 0.0


@st.composite
def batches_of_symbols(
    draw: st.DrawFn, window: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(tails, tail_len, n_new, values, level) of 1-40 symbols at their own price levels, some
    still short of W - 1 values, each with 1-60 new values; some fall from about 1 to a flat
    1e-9, whose windows are constant only by the exact count of changes (the sums' rounding
    leaves a std of about 1e-8 there)."""
    n_sym = draw(st.integers(1, 40))
    seen = np.array(draw(st.lists(st.integers(0, 3 * window), min_size=n_sym, max_size=n_sym)))
    n_new = np.array(draw(st.lists(st.integers(1, 60), min_size=n_sym, max_size=n_sym)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    level = rng.choice([1.0, 100.0, 12_580.0], n_sym)  # neighbours at other price levels
    walk = level[:, None] + np.cumsum(rng.normal(0, 0.01, (n_sym, window + 60)), axis=1)
    flat = walk[:, 1::7]
    flat[:] = walk[:, ::7][:, : flat.shape[1]]  # some neighbours equal
    for i in np.flatnonzero(rng.random(n_sym) < 0.3):
        walk[i] -= level[i] - 1.0
        walk[i, rng.integers(0, walk.shape[1]) :] = 1e-9
    tail_len = np.minimum(seen, window - 1)
    tails = walk[:, : window - 1].copy()
    values = np.concatenate([walk[i, window - 1 : window - 1 + n] for i, n in enumerate(n_new)])
    return tails, tail_len, n_new, values, level


def run_layout(
    lay: Layout, tails: np.ndarray, tail_len: np.ndarray, values: np.ndarray, n_new: np.ndarray
) -> np.ndarray:
    series = np.full(lay.series_len, np.nan)
    lay.fill(series, tails, tail_len, values, n_new)
    out = np.empty((lay.kernel.horizon, lay.starts.total))
    lay.predict(series, out, np.full(lay.scratch_size(), np.nan))
    return out


def windows_of(
    window: int, stride: int, tail_len: np.ndarray, n_new: np.ndarray, phase: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each symbol's first window start (from its first tail value) and its window count.

    ``phase`` in [0, stride): where the symbol's stride pattern puts its first window, as the
    ticks it saw in earlier batches do in the engine.
    """
    length = tail_len + n_new
    count = np.where(length - phase >= window, (length - phase - window) // stride + 1, 0)
    return phase, count


@pytest.mark.parametrize(
    ("spec", "window", "normalize"),
    [
        ("linear", 3, "window-zscore"),
        ("linear", 16, "window-zscore"),  # band GEMMs for the sums
        ("linear", 90, "window-zscore"),  # prefix sums
        ("linear", 160, "window-zscore"),  # FFT rows
        ("linear", 40, "none"),
        ("mean", 20, "window-zscore"),
    ],
)
@settings(max_examples=25, deadline=None)
@given(data=st.data(), stride=st.integers(1, 3), block_pick=st.integers(0, 10**6))
def test_packed_rows_at_any_block_predict_what_dense_blocks_predict(
    spec: str, window: int, normalize: str, data: st.DataObject, stride: int, block_pick: int
) -> None:
    """Every block the planner may pick, and blocks far below W - 1, against the dense layout
    at the default block; both against the windows computed one by one in float64."""
    tails, tail_len, n_new, values, _ = data.draw(batches_of_symbols(window))
    model = model_for(spec, window, normalize)
    main = fused_kernel(model, window=window, normalize=normalize)
    assert main is not None
    ks = KernelSet(main, model)
    choices = [*ks._blocks.tolist(), 1, 2, 5, max(1, window // 3)]
    packed_kernel = ks.kernel(choices[block_pick % len(choices)])
    phase = np.array(
        data.draw(st.lists(st.integers(0, stride - 1), min_size=len(n_new), max_size=len(n_new))),
        dtype=np.intp,
    )
    first, count = windows_of(window, stride, tail_len, n_new, phase)
    dense = dense_layout(main, tail_len, n_new, first, count, stride)
    packed = packed_layout(packed_kernel, tail_len, n_new, first, count, stride)
    assert packed.packed and not dense.packed
    got_dense = run_layout(dense, tails, tail_len, values, n_new)
    got_packed = run_layout(packed, tails, tail_len, values, n_new)
    expected, level = plain_predictions(
        model, window, stride, normalize, tails, tail_len, values, n_new, first
    )
    # Within 1e-13 of each symbol's price level (rounding in D = x - c is about 1e-16 of it).
    assert (np.abs(got_packed - got_dense) <= 1e-13 * level).all()
    assert (np.abs(got_packed - expected) <= 1e-13 * level).all()


def plain_predictions(
    model: Model,
    window: int,
    stride: int,
    normalize: str,
    tails: np.ndarray,
    tail_len: np.ndarray,
    values: np.ndarray,
    n_new: np.ndarray,
    first: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Each window of each symbol, normalized and predicted one at a time in float64, and the
    price level of its symbol (its largest |value|)."""
    out: list[np.ndarray] = []
    levels: list[float] = []
    row = 0
    for i, n in enumerate(n_new.tolist()):
        x = np.concatenate([tails[i, : tail_len[i]], values[row : row + n]])
        row += n
        for start in range(int(first[i]), x.shape[0] - window + 1, stride):
            levels.append(float(np.abs(x).max()))
            win = x[start : start + window]
            mean, std = win.mean(), win.std()
            if normalize == "none":
                z, scale, loc = win, 1.0, 0.0
            elif std <= 1e-12 * abs(mean) or (win == win[0]).all():
                z, scale, loc = np.zeros(window), 0.0, mean
            else:
                z, scale, loc = (win - mean) / std, std, mean
            if isinstance(model, LinearModel):
                y = z @ model.weights + model.intercept
            else:
                y = np.full(model.horizon, z.mean())
            out.append(y * scale + loc)
    return np.array(out).T.reshape(model.horizon, -1), np.array(levels)


@settings(max_examples=100, deadline=None)
@given(data=st.data(), window=st.integers(1, 30))
def test_fill_packed_lays_the_symbols_back_to_back(data: st.DataObject, window: int) -> None:
    tails, tail_len, n_new, values, _ = data.draw(batches_of_symbols(window))
    lengths = tail_len + n_new
    bases = np.cumsum(lengths) - lengths
    pad = data.draw(st.integers(0, 50))
    series = np.full(int(lengths.sum()) + pad, np.nan)
    fill_packed(series, bases, tails, tail_len, values, n_new)
    row, expected = 0, []
    for i, n in enumerate(n_new.tolist()):
        expected += [*tails[i, : tail_len[i]], *values[row : row + n]]
        row += n
    assert series[: len(expected)].tolist() == expected
    assert (series[len(expected) :] == values[-1]).all()


def test_the_planner_packs_many_short_symbols_and_keeps_few_long_ones_dense() -> None:
    model = LinearModel(
        np.full((256, 1), 1 / 256), 0.0, window=256, horizon=1, normalize="window-zscore"
    )
    main = fused_kernel(model, window=256, normalize="window-zscore")
    assert main is not None and main.fft
    ks = KernelSet(main, model)
    many = np.full(2_048, 32)  # 65,536 rows of 2,048 symbols: 32 new values each
    lay = ks.plan(np.full(2_048, 255), many, np.zeros(2_048, np.intp), many, 1)
    assert lay.packed and lay.kernel.block < main.block
    # Its grid: one row per symbol, against 2,048 of 769 windows dense.
    assert lay.n_rows == 2_048 and lay.n_rows * lay.kernel.block < 2_048 * main.block / 4
    few = np.full(8, 8_192)
    lay = ks.plan(np.full(8, 255), few, np.zeros(8, np.intp), few, 1)
    assert not lay.packed and lay.kernel is main


def test_a_dense_layout_needs_blocks_of_at_least_w_minus_1() -> None:
    fk = fused_kernel(WindowMean(), window=40, normalize="window-zscore", block=16)
    assert fk is not None
    with pytest.raises(ValueError, match="block 16 < W - 1 = 39"):
        fk.predict(np.ones(200), StartRuns((0,), (3,), 1), 2, np.empty((1, 3)), np.empty(10_000))
    with pytest.raises(ValueError, match="expected at least 1 window per block"):
        fused_kernel(WindowMean(), window=4, normalize="window-zscore", block=0)


class PlanCounter:
    """Wraps `KernelSet.plan` to count which layouts the batches took."""

    def __init__(self) -> None:
        self.packed = self.dense = 0

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        plan = KernelSet.plan

        def counting(ks: KernelSet, *args: object, **kwargs: object) -> Layout:
            lay = plan(ks, *args, **kwargs)  # type: ignore[arg-type]
            self.packed += lay.packed
            self.dense += not lay.packed
            return lay

        monkeypatch.setattr(KernelSet, "plan", counting)


@pytest.mark.parametrize(
    ("kind", "window", "stride", "normalize"),
    [
        ("linear", 16, 1, "window-zscore"),
        ("linear", 100, 2, "window-zscore"),
        ("linear", 200, 1, "window-zscore"),  # FFT rows
        ("linear", 30, 1, "none"),
        ("mean", 70, 3, "window-zscore"),
    ],
)
def test_an_engine_forced_to_either_layout_predicts_the_reference(
    monkeypatch: pytest.MonkeyPatch, kind: str, window: int, stride: int, normalize: str
) -> None:
    """60-300 symbols at unequal rates, batches cut at random: every batch dense, then every
    batch packed (at the smallest block the planner offers). Both match the float64 reference,
    agree with each other, and leave the same state."""
    symbols = 300 if window < 100 else 60  # enough ticks per symbol to pass W
    table = pa.Table.from_batches(
        list(generate_batches(24_000, symbols, seed=7, batch_rows=24_000))
    )
    cuts = np.sort(np.random.default_rng(8).choice(24_000, 20, replace=False)).tolist()
    cfg = EngineConfig(window=window, stride=stride, horizon=2, normalize=normalize)  # type: ignore[arg-type]
    model = model_for(kind, window, normalize)
    tables, snaps = {}, {}
    for name, overhead in (("dense", ALWAYS_DENSE), ("packed", ALWAYS_PACKED)):
        counter = PlanCounter()
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(layout, "PACKED_OVERHEAD", overhead)
            mp.setattr(layout, "DENSE_MIN_ROWS", 10**9)
            counter.install(mp)
            wp = WindowPredictor(cfg, model, BufferPool())
            out = []
            for i, (a, b) in enumerate(itertools.pairwise([0, *cuts, 24_000])):
                batch = table.slice(a, b - a).combine_chunks().to_batches()[0]
                r = wp.process(TickBatch(batch, "t", i))
                if r.predictions is not None:
                    out.append(r.predictions)
        # Every batch with windows took the layout asked for (a batch of symbols all still
        # short of W values has nothing to lay out in rows, and stays dense).
        assert counter.packed + counter.dense == len(cuts) + 1
        assert (counter.packed if name == "packed" else counter.dense) >= len(out) >= 4
        assert_matches_reference(table, out, cfg, model)
        tables[name] = pa.Table.from_batches(out)
        snaps[name] = pickle.dumps(wp.snapshot())
    dense, packed = tables["dense"], tables["packed"]
    assert dense.num_rows > 3_000 // stride
    assert dense.column("symbol").equals(packed.column("symbol"))
    assert dense.column("ts").equals(packed.column("ts"))
    for col in ("yhat_1", "yhat_2"):
        np.testing.assert_allclose(
            packed.column(col).to_numpy(), dense.column(col).to_numpy(), rtol=1e-11, atol=0
        )
    assert snaps["dense"] == snaps["packed"]


def test_kernels_of_every_block_are_built_once() -> None:
    model = LinearModel(
        np.full((130, 1), 1 / 130), 0.0, window=130, horizon=1, normalize="window-zscore"
    )
    main = fused_kernel(model, window=130, normalize="window-zscore")
    assert main is not None
    ks = KernelSet(main, model)
    assert ks.kernel(main.block) is main
    small: FusedKernel = ks.kernel(17)
    assert small is ks.kernel(17) and small.block == 17 and small.nfft >= 17 + 129
