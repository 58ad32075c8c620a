"""Every symbol's windows as rows of one matrix, for any model: the general path, batched.

The fused kernels (:mod:`~tickpool.operators.fused`) cover the built-in models under
``window-zscore`` (and ``linear`` under ``none``) at strides where they pay; every other model
(an `Ensemble`, ONNX, PyTorch) and mode (``window-minmax``, ``robust``, the running ``zscore``
and ``minmax``) gets its windows as the rows of a matrix. Cut symbol by symbol, that is a Python
step and a model call per symbol of a batch: with thousands of symbols each bringing a few
ticks, the steps are the run time, and a model that is costly to call (an inference session) is
called thousands of times per batch.

Here a batch's symbols are laid back to back (each its last W - 1 values, then its new ones:
`~tickpool.operators.layout.fill_packed`) and the windows of all of them are cut in chunks of at
most `CHUNK_VALUES` values: one normalization pass and one model call per chunk, whatever the
number of symbols. A symbol with at least half a chunk of windows gets chunks of its own, each a
strided view of the series (copied only for a per-window mode or a model that wants rows of its
own); runs of symbols with fewer share chunks up to the next such symbol, gathered by index (a
few times the cost per value, but no step per symbol). Running modes normalize the new values
before (the engine does, each symbol by its own history, in one call of
`~tickpool.operators.normalize.running_zscore_runs` or its min-max twin) and hand over each
window's statistics to map the predictions back.

>>> from tickpool.operators.models import WindowMean
>>> plan = WindowMatrix(WindowMean(), "none", window=3, copy_rows=False).plan(
...     np.array([2, 0]), np.array([2, 3]), np.array([0, 0]), np.array([2, 1]), 1)
>>> series = np.zeros(plan.series_len)
>>> plan.fill(series, np.array([[1.0, 2.0], [0.0, 0.0]]), np.array([2, 0]),
...           np.array([3.0, 4.0, 10.0, 20.0, 30.0]), np.array([2, 3]))
>>> out = np.zeros((1, 3))
>>> plan.predict(series, out, np.zeros(plan.scratch_size()))
>>> out.tolist()  # windows [1, 2, 3], [2, 3, 4] of the first, [10, 20, 30] of the second
[[2.0, 3.0, 20.0]]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from tickpool.operators.fused import StartRuns
from tickpool.operators.layout import fill_packed, packed_bases
from tickpool.operators.models import Model
from tickpool.operators.normalize import (
    NormalizeMode,
    denormalize,
    is_running,
    window_normalize,
)

__all__ = ["CHUNK_VALUES", "MatrixLayout", "WindowMatrix"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]

CHUNK_VALUES: Final = 1 << 18
"""Window values per model call (2 MiB of float64, as much again of index while a chunk spans
symbols): bounds the matrix whatever the batch, while a chunk is still 4,096 windows at W=64.
(A batch with chunks across symbols also builds the index of all its window starts once, 8
bytes per window: 512 KiB for 65,536 windows.)"""


@dataclass(frozen=True, slots=True, eq=False)
class MatrixLayout:
    """One batch laid out for `WindowMatrix`: symbols back to back, windows as runs.

    ``bases``: each symbol's first value (its tail, then its new values) in the series;
    ``starts``: the wanted windows' first values, one run per symbol with windows;
    ``series_len``: the values the series must hold; ``copy_rows``: copy even a chunk of one
    symbol's windows into the matrix (a per-window mode normalizes rows in place; some models
    want rows of their own).
    """

    model: Model
    mode: NormalizeMode
    window: int
    copy_rows: bool
    bases: IntArray
    starts: StartRuns
    series_len: int

    @property
    def chunk_rows(self) -> int:
        """Windows per model call."""
        return max(1, min(self.starts.total, CHUNK_VALUES // self.window))

    def scratch_size(self) -> int:
        """Float64 elements of scratch `predict` needs: the matrix, its index, and per-row
        statistics (and the partition copy for ``robust``)."""
        c, w = self.chunk_rows, self.window
        return (3 if self.mode == "robust" else 2) * c * w + 3 * c

    def fill(
        self,
        series: FloatArray,
        tails: FloatArray,
        tail_len: IntArray,
        values: FloatArray,
        n_new: IntArray,
    ) -> None:
        """Write each symbol's tail and new values (and the padding) into ``series``."""
        fill_packed(series[: self.series_len], self.bases, tails, tail_len, values, n_new)

    def predict(
        self,
        series: FloatArray,
        out: FloatArray,
        scratch: FloatArray,
        loc: FloatArray | None = None,
        scale: FloatArray | None = None,
    ) -> None:
        """Every wanted window's predictions into ``out`` (H, total), in run order.

        ``loc`` and ``scale`` (one per window, running modes): the series is normalized
        already, and these map each window's predictions back to the value's units. Without
        them a per-window mode normalizes each row and maps back by the row's own statistics.
        """
        runs, w = self.starts, self.window
        if is_running(self.mode) != (loc is not None and scale is not None):
            raise ValueError(f"loc and scale go with a running mode, not {self.mode!r}")
        total, c = runs.total, self.chunk_rows
        if total == 0:
            return
        live = runs.counts > 0
        firsts, counts = runs.firsts[live], runs.counts[live]
        run_ends = np.cumsum(counts)
        stride = runs.stride
        # A symbol with half a chunk of windows left gets chunks of its own (strided slices of
        # the series: a few times cheaper than a gather); shorter runs share chunks, which stop
        # where the next such symbol starts.
        half = (c + 1) // 2
        barrier = np.where(counts >= half, run_ends - counts, total)
        barrier = np.append(np.minimum.accumulate(barrier[::-1])[::-1][1:], total)
        view = sliding_window_view(series, w)
        mat_all = scratch[: c * w]
        index_all = scratch[c * w : 2 * c * w].view(np.intp)
        work = scratch[2 * c * w :]
        ramp = np.arange(w, dtype=np.intp)
        starts: IntArray | None = None
        lo = 0
        while lo < total:
            r = int(np.searchsorted(run_ends, lo, side="right"))
            run_end = int(run_ends[r])
            own = run_end - lo >= half
            hi = min(lo + c, run_end if own else int(barrier[r]))
            m = hi - lo
            mat = mat_all[: m * w].reshape(m, w)
            if hi <= run_end:  # one symbol's windows: a strided slice of the series
                first = int(firsts[r]) + (lo - (run_end - int(counts[r]))) * stride
                rows = view[first : first + (m - 1) * stride + 1 : stride]
                if self.copy_rows:
                    np.copyto(mat, rows)
                else:
                    mat = rows  # read-only: the model reads the series itself
            else:  # across symbols: one gather by index
                if starts is None:
                    starts = runs.indices()
                index = index_all[: m * w].reshape(m, w)
                np.add(starts[lo:hi, None], ramp, out=index)
                np.take(series, index, out=mat, mode="clip")  # in range: built from the layout
            rows_out = out[:, lo:hi].T
            if loc is not None and scale is not None:
                self.model.predict(mat, rows_out)
                denormalize(rows_out, loc[lo:hi], scale[lo:hi])
            else:
                row_loc, row_scale = work[:m], work[m : 2 * m]
                window_normalize(self.mode, mat, row_loc, row_scale, work[2 * m :])
                self.model.predict(mat, rows_out)
                if self.mode != "none":
                    denormalize(rows_out, row_loc, row_scale)
            lo = hi


class WindowMatrix:
    """Plans `MatrixLayout` s for one model and normalization mode (see `MatrixLayout` for
    ``copy_rows``)."""

    def __init__(self, model: Model, mode: NormalizeMode, window: int, *, copy_rows: bool) -> None:
        self.model = model
        self.mode = mode
        self.window = window
        self.copy_rows = copy_rows

    def plan(
        self,
        tail_len: IntArray,
        n_new: IntArray,
        first: IntArray,
        count: IntArray,
        stride: int,
    ) -> MatrixLayout:
        """The layout of symbols with these tails and new values (arguments as
        `~tickpool.operators.layout.KernelSet.plan`'s)."""
        w = self.window
        bases, needed = packed_bases(tail_len + n_new, w)
        live = count > 0
        starts = StartRuns((bases + first)[live], count[live], stride)
        series_len = max(needed, 1)  # a lease of at least one value
        return MatrixLayout(self.model, self.mode, w, self.copy_rows, bases, starts, series_len)
