"""Normalization kernels: running and per-window z-score, min-max and robust scaling, in place.

Every normalization yields a location ``loc`` and a scale ``scale`` (one per tick for the running
modes, one per window row for the window modes), and writes

    normalized = (x - loc) / scale,    exactly 0.0 where scale == 0.

A model output ``z`` maps back to the value's units with ``y = z * scale + loc`` (``denormalize``),
so where ``scale == 0`` the prediction is ``loc``.

When is a scale 0 (the "constant" rule)? Constant input must never produce NaN or inf:

- z-score: the population standard deviation (ddof=0) is set to exactly 0.0 when
  ``std <= CONST_RTOL * |mean|`` with ``CONST_RTOL = 1e-12``. float64 cannot resolve a spread finer
  than that around the mean, and a truly constant window's two-pass std comes out as about
  ``1e-16 * |mean|`` (the mean itself is rounded), not 0.
- min-max: ``scale = max - min``, exactly 0 for constant input.
- robust: ``scale = q75 - q25`` (numpy's default 'linear' quantiles); an IQR of 0 gives 0.

Kernels follow numpy's ``out=`` convention: they write into buffers the caller passes (leased from
the pool) and allocate nothing of the input's size when given their scratch buffer. NaN in a
window gives NaN loc, scale and normalized values for that row, as numpy's reference would; the
running kernels refuse NaN and inf (either would poison the running state for good).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, Literal, Self, TypeGuard, get_args

import numpy as np
import numpy.typing as npt

__all__ = [
    "CONST_RTOL",
    "NormalizeMode",
    "RunningMoments",
    "RunningRange",
    "SeriesMode",
    "denormalize",
    "is_running",
    "is_windowed",
    "lerp",
    "maybe_normalize",
    "minmax_inplace",
    "parse_mode",
    "quantile_position",
    "robust_inplace",
    "running_minmax",
    "running_minmax_runs",
    "running_zscore",
    "running_zscore_runs",
    "window_minmax",
    "window_normalize",
    "window_robust",
    "window_zscore",
    "zscore_alloc",
    "zscore_inplace",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

CONST_RTOL: Final = 1e-12
"""A z-score scale ``<= CONST_RTOL * |loc|`` counts as constant input and becomes exactly 0.0."""

NormalizeMode = Literal["none", "zscore", "window-zscore", "minmax", "window-minmax", "robust"]
"""``zscore``/``minmax`` are running (expanding, per tick); the others are per window row."""

SeriesMode = Literal["none", "zscore", "minmax"]
"""The modes ``maybe_normalize`` applies to one whole series."""

_RUNNING: Final = frozenset({"zscore", "minmax"})
_WINDOWED: Final = frozenset({"window-zscore", "window-minmax", "robust"})
_MODES: Final = get_args(NormalizeMode)


def parse_mode(name: str) -> NormalizeMode:
    """Check a configured mode name and return it typed.

    >>> parse_mode("window-zscore")
    'window-zscore'
    """
    if not _is_mode(name):
        raise ValueError(f"normalize mode {name!r} is not one of {', '.join(_MODES)}")
    return name


def _is_mode(name: str) -> TypeGuard[NormalizeMode]:
    return name in _MODES


def is_running(mode: NormalizeMode) -> bool:
    """True for the expanding per-tick modes, whose statistics live in per-symbol state."""
    return mode in _RUNNING


def is_windowed(mode: NormalizeMode) -> bool:
    """True for the modes computed on each window row alone (stateless)."""
    return mode in _WINDOWED


# --------------------------------------------------------------------------------------------
# Running state
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class RunningMoments:
    """Count, mean and sum of squared deviations (M2) of every value seen: exact, small, mergeable.

    ``update`` is Welford's step, ``merge`` is Chan's pairwise formula, so a stream cut anywhere
    and merged back gives numpy's two-pass answer to float rounding. ``std`` is the population
    standard deviation (ddof=0), without the constant rule (the kernels apply it).

    >>> s = RunningMoments()
    >>> for v in (2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0):
    ...     s.update(v)
    >>> s.n, s.mean, s.std
    (8, 5.0, 2.0)
    >>> a, b = RunningMoments.from_tuple((4, 3.5, 3.0)), RunningMoments.from_tuple((4, 6.5, 11.0))
    >>> a.merge(b)
    >>> a.to_tuple()
    (8, 5.0, 32.0)
    """

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def update(self, x: float) -> None:
        """Add one value (Welford)."""
        self.n += 1
        delta = x - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (x - self.mean)

    def merge(self, other: RunningMoments) -> None:
        """Add everything ``other`` has seen (Chan et al.); ``other`` is unchanged."""
        if other.n == 0:
            return
        if self.n == 0:
            self.n, self.mean, self.m2 = other.n, other.mean, other.m2
            return
        n = self.n + other.n
        delta = other.mean - self.mean
        self.mean += delta * (other.n / n)
        self.m2 += other.m2 + delta * delta * (self.n * other.n / n)
        self.n = n

    @property
    def var(self) -> float:
        """Population variance (ddof=0); 0.0 before any value."""
        return self.m2 / self.n if self.n else 0.0

    @property
    def std(self) -> float:
        """Population standard deviation (ddof=0); 0.0 before any value."""
        return math.sqrt(self.var)

    def to_tuple(self) -> tuple[int, float, float]:
        """Snapshot for recovery: ``(n, mean, m2)``."""
        return (self.n, self.mean, self.m2)

    @classmethod
    def from_tuple(cls, t: tuple[int, float, float]) -> Self:
        """Rebuild from ``to_tuple()``."""
        n, mean, m2 = t
        return cls(int(n), float(mean), float(m2))


@dataclass(slots=True)
class RunningRange:
    """Count, minimum and maximum of every value seen. Empty: ``lo = inf``, ``hi = -inf``.

    >>> r = RunningRange()
    >>> for v in (3.0, 1.0, 2.0):
    ...     r.update(v)
    >>> r.to_tuple(), r.scale
    ((3, 1.0, 3.0), 2.0)
    """

    n: int = 0
    lo: float = math.inf
    hi: float = -math.inf

    def update(self, x: float) -> None:
        """Add one value."""
        self.n += 1
        self.lo = min(self.lo, x)
        self.hi = max(self.hi, x)

    def merge(self, other: RunningRange) -> None:
        """Add everything ``other`` has seen; ``other`` is unchanged."""
        self.n += other.n
        self.lo = min(self.lo, other.lo)
        self.hi = max(self.hi, other.hi)

    @property
    def scale(self) -> float:
        """``hi - lo``; 0.0 before any value."""
        return self.hi - self.lo if self.n else 0.0

    def to_tuple(self) -> tuple[int, float, float]:
        """Snapshot for recovery: ``(n, lo, hi)``."""
        return (self.n, self.lo, self.hi)

    @classmethod
    def from_tuple(cls, t: tuple[int, float, float]) -> Self:
        """Rebuild from ``to_tuple()``."""
        n, lo, hi = t
        return cls(int(n), float(lo), float(hi))


# --------------------------------------------------------------------------------------------
# Shared steps
# --------------------------------------------------------------------------------------------


def _scratch(scratch: FloatArray | None, m: int, name: str = "scratch") -> FloatArray:
    """The first ``m`` elements of the caller's scratch, or a fresh temporary when none is given."""
    if scratch is None:
        return np.empty(m, dtype=np.float64)
    if scratch.ndim != 1 or scratch.shape[0] < m:
        raise ValueError(
            f"{name} must be 1-D with at least {m} elements, got shape {scratch.shape}"
        )
    return scratch[:m]


