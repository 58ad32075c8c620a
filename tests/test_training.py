"""Fitting the linear model: it learns what is there, and its inputs are the engine's inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from tickpool.operators.engine import EngineConfig, WindowPredictor
from tickpool.operators.items import TickBatch
from tickpool.operators.models import resolve_model
from tickpool.operators.training import fit_linear, training_chunks
from tickpool.pipeline.pool import BufferPool

A = 2 * np.cos(0.3)
C = 10 * (2 - A)


def oscillator(n: int) -> np.ndarray:
    """x_t = A x_{t-1} - x_{t-2} + C: an undamped sine around 10, exactly linear."""
    x = np.empty(n)
    x[:2] = [10.0, 11.0]
    for t in range(2, n):
        x[t] = A * x[t - 1] - x[t - 2] + C
    return x


def test_fit_recovers_a_noiseless_linear_process_in_raw_units() -> None:
    model, report = fit_linear({"A": oscillator(3000)}, window=2, normalize="none", alpha=0.0)
    np.testing.assert_allclose(model.weights[:, 0], [-1.0, A], atol=1e-6)
    np.testing.assert_allclose(model.intercept, [C], atol=1e-6)
    assert report.rmse_linear < 1e-6 < 0.1 < report.rmse_naive


@pytest.mark.parametrize("mode", ["window-zscore", "zscore", "minmax", "window-minmax", "robust"])
def test_training_targets_map_back_to_the_next_values(mode: str) -> None:
    x = 100 + np.cumsum(np.random.default_rng(1).normal(0, 0.1, 500))
    ((xw, target, loc, scale, last),) = training_chunks(
        x,
        window=8,
        horizon=3,
        normalize=mode,  # type: ignore[arg-type]
    )
    ends = np.arange(7, 500 - 3)
    np.testing.assert_array_equal(last, x[ends])
    assert xw.shape == (ends.size, 8) and xw.flags.c_contiguous
    assert np.all(scale > 0)
    back = target * scale[:, None] + loc[:, None]
    np.testing.assert_allclose(back, x[ends[:, None] + np.arange(1, 4)], rtol=1e-12)


def test_fitted_model_file_runs_in_the_engine(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    x = 50 + np.cumsum(rng.normal(0, 0.05, 4000))
    model, report = fit_linear({"A": x}, window=16, horizon=2, normalize="window-zscore")
    assert report.train_windows > 3000 and report.val_windows > 700
    path = tmp_path / "model.npz"
    model.save(path)
    loaded = resolve_model(str(path), window=16, horizon=2, normalize="window-zscore")
    batch = pa.record_batch(
        {"ts": pa.array(np.arange(4000), pa.int64()), "symbol": ["A"] * 4000, "price": x}
    )
    wp = WindowPredictor(EngineConfig(window=16, horizon=2), loaded, BufferPool())
    preds = wp.process(TickBatch(batch, "m", 0)).predictions
    assert preds is not None and preds.num_rows == 4000 - 15
    with pytest.raises(ValueError, match="window 16"):
        resolve_model(str(path), window=32, horizon=2, normalize="window-zscore")


def test_too_little_data_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="training windows"):
        fit_linear({"A": np.arange(10.0)}, window=8)
