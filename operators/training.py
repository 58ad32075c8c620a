"""Fitting the linear window model: training windows built exactly as the engine builds them.

Windows and targets are normalized with the same kernels the stream runs
(:mod:`tickpool.operators.normalize`), so a model fitted here sees at prediction
time precisely the inputs it was fitted on.  Ridge normal equations are
accumulated over chunks of windows, so fitting a long series never materializes
an (m, W) matrix of the whole file.  The train/validation split is per symbol in
time order, made of zero-copy slices of each symbol's series.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tickpool.operators.models import LinearModel
from tickpool.operators.normalize import (
    NormalizeMode,
    RunningMoments,
    RunningRange,
    denormalize,
    parse_mode,
    running_minmax,
    running_zscore,
    window_minmax,
    window_robust,
    window_zscore,
)

__all__ = ["FitReport", "fit_linear", "training_chunks"]

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class FitReport:
    """How a fit went: sizes and validation errors in the value's units (RMSE, all steps)."""

    symbols: int
    train_windows: int
    val_windows: int
    rmse_linear: float
    rmse_naive: float
    mae_linear: float
    mae_naive: float

    @property
    def improvement(self) -> float:
        """1 - rmse_linear / rmse_naive: above 0 means the model beats the last value."""
        return 1.0 - self.rmse_linear / self.rmse_naive if self.rmse_naive > 0 else 0.0


def training_chunks(
    x: FloatArray,
    *,
    window: int,
    horizon: int,
    normalize: NormalizeMode,
    stride: int = 1,
    chunk: int = 16_384,
) -> Iterator[tuple[FloatArray, FloatArray, FloatArray, FloatArray, FloatArray]]:
    """Normalized windows and targets of one symbol's series, a chunk at a time.

    Yields ``(X, Y, loc, scale, last)``: ``X`` (m, W) normalized windows, ``Y`` (m, H)
    the next H values normalized with each window's loc/scale, the loc/scale that map
    model outputs back to units, and each window's last raw value (the naive
    forecast).  Windows end at ticks ``W-1, W-1+S, ...`` that have H ticks after them.
    """
    mode = parse_mode(normalize)
    n = x.shape[0]
    y = x
    loc_t = scale_t = None
    if mode in ("zscore", "minmax"):
        y = np.empty(n)
        loc_t, scale_t = np.empty(n), np.empty(n)
        if mode == "zscore":
            running_zscore(x, RunningMoments(), y, loc_t, scale_t)
        else:
            running_minmax(x, RunningRange(), y, loc_t, scale_t)
    ends = np.arange(window - 1, n - horizon, stride, dtype=np.intp)
    view = np.lib.stride_tricks.sliding_window_view(y, window)
    steps = np.arange(1, horizon + 1, dtype=np.intp)
    for a in range(0, ends.shape[0], chunk):
        e = ends[a : a + chunk]
        m = e.shape[0]
        xw = np.ascontiguousarray(view[e - (window - 1)])
        target = x[e[:, None] + steps[None, :]]
        loc, scale = np.zeros(m), np.ones(m)
        if mode == "window-zscore":
            window_zscore(xw, loc, scale)
        elif mode == "window-minmax":
            window_minmax(xw, loc, scale)
        elif mode == "robust":
            window_robust(xw, loc, scale, np.empty_like(xw))
        elif loc_t is not None and scale_t is not None:
            loc, scale = loc_t[e], scale_t[e]
        if mode != "none":
            safe = np.where(scale > 0, scale, 1.0)
            target = np.where(scale[:, None] > 0, (target - loc[:, None]) / safe[:, None], 0.0)
        yield xw, target, loc, scale, x[e]


def _series_split(
    series: Mapping[str, FloatArray], val_fraction: float, window: int
) -> Iterator[tuple[FloatArray, FloatArray]]:
    for x in series.values():
        cut = int(x.shape[0] * (1.0 - val_fraction))
        # Validation windows may look back into the training ticks, never forward.
        yield x[:cut], x[max(cut - (window - 1), 0) :]


def fit_linear(
    series: Mapping[str, FloatArray],
    *,
    window: int,
    horizon: int = 1,
    normalize: NormalizeMode = "window-zscore",
    stride: int = 1,
    alpha: float = 1e-3,
    val_fraction: float = 0.2,
) -> tuple[LinearModel, FitReport]:
    """Fit a ridge linear model on each symbol's first ``1 - val_fraction`` of ticks.

    Args:
        series: each symbol's values in arrival order (finite).
        window, horizon, normalize: as the run that will use the model.
        stride: take every ``stride``-th window for training (for long files).
        alpha: ridge penalty per training window.
        val_fraction: the last part of each symbol's ticks, held out.

    Windows whose scale is 0 (flat) are left out of training: any weights predict
    them exactly (the back-mapping returns the flat level).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1); got {val_fraction}")
    w1 = window + 1
    xtx = np.zeros((w1, w1))  # normal equations with the intercept as the last column
    xty = np.zeros((w1, horizon))
    train = 0
    for tr, _ in _series_split(series, val_fraction, window):
        for xw, target, _, scale, _ in training_chunks(
            tr, window=window, horizon=horizon, normalize=normalize, stride=stride
        ):
            ok = scale > 0 if normalize != "none" else np.ones(scale.shape[0], dtype=bool)
            xa = np.hstack([xw[ok], np.ones((int(ok.sum()), 1))])
            xtx += xa.T @ xa
            xty += xa.T @ target[ok]
            train += int(ok.sum())
    if train < window + 1:
        raise ValueError(
            f"only {train} training windows of {window} ticks (horizon {horizon}); need at "
            f"least {window + 1}: use a longer file, a smaller window or a smaller val_fraction"
        )
    penalty = alpha * train * np.eye(w1)
    penalty[-1, -1] = 0.0  # the intercept is not penalized
    sol = np.linalg.solve(xtx + penalty, xty)
    model = LinearModel(sol[:-1], sol[-1], window=window, horizon=horizon, normalize=normalize)

    sq_lin = sq_naive = abs_lin = abs_naive = 0.0
    count = 0
    for _, va in _series_split(series, val_fraction, window):
        for xw, target, loc, scale, last in training_chunks(
            va, window=window, horizon=horizon, normalize=normalize
        ):
            pred = np.empty((xw.shape[0], horizon))
            model.predict(xw, pred)
            actual = target.copy()
            if normalize != "none":
                denormalize(pred, loc, scale)
                denormalize(actual, loc, scale)
                # Flat windows: the target normalizes to 0, so take the raw next values.
                flat = scale <= 0
                if flat.any():
                    actual[flat] = np.nan
            err = pred - actual
            naive = last[:, None] - actual
            good = np.isfinite(err)
            sq_lin += float(np.sum(err[good] ** 2))
            sq_naive += float(np.sum(naive[good] ** 2))
            abs_lin += float(np.sum(np.abs(err[good])))
            abs_naive += float(np.sum(np.abs(naive[good])))
            count += int(good.sum())
    denom = max(count, 1)
    report = FitReport(
        symbols=len(series),
        train_windows=train,
        val_windows=count // horizon,
        rmse_linear=(sq_lin / denom) ** 0.5,
        rmse_naive=(sq_naive / denom) ** 0.5,
        mae_linear=abs_lin / denom,
        mae_naive=abs_naive / denom,
    )
    return model, report