def _check_rows(loc_out: FloatArray, scale_out: FloatArray, m: int) -> None:
    if loc_out.shape != (m,) or scale_out.shape != (m,):
        raise ValueError(
            f"loc_out and scale_out must have shape ({m},), "
            f"got {loc_out.shape} and {scale_out.shape}"
        )


def _zscore_keep(loc: FloatArray, scale: FloatArray, keep: FloatArray) -> None:
    """``keep = 1.0`` where the z-score scale is not constant (``> CONST_RTOL * |loc|``), else 0."""
    np.abs(loc, out=keep)
    np.multiply(keep, CONST_RTOL, out=keep)
    np.greater(scale, keep, out=keep)


def _divide_kept(num: FloatArray, scale: FloatArray, keep: FloatArray) -> None:
    """Zero ``scale`` and ``num`` where ``keep`` is 0.0 and divide the rest, with no bool temporary.

    ``num`` is (m,) or (m, W); ``scale`` and ``keep`` are (m,). ``keep`` is overwritten (it becomes
    the denominator: the scale where kept, 1.0 elsewhere). NaN stays NaN.
    """
    np.multiply(scale, keep, out=scale)
    keep_b = keep if num.ndim == 1 else keep[:, None]
    np.multiply(num, keep_b, out=num)
    np.subtract(1.0, keep, out=keep)
    np.add(keep, scale, out=keep)
    np.divide(num, keep_b, out=num)


def quantile_position(n: int, q: float) -> tuple[int, int, float]:
    """Where numpy's default ('linear') quantile ``q`` of ``n`` sorted values is: ``(i, j, gamma)``.

    The quantile is ``lerp(s[i], s[j], gamma)`` for the sorted values ``s``, exactly as
    ``np.quantile`` computes it, so partitioning at ``i`` and ``j`` is all the sorting needed.

    >>> quantile_position(5, 0.25), quantile_position(4, 0.5), quantile_position(4, 1.0)
    ((1, 2, 0.0), (1, 2, 0.5), (3, 3, 0.0))
    """
    v = (n - 1) * q
    if v >= n - 1:
        return n - 1, n - 1, 0.0
    i = math.floor(v)
    return i, i + 1, v - i


def lerp(a: float, b: float, gamma: float) -> float:
    """numpy's quantile interpolation between neighbours ``a <= b``, rounding for rounding.

    >>> lerp(1.0, 3.0, 0.25), lerp(1.0, 3.0, 0.75)
    (1.5, 2.5)
    """
    diff = b - a
    return b - diff * (1.0 - gamma) if gamma >= 0.5 else a + diff * gamma


