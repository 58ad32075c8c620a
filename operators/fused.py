"""Fused window kernels: window z-score (or none) + linear / mean / last, no (m, W) window matrix.

For the built-in models the whole "normalize each window, predict, map back" chain collapses to
rolling sums and one correlation. With a window's mean ``m`` and population std ``s``, weights
``w`` (one column of the (W, H) weights) and intercept ``b``::

    yhat = ((x - m) / s . w + b) * s + m = x . w + m * (1 - sum(w)) + b * s      (s > 0)
    yhat = m                                                                        (s == 0)

``s == 0`` is the constant rule of `tickpool.operators.normalize` (``s <= CONST_RTOL * |m|``, and
exactly 0 for a window whose values are all equal), so the results are the general path's.

How the sums stay exact on raw prices (BTCUSDT near 9,700 with a 64-tick std of 0.0017 loses all
its digits in running sums of raw prices):

- The caller lays each symbol's ``tail + new`` values out in one series buffer, every symbol
  starting on a multiple of the block size ``B`` (>= W - 1); the gap is padded with the
  symbol's last value. Windows are numbered by their *start* position ``p``; block ``j`` holds
  the windows that start in ``[j*B, (j+1)*B)``, which read the ``B + W - 1`` values from ``j*B``
  on, all of one symbol for every window that is used. (Or, given ``rows``, row ``j`` starts
  at ``rows[j]``, with any B: the packed layout of `tickpool.operators.layout`, for batches
  whose symbols bring few windows each.)
- Every block is shifted by its own first value ``c_j``: ``D = x - c_j`` (one (nb, B+W) matrix,
  a leading 0 column for the prefix sums). Values then differ from their reference by the
  price's movement over ``B + W`` ticks, not by the price.
- The means of ``D`` and ``D^2`` over each window: up to ``W = SUMS_GEMM_MAX_WINDOW`` products
  with a (B + W - 1, B) band of 1/W (one GEMM each, like the correlation below), above it
  differences of per-block prefix sums (``cumsum`` along rows of ``B + W`` values) over W.
  Either way no sum runs longer than one block: the variance's cancellation is at most
  ``eps * (B + W) * (range of D)^2`` against ``W * s^2``. (numpy's ``cumsum`` is a chain of
  dependent adds, about 3.5 ns per element here; a band GEMM costs 2 (B + W - 1) flops per
  window, which BLAS does faster while W is small: docs/optimizations.md section 13.)
- A window is constant iff none of its ``W - 1`` consecutive pairs differ: counted exactly (the
  prefix sum of ``x[i] != x[i-1]`` in int32; a window changes iff its two prefix counts differ,
  which stays true even if a count wrapped, since a window's count is below 2**31), so a flat
  run gives ``s = 0`` and ``yhat = m`` exactly as the reference, whatever rounding the sums carry.
- The linear term is taken on ``D`` as well: ``x . w = D . w + c_j * sum(w)``, and the formula
  above becomes ``yhat = c_j + mu + (D . w - mu * sum(w)) + b * s`` with ``mu = mean(D)``: every
  term but ``c_j`` is of the size of the price's local movement, so nothing cancels. And
  ``D . w - mu * sum(w) = D . (w - mean(w))``: under window z-score the kernel correlates with
  the centred weights ``w' = w - mean(w)``, one correlation and no ``mu * sum(w)`` pass.

``D . w`` for every window at once is a correlation, computed per block: for ``W < 128`` as one
GEMM with a (B + W - 1, B) Toeplitz matrix of the weights (``A = D @ T``, ``T[u, r] = w[u - r]``),
for larger W by FFT along the rows (``irfft(rfft(D) * conj(rfft(w)))``). Measured for one batch
of about 10k ticks, one thread (docs/optimizations.md), at W = 16 / 64 / 256: Toeplitz GEMM 18 /
55 / 265 us, row FFT 138 / 88 / 107 us, ``np.correlate`` 56 / 110 / 339 us,
``sliding_window_view(x, W) @ w`` 75 / 324 / 1940 us. The GEMM runs in row chunks small enough
that OpenBLAS keeps it on one thread: on a busy 2-core machine a threaded GEMM of this size was
measured 10-500x slower (its threads spin-wait for a core). The chunks go to one stacked
``matmul`` call, so a batch's Python work does not grow with its rows.

Which models take this path (`fused_kernel`): exactly the classes `LinearModel`, `WindowMean` and
`LastValue` (``type(model) is ...``, not ``isinstance``: a subclass may override ``predict``), with
normalize ``window-zscore`` (all three) or ``none`` (`LinearModel` only: the mean and last value of
a strided view are already cheap). The math above is a property of these models' ``predict``,
not something the `Model` protocol can promise, so a capability flag a user model could set would
be a flag it could set wrongly; user models, `Ensemble` and the other modes keep the general path.
The engine also keeps the general path for a linear kernel at strides where computing every
start position costs more than the general path's ``n / stride`` windows
(`FusedKernel.pays_at`).

Deviation, documented: `LastValue` under ``window-zscore`` predicts the window's last value even
for a window with ``0 < std <= CONST_RTOL * |m|`` (the general path gives ``m`` there); the two
differ by less than the window's range, itself under ``sqrt(W) * CONST_RTOL * |m|``.

Everything here is numpy on buffers the caller leases (the predictions are gathered from an
(nb, B) grid of every start position at the very end); nothing of the batch's size is allocated
but the FFT's internal work arrays. Where each symbol goes in the series, and at which block
size, is `tickpool.operators.layout`'s job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt

from tickpool.operators.models import LastValue, LinearModel, Model, WindowMean
from tickpool.operators.normalize import CONST_RTOL

__all__ = [
    "FFT_MIN_WINDOW",
    "SLICE_RUNS_MAX",
    "SUMS_GEMM_MAX_WINDOW",
    "FusedKernel",
    "StartRuns",
    "fused_kernel",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]
Kind = Literal["linear", "mean", "last"]

SLICE_RUNS_MAX: Final = 32
"""Up to this many symbols (runs) in a batch, `tickpool.operators.layout.fill_series`,
`StartRuns.take` and the symbol column (`tickpool.operators.symbol_column`) work symbol by
symbol with slices; above, with a few whole-array operations (docs/optimizations.md section
17: a slice costs about 0.5 us of Python, an index about 2 ns per value)."""
FFT_MIN_WINDOW: Final = 128
"""From this window on, ``D . w`` is computed by FFT instead of a Toeplitz GEMM."""
SUMS_GEMM_MAX_WINDOW: Final = 64
"""Up to this window, window means are GEMMs with a band of 1/W; above it, prefix sums."""

_FUSED_MODES: Final = ("window-zscore", "none")
_BLAS_SERIAL_MNK: Final = 65536 * 4
"""OpenBLAS runs a GEMM on one thread while m * n * k <= this (SMP_THRESHOLD_MIN * 4)."""
_GRIDS: Final = 5  # (nb, B) scratch grids: mean, std, keep flags, window mean m, result


@dataclass(frozen=True, slots=True, eq=False)
class StartRuns:
    """Window starts as arithmetic runs: run ``i`` is ``firsts[i] + stride * arange(counts[i])``.

    What the engine passes to `FusedKernel.predict` instead of an index array: one run per
    symbol. With few runs (up to `SLICE_RUNS_MAX`) values are copied out run by run with one
    strided slice each (no index array to build, no gather by index); with more, one gather by
    an index built with array operations, so that thousands of symbols cost a few numpy calls
    rather than a Python step each. Both give the same values.

    >>> runs = StartRuns((0, 64), (3, 2), 1)
    >>> runs.total, runs.indices().tolist()
    (5, [0, 1, 2, 64, 65])
    """

    firsts: IntArray
    counts: IntArray
    stride: int

    def __init__(self, firsts: npt.ArrayLike, counts: npt.ArrayLike, stride: int) -> None:
        f = np.array(firsts, dtype=np.intp, ndmin=1)
        c = np.array(counts, dtype=np.intp, ndmin=1)
        if f.ndim != 1 or f.shape != c.shape or (c < 0).any() or stride < 1:
            raise ValueError(
                f"StartRuns: firsts {f.shape} and counts {c.shape} with stride {stride}; expected "
                "two 1-d arrays of one length, counts >= 0 and stride >= 1"
            )
        object.__setattr__(self, "firsts", f)
        object.__setattr__(self, "counts", c)
        object.__setattr__(self, "stride", stride)

    def __repr__(self) -> str:
        return f"StartRuns({self.firsts.tolist()}, {self.counts.tolist()}, {self.stride})"

    @property
    def total(self) -> int:
        """Number of windows."""
        return int(self.counts.sum())

    @property
    def shape(self) -> tuple[int]:
        """``(total,)``: the shape of the index array these runs stand for."""
        return (self.total,)

    def lasts(self) -> IntArray:
        """The last start of each run (of the runs with ``count > 0``)."""
        used = self.counts > 0
        return self.firsts[used] + (self.counts[used] - 1) * self.stride

    def indices(self) -> IntArray:
        """The same starts as one index array."""
        c, total = self.counts, self.total
        rank = np.arange(total, dtype=np.intp)
        if self.stride != 1:
            rank *= self.stride
        rank += np.repeat(self.firsts - self.stride * (np.cumsum(c) - c), c)
        return rank

    def take(self, flat: npt.NDArray[Any], out: npt.NDArray[Any], shift: int = 0) -> None:
        """``out[:] = flat[starts + shift]``: strided slices for few runs, else one gather."""
        if self.firsts.shape[0] > SLICE_RUNS_MAX:
            idx = self.indices()
            if shift:
                idx += shift
            np.take(flat, idx, out=out)
            return
        stride, offset = self.stride, 0
        for first, count in zip(self.firsts.tolist(), self.counts.tolist(), strict=True):
            if not count:
                continue  # (an empty slice's stop would be negative: counted from the end)
            begin = first + shift
            out[offset : offset + count] = flat[begin : begin + (count - 1) * stride + 1 : stride]
            offset += count


def _block_size(window: int, fft: bool) -> int:
    """Default windows per block (>= W - 1: a row reads W - 1 values into the next block).

    GEMM up to ``SUMS_GEMM_MAX_WINDOW``: W rounded up to 16, at least 32 (up to three band
    GEMMs, each 2 (B + W - 1) flops per window: the smaller the block, the fewer flops wasted).
    Larger W: 2W (the prefix sums cost (B + W) / B elements per window, the one GEMM
    2 (B + W - 1) flops). FFT: 4W rounded up to a power of two, less W - 1, so a block's span
    fills the FFT length exactly. Tuned at W = 8..256 (docs/optimizations.md sections 1, 13).
    """
    if fft:
        return _pow2(4 * window) - window + 1
    if window <= SUMS_GEMM_MAX_WINDOW:
        return max(-(-window // 16) * 16, 32)
    return max(2 * window, 64)


def _pow2(n: int) -> int:
    """The smallest power of two >= n."""
    return 1 << (n - 1).bit_length()


def _fft_size(n: int) -> int:
    """The smallest FFT length >= n of the form 2^k, 3 * 2^k or 5 * 2^k.

    pocketfft is fastest at powers of two and nearly as fast at these; allowing them lets a
    short block's row (`tickpool.operators.layout`) be transformed at little more than its
    own length (320 points for W=256 and 65 windows, not 512).

    >>> [_fft_size(n) for n in (256, 257, 300, 321, 400)]
    [256, 320, 320, 384, 512]
    """
    best = _pow2(n)
    for factor in (3, 5):
        size = factor * _pow2(-(-n // factor))
        best = min(best, size)
    return best


@dataclass(frozen=True, slots=True, eq=False)
class FusedKernel:
    """Precomputed weights for one (model, window, normalize): see the module docstring.

    Build with `fused_kernel`. ``predict`` writes a batch's predictions; ``scratch_size`` says how
    many float64 elements of scratch it needs.
    """

    kind: Kind
    window: int
    horizon: int
    normalize: str
    block: int
    fft: bool
    wsum: FloatArray  # (H,) sum of each weight column (used under normalize "none")
    intercept: FloatArray  # (H,)
    toeplitz: FloatArray | None  # (H, B + W - 1, B) band of the weights (centred: window-zscore)
    spectrum: npt.NDArray[np.complex128] | None  # (H, nfft // 2 + 1), conj(rfft(w)), likewise
    averaging: FloatArray | None  # (B + W - 1, B) band of 1/W: window means by GEMM (W <= 64)

    @property
    def nfft(self) -> int:
        """FFT length along a block's row (FFT method)."""
        return _fft_size(self.block + self.window - 1)

    @property
    def row(self) -> int:
        """Stride of the correlation's (nb, row) output."""
        return self.nfft if self.fft else self.block

    def pays_at(self, stride: int) -> bool:
        """Whether this kernel beats the general path at window stride ``stride``.

        A linear kernel computes every start position of the batch and keeps one in ``stride``,
        while the general path computes only the ``n / stride`` windows, at O(W) each: past some
        stride the general path is cheaper. Where depends on how many ticks each symbol brings
        to a batch (the fused kernel also reads every symbol's W - 1 tail values): measured
        against the window matrix (docs/optimizations.md sections 15 and 22), the general path
        wins from about S = 16-64 with 8 symbols per 65,536-row batch and from S = 4-8 with
        2,048. The rule is a compromise between the two: linear under window z-score is fused
        while ``stride <= 4`` or ``16 * stride <= W``, under ``none`` while ``stride <= 4``.
        ``mean`` and ``last`` always pay: ``mean`` wins at nearly every stride with 8 symbols,
        and ``last`` under window z-score has its own documented result, which must not change
        with the stride.

        >>> k = fused_kernel(WindowMean(), window=64, normalize="window-zscore")
        >>> k is not None and k.pays_at(64)
        True
        """
        if self.kind != "linear":
            return True
        if self.normalize == "none":
            return stride <= 4
        return stride <= 4 or 16 * stride <= self.window

    def scratch_size(self, n_blocks: int, total: int, series_len: int | None = None) -> int:
        """Float64 elements ``predict`` needs for ``n_blocks`` blocks and ``total`` windows.

        ``series_len``: with ``rows`` (a packed layout), at least ``rows[-1] + B + W - 1``, the
        values the rows read: ``predict`` then also needs each row's reference and their change
        counts.
        """
        nb, b, w = n_blocks, self.block, self.window
        if self.kind == "last":
            return total
        # D with its 0 column and the prefix sums (nb, B + W); per-window grids (nb, B).
        size = 2 * nb * (b + w) + _GRIDS * nb * b
        if self.kind == "linear":
            size += nb * self.row  # the correlation's output
            if self.fft:
                size += 2 * 2 * nb * (self.nfft // 2 + 1)  # two complex (nb, nfft/2+1) spectra
        if series_len is not None:
            # references; int32 change counts; the rows' flat indices
            size += nb + (series_len + 1) // 2 + nb * (b + w - 1)
        return size

    def predict(
        self,
        series: FloatArray,
        starts: IntArray | StartRuns,
        n_blocks: int,
        out: FloatArray,
        scratch: FloatArray,
        rows: IntArray | None = None,
    ) -> None:
        """Predictions of the windows starting at ``starts`` of ``series`` into ``out`` (H, total).

        ``starts`` is an index array or a `StartRuns` (the same positions as arithmetic runs,
        read out with one strided slice per run, or one gather above `SLICE_RUNS_MAX` runs:
        same values; with runs the FFT method also keeps the next symbol's values out of each
        run's last row, see `_clear_past_runs`, so there the two agree to rounding).

        Without ``rows``, ``series`` holds at least ``(n_blocks + 1) * block`` finite values laid
        out as `tickpool.operators.layout.block_layout` says (each symbol from a multiple of
        ``block``, gaps and the end padded with finite values); each window of ``starts`` lies
        inside one symbol's values and starts before ``n_blocks * block``. ``scratch`` needs
        ``scratch_size(n_blocks, total)`` elements. Writes only ``out`` and ``scratch``.

        Every quantity is computed for every start position of the (nb, B) block grid (most of
        which are wanted windows: the grid is the series plus padding), and each horizon's
        result is gathered at ``starts`` once, at the end.

        ``rows`` (a packed layout, `tickpool.operators.layout`): row ``j`` of the grid starts at
        ``series[rows[j]]`` instead of ``series[j * B]`` (ascending, ``nb`` of them), so that a
        symbol's rows hold only its windows: ``starts`` then index the (nb, B) grid, not the
        series, each symbol's runs in rows of their own; the series needs
        ``rows[-1] + B + W - 1`` values and the scratch ``scratch_size(nb, total, that)``.
        The ``last`` kind takes no ``rows`` (it reads the series, not a grid). Without ``rows``
        the grid is the series itself (``rows = arange(nb) * B``), read through reshaped views.
        """
        nb, b, w = n_blocks, self.block, self.window
        runs = starts if isinstance(starts, StartRuns) else None
        index = None if isinstance(starts, StartRuns) else starts
        total = runs.total if runs is not None else starts.shape[0]
        if rows is None:
            if b < w - 1 and self.kind != "last":
                raise ValueError(
                    f"block {b} < W - 1 = {w - 1}: a row reads into the block after next, "
                    "which only a packed layout (rows) provides"
                )
            need, series_len = (nb + 1) * b, None
        else:
            if self.kind == "last" or rows.shape != (nb,):
                raise ValueError(
                    f"rows {rows.shape} for a {self.kind!r} kernel: expected ({nb},), and no "
                    "rows for 'last'"
                )
            if nb and (rows[0] < 0 or bool((rows[1:] < rows[:-1]).any())):
                raise ValueError("rows: expected ascending starts >= 0")
            need = int(rows[-1]) + b + w - 1 if nb else 0
            series_len = need  # all the rows read
        if series.shape[0] < need or out.shape != (self.horizon, total):
            raise ValueError(
                f"series of {series.shape[0]} values and out {out.shape}: expected at least "
                f"{need} values and out ({self.horizon}, {total})"
            )
        size = self.scratch_size(nb, total, series_len)
        if scratch.shape[0] < size:
            raise ValueError(f"scratch has {scratch.shape[0]} elements; expected {size}")
        if runs is not None and (
            (runs.firsts[runs.counts > 0] < 0).any() or (runs.lasts() >= nb * b).any()
        ):
            raise ValueError(f"starts {runs}: every start must lie in [0, {nb * b})")
        if total == 0:
            return
        if runs is not None and self.kind == "last":
            runs.take(series, out[0], w - 1)
            np.copyto(out[1:], out[:1])
            return
        if self.kind == "last":
            # The last value of each window, for every horizon.
            assert index is not None
            ends = scratch[:total].view(np.intp)
            np.add(index, w - 1, out=ends)
            np.take(series, ends, out=out[0])
            np.copyto(out[1:], out[:1])
            return
        width, cells = b + w, nb * b
        dz = scratch[: nb * width].reshape(nb, width)
        q = scratch[nb * width : 2 * nb * width].reshape(nb, width)
        pos = 2 * nb * width
        mu, s, keep, y, tmp = (
            scratch[pos + i * cells : pos + (i + 1) * cells].reshape(nb, b) for i in range(_GRIDS)
        )
        pos += _GRIDS * cells

        # Block references c_j = series[j * B]; D = series - c_j over each block's B + W - 1
        # values, after a 0 column (for the prefix sums of W > SUMS_GEMM_MAX_WINDOW: a window's
        # sum is then a difference of two of them).
        dz[:, 0] = 0.0
        if rows is None:
            # A row is its own block then the first W - 1 values of the next: reshaped views.
            ref = series[:cells:b]
            np.subtract(series[:cells].reshape(nb, b), ref[:, None], out=dz[:, 1 : b + 1])
            np.subtract(
                series[b : cells + b].reshape(nb, b)[:, : w - 1], ref[:, None], out=dz[:, b + 1 :]
            )
        else:
            # Rows start anywhere: gather each row's B + W - 1 values by flat index (np.take
            # along an axis of a strided view would first copy the whole view), into q (a
            # contiguous (nb, B + W - 1) block of it), then shift them into D.
            ref = scratch[pos : pos + nb]
            pos += nb
            np.take(series, rows, out=ref, mode="clip")
            at = scratch[pos : pos + nb * (width - 1)].view(np.intp).reshape(nb, width - 1)
            pos += nb * (width - 1)
            np.add(rows[:, None], np.arange(width - 1), out=at)
            spans = q.reshape(-1)[: nb * (width - 1)].reshape(nb, width - 1)
            np.take(series, at, out=spans, mode="clip")
            np.subtract(spans, ref[:, None], out=dz[:, 1:])

        corr = spec = prod = None
        if self.kind == "linear":
            corr = scratch[pos : pos + nb * self.row].reshape(nb, self.row)
            pos += nb * self.row
            if self.fft:
                half = self.nfft // 2 + 1
                spec = scratch[pos : pos + 2 * nb * half].view(np.complex128).reshape(nb, half)
                pos += 2 * nb * half
                prod = scratch[pos : pos + 2 * nb * half].view(np.complex128).reshape(nb, half)
                if runs is not None:
                    _clear_past_runs(dz, runs, b, w)
                np.fft.rfft(dz[:, 1:], n=self.nfft, axis=1, out=spec)

        def correlation(h: int) -> FloatArray:
            """D . w[:, h] of every start of the grid: an (nb, B) view of ``corr``."""
            assert corr is not None
            if self.fft:
                assert self.spectrum is not None and spec is not None and prod is not None
                np.multiply(spec, self.spectrum[h], out=prod)
                np.fft.irfft(prod, n=self.nfft, axis=1, out=corr)
            else:
                assert self.toeplitz is not None
                _serial_gemm(dz[:, 1:], self.toeplitz[h], corr)
            return corr[:, :b]

        def gather(grid: FloatArray, h: int) -> None:
            if runs is not None:
                runs.take(grid.reshape(-1), out[h])
            else:
                assert index is not None
                np.take(grid.reshape(-1), index, out=out[h])

        if self.normalize == "none":  # linear: yhat = D . w + (c * sum(w) + b)
            for h in range(self.horizon):
                np.multiply(ref, self.wsum[h], out=keep[:, 0])
                np.add(keep[:, 0], self.intercept[h], out=keep[:, 0])
                np.add(correlation(h), keep[:, :1], out=y)
                gather(y, h)
            return

        # mu = mean(D) of each window, from its block's row.
        self._window_means(dz, q, mu)
        if self.kind == "mean":
            np.add(mu, ref[:, None], out=y)
            gather(y, 0)
            np.copyto(out[1:], out[:1])
            return

        # s: population std from mean(D^2) - mu^2 (D is small: little cancellation).
        np.multiply(dz, dz, out=q)
        self._window_means(q, q, s)
        np.multiply(mu, mu, out=y)
        np.subtract(s, y, out=s)
        np.maximum(s, 0.0, out=s)
        np.sqrt(s, out=s)
        # Constant windows (no two neighbours differ) get s = 0 exactly: prefix counts of
        # x[i] != x[i-1] along the series, in int32 (a float64 cumsum is a chain of 3-4 cycle
        # adds, 3.7 ns per element here; int32, 0.8 ns); a window changes iff its counts differ.
        if rows is None:
            changes = q.reshape(-1).view(np.int32)[: cells + w - 1]
            _count_changes(series, changes)
            np.not_equal(
                changes[w - 1 : cells + w - 1].reshape(nb, b),
                changes[:cells].reshape(nb, b),
                out=keep,
            )
        else:
            # The same counts over the whole series, gathered along each row (into q, free
            # again), compared W - 1 apart.
            assert series_len is not None
            changes = scratch[pos:].view(np.int32)[:series_len]
            _count_changes(series, changes)
            counts = q.reshape(-1).view(np.int32)[: nb * (width - 1)].reshape(nb, width - 1)
            np.take(changes, at, out=counts, mode="clip")
            np.not_equal(counts[:, w - 1 :], counts[:, :b], out=keep)
        np.multiply(s, keep, out=s)
        # m = c + mu (into y for now); the constant rule: keep = 1.0 where s > CONST_RTOL * |m|.
        m = y
        np.add(mu, ref[:, None], out=m)
        np.abs(m, out=keep)
        np.multiply(keep, CONST_RTOL, out=keep)
        np.greater(s, keep, out=keep)
        np.multiply(s, keep, out=s)
        # yhat = m + keep * (D . w') + b * s, with the centred weights w' (module docstring)
        for h in range(self.horizon):
            a = correlation(h)
            np.multiply(a, keep, out=tmp)
            np.add(tmp, m, out=tmp)
            np.multiply(s, self.intercept[h], out=a)
            np.add(tmp, a, out=tmp)
            gather(tmp, h)

    def _window_means(self, d: FloatArray, work: FloatArray, out: FloatArray) -> None:
        """``out[j, r]`` = the mean of ``d[j, 1 + r : 1 + r + W]``: every window's mean in its row.

        ``d`` is (nb, B + W) with a leading 0 column; ``work`` is room of the same shape (it
        may be ``d`` itself). A band GEMM while W is small, else per-row prefix sums in
        ``work``, their differences, divided by W.
        """
        if self.averaging is not None:
            _serial_gemm(d[:, 1:], self.averaging, out)
        else:
            w, b = self.window, self.block
            np.cumsum(d, axis=1, out=work)
            np.subtract(work[:, w : b + w], work[:, :b], out=out)
            np.divide(out, w, out=out)


def _count_changes(series: FloatArray, changes: npt.NDArray[np.int32]) -> None:
    """``changes[p]`` = how many ``i <= p`` have ``series[i] != series[i - 1]`` (int32)."""
    n = changes.shape[0]
    changes[0] = 0
    np.not_equal(series[1:n], series[: n - 1], out=changes[1:])
    np.cumsum(changes, dtype=np.int32, out=changes)


def _serial_gemm(d: FloatArray, t: FloatArray, out: FloatArray) -> None:
    """``out = d @ t`` as GEMMs small enough for OpenBLAS to run each on one thread.

    ``d`` rows go in chunks of ``step`` rows with ``step * k * n`` under `_BLAS_SERIAL_MNK`,
    all full chunks in one stacked ``matmul`` (numpy calls GEMM once per chunk, from C): the
    Python work, and the allocations, are the same for any number of rows, and the result is
    bit for bit that of a loop over the chunks.
    """
    rows, k = d.shape
    n = t.shape[1]
    step = max(1, _BLAS_SERIAL_MNK // (k * n))
    full = rows - rows % step
    if full:
        chunks = full // step
        # Splitting the first axis is a view for any strides, so matmul writes through to out.
        np.matmul(d[:full].reshape(chunks, step, k), t, out=out[:full].reshape(chunks, step, n))
    if full < rows:
        np.matmul(d[full:], t, out=out[full:])


def _clear_past_runs(dz: FloatArray, runs: StartRuns, block: int, window: int) -> None:
    """Zero ``D`` past the last window of each run, in the row of that window (FFT method).

    A row of ``D`` reads ``W - 1`` values past its block, which after a symbol's last block are
    the next symbol's, perhaps at another price level (1 next to 12,580 in a test). No wanted
    window reads them, but an FFT's rounding error scales with its row's largest value: left
    in, they cost 1e-11 relative where 1e-15 is due. Zero is the block's own reference value.
    The GEMM computes each output from its own W values only, so it needs none of this.
    Each run's last window is in a row of its own (symbols start on a new block, or get rows of
    their own in a packed layout): the cells to clear are one range per run, written with one
    index for all of them.
    """
    last = runs.lasts()
    row = last // block
    width = dz.shape[1]
    begin = row * width + 1 + window + last - row * block  # flat index of each range's start
    cleared = StartRuns(begin, np.maximum((row + 1) * width - begin, 0), 1)
    np.put(dz, cleared.indices(), 0.0)  # flat (C-order) indices into dz itself


def fused_kernel(
    model: Model, *, window: int, normalize: str, block: int | None = None
) -> FusedKernel | None:
    """The fused kernel for ``model`` under ``normalize``, or None where the general path is needed.

    ``block``: windows per block, if not the default (`_block_size`); a packed layout
    (`tickpool.operators.layout`) asks for smaller ones when a batch gives each symbol only a
    few windows. Any ``block >= 1`` works, whatever W.

    >>> fused_kernel(WindowMean(), window=8, normalize="window-zscore").kind
    'mean'
    >>> fused_kernel(WindowMean(), window=8, normalize="robust") is None
    True
    """
    if normalize not in _FUSED_MODES:
        return None
    kind: Kind
    cls = type(model)
    if cls is LinearModel:
        kind = "linear"
    elif cls is WindowMean:
        kind = "mean"
    elif cls is LastValue:
        kind = "last"
    else:
        return None
    if kind != "linear" and normalize == "none":
        return None  # the strided view is already the cheap path for these
    h = model.horizon
    fft = kind == "linear" and window >= FFT_MIN_WINDOW
    if block is not None and block < 1:
        raise ValueError(f"block {block}: expected at least 1 window per block")
    b = _block_size(window, fft) if block is None else block
    wsum = np.zeros(h)
    intercept = np.zeros(h)
    toeplitz = spectrum = averaging = None
    if kind != "last" and normalize == "window-zscore" and window <= SUMS_GEMM_MAX_WINDOW:
        averaging = _band(np.full((1, window), 1.0 / window), b)[0]
    if isinstance(model, LinearModel):
        weights = model.weights  # (W, H)
        wsum = weights.sum(axis=0)
        intercept = model.intercept.copy()
        if normalize == "window-zscore":
            weights = weights - weights.mean(axis=0)  # centred: D . w' = D . w - mu * sum(w)
        if fft:
            nfft = _fft_size(b + window - 1)
            spectrum = np.conj(np.fft.rfft(weights.T, n=nfft, axis=1))
        else:
            toeplitz = _band(weights.T, b)
    return FusedKernel(
        kind=kind,
        window=window,
        horizon=h,
        normalize=normalize,
        block=b,
        fft=fft,
        wsum=wsum,
        intercept=intercept,
        toeplitz=toeplitz,
        spectrum=spectrum,
        averaging=averaging,
    )


def _band(rows: FloatArray, block: int) -> FloatArray:
    """(H, B + W - 1, B) Toeplitz matrices: column ``r`` holds row ``h`` of ``rows`` from ``r`` on.

    ``d @ band[h]`` of a block's B + W - 1 values gives ``rows[h] . d[r : r + W]`` for every
    start ``r`` in the block.

    >>> _band(np.array([[1.0, 2.0]]), 2)[0].tolist()
    [[1.0, 0.0], [2.0, 1.0], [0.0, 2.0]]
    """
    h, window = rows.shape
    band = np.zeros((h, block + window - 1, block))
    for r in range(block):
        band[:, r : r + window, r] = rows
    return band
