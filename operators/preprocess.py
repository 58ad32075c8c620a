"""Series preprocessing before modelling: outlier winsorizing and classical seasonal decomposition.

All functions work on one float64 series, in place or into caller-given buffers, with numpy
only: medians and quantiles come from ``partition`` on a scratch copy (no sort), the moving
average from cumulative sums taken relative to the series' mean (no raw-price sums).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from .normalize import lerp, quantile_position

__all__ = ["clip_mad", "clip_quantiles", "seasonal_decompose"]

FloatArray = npt.NDArray[np.float64]


def _scratch_for(x: FloatArray, scratch: FloatArray, who: str) -> FloatArray:
    if x.ndim != 1:
        raise ValueError(f"{who}: x must be 1-D, got shape {x.shape}")
    n = x.shape[0]
    if scratch.ndim != 1 or scratch.shape[0] < n:
        raise ValueError(
            f"{who}: scratch must be 1-D with at least len(x) = {n} elements, "
            f"got shape {scratch.shape}"
        )
    return scratch[:n]


def _check_no_nan(part: FloatArray, who: str) -> None:
    """After a partition that includes the last position, NaN (sorted last) would be there."""
    if math.isnan(part[-1]):
        raise ValueError(f"{who}: x holds NaN; drop or fill missing values before clipping")


def _median_partitioned(part: FloatArray) -> float:
    """np.median of ``part`` (modified: partitioned in place), the same rounding as numpy's."""
    n = part.shape[0]
    h = n // 2
    if n % 2:
        part.partition([h, n - 1])
        _check_no_nan(part, "median")
        return float(part[h])
    part.partition([h - 1, h, n - 1])
    _check_no_nan(part, "median")
    return (float(part[h - 1]) + float(part[h])) / 2.0


def _clip_count(x: FloatArray, lo: float, hi: float, buf: FloatArray) -> int:
    """Winsorize ``x`` to [lo, hi] in place; return how many values moved (``buf``: len(x))."""
    np.less(x, lo, out=buf)
    below = float(np.sum(buf))
    np.greater(x, hi, out=buf)
    above = float(np.sum(buf))
    np.clip(x, lo, hi, out=x)
    return int(below + above)


def clip_mad(
    x: FloatArray,
    k: float = 5.0,
    *,
    scratch: FloatArray,
    scale: float = 1.4826,
) -> int:
    """Winsorize ``x`` in place at ``median +- k * scale * MAD``; return how many were clipped.

    ``MAD = median(|x - median(x)|)``, medians exactly as ``np.median``; ``scale = 1.4826`` makes
    ``scale * MAD`` estimate a normal distribution's std, so ``k`` reads as "k sigmas". ``scratch``
    needs ``len(x)`` float64 elements (partitioned in place, no sort, nothing allocated).

    If MAD is 0 (more than half the values are equal: common in flat tick stretches), any band
    would collapse onto the median and erase every real move, so nothing is clipped and 0 is
    returned. NaN in ``x`` raises ValueError.

    >>> x = np.array([10.0, 10.5, 9.5, 10.0, 10.2, 85.0])
    >>> clip_mad(x, 3.0, scratch=np.empty(6)), x.round(4).tolist()
    (1, [10.0, 10.5, 9.5, 10.0, 10.2, 11.212])
    """
    part = _scratch_for(x, scratch, "clip_mad")
    if part.shape[0] == 0:
        return 0
    np.copyto(part, x)
    med = _median_partitioned(part)
    np.subtract(x, med, out=part)
    np.abs(part, out=part)
    mad = _median_partitioned(part)
    if mad == 0.0:
        return 0
    half = k * scale * mad
    return _clip_count(x, med - half, med + half, part)


def clip_quantiles(
    x: FloatArray,
    lower: float = 0.01,
    upper: float = 0.99,
    *,
    scratch: FloatArray,
) -> int:
    """Winsorize ``x`` in place at its ``lower`` and ``upper`` quantiles; return how many moved.

    Quantiles are ``np.quantile``'s default 'linear' ones, rounding for rounding, found by
    partitioning ``scratch`` (``len(x)`` float64 elements) at the four positions they need.
    NaN in ``x`` raises ValueError.

    >>> x = np.array([1.0, 2.0, 3.0, 4.0, 100.0])
    >>> clip_quantiles(x, 0.0, 0.75, scratch=np.empty(5)), x.tolist()
    (1, [1.0, 2.0, 3.0, 4.0, 4.0])
    """
    if not 0.0 <= lower <= upper <= 1.0:
        raise ValueError(f"clip_quantiles: need 0 <= lower <= upper <= 1, got {lower}, {upper}")
    part = _scratch_for(x, scratch, "clip_quantiles")
    n = part.shape[0]
    if n == 0:
        return 0
    np.copyto(part, x)
    lo_i, lo_j, lo_g = quantile_position(n, lower)
    hi_i, hi_j, hi_g = quantile_position(n, upper)
    part.partition(sorted({lo_i, lo_j, hi_i, hi_j, n - 1}))
    _check_no_nan(part, "clip_quantiles")
    lo = lerp(float(part[lo_i]), float(part[lo_j]), lo_g)
    hi = lerp(float(part[hi_i]), float(part[hi_j]), hi_g)
    return _clip_count(x, lo, hi, part)


