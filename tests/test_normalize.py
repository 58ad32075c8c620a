"""Normalization kernels against plain float64 references: random walks, flat runs, real ticks."""

from __future__ import annotations

import itertools
import pickle
import tracemalloc

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.lib.stride_tricks import sliding_window_view

from tests.common import REAL_DATA, price_walks
from tickpool.operators import normalize
from tickpool.operators.normalize import (
    CONST_RTOL,
    RunningMoments,
    RunningRange,
    denormalize,
    is_running,
    is_windowed,
    maybe_normalize,
    minmax_inplace,
    parse_mode,
    robust_inplace,
    running_minmax,
    running_minmax_runs,
    running_zscore,
    running_zscore_runs,
    window_minmax,
    window_robust,
    window_zscore,
    zscore_alloc,
    zscore_inplace,
)

FloatArray = npt.NDArray[np.float64]

BTCUSDT = REAL_DATA / "tardis_binance_futures_btcusdt_trades_20200222.arrow"

KERNEL_SETTINGS = settings(max_examples=120, deadline=None)


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def cut_points(data: st.DataObject, n: int) -> list[int]:
    """Random batch boundaries 0 = b0 < b1 < ... < bk = n; adjacent cuts give 1-tick batches."""
    inner = data.draw(st.sets(st.integers(1, n - 1), max_size=n)) if n > 1 else set()
    return [0, *sorted(inner), n]


@pytest.fixture(scope="module")
def btcusdt_prices() -> FloatArray:
    if not BTCUSDT.exists():
        pytest.skip(f"real data not found: {BTCUSDT}")
    table = pa.ipc.open_file(pa.memory_map(str(BTCUSDT), "r")).read_all()
    prices: FloatArray = table.column("price").to_numpy().copy()
    return prices


# ---------------------------------------------------------------------------------------------
# Plain references
# ---------------------------------------------------------------------------------------------


def constant_rule(loc: FloatArray, scale: FloatArray) -> FloatArray:
    """The documented z-score rule: a scale <= CONST_RTOL * |loc| is exactly 0."""
    return np.where(scale <= CONST_RTOL * np.abs(loc), 0.0, scale)


def scaled(x: FloatArray, loc: FloatArray, scale: FloatArray) -> FloatArray:
    """(x - loc) / scale, 0.0 where scale == 0."""
    safe = np.where(scale > 0, scale, 1.0)
    return np.where(scale > 0, (x - loc) / safe, 0.0)


