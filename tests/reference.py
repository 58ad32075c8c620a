"""Plain float64 reference of window prediction, computed on whole series at once.

Written the obvious way (per tick, per window, two-pass statistics, np.quantile) so
that the engine's vectorized, batch-by-batch results can be checked against it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pyarrow as pa

FloatArray = npt.NDArray[np.float64]
CONST_RTOL = 1e-12

PlainModel = Callable[[FloatArray], FloatArray]  # one window (W,) -> (H,)


def plain_model(
    spec: str, horizon: int, weights: FloatArray | None = None, intercept: FloatArray | None = None
) -> PlainModel:
    if spec == "last":
        return lambda w: np.full(horizon, w[-1])
    if spec == "mean":
        return lambda w: np.full(horizon, float(np.mean(w)))
    assert weights is not None and intercept is not None
    wts = weights.reshape(weights.shape[0], -1)
    return lambda w: np.array(
        [
            sum(float(a) * float(b) for a, b in zip(wts[:, j], w, strict=True)) + intercept[j]
            for j in range(horizon)
        ]
    )


def _zscore_stats(x: FloatArray) -> tuple[float, float]:
    loc = float(np.mean(x))
    scale = float(np.std(x))
    if scale <= CONST_RTOL * abs(loc):
        scale = 0.0
    return loc, scale


def _norm(x: FloatArray, loc: float, scale: float) -> FloatArray:
    return (x - loc) / scale if scale > 0 else np.zeros_like(x)


def reference_symbol(
    x: FloatArray, *, window: int, stride: int, normalize: str, model: PlainModel
) -> tuple[list[int], FloatArray]:
    """(tick numbers that end a window, predictions (m, H)) for one symbol's series."""
    n = x.shape[0]
    y = x.astype(np.float64).copy()
    loc_t = np.zeros(n)
    scale_t = np.zeros(n)
    if normalize == "zscore":
        for i in range(n):
            loc_t[i], scale_t[i] = _zscore_stats(x[: i + 1])
            y[i] = _norm(x[i : i + 1], loc_t[i], scale_t[i])[0]
    elif normalize == "minmax":
        for i in range(n):
            lo, hi = float(np.min(x[: i + 1])), float(np.max(x[: i + 1]))
            loc_t[i], scale_t[i] = lo, hi - lo
            y[i] = _norm(x[i : i + 1], lo, hi - lo)[0]
    ends = list(range(window - 1, n, stride))
    preds = []
    for q in ends:
        win = y[q - window + 1 : q + 1]
        if normalize == "window-zscore":
            loc, scale = _zscore_stats(win)
        elif normalize == "window-minmax":
            loc, scale = float(np.min(win)), float(np.max(win) - np.min(win))
        elif normalize == "robust":
            loc = float(np.quantile(win, 0.5))
            scale = float(np.quantile(win, 0.75) - np.quantile(win, 0.25))
        elif normalize in ("zscore", "minmax"):
            loc, scale = float(loc_t[q]), float(scale_t[q])
        else:
            loc, scale = 0.0, 1.0
        z = win if normalize in ("none", "zscore", "minmax") else _norm(win, loc, scale)
        p = model(z)
        preds.append(p * scale + loc if normalize != "none" else p)
    h = preds[0].shape[0] if preds else 1
    return ends, np.array(preds, dtype=np.float64).reshape(len(ends), h)


def reference_table(
    table: pa.Table,
    *,
    window: int,
    stride: int,
    normalize: str,
    model: PlainModel,
    value: str = "price",
) -> dict[str, tuple[FloatArray, FloatArray]]:
    """Per symbol: (ts of each window's last tick, predictions (m, H)), finite rows only."""
    symbols = table.column("symbol").cast(pa.string()).to_pylist()
    ts = table.column("ts").cast(pa.int64()).to_numpy()
    vals = table.column(value).cast(pa.float64()).to_numpy(zero_copy_only=False)
    good = np.isfinite(vals)
    out: dict[str, tuple[FloatArray, FloatArray]] = {}
    for s in dict.fromkeys(symbols):
        idx = np.array([i for i, v in enumerate(symbols) if v == s and good[i]], dtype=np.intp)
        ends, preds = reference_symbol(
            vals[idx], window=window, stride=stride, normalize=normalize, model=model
        )
        out[s] = (ts[idx[ends]] if ends else np.empty(0, np.int64), preds)
    return out


def engine_by_symbol(batches: list[pa.RecordBatch]) -> dict[str, tuple[FloatArray, FloatArray]]:
    """Prediction batches regrouped per symbol, in output order: (ts, yhat (m, H))."""
    if not batches:
        return {}
    t = pa.Table.from_batches(batches)
    syms = t.column("symbol").to_pylist()
    ts = t.column("ts").cast(pa.int64()).to_numpy()
    ycols = [c for c in t.column_names if c.startswith("yhat")]
    y = np.column_stack([t.column(c).to_numpy() for c in ycols])
    out: dict[str, tuple[FloatArray, FloatArray]] = {}
    for s in dict.fromkeys(syms):
        idx = np.array([i for i, v in enumerate(syms) if v == s], dtype=np.intp)
        out[s] = (ts[idx], y[idx])
    return out
