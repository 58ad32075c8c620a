"""Sliding-window geometry: which ticks end a window, and strided views of the windows.

A symbol's windows end at its ticks number ``W-1, W-1+S, W-1+2S, ...`` (0-based, in
arrival order), whatever the batch cuts.  The engine keeps, per symbol, the last
``W-1`` values of the previous batches (the *tail*) and lays them in front of the
new values in one pooled *series* buffer; every window of this batch is then a
row of a strided view of that buffer, no copy.

>>> g = window_geometry(seen=0, tail_len=0, n_new=10, window=4, stride=3)
>>> g.count, g.first_end_pos, g.first_tick
(3, 3, 3)
>>> series = np.arange(10.0)
>>> windows_view(series, g, window=4, stride=3).tolist()
[[0.0, 1.0, 2.0, 3.0], [3.0, 4.0, 5.0, 6.0], [6.0, 7.0, 8.0, 9.0]]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["WindowGeometry", "window_geometries", "window_geometry", "windows_view"]


@dataclass(frozen=True, slots=True)
class WindowGeometry:
    """Where this batch's windows of one symbol lie in its series buffer.

    Attributes:
        count: number of windows ending in this batch.
        first_end_pos: position (in the series buffer ``tail + new``) of the
            first window's last value; the others follow every ``stride``.
        first_tick: the symbol's tick number (0-based, all batches) of that value.
        tail_len: how many tail values precede the new ones in the buffer.
    """

    count: int
    first_end_pos: int
    first_tick: int
    tail_len: int

    def end_rows(self, stride: int) -> npt.NDArray[np.intp]:
        """Indices, among this batch's new values, of the ticks that end a window."""
        start = self.first_end_pos - self.tail_len
        return np.arange(start, start + self.count * stride, stride, dtype=np.intp)


def window_geometry(
    *, seen: int, tail_len: int, n_new: int, window: int, stride: int
) -> WindowGeometry:
    """Windows that end among ``n_new`` new ticks of a symbol that had ``seen`` before.

    ``tail_len`` must be ``min(seen, window - 1)``: the buffer holds that many old
    values, then the new ones.
    """
    if window < 1 or stride < 1:
        raise ValueError(f"window and stride must be >= 1; got window={window}, stride={stride}")
    if tail_len != min(seen, window - 1):
        raise ValueError(
            f"tail_len {tail_len} does not match seen={seen}, window={window} "
            f"(expected {min(seen, window - 1)})"
        )
    first_possible = max(seen, window - 1)
    # First tick number >= first_possible on the stride grid W-1 + k*S.
    k = -(-(first_possible - (window - 1)) // stride)
    first_tick = window - 1 + k * stride
    last_tick = seen + n_new - 1
    count = 0 if first_tick > last_tick else (last_tick - first_tick) // stride + 1
    return WindowGeometry(
        count=count,
        first_end_pos=first_tick - seen + tail_len,
        first_tick=first_tick,
        tail_len=tail_len,
    )


def window_geometries(
    seen: npt.NDArray[np.int64],
    n_new: npt.NDArray[np.int64],
    *,
    window: int,
    stride: int,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """`window_geometry` for many symbols at once: ``(count, first_end_pos)`` arrays.

    Element ``i`` equals ``window_geometry(seen=seen[i], tail_len=min(seen[i], window - 1),
    n_new=n_new[i], ...)``'s ``count`` and ``first_end_pos``: the same integer arithmetic, as
    array operations, so a batch of thousands of symbols costs a few numpy calls, not a Python
    call and a dataclass per symbol.

    >>> count, first = window_geometries(np.array([0, 2, 9]), np.array([10, 1, 5]), window=4,
    ...                                  stride=3)
    >>> count.tolist(), first.tolist()
    ([3, 0, 2], [3, 3, 3])
    """
    if window < 1 or stride < 1:
        raise ValueError(f"window and stride must be >= 1; got window={window}, stride={stride}")
    tail_len = np.minimum(seen, window - 1)
    first_possible = np.maximum(seen, window - 1)
    first_tick = window - 1 + -(-(first_possible - (window - 1)) // stride) * stride
    last_tick = seen + n_new - 1
    count = np.where(first_tick > last_tick, 0, (last_tick - first_tick) // stride + 1)
    return count, first_tick - seen + tail_len


def windows_view(
    series: npt.NDArray[np.float64], geometry: WindowGeometry, *, window: int, stride: int
) -> npt.NDArray[np.float64]:
    """The (count, window) windows of ``geometry`` as a read-only strided view of ``series``.

    Rows overlap in memory (no copy); copy into a pooled matrix where a model or a
    per-window normalization needs contiguous rows of its own.
    """
    start = geometry.first_end_pos - (window - 1)
    if geometry.count == 0:
        return np.lib.stride_tricks.as_strided(
            series,
            shape=(0, window),
            strides=(series.strides[0], series.strides[0]),
            writeable=False,
        )
    end = start + (geometry.count - 1) * stride + window
    if start < 0 or end > series.shape[0]:
        raise ValueError(
            f"series of {series.shape[0]} values is too short for {geometry.count} windows of "
            f"{window} from position {start}"
        )
    view = np.lib.stride_tricks.sliding_window_view(series[start:end], window)
    return view[::stride]