def prefix_zscore_reference(x: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    loc = np.array([np.mean(x[: i + 1]) for i in range(len(x))])
    scale = constant_rule(loc, np.array([np.std(x[: i + 1]) for i in range(len(x))]))
    return scaled(x, loc, scale), loc, scale


def prefix_minmax_reference(x: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    lo = np.array([np.min(x[: i + 1]) for i in range(len(x))])
    hi = np.array([np.max(x[: i + 1]) for i in range(len(x))])
    return scaled(x, lo, hi - lo), lo, hi - lo


def row_reference(mat: FloatArray, mode: str) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Per-row loc, scale and normalized rows, one row at a time with numpy's own functions."""
    locs, scales = [], []
    for row in mat:
        if mode == "zscore":
            loc, scale = np.mean(row), np.std(row)
            scale = 0.0 if scale <= CONST_RTOL * abs(loc) else scale
        elif mode == "minmax":
            loc, scale = np.min(row), np.max(row) - np.min(row)
        else:
            q25, q50, q75 = np.quantile(row, [0.25, 0.5, 0.75])
            loc, scale = q50, q75 - q25
        locs.append(loc)
        scales.append(scale)
    loc_a, scale_a = np.array(locs), np.array(scales)
    return scaled(mat, loc_a[:, None], scale_a[:, None]), loc_a, scale_a


WINDOW_KERNELS = {"zscore": window_zscore, "minmax": window_minmax, "robust": window_robust}


def run_window(mode: str, mat: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Run one window kernel on a copy of ``mat``; returns (normalized, loc, scale)."""
    work = np.ascontiguousarray(mat, dtype=np.float64).copy()
    m = work.shape[0]
    loc, scale = np.full(m, -7.0), np.full(m, -7.0)
    if mode == "robust":
        window_robust(work, loc, scale, np.empty_like(work))
    else:
        WINDOW_KERNELS[mode](work, loc, scale, scratch=np.empty(m))
    return work, loc, scale


def run_running(
    kind: str, x: FloatArray, cuts: list[int]
) -> tuple[FloatArray, FloatArray, FloatArray, tuple[int, float, float]]:
    """Feed ``x`` batch by batch (boundaries ``cuts``) through one running kernel."""
    n = len(x)
    out, loc, scale = np.full(n, -7.0), np.full(n, -7.0), np.full(n, -7.0)
    scratch = np.empty(n)
    state: RunningMoments | RunningRange
    if kind == "zscore":
        state = RunningMoments()
        for a, b in itertools.pairwise(cuts):
            running_zscore(x[a:b], state, out[a:b], loc[a:b], scale[a:b], scratch=scratch)
    else:
        state = RunningRange()
        for a, b in itertools.pairwise(cuts):
            running_minmax(x[a:b], state, out[a:b], loc[a:b], scale[a:b], scratch=scratch)
    return out, loc, scale, state.to_tuple()


def assert_normalized_close(
    got: tuple[FloatArray, FloatArray, FloatArray],
    want: tuple[FloatArray, FloatArray, FloatArray],
) -> None:
    """1e-7 absolute on normalized values, 1e-9 relative on loc and scale (zeros exactly)."""
    np.testing.assert_allclose(got[0], want[0], rtol=0, atol=1e-7, err_msg="normalized")
    np.testing.assert_allclose(got[1], want[1], rtol=1e-9, atol=0, err_msg="loc")
    np.testing.assert_allclose(got[2], want[2], rtol=1e-9, atol=0, err_msg="scale")


# ---------------------------------------------------------------------------------------------
# Running state
# ---------------------------------------------------------------------------------------------


@KERNEL_SETTINGS
@given(x=price_walks(min_size=2), data=st.data())
def test_running_moments_update_and_merge_match_numpy(x: FloatArray, data: st.DataObject) -> None:
    k = data.draw(st.integers(0, len(x)))
    left, right = RunningMoments(), RunningMoments()
    for v in x[:k]:
        left.update(float(v))
    for v in x[k:]:
        right.update(float(v))
    left.merge(right)
    assert left.n == len(x)
    np.testing.assert_allclose(left.mean, np.mean(x), rtol=1e-12)
    np.testing.assert_allclose(left.std, np.std(x), rtol=1e-9, atol=1e-12 * abs(np.mean(x)))


def test_running_range_update_merge_and_empty_scale() -> None:
    a, b = RunningRange(), RunningRange()
    assert a.scale == 0.0
    for v in (3.0, 1.0):
        a.update(v)
    b.update(7.0)
    a.merge(b)
    a.merge(RunningRange())
    assert a.to_tuple() == (3, 1.0, 7.0)
    assert a.scale == 6.0


@pytest.mark.parametrize("state", [RunningMoments(5, 9700.5, 0.125), RunningRange(5, 1.0, 2.5)])
def test_running_state_snapshots_round_trip_and_pickle(
    state: RunningMoments | RunningRange,
) -> None:
    assert type(state).from_tuple(state.to_tuple()) == state
    assert pickle.loads(pickle.dumps(state)) == state
    assert pickle.loads(pickle.dumps(RunningRange())).to_tuple() == (0, np.inf, -np.inf)


# ---------------------------------------------------------------------------------------------
# Running kernels
# ---------------------------------------------------------------------------------------------


@KERNEL_SETTINGS
@given(x=price_walks(), data=st.data())
def test_running_zscore_matches_prefix_reference_whatever_the_batch_cuts(
    x: FloatArray, data: st.DataObject
) -> None:
    n = len(x)
    want = prefix_zscore_reference(x)
    one_shot = run_running("zscore", x, [0, n])
    chunked = run_running("zscore", x, cut_points(data, n))
    single_ticks = run_running("zscore", x, list(range(n + 1)))
    for got in (one_shot, chunked, single_ticks):
        assert_normalized_close(got[:3], want)
        assert np.isfinite(got[0]).all()
    for got in (chunked, single_ticks):
        assert_normalized_close(got[:3], one_shot[:3])
    for got in (one_shot, chunked, single_ticks):
        n_, mean, m2 = got[3]
        assert n_ == n
        np.testing.assert_allclose(mean, np.mean(x), rtol=1e-12)
        np.testing.assert_allclose(np.sqrt(m2 / n), want[2][-1], rtol=1e-9, atol=0)


@KERNEL_SETTINGS
@given(x=price_walks(), data=st.data())
def test_running_minmax_matches_prefix_reference_whatever_the_batch_cuts(
    x: FloatArray, data: st.DataObject
) -> None:
    n = len(x)
    want = prefix_minmax_reference(x)
    one_shot = run_running("minmax", x, [0, n])
    for got in (one_shot, run_running("minmax", x, cut_points(data, n))):
        assert_normalized_close(got[:3], want)
        # Min and max are exact, so the batch cuts change nothing at all.
        np.testing.assert_array_equal(got[0], one_shot[0])
        assert got[3] == (n, float(x.min()), float(x.max()))
    single = run_running("minmax", x, list(range(n + 1)))
    np.testing.assert_array_equal(single[0], one_shot[0])


@pytest.mark.parametrize("kind", ["zscore", "minmax"])
def test_running_kernels_work_in_place(kind: str) -> None:
    x = 9700.0 + np.cumsum(np.random.default_rng(1).integers(-2, 3, 500)) * 0.1
    want = run_running(kind, x, [0, 200, 201, 500])
    y = x.copy()
    loc, scale = np.empty(500), np.empty(500)
    if kind == "zscore":
        running_zscore(y, RunningMoments(), y, loc, scale)
    else:
        running_minmax(y, RunningRange(), y, loc, scale)
    np.testing.assert_allclose(y, want[0], rtol=0, atol=1e-9)


def test_running_zscore_of_a_constant_stream_is_zero_not_nan() -> None:
    state = RunningMoments()
    for batch in (np.full(3, 0.1), np.full(1, 0.1), np.full(50, 0.1)):
        out, loc, scale = np.empty_like(batch), np.empty_like(batch), np.empty_like(batch)
        running_zscore(batch, state, out, loc, scale)
        assert (out == 0.0).all()
        assert (scale == 0.0).all()
        assert (loc == 0.1).all()
    assert state.to_tuple() == (54, 0.1, 0.0)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_running_kernels_refuse_non_finite_ticks_and_keep_their_state(bad: float) -> None:
    x = np.array([1.0, 2.0, bad, 3.0])
    buf = [np.empty(4) for _ in range(3)]
    moments = RunningMoments(2, 5.0, 1.0)
    with pytest.raises(ValueError, match="NaN or inf"):
        running_zscore(x, moments, *buf)
    assert moments.to_tuple() == (2, 5.0, 1.0)
    rng = RunningRange(2, 0.0, 9.0)
    with pytest.raises(ValueError, match="NaN or inf"):
        running_minmax(x, rng, *buf)
    assert rng.to_tuple() == (2, 0.0, 9.0)


def test_runs_kernels_name_the_run_with_a_bad_tick_and_keep_every_state() -> None:
    x = np.array([1.0, 2.0, 3.0, np.nan, 5.0])
    lengths = np.array([2, 0, 3])
    buf = [np.empty(5) for _ in range(3)]
    state = np.array([[5.0, 1.0], [7.0, 0.0], [0.0, 0.0]])
    with pytest.raises(ValueError, match=r"run 2 of x \(from index 2\) \(3 values\) holds NaN"):
        running_zscore_runs(x, lengths, np.array([2, 1, 0]), state, *buf)
    assert state.tolist() == [[5.0, 1.0], [7.0, 0.0], [0.0, 0.0]]
    span = np.array([[0.0, 9.0], [1.0, 1.0], [np.inf, -np.inf]])
    with pytest.raises(ValueError, match=r"running_minmax: run 2 of x"):
        running_minmax_runs(x, lengths, span, *buf)
    assert span.tolist() == [[0.0, 9.0], [1.0, 1.0], [np.inf, -np.inf]]


def test_runs_kernels_say_what_they_expected() -> None:
    x, buf = np.arange(4.0), [np.empty(4) for _ in range(3)]
    with pytest.raises(ValueError, match=r"1-D integer array, got float64 of shape \(2,\)"):
        running_minmax_runs(x, np.array([1.0, 3.0]), np.zeros((2, 2)), *buf)
    with pytest.raises(ValueError, match=r"add up to len\(x\) = 4, got \[1, 2\]"):
        running_minmax_runs(x, np.array([1, 2]), np.zeros((2, 2)), *buf)
    with pytest.raises(ValueError, match=r"state must have shape \(2, 2\) for 2 runs"):
        running_minmax_runs(x, np.array([1, 3]), np.zeros((3, 2)), *buf)
    with pytest.raises(ValueError, match="scratch must be 1-D with at least 8 elements"):
        running_zscore_runs(
            x, np.array([1, 3]), np.zeros(2, np.int64), np.zeros((2, 2)), *buf, scratch=buf[0]
        )


def test_running_kernels_accept_an_empty_batch() -> None:
    empty = np.empty(0)
    state = RunningMoments(3, 1.0, 2.0)
    running_zscore(empty, state, empty, empty, empty)
    assert state.to_tuple() == (3, 1.0, 2.0)


def run_runs(
    kind: str, series: list[FloatArray], cuts: list[int]
) -> tuple[FloatArray, FloatArray, FloatArray, list[tuple[int, float, float]]]:
    """Feed every series through one runs kernel: the first ``cuts[i]`` values of series i as
    one call's run i, the rest as a second call's. Returns out, loc and scale series by series
    (as `run_running` would give them one after the other) and each series' state."""
    k = len(series)
    seen = np.zeros(k, dtype=np.int64)
    state = np.zeros((k, 2)) if kind == "zscore" else np.tile([np.inf, -np.inf], (k, 1))
    per_series: list[list[FloatArray]] = [[] for _ in range(k)]  # (out, loc, scale) per call
    for call in range(2):
        runs = [x[:c] if call == 0 else x[c:] for x, c in zip(series, cuts, strict=True)]
        lengths = np.array([len(r) for r in runs], dtype=np.int64)
        x = np.concatenate(runs)
        n = len(x)
        out, loc, scale = np.full(n, -7.0), np.full(n, -7.0), np.full(n, -7.0)
        scratch = np.full(2 * n, -7.0)
        if kind == "zscore":
            running_zscore_runs(x, lengths, seen, state, out, loc, scale, scratch=scratch)
        else:
            running_minmax_runs(x, lengths, state, out, loc, scale, scratch=scratch)
        seen += lengths
        bounds = np.cumsum(lengths)[:-1]
        for j, parts in enumerate(
            zip(*(np.split(a, bounds) for a in (out, loc, scale)), strict=True)
        ):
            per_series[j].append(np.stack(parts))
    joined = np.concatenate([np.concatenate(calls, axis=1) for calls in per_series], axis=1)
    states = [(int(n), float(a), float(b)) for n, (a, b) in zip(seen, state, strict=True)]
    return joined[0], joined[1], joined[2], states


@KERNEL_SETTINGS
@pytest.mark.parametrize("kind", ["zscore", "minmax"])
@given(data=st.data())
def test_runs_kernels_give_each_series_what_it_gets_alone(kind: str, data: st.DataObject) -> None:
    """2 to 6 series at price levels 1e-3 to 1e5, side by side in two calls (any series may
    have no values in either): together they match the float64 prefix reference of each, and
    each one's values and state are bit for bit what a call with that series alone gives (the
    one-series kernels are the one-run case of the same code: this checks that runs side by
    side do not disturb each other). A prefix carried from one run into the next would lose
    the low-priced series' digits."""
    k = data.draw(st.integers(2, 6))
    series = [data.draw(price_walks(max_size=80)) for _ in range(k)]
    cuts = [data.draw(st.integers(0, len(x))) for x in series]
    got = run_runs(kind, series, cuts)
    reference = prefix_zscore_reference if kind == "zscore" else prefix_minmax_reference
    want = [np.concatenate(parts) for parts in zip(*map(reference, series), strict=True)]
    assert_normalized_close(got[:3], (want[0], want[1], want[2]))
    alone = [
        run_running(kind, x, sorted({0, c, len(x)})) for x, c in zip(series, cuts, strict=True)
    ]
    for i, arr in enumerate(got[:3]):
        np.testing.assert_array_equal(arr, np.concatenate([a[i] for a in alone]))
    assert got[3] == [a[3] for a in alone]


# ---------------------------------------------------------------------------------------------
# Window kernels
# ---------------------------------------------------------------------------------------------


@KERNEL_SETTINGS
@given(
    x=price_walks(min_size=20), w=st.integers(1, 16), mode=st.sampled_from(sorted(WINDOW_KERNELS))
)
def test_window_kernels_match_row_reference(x: FloatArray, w: int, mode: str) -> None:
    mat = sliding_window_view(x, w)
    got = run_window(mode, mat)
    want = row_reference(np.array(mat), mode)
    assert_normalized_close(got, want)
    assert np.isfinite(got[0]).all()
    flat = np.ptp(mat, axis=1) == 0
    assert (got[2][flat] == 0.0).all()
    assert (got[0][flat] == 0.0).all()


def test_window_zscore_constant_row_gives_zero_even_though_numpy_std_is_not() -> None:
    row = np.full(64, 0.1)
    assert np.std(row) > 0  # the rounded mean leaves ~1e-17: why the constant rule exists
    got = run_window("zscore", np.vstack([row, np.arange(64.0)]))
    assert got[2][0] == 0.0
    assert (got[0][0] == 0.0).all()
    assert got[2][1] > 0


@pytest.mark.parametrize("mode", sorted(WINDOW_KERNELS))
@pytest.mark.parametrize("shape", [(1, 64), (1, 1), (7, 1), (3, 2)])
def test_window_kernels_handle_single_rows_and_single_columns(
    mode: str, shape: tuple[int, int]
) -> None:
    mat = 100.0 + np.arange(float(np.prod(shape))).reshape(shape) ** 1.5
    got = run_window(mode, mat)
    assert_normalized_close(got, row_reference(mat, mode))
    if shape[1] == 1:
        assert (got[0] == 0.0).all()
        assert (got[2] == 0.0).all()
        np.testing.assert_array_equal(got[1], mat[:, 0])


@pytest.mark.parametrize("mode", sorted(WINDOW_KERNELS))
def test_window_rows_with_nan_give_nan_like_numpy_and_leave_other_rows_alone(mode: str) -> None:
    mat = np.array([[1.0, 2.0, 4.0, 8.0], [1.0, np.nan, 4.0, 8.0], [3.0, 3.0, 3.0, 3.0]])
    got = run_window(mode, mat)
    want = row_reference(mat, mode)
    assert np.isnan(got[1][1]) and np.isnan(got[2][1]) and np.isnan(got[0][1]).all()
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g[[0, 2]], w[[0, 2]], rtol=1e-12, atol=1e-12)


def test_window_kernels_reject_mismatched_buffers() -> None:
    mat = np.ones((4, 3))
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        window_zscore(mat, np.empty(3), np.empty(4))
    with pytest.raises(ValueError, match="scratch must have the shape of mat"):
        window_robust(mat, np.empty(4), np.empty(4), np.empty((4, 2)))


# ---------------------------------------------------------------------------------------------
# Whole series and maybe_normalize
# ---------------------------------------------------------------------------------------------


@KERNEL_SETTINGS
@given(x=price_walks())
def test_whole_series_in_place_matches_reference_and_allocating_twin(x: FloatArray) -> None:
    n = len(x)
    for mode, kernel in (
        ("zscore", zscore_inplace),
        ("minmax", minmax_inplace),
        ("robust", lambda y: robust_inplace(y, np.empty(n))),
    ):
        y = x.copy()
        loc, scale = kernel(y)
        want = row_reference(x[None, :], mode)
        assert_normalized_close((y[None, :], np.array([loc]), np.array([scale])), want)
    y = x.copy()
    zscore_inplace(y)
    np.testing.assert_allclose(zscore_alloc(x), y, rtol=0, atol=1e-7)


def test_whole_series_constant_and_empty_give_zero_scale() -> None:
    for kernel in (zscore_inplace, minmax_inplace, lambda y: robust_inplace(y, np.empty(5))):
        y = np.full(5, 9700.1)
        assert kernel(y)[1] == 0.0
        assert (y == 0.0).all()
        assert kernel(np.empty(0)) == (0.0, 0.0)
    assert (zscore_alloc(np.full(5, 9700.1)) == 0.0).all()


def test_maybe_normalize_returns_the_same_object_when_already_normalized() -> None:
    raw = 9700.0 + np.random.default_rng(2).normal(0, 0.5, 1000)
    z = zscore_alloc(raw)
    before = z.copy()
    assert maybe_normalize(z, "zscore") is z
    assert maybe_normalize(z, "zscore", out=np.empty_like(z)) is z
    np.testing.assert_array_equal(z, before)
    mm = (raw - raw.min()) / np.ptp(raw)
    assert maybe_normalize(mm, "minmax") is mm
    assert maybe_normalize(raw, "none") is raw


def test_maybe_normalize_normalizes_otherwise_into_out_or_in_place() -> None:
    raw = 9700.0 + np.random.default_rng(3).normal(0, 0.5, 1000)
    x = raw.copy()
    out = np.empty_like(x)
    assert maybe_normalize(x, "zscore", out=out) is out
    np.testing.assert_array_equal(x, raw)
    np.testing.assert_allclose(out, zscore_alloc(raw), rtol=0, atol=1e-9)
    assert maybe_normalize(x, "minmax") is x
    assert x.min() == 0.0 and x.max() == 1.0
    # Nearly normalized is not normalized: a mean 1e-3 away gets re-centered.
    shifted = zscore_alloc(raw) + 1e-3
    assert abs(maybe_normalize(shifted, "zscore").mean()) < 1e-12
    with pytest.raises(ValueError, match="mode"):
        maybe_normalize(x, "robust")  # type: ignore[arg-type]


@KERNEL_SETTINGS
@given(x=price_walks(min_size=8), w=st.integers(1, 8), h=st.integers(1, 3))
def test_denormalize_inverts_every_normalization(x: FloatArray, w: int, h: int) -> None:
    mat = np.array(sliding_window_view(x, w))
    for mode in sorted(WINDOW_KERNELS):
        z, loc, scale = run_window(mode, mat)
        # Where the scale is 0 (constant row; for robust, IQR 0) everything maps back to loc.
        want = np.where(scale[:, None] > 0, mat, loc[:, None])
        # A model's H-step output maps back row by row, as the window itself does.
        pred = np.tile(z[:, -1:], (1, h))
        np.testing.assert_allclose(denormalize(z, loc, scale), want, rtol=1e-12)
        np.testing.assert_allclose(denormalize(pred, loc, scale)[:, 0], want[:, -1], rtol=1e-12)
    for kind in ("zscore", "minmax"):
        out, loc, scale, _ = run_running(kind, x, [0, len(x)])
        np.testing.assert_allclose(denormalize(out, loc, scale), x, rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# Real ticks: BTCUSDT near 9,700 with a smallest 64-tick std of 0.0017
# ---------------------------------------------------------------------------------------------


def test_running_zscore_on_btcusdt_matches_two_pass_reference(btcusdt_prices: FloatArray) -> None:
    x = btcusdt_prices
    want = prefix_zscore_reference(x)
    cuts = [0, *np.sort(np.random.default_rng(4).choice(np.arange(1, len(x)), 400, replace=False))]
    for got in (run_running("zscore", x, [0, len(x)]), run_running("zscore", x, [*cuts, len(x)])):
        assert_normalized_close(got[:3], want)


def test_window_zscore_on_btcusdt_w64_matches_two_pass_reference(
    btcusdt_prices: FloatArray,
) -> None:
    view = sliding_window_view(btcusdt_prices, 64)
    mean, std = view.mean(axis=1), view.std(axis=1)
    assert std.min() < 0.002 and mean.min() > 9600  # the hard case: 7 digits of price are shared
    got = run_window("zscore", view)
    np.testing.assert_allclose(got[1], mean, rtol=1e-12)
    np.testing.assert_allclose(got[2], std, rtol=1e-9)
    np.testing.assert_allclose(got[0], (view - mean[:, None]) / std[:, None], rtol=0, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# Memory, modes, docs
# ---------------------------------------------------------------------------------------------


def peak_bytes(fn: object) -> int:
    assert callable(fn)
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_kernels_allocate_nothing_of_the_input_size_given_their_scratch() -> None:
    n, w = 200_000, 16
    x = 9700.0 + np.cumsum(np.random.default_rng(5).integers(-1, 2, n)) * 0.1
    out, loc, scale, scratch = (np.empty(n) for _ in range(4))
    m = n // w
    mat = x.reshape(m, w).copy()
    mat_scratch, row_loc, row_scale, row_scratch = np.empty_like(mat), *(np.empty(m) for _ in "abc")
    limit = n * 8 // 4  # numpy's own iterator buffers are 64 KiB; an (n,) temporary is 1.6 MB
    k = 1000  # runs of 200 values: several series at once
    runs, scratch2 = np.full(k, n // k, dtype=np.int64), np.empty(2 * n)
    assert peak_bytes(lambda: zscore_alloc(x)) > n * 8  # tracemalloc does see numpy's memory
    calls = {
        "running_zscore": lambda: running_zscore(
            x, RunningMoments(), out, loc, scale, scratch=scratch
        ),
        "running_minmax": lambda: running_minmax(
            x, RunningRange(), out, loc, scale, scratch=scratch
        ),
        "running_zscore_runs": lambda: running_zscore_runs(
            x, runs, np.zeros(k, np.int64), np.zeros((k, 2)), out, loc, scale, scratch=scratch2
        ),
        "running_minmax_runs": lambda: running_minmax_runs(
            x, runs, np.zeros((k, 2)), out, loc, scale, scratch=scratch2
        ),
        "window_zscore": lambda: window_zscore(mat, row_loc, row_scale, scratch=row_scratch),
        "window_minmax": lambda: window_minmax(mat, row_loc, row_scale, scratch=row_scratch),
        "window_robust": lambda: window_robust(mat, row_loc, row_scale, mat_scratch),
        "zscore_inplace": lambda: zscore_inplace(out),
        "robust_inplace": lambda: robust_inplace(out, scratch),
    }
    for name, call in calls.items():
        assert peak_bytes(call) < limit, name


def test_mode_helpers_classify_every_mode() -> None:
    assert [m for m in normalize._MODES if is_running(m)] == ["zscore", "minmax"]
    assert [m for m in normalize._MODES if is_windowed(m)] == [
        "window-zscore",
        "window-minmax",
        "robust",
    ]
    assert parse_mode("robust") == "robust"
    with pytest.raises(ValueError, match="not one of"):
        parse_mode("z-score")
