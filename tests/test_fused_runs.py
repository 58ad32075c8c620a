"""The fused kernel reads window starts given as runs (one per symbol) exactly as an index array."""

from __future__ import annotations

import numpy as np
import pytest

from tickpool.operators.fused import StartRuns, fused_kernel
from tickpool.operators.layout import block_layout
from tickpool.operators.models import LastValue, LinearModel, Model, WindowMean

CASES = [
    ("linear", "window-zscore", 16),
    ("linear", "window-zscore", 128),  # FFT path
    ("linear", "none", 16),
    ("mean", "window-zscore", 8),
    ("last", "window-zscore", 8),
]


def model_for(kind: str, window: int, horizon: int, normalize: str) -> Model:
    if kind == "mean":
        return WindowMean(horizon)
    if kind == "last":
        return LastValue(horizon)
    weights = np.random.default_rng(1).normal(0, 0.3, (window, horizon))
    norm = None if normalize == "none" else normalize
    return LinearModel(weights, 0.1, window=window, horizon=horizon, normalize=norm)


@pytest.mark.parametrize(("kind", "normalize", "window"), CASES)
@pytest.mark.parametrize("stride", [1, 3])
def test_start_runs_give_the_same_predictions_as_an_index_array(
    kind: str, normalize: str, window: int, stride: int
) -> None:
    horizon = 2
    fk = fused_kernel(
        model_for(kind, window, horizon, normalize), window=window, normalize=normalize
    )
    assert fk is not None
    rng = np.random.default_rng(3)
    lengths = np.array([window + 40, window - 1 + 5 * stride, 3 * window])  # three symbols
    bases, nb = block_layout(lengths, fk.block)
    series = np.empty((nb + 1) * fk.block)
    series[:] = 100.0
    for base, n in zip(bases.tolist(), lengths.tolist(), strict=True):
        series[base : base + n] = 100.0 + np.cumsum(rng.normal(0, 0.01, n))
    counts = tuple((int(n) - window) // stride + 1 for n in lengths)
    runs = StartRuns(tuple(int(b) for b in bases), counts, stride)
    index = runs.indices()
    total = runs.total
    assert index.shape == runs.shape == (total,)
    scratch = np.empty(fk.scratch_size(nb, total))
    by_index, by_runs = np.empty((horizon, total)), np.empty((horizon, total))
    fk.predict(series, index, nb, by_index, scratch)
    fk.predict(series, runs, nb, by_runs, scratch)
    if fk.fft:
        # With runs the FFT method also zeroes each row past its symbol's last window (the
        # next symbol's values only add rounding); an index array does not tell where a symbol
        # ends. The wanted windows are the same, so the two agree to rounding.
        np.testing.assert_allclose(by_runs, by_index, rtol=1e-13, atol=0)
    else:
        assert np.array_equal(by_index, by_runs)


def test_start_runs_outside_the_blocks_are_refused() -> None:
    fk = fused_kernel(WindowMean(), window=8, normalize="window-zscore")
    assert fk is not None
    nb = 2
    series = np.ones((nb + 1) * fk.block)
    out = np.empty((1, 4))
    with pytest.raises(ValueError, match="every start must lie in"):
        fk.predict(series, StartRuns((nb * fk.block - 2,), (4,), 1), nb, out, np.empty(10_000))