def _lerp_columns(part: FloatArray, q: float, out: FloatArray) -> None:
    """Quantile ``q`` of each row of the row-partitioned ``part`` into ``out`` (numpy's lerp)."""
    i, j, gamma = quantile_position(part.shape[1], q)
    a, b = part[:, i], part[:, j]
    np.subtract(b, a, out=out)
    if gamma >= 0.5:
        np.multiply(out, 1.0 - gamma, out=out)
        np.subtract(b, out, out=out)
    else:
        np.multiply(out, gamma, out=out)
        np.add(a, out, out=out)


def _kth(n: int, qs: tuple[float, ...]) -> list[int]:
    """Partition points for quantiles ``qs`` of ``n`` values, plus the last (NaN sorts there)."""
    kth = {n - 1}
    for q in qs:
        i, j, _ = quantile_position(n, q)
        kth.update((i, j))
    return sorted(kth)


# --------------------------------------------------------------------------------------------
# Running (expanding) kernels
# --------------------------------------------------------------------------------------------


def running_zscore(
    x: FloatArray,
    state: RunningMoments,
    out: FloatArray,
    loc_out: FloatArray,
    scale_out: FloatArray,
    *,
    scratch: FloatArray | None = None,
) -> None:
    """Expanding z-score of each tick, updating ``state`` to include all of ``x``.

    For tick i, ``loc_out[i]`` / ``scale_out[i]`` are the mean / population std of every value the
    state has seen *including* tick i, and ``out[i] = (x[i] - loc) / scale`` (0.0 where the
    constant rule sets the scale to 0; the first tick ever always has scale 0). The result does
    not depend on how the stream is cut into batches, 1-tick batches included, to float rounding.

    Vectorized with cumulative sums of ``d = x - ref`` and ``d * d``, where ``ref`` is the state's
    mean (or ``x[0]`` for an empty state): ``M2_i = M2_0 + c2_i - c1_i**2 / N_i``. The shift keeps
    the digits raw-price sums would lose (BTCUSDT: price 9,700, window std 0.0017).

    ``out`` may be ``x`` itself (in place); ``loc_out`` and ``scale_out`` must not alias ``x``.
    ``scratch`` needs ``len(x)`` float64 elements; without it one temporary of that size is
    allocated. Raises ValueError, leaving ``state`` unchanged, if ``x`` holds NaN or inf.
    `running_zscore_runs` does the same for many series at once.

    >>> x = np.array([1.0, 3.0, 5.0, 7.0])
    >>> s = RunningMoments()
    >>> out, loc, scale = np.empty(4), np.empty(4), np.empty(4)
    >>> running_zscore(x[:1], s, out[:1], loc[:1], scale[:1])
    >>> running_zscore(x[1:], s, out[1:], loc[1:], scale[1:])
    >>> loc.tolist(), scale.tolist()
    ([1.0, 2.0, 3.0, 4.0], [0.0, 1.0, 1.632993161855452, 2.23606797749979])
    >>> out.round(6).tolist(), s.to_tuple()
    ([0.0, 1.0, 1.224745, 1.341641], (4, 4.0, 20.0))
    """
    m = x.shape[0]
    stats = np.array([[state.mean, state.m2]])
    running_zscore_runs(
        x, _one_run(m), np.array([state.n]), stats, out, loc_out, scale_out, scratch=scratch
    )
    state.n, state.mean, state.m2 = state.n + m, float(stats[0, 0]), float(stats[0, 1])


def running_minmax(
    x: FloatArray,
    state: RunningRange,
    out: FloatArray,
    loc_out: FloatArray,
    scale_out: FloatArray,
    *,
    scratch: FloatArray | None = None,
) -> None:
    """Expanding min-max scaling of each tick, updating ``state`` to include all of ``x``.

    ``loc_out[i]`` is the minimum of everything seen including tick i, ``scale_out[i]`` the
    maximum minus that minimum, ``out[i] = (x[i] - loc) / scale`` (0.0 while the range is 0).
    Exact whatever the batch cuts. ``out`` may be ``x``; ``scratch`` needs ``len(x)`` float64
    elements (a temporary is allocated without it). Raises ValueError, leaving ``state``
    unchanged, if ``x`` holds NaN or inf. `running_minmax_runs` does the same for many series at
    once.

    >>> s = RunningRange()
    >>> x = np.array([5.0, 5.0, 4.0, 6.0])
    >>> out, loc, scale = np.empty(4), np.empty(4), np.empty(4)
    >>> running_minmax(x, s, out, loc, scale)
    >>> out.tolist(), loc.tolist(), scale.tolist()
    ([0.0, 0.0, 0.0, 1.0], [5.0, 5.0, 4.0, 4.0], [0.0, 0.0, 1.0, 2.0])
    """
    m = x.shape[0]
    stats = np.array([[state.lo, state.hi]])
    running_minmax_runs(x, _one_run(m), stats, out, loc_out, scale_out, scratch=scratch)
    state.n, state.lo, state.hi = state.n + m, float(stats[0, 0]), float(stats[0, 1])


