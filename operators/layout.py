"""Where a batch's values go in the fused kernel's series, and at which block size.

`FusedKernel.predict` (:mod:`tickpool.operators.fused`) computes every start position of an
(nb, B) grid of rows of B windows. Each symbol brings its last W - 1 values (its tail) and
its new values; its windows start in the first ``new`` positions. Two layouts:

- **dense**: each symbol's tail + new values from a multiple of B, the rest of its last block
  padded with its last value; the grid is the series itself (row ``j`` reads from ``j * B``), so
  building it costs reshaped views. Its rows also cover each symbol's tail and padding: cheap
  when a symbol brings many windows (8 symbols in 65,536 rows: a few percent), costly when it
  brings few (2,048 symbols at W=256: 32 windows each, in one 769-window block of 1,024 FFT
  points).
- **packed**: the symbols' values back to back, and one row per B windows of each symbol, from
  its first window on, read by a gather; and B chosen for the batch (a kernel per block size,
  built with the engine), so 32 windows at W=256 take one row of 320 FFT points.

`KernelSet.plan` picks the cheaper of the two from a cost per row of each kernel (its FFT
length, or its span times its GEMM width), so a batch of a few symbols keeps the dense layout
at no extra cost. Both give the same predictions to rounding (the FFT's rounding depends on its
length; the GEMM path's only on the block), which the tests check against the general path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from tickpool.operators.fused import SLICE_RUNS_MAX, FusedKernel, StartRuns, fused_kernel
from tickpool.operators.fused import _fft_size as fft_size
from tickpool.operators.models import Model

__all__ = [
    "KernelSet",
    "Layout",
    "block_layout",
    "dense_layout",
    "fill_packed",
    "fill_series",
    "packed_bases",
    "packed_layout",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]

DENSE_MIN_ROWS: Final = 8
"""A batch whose every symbol brings at least this many blocks of windows keeps the dense
layout without pricing the others (its tails and padding are then at most about 1/8 of it)."""
PACKED_OVERHEAD: Final = 1.15
"""The packed layout's two extra gathers, as a factor on its cost (a judgement: about three
passes over its rows' values of some twenty; docs/optimizations.md section 18)."""
_MIN_BLOCK: Final = 16


@dataclass(frozen=True, slots=True, eq=False)
class Layout:
    """One batch's layout: where each symbol starts in the series and what the kernel reads.

    ``bases``: each symbol's first value (its tail, then its new values) in the series.
    ``rows``: the start of each grid row in the series (packed), or None (dense: row ``j`` at
    ``j * block``). ``starts``: the windows wanted, as runs over the (n_rows, block) grid.
    ``series_len``: the values the series must hold (padding included).
    """

    kernel: FusedKernel
    bases: IntArray
    n_rows: int
    rows: IntArray | None
    starts: StartRuns
    series_len: int

    @property
    def packed(self) -> bool:
        return self.rows is not None

    def scratch_size(self) -> int:
        """Float64 elements of scratch ``kernel.predict`` needs for this layout."""
        return self.kernel.scratch_size(
            self.n_rows, self.starts.total, None if self.rows is None else self.series_len
        )

    def fill(
        self,
        series: FloatArray,
        tails: FloatArray,
        tail_len: IntArray,
        values: FloatArray,
        n_new: IntArray,
    ) -> None:
        """Write each symbol's tail and new values (and the padding) into ``series``."""
        if self.rows is None:
            fill_series(
                series[: self.series_len],
                self.kernel.block,
                self.bases,
                tails,
                tail_len,
                values,
                n_new,
            )
        else:
            fill_packed(series[: self.series_len], self.bases, tails, tail_len, values, n_new)

    def predict(self, series: FloatArray, out: FloatArray, scratch: FloatArray) -> None:
        """The kernel over this layout: every wanted window's predictions into ``out``."""
        self.kernel.predict(series, self.starts, self.n_rows, out, scratch, rows=self.rows)