def seasonal_decompose(
    x: FloatArray,
    period: int,
    *,
    trend_out: FloatArray,
    seasonal_out: FloatArray,
    resid_out: FloatArray,
) -> None:
    """Classical additive decomposition ``x = trend + seasonal + resid`` into the three outs.

    The same numbers as ``statsmodels.tsa.seasonal.seasonal_decompose(x, model="additive",
    period=period)``:

    - trend: centered moving average, weights ``ones(period) / period`` for an odd period and
      ``[0.5, 1, ..., 1, 0.5] / period`` for an even one; NaN for the first and last
      ``period // 2`` values, where the window does not fit;
    - seasonal: the mean of the detrended series (``x - trend``, NaN ignored) at each phase
      ``i % period``, shifted to mean 0 over the phases and repeated;
    - resid: ``x - trend - seasonal`` (NaN where the trend is).

    The moving average comes from cumulative sums of ``x - mean(x)``: O(n) whatever the period,
    and the shift keeps the digits raw-price sums would lose. The cumulative sums pass through
    ``resid_out``; nothing of size n is allocated. Needs ``len(x) >= 2 * period`` (ValueError
    otherwise) and finite ``x``; the outs must not alias ``x``.

    >>> x = np.array([1.0, 3.0, 2.0, 4.0, 3.0, 5.0, 4.0, 6.0])
    >>> t, s, r = np.empty(8), np.empty(8), np.empty(8)
    >>> seasonal_decompose(x, 2, trend_out=t, seasonal_out=s, resid_out=r)
    >>> t.tolist()
    [nan, 2.25, 2.75, 3.25, 3.75, 4.25, 4.75, nan]
    >>> s.tolist(), np.nan_to_num(r).tolist()
    ([-0.75, 0.75, -0.75, 0.75, -0.75, 0.75, -0.75, 0.75], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    """
    if isinstance(period, bool) or not isinstance(period, int | np.integer) or period < 1:
        raise ValueError(f"seasonal_decompose: period must be an integer >= 1, got {period!r}")
    p = int(period)
    if x.ndim != 1:
        raise ValueError(f"seasonal_decompose: x must be 1-D, got shape {x.shape}")
    n = x.shape[0]
    if n < 2 * p:
        raise ValueError(
            f"seasonal_decompose: x must hold 2 complete cycles, {2 * p} values for period {p}; "
            f"it has {n}"
        )
    for name, buf in (
        ("trend_out", trend_out),
        ("seasonal_out", seasonal_out),
        ("resid_out", resid_out),
    ):
        if buf.shape != (n,):
            raise ValueError(f"seasonal_decompose: {name} must have shape ({n},), got {buf.shape}")
    ref = float(np.mean(x))
    if not math.isfinite(ref):
        raise ValueError("seasonal_decompose: x holds NaN or inf; it needs finite values")

    h = p // 2
    cs = resid_out  # cs[k] = sum(x[:k+1] - ref)
    np.subtract(x, ref, out=cs)
    np.cumsum(cs, out=cs)
    mid = trend_out[h : n - h]
    # Sum of the p values x[i-h .. i-h+p-1] ending at i + h (odd p) or i + h - 1 (even p): both
    # start from cs differences; the window starting at index 0 has no predecessor to subtract.
    if p % 2:
        mid[0] = cs[2 * h]
        np.subtract(cs[2 * h + 1 :], cs[: n - 2 * h - 1], out=mid[1:])
    else:
        # Mean of the p-sums over [i-h, i+h-1] and [i-h+1, i+h]: the [0.5, 1, ..., 1, 0.5] filter.
        np.subtract(cs[2 * h :], cs[: n - 2 * h], out=mid)
        mid[0] += cs[2 * h - 1]
        np.add(mid[1:], cs[2 * h : n - 1], out=mid[1:])
        np.subtract(mid[1:], cs[: n - 2 * h - 1], out=mid[1:])
        np.multiply(mid, 0.5, out=mid)
    np.divide(mid, p, out=mid)
    np.add(mid, ref, out=mid)
    trend_out[:h] = np.nan
    trend_out[n - h :] = np.nan

    # Detrended series into resid_out (NaN at the ends), then per-phase means over its valid part.
    np.subtract(x, trend_out, out=resid_out)
    valid = resid_out[h : n - h]
    cycles, rest = divmod(valid.shape[0], p)
    sums = valid[: cycles * p].reshape(cycles, p).sum(axis=0)
    sums[:rest] += valid[cycles * p :]
    counts = np.full(p, float(cycles))
    counts[:rest] += 1.0
    averages = np.roll(sums / counts, h)  # valid[c] has phase (h + c) % p
    averages -= averages.mean()

    full, tail = divmod(n, p)
    seasonal_out[: full * p].reshape(full, p)[:] = averages
    seasonal_out[full * p :] = averages[:tail]
    np.subtract(resid_out, seasonal_out, out=resid_out)