def running_zscore_runs(
    x: FloatArray,
    lengths: IntArray,
    seen: IntArray,
    state: FloatArray,
    out: FloatArray,
    loc_out: FloatArray,
    scale_out: FloatArray,
    *,
    scratch: FloatArray | None = None,
) -> None:
    """`running_zscore` of many series at once, each one's new values a run of ``x``.

    Run k is the next ``lengths[k]`` values of a series that has seen ``seen[k]`` values with mean
    ``state[k, 0]`` and M2 ``state[k, 1]``; the runs lie back to back in ``x``. ``state`` moves
    on in place (the caller adds ``lengths`` to its counts). Each run gets exactly the values
    `running_zscore` gives it alone, bit for bit, from a fixed number of passes over ``x`` plus
    two ``cumsum`` calls per run: about 2.5 us per run instead of 25 for a call per series, which
    is what a batch of thousands of symbols needs.

    The prefix sums restart at every run, each from its own ``ref``: one sum carried across
    series at different price levels would lose the smaller ones' digits. ``scratch`` needs
    ``len(x)`` float64 elements when ``lengths`` has one entry and ``2 * len(x)`` when it has more,
    even if only one run holds values (the second half holds
    each value's run number); without it a temporary is allocated. Raises ValueError, leaving
    ``state`` unchanged, if a run holds NaN or inf.

    >>> x = np.array([3.0, 5.0, 7.0, 10.0, 20.0])  # series A goes on from [1.0], B is new
    >>> seen, state = np.array([1, 0]), np.array([[1.0, 0.0], [0.0, 0.0]])
    >>> out, loc, scale = np.empty(5), np.empty(5), np.empty(5)
    >>> running_zscore_runs(x, np.array([3, 2]), seen, state, out, loc, scale)
    >>> loc.tolist(), scale.round(6).tolist()
    ([2.0, 3.0, 4.0, 10.0, 15.0], [1.0, 1.632993, 2.236068, 0.0, 5.0])
    >>> state.tolist()
    [[4.0, 20.0], [15.0, 50.0]]
    """
    runs = _Runs.check(x, lengths, state, out, loc_out, scale_out, seen=seen)
    if runs.size == 0:
        return
    s, index = runs.scratch(scratch)
    n0 = seen.astype(np.float64)
    # ref: the mean so far, or a new series' first value. The old values then add 0 to sum(d)
    # and exactly M2_0 to sum(d * d).
    ref = np.where(n0 > 0, state[:, 0], x[runs.first])
    runs.spread(ref, index, s)
    np.subtract(x, s, out=loc_out)
    np.multiply(loc_out, loc_out, out=scale_out)
    runs.scan((np.add, loc_out, loc_out), (np.add, scale_out, scale_out))  # c1_i, c2_i
    c1, c2 = runs.lasts(loc_out, 0.0), runs.lasts(scale_out, 0.0)
    n = np.maximum(n0 + lengths, 1.0)
    mean = ref + c1 / n
    m2 = np.maximum(state[:, 1] + c2 - c1 * c1 / n, 0.0)
    bad = runs.live & ~(np.isfinite(mean) & np.isfinite(m2))
    if bad.any():
        raise ValueError(runs.refusal("running_zscore", bad, "NaN or inf"))
    runs.spread(state[:, 1], index, s)
    np.add(scale_out, s, out=scale_out)  # M2_0 + c2_i
    runs.counts(n0, s)  # N_i = n0 + i + 1
    np.divide(loc_out, s, out=loc_out)  # mean_i - ref
    np.divide(scale_out, s, out=scale_out)  # (M2_0 + c2_i) / N_i
    np.multiply(loc_out, loc_out, out=s)
    np.subtract(scale_out, s, out=scale_out)  # var_i = M2_i / N_i
    np.maximum(scale_out, 0.0, out=scale_out)
    np.sqrt(scale_out, out=scale_out)
    runs.spread(ref, index, s)
    np.add(loc_out, s, out=loc_out)
    np.subtract(x, loc_out, out=out)
    _zscore_keep(loc_out, scale_out, s)
    _divide_kept(out, scale_out, s)
    state[:, 0] = np.where(runs.live, mean, state[:, 0])
    state[:, 1] = np.where(runs.live, m2, state[:, 1])