class KernelSet:
    """The fused kernel at its default block, and the smaller ones packed rows may use.

    >>> from tickpool.operators.models import WindowMean
    >>> ks = KernelSet(fused_kernel(WindowMean(), window=4, normalize="window-zscore"),
    ...                WindowMean())
    >>> few = ks.plan(np.array([3, 3]), np.array([2, 2]), np.array([0, 0]), np.array([2, 2]), 1)
    >>> few.packed, few.kernel.block, few.bases.tolist(), few.rows.tolist()
    (True, 16, [0, 5], [0, 5])
    >>> n = np.array([5000, 5000])
    >>> many = ks.plan(np.array([3, 3]), n, np.array([0, 0]), n, 1)
    >>> many.packed, many.kernel.block, many.bases.tolist()
    (False, 32, [0, 5024])
    """

    def __init__(self, main: FusedKernel, model: Model) -> None:
        self.main = main
        self._model = model
        self._kernels: dict[int, FusedKernel] = {main.block: main}
        self._blocks = np.array(_packed_blocks(main), dtype=np.intp)
        self._row_costs = np.array([_row_cost(self.kernel(int(b))) for b in self._blocks])
        self._dense_cost = _row_cost(main)

    def kernel(self, block: int) -> FusedKernel:
        """The kernel of this model at ``block`` windows per row (built once, then kept)."""
        k = self._kernels.get(block)
        if k is None:
            main = self.main
            made = fused_kernel(
                self._model, window=main.window, normalize=main.normalize, block=block
            )
            assert made is not None  # the same model and mode as main
            k = self._kernels[block] = made
        return k

    def plan(
        self,
        tail_len: IntArray,
        n_new: IntArray,
        first: IntArray,
        count: IntArray,
        stride: int,
    ) -> Layout:
        """The cheaper layout for symbols with these tails and new values.

        ``first``: each symbol's first window start, counted from its first tail value;
        ``count``: its windows (0 for a symbol still short of W values), ``stride`` apart.
        """
        main = self.main
        live = count > 0
        spans = (count[live] - 1) * stride + 1  # start positions each symbol's windows cover
        if (
            not self._blocks.shape[0]  # the 'last' kind: no grid to pack
            or not spans.shape[0]
            or int(spans.min()) >= (DENSE_MIN_ROWS * main.block)
        ):
            return dense_layout(main, tail_len, n_new, first, count, stride)
        # Every block's rows at once: (blocks, symbols) ceiling divisions, summed per block.
        rows = (-(-spans // self._blocks[:, None])).sum(axis=1)
        costs = PACKED_OVERHEAD * rows * self._row_costs
        best = int(costs.argmin())
        dense_cost = block_layout(tail_len + n_new, main.block)[1] * self._dense_cost
        if not costs[best] < dense_cost:
            return dense_layout(main, tail_len, n_new, first, count, stride)
        return packed_layout(
            self.kernel(int(self._blocks[best])), tail_len, n_new, first, count, stride
        )


def dense_layout(
    kernel: FusedKernel,
    tail_len: IntArray,
    n_new: IntArray,
    first: IntArray,
    count: IntArray,
    stride: int,
) -> Layout:
    """Each symbol from a multiple of the kernel's block; the grid is the series itself.

    Arguments as `KernelSet.plan`'s. The kernel's block must be at least W - 1 (a row reads
    W - 1 values into the next block).
    """
    bases, n_rows = block_layout(tail_len + n_new, kernel.block)
    live = count > 0
    starts = StartRuns((bases + first)[live], count[live], stride)
    return Layout(kernel, bases, n_rows, None, starts, (n_rows + 1) * kernel.block)


def packed_layout(
    kernel: FusedKernel,
    tail_len: IntArray,
    n_new: IntArray,
    first: IntArray,
    count: IntArray,
    stride: int,
) -> Layout:
    """The symbols back to back; one grid row per ``block`` window starts of each symbol.

    Arguments as `KernelSet.plan`'s; any block size works. A symbol without windows gets no
    row (its values are still laid out: its tail moves on from them).
    """
    block, w = kernel.block, kernel.window
    bases, needed = packed_bases(tail_len + n_new, w)
    live = count > 0
    n_rows = -(-((count[live] - 1) * stride + 1) // block)
    row_firsts = np.cumsum(n_rows) - n_rows
    rows = StartRuns((bases + first)[live], n_rows, block).indices()
    starts = StartRuns(row_firsts * block, count[live], stride)
    # The series also holds what the rows read.
    reads = int(rows[-1]) + block + w - 1 if rows.shape[0] else 0
    return Layout(kernel, bases, int(n_rows.sum()), rows, starts, max(needed, reads))


def packed_bases(lengths: IntArray, window: int) -> tuple[IntArray, int]:
    """Each symbol's first value when symbols of ``lengths`` values are laid back to back, and
    the values the series must hold: all of theirs, and W - 1 from each base, where the tails
    move on from (a symbol short of W - 1 values reads its new tail there: the padding stays
    past its tail length).

    >>> bases, needed = packed_bases(np.array([5, 2]), 4)
    >>> bases.tolist(), needed
    ([0, 5], 8)
    """
    bases = np.cumsum(lengths) - lengths
    tail_reads = int(bases[-1]) + window - 1 if bases.shape[0] else 0
    return bases, max(int(lengths.sum()), tail_reads)


def _row_cost(k: FusedKernel) -> float:
    """Relative cost of one grid row of ``k``: its elementwise passes over ``B + W`` values,
    plus its FFTs (``n log n``) or band GEMMs (``(B + W - 1) B`` each).

    Fitted to the kernel alone on packed rows, W = 16-256 and every block `_packed_blocks`
    offers (docs/optimizations.md section 18): within one W the model's error is at most 1.31x
    from the best to the worst block, so a batch's choice lands within that of the best.
    """
    span = k.block + k.window
    if k.kind == "linear" and k.fft:
        n = k.nfft
        return 5.0 * span + 0.5 * n * math.log2(n)
    gemms = int(k.kind == "linear") + (0 if k.averaging is None else 1 + int(k.kind == "linear"))
    return 5.0 * span + 0.05 * gemms * (span - 1) * k.block


def _packed_blocks(main: FusedKernel) -> list[int]:
    """Block sizes a packed layout may use, smallest first, the default block last.

    FFT kernels: each FFT length ``2^k``, ``3 * 2^k``, ``5 * 2^k`` from ``W + 15`` to the
    default's, less W - 1 (a row's span fills its transform). GEMM kernels: powers of two
    from 16 up to the default block.
    """
    if main.kind == "last":
        return []
    blocks: set[int] = {main.block}
    if main.fft:
        n = fft_size(main.window + _MIN_BLOCK - 1)
        while n < main.nfft:
            blocks.add(n - main.window + 1)
            n = fft_size(n + 1)
    else:
        b = _MIN_BLOCK
        while b < main.block:
            blocks.add(b)
            b *= 2
    return sorted(blocks)


def block_layout(lengths: IntArray, block: int) -> tuple[IntArray, int]:
    """Each segment's start in a block-aligned series buffer, and the number of blocks used.

    >>> bases, nb = block_layout(np.array([5, 64, 1]), 32)
    >>> bases.tolist(), nb
    ([0, 32, 96], 4)
    """
    blocks = -(-lengths // block)
    ends = np.cumsum(blocks)
    return (ends - blocks) * block, int(ends[-1]) if ends.shape[0] else 0


def fill_series(
    series: FloatArray,
    block: int,
    bases: IntArray,
    tails: FloatArray,
    tail_len: IntArray,
    values: FloatArray,
    n_new: IntArray,
) -> None:
    """Lay out each symbol's ``tail + new`` values in ``series`` as `block_layout` placed them.

    Symbol ``i`` gets the first ``tail_len[i]`` values of ``tails[i]`` then its ``n_new[i] >= 1``
    new values (consecutive in ``values``, symbol after symbol) from ``bases[i]``; the rest of
    its last block, and the one block after the last symbol, get its last value (finite, of the
    symbol's own size: what the kernel's rows may read past a symbol's windows). ``series``
    holds ``(nb + 1) * block`` values; ``tails`` has at most ``block`` columns.

    Up to `SLICE_RUNS_MAX` symbols, slice copies symbol by symbol; above, a few whole-array
    writes (each symbol's last block, then the tails as block rows, then the new values by
    index), so thousands of symbols cost numpy calls, not a Python step each. Both write the
    same values.

    >>> s = np.zeros(12)
    >>> fill_series(s, 4, np.array([0, 4]), np.array([[7.0, 8.0], [0.0, 0.0]]),
    ...             np.array([2, 0]), np.array([9.0, 1.0, 2.0]), np.array([1, 2]))
    >>> s.tolist()
    [7.0, 8.0, 9.0, 9.0, 1.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]
    """
    n_sym = bases.shape[0]
    if n_sym == 0:
        return
    ends = bases + tail_len + n_new
    if n_sym <= SLICE_RUNS_MAX:
        filled = row = 0
        for i, (base, t, n) in enumerate(
            zip(bases.tolist(), tail_len.tolist(), n_new.tolist(), strict=True)
        ):
            if base > filled:
                series[filled:base] = series[filled - 1]
            series[base : base + t] = tails[i, :t]
            series[base + t : base + t + n] = values[row : row + n]
            filled = base + t + n
            row += n
        series[filled:] = series[filled - 1]
        return
    grid = series.reshape(-1, block)
    row_ends = np.cumsum(n_new)
    last = values[row_ends - 1]
    grid[(ends - 1) // block] = last[:, None]
    grid[-1] = last[-1]
    width = tails.shape[1]
    if width:
        # The tails as the first row of each symbol's blocks. A symbol of fewer than W - 1
        # values so far has padding inside that row: its last value past its tail (the new
        # values then overwrite the start of that).
        grid[bases // block, :width] = tails
        short = np.flatnonzero(ends - bases < width)
        if short.shape[0]:
            grid[bases[short] // block, :width] = np.where(
                np.arange(width) < tail_len[short, None], tails[short], last[short, None]
            )
    series[StartRuns(bases + tail_len, n_new, 1).indices()] = values


def fill_packed(
    series: FloatArray,
    bases: IntArray,
    tails: FloatArray,
    tail_len: IntArray,
    values: FloatArray,
    n_new: IntArray,
) -> None:
    """Lay out each symbol's ``tail + new`` values back to back from ``bases`` (packed layout).

    Symbol ``i`` gets the first ``tail_len[i]`` values of ``tails[i]`` then its ``n_new[i] >= 1``
    new values (consecutive in ``values``, symbol after symbol); the rest of ``series`` (what the
    last rows read past the last symbol) gets the last value. A few whole-array writes, whatever
    the number of symbols.

    >>> s = np.zeros(7)
    >>> fill_packed(s, np.array([0, 3]), np.array([[7.0, 8.0], [0.0, 0.0]]),
    ...             np.array([2, 0]), np.array([9.0, 1.0, 2.0]), np.array([1, 2]))
    >>> s.tolist()
    [7.0, 8.0, 9.0, 1.0, 2.0, 2.0, 2.0]
    """
    if not bases.shape[0]:
        return
    width = tails.shape[1]
    if width:
        full = tail_len == width
        if full.all():
            sliding_window_view(series, width, writeable=True)[bases] = tails
        else:
            # Symbols short of W - 1 values so far: only their first tail_len values.
            some = np.arange(width) < tail_len[:, None]
            series[StartRuns(bases, tail_len, 1).indices()] = tails[some]
    series[StartRuns(bases + tail_len, n_new, 1).indices()] = values
    end = int(bases[-1] + tail_len[-1] + n_new[-1])
    series[end:] = values[-1]