def running_minmax_runs(
    x: FloatArray,
    lengths: IntArray,
    state: FloatArray,
    out: FloatArray,
    loc_out: FloatArray,
    scale_out: FloatArray,
    *,
    scratch: FloatArray | None = None,
) -> None:
    """`running_minmax` of many series at once, each one's new values a run of ``x``.

    Run k is the next ``lengths[k]`` values of a series whose minimum and maximum so far are
    ``state[k, 0]`` and ``state[k, 1]`` (``inf`` and ``-inf`` for a new one); ``state`` moves on
    in place. Exact, whatever the cuts; ``scratch`` as in `running_zscore_runs`. Raises
    ValueError, leaving ``state`` unchanged, if a run holds NaN or inf.

    >>> x = np.array([3.0, 0.0, 10.0, 20.0])  # series A goes on from [1.0, 2.0], B is new
    >>> state = np.array([[1.0, 2.0], [np.inf, -np.inf]])
    >>> out, loc, scale = np.empty(4), np.empty(4), np.empty(4)
    >>> running_minmax_runs(x, np.array([2, 2]), state, out, loc, scale)
    >>> out.tolist(), loc.tolist(), scale.tolist()
    ([1.0, 0.0, 0.0, 1.0], [1.0, 0.0, 10.0, 10.0], [2.0, 3.0, 0.0, 10.0])
    >>> state.tolist()
    [[0.0, 3.0], [10.0, 20.0]]
    """
    runs = _Runs.check(x, lengths, state, out, loc_out, scale_out)
    if runs.size == 0:
        return
    s, index = runs.scratch(scratch)
    runs.scan((np.minimum, x, loc_out), (np.maximum, x, scale_out))
    runs.spread(state[:, 0], index, s)
    np.minimum(loc_out, s, out=loc_out)
    runs.spread(state[:, 1], index, s)
    np.maximum(scale_out, s, out=scale_out)
    lo, hi = runs.lasts(loc_out, np.inf), runs.lasts(scale_out, -np.inf)
    bad = runs.live & ~(np.isfinite(lo) & np.isfinite(hi))
    if bad.any():
        raise ValueError(runs.refusal("running_minmax", bad, "NaN or inf"))
    np.subtract(scale_out, loc_out, out=scale_out)
    np.subtract(x, loc_out, out=out)
    np.greater(scale_out, 0.0, out=s)
    _divide_kept(out, scale_out, s)
    state[:, 0] = np.where(runs.live, lo, state[:, 0])
    state[:, 1] = np.where(runs.live, hi, state[:, 1])


def _one_run(m: int) -> IntArray:
    return np.array([m], dtype=np.int64)


@dataclass(frozen=True, slots=True)
class _Runs:
    """Where the runs of a `running_*_runs` call lie in ``x``, and the steps they share."""

    size: int  # len(x)
    starts: IntArray  # of every run, empty ones included
    lengths: IntArray
    live: npt.NDArray[np.bool_]  # the runs with at least one value

    @classmethod
    def check(
        cls,
        x: FloatArray,
        lengths: IntArray,
        state: FloatArray,
        out: FloatArray,
        loc_out: FloatArray,
        scale_out: FloatArray,
        *,
        seen: IntArray | None = None,
    ) -> _Runs:
        m = x.shape[0]
        _check_rows(loc_out, scale_out, m)
        if out.shape != (m,):
            raise ValueError(f"out must have shape ({m},), got {out.shape}")
        if lengths.ndim != 1 or lengths.dtype.kind not in "iu":
            raise ValueError(
                f"lengths must be a 1-D integer array, got {lengths.dtype} of shape {lengths.shape}"
            )
        k = lengths.shape[0]
        if (k and int(lengths.min()) < 0) or int(lengths.sum()) != m:
            raise ValueError(
                f"lengths must be non-negative and add up to len(x) = {m}, got "
                f"{lengths.tolist() if k <= 8 else f'{k} lengths adding up to {lengths.sum()}'}"
            )
        if state.shape != (k, 2) or (seen is not None and seen.shape != (k,)):
            got = f"{state.shape}" + ("" if seen is None else f" and seen {seen.shape}")
            raise ValueError(f"state must have shape ({k}, 2) for {k} runs, got {got}")
        ends = np.cumsum(lengths)
        return cls(m, ends - lengths, lengths, lengths > 0)

    @property
    def first(self) -> IntArray:
        """Each run's first index (clipped into ``x`` for empty runs, whose values are unused)."""
        return np.minimum(self.starts, self.size - 1)

    def scratch(self, scratch: FloatArray | None) -> tuple[FloatArray, IntArray | None]:
        """A float64 temporary of ``len(x)`` and, for several runs, each value's run number."""
        several = self.lengths.shape[0] > 1
        work = _scratch(scratch, self.size * (2 if several else 1))
        if not several:
            return work[: self.size], None
        index = work[self.size :].view(np.int64)
        index.fill(0)
        live = np.flatnonzero(self.live)
        index[self.starts[live[1:]]] = np.diff(live)
        index[0] = live[0]
        np.cumsum(index, out=index)
        return work[: self.size], index

    def spread(self, values: FloatArray, index: IntArray | None, out: FloatArray) -> None:
        """``out[i] = values[run of i]``."""
        if index is None:
            out.fill(values[0])
        else:
            np.take(values, index, out=out, mode="clip")

    def counts(self, n0: FloatArray, out: FloatArray) -> None:
        """``out[i]``: how many values the series of value i has seen up to it (exact: the
        partial sums are integers)."""
        out.fill(1.0)
        live = np.flatnonzero(self.live)
        firsts = n0[live] + 1.0
        firsts[1:] -= (n0 + self.lengths)[live[:-1]]
        out[self.starts[live]] = firsts
        np.cumsum(out, out=out)

    def scan(self, *steps: tuple[np.ufunc, FloatArray, FloatArray]) -> None:
        """For each ``(ufunc, src, out)``: each run of ``out`` gets ``ufunc.accumulate`` of that
        run of ``src`` (which may be ``out``): prefixes restart at every run. A Python step per
        run (about 1 us per step)."""
        for a, b in zip(self.starts.tolist(), (self.starts + self.lengths).tolist(), strict=True):
            if b > a:
                for ufunc, src, out in steps:
                    ufunc.accumulate(src[a:b], out=out[a:b])

    def lasts(self, arr: FloatArray, empty: float) -> FloatArray:
        """Each run's last value of ``arr``, ``empty`` for empty runs."""
        ends = np.maximum(self.starts + self.lengths - 1, 0)
        return np.where(self.live, arr[ends], empty)

    def refusal(self, kernel: str, bad: npt.NDArray[np.bool_], what: str) -> str:
        k = int(np.flatnonzero(bad)[0])
        where = "x" if self.lengths.shape[0] == 1 else f"run {k} of x (from index {self.starts[k]})"
        return (
            f"{kernel}: {where} ({self.lengths[k]} values) holds {what}; drop non-finite ticks "
            "first (the running state is left as it was)"
        )


# --------------------------------------------------------------------------------------------
# Window kernels: rows of an (m, W) matrix, in place
# --------------------------------------------------------------------------------------------


def _check_matrix(mat: FloatArray, loc_out: FloatArray, scale_out: FloatArray) -> tuple[int, int]:
    if mat.ndim != 2 or mat.shape[1] == 0:
        raise ValueError(f"mat must be (m, W) with W >= 1, got shape {mat.shape}")
    m, w = mat.shape
    _check_rows(loc_out, scale_out, m)
    return m, w


def window_zscore(
    mat: FloatArray,
    loc_out: FloatArray,
    scale_out: FloatArray,
    *,
    scratch: FloatArray | None = None,
) -> None:
    """Z-score each row of ``mat`` (one window per row) in place; row mean / std into the outs.

    Two-pass: row mean (numpy's pairwise sum), center in place, population std from the sum of
    squares of the centered row. The constant rule sets ``scale`` to 0.0 and the row to 0.0.
    ``scratch`` needs ``m`` float64 elements (one per row; allocated without it). Nothing of the
    matrix's size is allocated.

    >>> mat = np.array([[1.0, 2.0, 3.0], [9700.25, 9700.25, 9700.25]])
    >>> loc, scale = np.empty(2), np.empty(2)
    >>> window_zscore(mat, loc, scale)
    >>> mat.round(6).tolist(), loc.tolist(), scale.round(6).tolist()
    ([[-1.224745, 0.0, 1.224745], [0.0, 0.0, 0.0]], [2.0, 9700.25], [0.816497, 0.0])
    """
    m, w = _check_matrix(mat, loc_out, scale_out)
    np.mean(mat, axis=1, out=loc_out)
    np.subtract(mat, loc_out[:, None], out=mat)
    np.einsum("ij,ij->i", mat, mat, out=scale_out)
    np.divide(scale_out, w, out=scale_out)
    np.sqrt(scale_out, out=scale_out)
    keep = _scratch(scratch, m)
    _zscore_keep(loc_out, scale_out, keep)
    _divide_kept(mat, scale_out, keep)


def window_minmax(
    mat: FloatArray,
    loc_out: FloatArray,
    scale_out: FloatArray,
    *,
    scratch: FloatArray | None = None,
) -> None:
    """Min-max scale each row of ``mat`` in place: ``loc`` = row min, ``scale`` = max - min.

    Constant rows get scale 0.0 and all-zero values. ``scratch``: ``m`` float64 elements.

    >>> mat = np.array([[2.0, 4.0, 3.0], [7.0, 7.0, 7.0]])
    >>> loc, scale = np.empty(2), np.empty(2)
    >>> window_minmax(mat, loc, scale)
    >>> mat.tolist(), loc.tolist(), scale.tolist()
    ([[0.0, 1.0, 0.5], [0.0, 0.0, 0.0]], [2.0, 7.0], [2.0, 0.0])
    """
    m, _ = _check_matrix(mat, loc_out, scale_out)
    np.min(mat, axis=1, out=loc_out)
    np.max(mat, axis=1, out=scale_out)
    np.subtract(scale_out, loc_out, out=scale_out)
    np.subtract(mat, loc_out[:, None], out=mat)
    keep = _scratch(scratch, m)
    np.greater(scale_out, 0.0, out=keep)
    _divide_kept(mat, scale_out, keep)


def window_robust(
    mat: FloatArray,
    loc_out: FloatArray,
    scale_out: FloatArray,
    scratch: FloatArray,
) -> None:
    """Robust-scale each row of ``mat`` in place: ``loc`` = median, ``scale`` = IQR (q75 - q25).

    Quantiles are numpy's default 'linear' ones, rounding for rounding: ``mat`` is copied into
    ``scratch`` (same shape as ``mat``), which is partitioned in place at the few positions the
    quantiles need (no full sort, no (m, W) temporary). An IQR of 0 gives scale 0.0 and a row of
    0.0; a row holding NaN gives NaN loc, scale and values (like ``np.quantile``).

    >>> mat = np.array([[1.0, 2.0, 3.0, 4.0, 100.0], [5.0, 5.0, 5.0, 5.0, 6.0]])
    >>> loc, scale = np.empty(2), np.empty(2)
    >>> window_robust(mat, loc, scale, np.empty_like(mat))
    >>> mat.tolist(), loc.tolist(), scale.tolist()
    ([[-1.0, -0.5, 0.0, 0.5, 48.5], [0.0, 0.0, 0.0, 0.0, 0.0]], [3.0, 5.0], [2.0, 0.0])
    """
    _, w = _check_matrix(mat, loc_out, scale_out)
    if scratch.shape != mat.shape:
        raise ValueError(f"scratch must have the shape of mat {mat.shape}, got {scratch.shape}")
    np.copyto(scratch, mat)
    scratch.partition(_kth(w, (0.25, 0.5, 0.75)), axis=1)
    _lerp_columns(scratch, 0.75, loc_out)
    _lerp_columns(scratch, 0.25, scale_out)
    np.subtract(loc_out, scale_out, out=scale_out)
    _lerp_columns(scratch, 0.5, loc_out)
    # The quantiles are read; scratch's first column is free for the per-row flags.
    flag = scratch[:, 0]
    np.isnan(scratch[:, w - 1], out=flag)  # NaN sorts last
    if flag.any():
        rows = np.flatnonzero(flag)
        loc_out[rows] = np.nan
        scale_out[rows] = np.nan
    np.subtract(mat, loc_out[:, None], out=mat)
    np.greater(scale_out, 0.0, out=flag)
    _divide_kept(mat, scale_out, flag)


def window_normalize(
    mode: NormalizeMode,
    mat: FloatArray,
    loc_out: FloatArray,
    scale_out: FloatArray,
    scratch: FloatArray,
) -> None:
    """Normalize each row of ``mat`` in place by a per-window ``mode``; ``none`` leaves it.

    ``scratch``: at least ``m`` float64 elements, ``m * W`` for ``robust``. A running mode is
    an error: its statistics come from each symbol's history, not from the row.

    >>> mat = np.array([[1.0, 3.0]])
    >>> loc, scale = np.empty(1), np.empty(1)
    >>> window_normalize("window-minmax", mat, loc, scale, np.empty(2))
    >>> mat.tolist(), loc.tolist(), scale.tolist()
    ([[0.0, 1.0]], [1.0], [2.0])
    """
    m = mat.shape[0]
    if mode == "window-zscore":
        window_zscore(mat, loc_out, scale_out, scratch=scratch[:m])
    elif mode == "window-minmax":
        window_minmax(mat, loc_out, scale_out, scratch=scratch[:m])
    elif mode == "robust":
        window_robust(mat, loc_out, scale_out, scratch[: mat.size].reshape(mat.shape))
    elif mode != "none":
        raise ValueError(f"window_normalize: {mode!r} is not a per-window mode")


# --------------------------------------------------------------------------------------------
# One whole series, in place
# --------------------------------------------------------------------------------------------


def _finish_scalar(x: FloatArray, loc: float, scale: float, kept: bool) -> tuple[float, float]:
    if kept:
        np.divide(x, scale, out=x)
        return loc, scale
    if math.isnan(scale) or math.isnan(loc):
        x.fill(np.nan)
        return math.nan, math.nan
    x.fill(0.0)
    return loc, 0.0


def zscore_inplace(x: FloatArray) -> tuple[float, float]:
    """Z-score one series in place (two-pass, population std); returns ``(loc, scale)``.

    The constant rule applies: a constant series becomes all 0.0 with scale 0.0.

    >>> x = np.array([1.0, 2.0, 3.0, 4.0])
    >>> zscore_inplace(x), x.round(6).tolist()
    ((2.5, 1.118033988749895), [-1.341641, -0.447214, 0.447214, 1.341641])
    """
    n = x.shape[0]
    if n == 0:
        return 0.0, 0.0
    loc = float(np.mean(x))
    np.subtract(x, loc, out=x)
    scale = math.sqrt(float(np.dot(x, x)) / n)
    return _finish_scalar(x, loc, scale, scale > CONST_RTOL * abs(loc))


def zscore_alloc(x: FloatArray) -> FloatArray:
    """Z-score of ``x`` into a new array, the idiomatic allocating way (the benchmark's baseline).

    Same numbers as ``zscore_inplace`` to float rounding; ``x`` is untouched.

    >>> zscore_alloc(np.array([1.0, 3.0])).tolist()
    [-1.0, 1.0]
    """
    if x.size == 0:
        return x.copy()
    loc = float(x.mean())
    scale = float(x.std())
    if scale > CONST_RTOL * abs(loc):
        z: FloatArray = (x - loc) / scale
        return z
    return np.full_like(x, np.nan) if math.isnan(scale) else np.zeros_like(x)


def minmax_inplace(x: FloatArray) -> tuple[float, float]:
    """Min-max scale one series in place to [0, 1]; returns ``(loc, scale)`` = ``(min, max - min)``.

    >>> x = np.array([2.0, 6.0, 4.0])
    >>> minmax_inplace(x), x.tolist()
    ((2.0, 4.0), [0.0, 1.0, 0.5])
    """
    if x.shape[0] == 0:
        return 0.0, 0.0
    lo, hi = float(np.min(x)), float(np.max(x))
    np.subtract(x, lo, out=x)
    scale = hi - lo
    return _finish_scalar(x, lo, scale, scale > 0.0)


def robust_inplace(x: FloatArray, scratch: FloatArray) -> tuple[float, float]:
    """Robust-scale one series in place; returns ``(median, IQR)`` (numpy 'linear' quantiles).

    ``scratch`` needs ``len(x)`` float64 elements (partitioned in place: no sort, no copy of x
    allocated). An IQR of 0 gives all 0.0; NaN in ``x`` gives all NaN, like ``np.quantile``.

    >>> x = np.array([1.0, 2.0, 3.0, 4.0, 100.0])
    >>> robust_inplace(x, np.empty(5)), x.tolist()
    ((3.0, 2.0), [-1.0, -0.5, 0.0, 0.5, 48.5])
    """
    n = x.shape[0]
    if n == 0:
        return 0.0, 0.0
    part = _scratch(scratch, n)
    np.copyto(part, x)
    part.partition(_kth(n, (0.25, 0.5, 0.75)))

    def quantile(q: float) -> float:
        i, j, gamma = quantile_position(n, q)
        return lerp(float(part[i]), float(part[j]), gamma)

    loc = quantile(0.5)
    scale = quantile(0.75) - quantile(0.25)
    if math.isnan(part[n - 1]):
        loc = scale = math.nan
    np.subtract(x, loc, out=x)
    return _finish_scalar(x, loc, scale, scale > 0.0)


def _is_zscored(x: FloatArray, atol: float) -> bool:
    n = x.shape[0]
    mean = float(np.mean(x))
    if not abs(mean) <= atol:
        return False
    # With |mean| this small, E[x^2] - mean^2 loses nothing (and needs no temporary).
    var = max(float(np.dot(x, x)) / n - mean * mean, 0.0)
    return abs(math.sqrt(var) - 1.0) <= atol


def _is_minmaxed(x: FloatArray, atol: float) -> bool:
    return abs(float(np.min(x))) <= atol and abs(float(np.max(x)) - 1.0) <= atol


def maybe_normalize(
    x: FloatArray,
    mode: SeriesMode,
    *,
    out: FloatArray | None = None,
    atol: float = 1e-6,
) -> FloatArray:
    """Normalize a whole series unless it already is; never normalize twice.

    Already normalized means, for ``"zscore"``: ``|mean| <= atol`` and ``|std - 1| <= atol``; for
    ``"minmax"``: ``|min| <= atol`` and ``|max - 1| <= atol``. Then ``x`` itself is returned,
    untouched (the same object, even if ``out`` is given). Otherwise ``x`` is normalized into
    ``out`` (in place when ``out`` is None) and that is returned. ``"none"`` returns ``x``.

    >>> z = np.array([-1.0, 1.0])
    >>> maybe_normalize(z, "zscore") is z
    True
    >>> maybe_normalize(np.array([1.0, 3.0]), "zscore").tolist()
    [-1.0, 1.0]
    """
    if mode == "none" or x.shape[0] == 0:
        return x
    if mode == "zscore":
        done = _is_zscored(x, atol)
    elif mode == "minmax":
        done = _is_minmaxed(x, atol)
    else:
        raise ValueError(f"maybe_normalize: mode {mode!r} is not one of {get_args(SeriesMode)}")
    if done:
        return x
    target = x
    if out is not None:
        if out.shape != x.shape:
            raise ValueError(f"out must have the shape of x {x.shape}, got {out.shape}")
        np.copyto(out, x)
        target = out
    if mode == "zscore":
        zscore_inplace(target)
    else:
        minmax_inplace(target)
    return target


# --------------------------------------------------------------------------------------------
# Back to the value's units
# --------------------------------------------------------------------------------------------


def denormalize(pred: FloatArray, loc: FloatArray, scale: FloatArray) -> FloatArray:
    """Map model outputs back to the value's units in place: ``pred = pred * scale + loc``.

    ``pred`` is (m,) or (m, H) (one row per window or tick, H horizons); ``loc`` and ``scale``
    are (m,). Where ``scale == 0`` the result is ``loc``. Returns ``pred``.

    >>> pred = np.array([[0.5, -1.0], [3.0, 3.0]])
    >>> denormalize(pred, np.array([10.0, 7.0]), np.array([2.0, 0.0])).tolist()
    [[11.0, 8.0], [7.0, 7.0]]
    """
    m = pred.shape[0]
    if pred.ndim not in (1, 2) or loc.shape != (m,) or scale.shape != (m,):
        raise ValueError(
            f"pred must be (m,) or (m, H) with loc and scale (m,), got pred {pred.shape}, "
            f"loc {loc.shape}, scale {scale.shape}"
        )
    if pred.ndim == 1:
        np.multiply(pred, scale, out=pred)
        np.add(pred, loc, out=pred)
    else:
        np.multiply(pred, scale[:, None], out=pred)
        np.add(pred, loc[:, None], out=pred)
    return pred
