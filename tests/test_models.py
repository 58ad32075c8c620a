"""Tests for operators/models.py: every model against a plain Python reference, in every layout."""

from __future__ import annotations

import itertools
import tracemalloc
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.lib.stride_tricks import sliding_window_view

from tickpool.operators.models import (
    LINEAR_FORMAT,
    BufferSource,
    Ensemble,
    LastValue,
    LinearModel,
    Model,
    ModelFileError,
    ModelMismatchError,
    WindowMean,
    resolve_model,
    ridge_fit,
)

FloatArray = npt.NDArray[np.float64]


# ---------------------------------------------------------------- helpers


def strided_windows(series: FloatArray, window: int, first: int, stride: int) -> FloatArray:
    """The engine's zero-copy layout: overlapping rows of one series, not C-contiguous."""
    return sliding_window_view(series, window)[first::stride]


def make_out(m: int, h: int, layout: str) -> FloatArray:
    """An (m, H) output buffer in one of the layouts the engine may hand a model."""
    if layout == "c":
        return np.full((m, h), np.nan)
    if layout == "transposed":  # a pooled (H, m) buffer seen as (m, H)
        return np.full((h, m), np.nan).T
    if layout == "every-other-column":  # neither C- nor F-ordered
        return np.full((m, 2 * h), np.nan)[:, ::2]
    raise AssertionError(layout)


OUT_LAYOUTS = ["c", "transposed", "every-other-column"]


def linear_reference(
    windows: FloatArray, weights: FloatArray, intercept: FloatArray
) -> tuple[list[list[float]], list[list[float]]]:
    """Explicit loops in Python floats: predictions, and |b| + sum |w x| per cell as the scale."""
    values: list[list[float]] = []
    scales: list[list[float]] = []
    for row in windows.tolist():
        vrow, srow = [], []
        for h in range(weights.shape[1]):
            acc = float(intercept[h])
            mag = abs(acc)
            for k, x in enumerate(row):
                acc += float(weights[k, h]) * x
                mag += abs(float(weights[k, h]) * x)
            vrow.append(acc)
            srow.append(mag)
        values.append(vrow)
        scales.append(srow)
    return values, scales


def assert_close_to_reference(
    got: FloatArray, ref: list[list[float]], scale: list[list[float]]
) -> None:
    ref_a, scale_a = np.array(ref), np.array(scale)
    assert got.shape == ref_a.shape
    err = np.abs(got - ref_a)
    bound = 1e-12 * scale_a + 1e-300
    assert (err <= bound).all(), f"max error {err.max()}, bound {bound[err > bound]}"


class CountingPool:
    """A fake BufferSource that hands out fresh buffers and checks every one comes back once."""

    def __init__(self) -> None:
        self.acquired = 0
        self.released = 0
        self.outstanding: dict[int, FloatArray] = {}

    def acquire(self, n: int) -> FloatArray:
        self.acquired += 1
        # a lease is a view of exactly n elements of a bigger buffer, as in the real pool
        buf = np.full(2 * n + 3, np.nan)[1 : n + 1]
        self.outstanding[id(buf)] = buf
        return buf

    def release(self, buf: FloatArray) -> None:
        assert self.outstanding.pop(id(buf)) is buf, "released a buffer this pool never leased"
        self.released += 1


class Recorder:
    """A model that records the windows object it was given and predicts last value + offset."""

    def __init__(self, offset: float, horizon: int = 2, window: int | None = None) -> None:
        self.offset = offset
        self.horizon = horizon
        self.window = window
        self.normalize: str | None = None
        self.needs_contiguous = False
        self.received: list[FloatArray] = []

    def predict(self, windows: FloatArray, out: FloatArray) -> None:
        self.received.append(windows)
        np.add(windows[:, -1:], self.offset, out=out)


class Exploding(Recorder):
    def predict(self, windows: FloatArray, out: FloatArray) -> None:
        super().predict(windows, out)
        raise RuntimeError("member failed")


finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)


@st.composite
def window_cases(draw: st.DrawFn) -> tuple[FloatArray, int, int, int]:
    """(series, W, first, stride) with at least one window."""
    window = draw(st.integers(1, 24))
    first = draw(st.integers(0, 3))
    stride = draw(st.integers(1, 5))
    m = draw(st.integers(1, 30))
    n = first + (m - 1) * stride + window
    series = np.array(draw(st.lists(finite, min_size=n, max_size=n)), dtype=np.float64)
    return series, window, first, stride


# ---------------------------------------------------------------- LinearModel


@settings(max_examples=150, deadline=None)
@given(case=window_cases(), horizon=st.integers(1, 4), flat=st.booleans(), data=st.data())
def test_linear_matches_python_reference_for_every_window_and_out_layout(
    case: tuple[FloatArray, int, int, int], horizon: int, flat: bool, data: st.DataObject
) -> None:
    series, window, first, stride = case
    weights = np.array(
        data.draw(
            st.lists(st.floats(-10, 10), min_size=window * horizon, max_size=window * horizon)
        )
    ).reshape(window, horizon)
    intercept = np.array(
        data.draw(st.lists(st.floats(-10, 10), min_size=horizon, max_size=horizon))
    )
    given_weights = weights[:, 0] if flat and horizon == 1 else weights
    given_intercept = intercept[0] if flat and horizon == 1 else intercept
    model = LinearModel(
        given_weights, given_intercept, window=window, horizon=horizon, normalize="window-zscore"
    )
    strided = strided_windows(series, window, first, stride)
    contiguous = np.ascontiguousarray(strided)
    ref, scale = linear_reference(strided, weights, intercept)
    for windows in (strided, contiguous):
        for layout in OUT_LAYOUTS:
            out = make_out(strided.shape[0], horizon, layout)
            model.predict(windows, out)
            assert_close_to_reference(out, ref, scale)


def test_the_sliding_window_view_is_the_non_contiguous_layout_we_mean() -> None:
    windows = strided_windows(np.arange(20.0), 8, 1, 2)
    assert not windows.flags.c_contiguous
    assert np.shares_memory(windows, windows.base)


def test_linear_weights_read_the_oldest_tick_first() -> None:
    windows = np.array([[1.0, 2.0, 3.0]])
    out = np.empty((1, 1))
    LinearModel([1.0, 0.0, 0.0], 0.0, window=3, horizon=1, normalize=None).predict(windows, out)
    assert out[0, 0] == 1.0


def test_linear_predict_allocates_nothing_proportional_to_the_number_of_windows() -> None:
    m, window, horizon = 100_000, 16, 3
    series = np.random.default_rng(1).normal(size=m + window - 1)
    model = LinearModel(
        np.ones((window, horizon)), np.ones(horizon), window=16, horizon=3, normalize=None
    )
    windows = strided_windows(series, window, 0, 1)
    for layout in OUT_LAYOUTS:
        out = make_out(m, horizon, layout)
        tracemalloc.start()
        try:
            model.predict(windows, out)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < m * 8 // 4, f"{layout}: predict allocated {peak} bytes for {m} windows"


def test_linear_predict_leaves_its_windows_untouched() -> None:
    windows = np.random.default_rng(2).normal(size=(40, 5))
    before = windows.copy()
    LinearModel(np.ones(5), 1.0, window=5, horizon=1, normalize=None).predict(
        windows, np.empty((40, 1))
    )
    np.testing.assert_array_equal(windows, before)


def test_linear_model_rejects_weights_that_do_not_match_its_window_and_horizon() -> None:
    with pytest.raises(ValueError, match=r"\(4, 2\)"):
        LinearModel(np.ones((4, 3)), 0.0, window=4, horizon=2, normalize=None)
    with pytest.raises(ValueError, match="horizon 1"):
        LinearModel(np.ones(4), 0.0, window=4, horizon=2, normalize=None)
    with pytest.raises(ValueError, match="intercept"):
        LinearModel(np.ones((4, 2)), np.ones(3), window=4, horizon=2, normalize=None)
    with pytest.raises(ValueError, match="finite"):
        LinearModel([1.0, np.nan], 0.0, window=2, horizon=1, normalize=None)


# ---------------------------------------------------------------- naive models


@settings(max_examples=100, deadline=None)
@given(case=window_cases(), horizon=st.integers(1, 4), layout=st.sampled_from(OUT_LAYOUTS))
def test_last_value_and_window_mean_match_python_reference(
    case: tuple[FloatArray, int, int, int], horizon: int, layout: str
) -> None:
    series, window, first, stride = case
    strided = strided_windows(series, window, first, stride)
    rows = strided.tolist()
    last_ref = [[row[-1]] * horizon for row in rows]
    mean_ref = [[sum(row) / len(row)] * horizon for row in rows]
    mean_scale = [[sum(abs(x) for x in row) / len(row)] * horizon for row in rows]
    for windows in (strided, np.ascontiguousarray(strided)):
        out = make_out(len(rows), horizon, layout)
        LastValue(horizon).predict(windows, out)
        np.testing.assert_array_equal(out, np.array(last_ref))
        out = make_out(len(rows), horizon, layout)
        WindowMean(horizon).predict(windows, out)
        assert_close_to_reference(out, mean_ref, mean_scale)


@pytest.mark.parametrize(
    "model",
    [
        LastValue(2),
        WindowMean(2),
        LinearModel(np.ones((4, 2)), [0.5, -0.5], window=4, horizon=2, normalize=None),
    ],
    ids=repr,
)
def test_a_nan_tick_spoils_only_the_windows_that_hold_it(model: Model) -> None:
    series = np.arange(12.0)
    series[7] = np.nan
    windows = strided_windows(series, 4, 0, 1)  # rows 4..7 hold tick 7
    out = np.empty((windows.shape[0], 2))
    model.predict(windows, out)
    holds = np.array([4 <= i <= 7 for i in range(windows.shape[0])])
    if isinstance(model, LastValue):
        holds = np.arange(windows.shape[0]) == 4  # only the window ending at tick 7
    assert np.isnan(out[holds]).all()
    assert np.isfinite(out[~holds]).all()


def test_models_say_what_shape_they_expected() -> None:
    model = LinearModel(np.ones(4), 0.0, window=4, horizon=1, normalize=None)
    with pytest.raises(ValueError, match=r"width 5.*window 4"):
        model.predict(np.zeros((3, 5)), np.empty((3, 1)))
    with pytest.raises(ValueError, match=r"\(3, 1\).*\(3, 2\)"):
        model.predict(np.zeros((3, 4)), np.empty((3, 2)))
    with pytest.raises(ValueError, match="float32"):
        LastValue().predict(cast(FloatArray, np.zeros((3, 4), dtype=np.float32)), np.empty((3, 1)))
    with pytest.raises(ValueError, match="horizon"):
        LastValue(0)


def test_built_in_models_satisfy_the_protocols() -> None:
    assert isinstance(LastValue(), Model)
    assert isinstance(WindowMean(), Model)
    assert isinstance(LinearModel([1.0], 0.0, window=1, horizon=1, normalize=None), Model)
    assert isinstance(Ensemble([LastValue()], scratch=CountingPool()), Model)
    assert isinstance(CountingPool(), BufferSource)


# ---------------------------------------------------------------- Ensemble


def test_ensemble_members_all_read_the_very_windows_object_it_was_given() -> None:
    windows = strided_windows(np.arange(30.0), 6, 2, 3)
    members = [Recorder(1.0), Recorder(2.0), Recorder(3.0)]
    Ensemble(members, scratch=CountingPool()).predict(windows, np.empty((windows.shape[0], 2)))
    for member in members:
        (received,) = member.received
        assert received is windows
        assert np.shares_memory(received, windows)


def test_ensemble_is_the_normalized_weighted_mean_of_its_members() -> None:
    rng = np.random.default_rng(3)
    window, horizon = 8, 3
    windows = strided_windows(rng.normal(size=200), window, 1, 2)
    members: list[Model] = [
        LinearModel(
            rng.normal(size=(window, horizon)),
            rng.normal(size=horizon),
            window=window,
            horizon=horizon,
            normalize="window-zscore",
        ),
        LastValue(horizon),
        WindowMean(horizon),
    ]
    raw = [1.0, 3.0, 4.0]
    expected = np.zeros((windows.shape[0], horizon))
    for weight, member in zip(raw, members, strict=True):
        alone = np.empty((windows.shape[0], horizon))
        member.predict(windows, alone)
        expected += weight / sum(raw) * alone
    ensemble = Ensemble(members, raw, scratch=CountingPool())
    assert ensemble.weights == pytest.approx([0.125, 0.375, 0.5])
    assert (ensemble.window, ensemble.horizon, ensemble.normalize) == (8, 3, "window-zscore")
    for layout in OUT_LAYOUTS:
        out = make_out(windows.shape[0], horizon, layout)
        ensemble.predict(windows, out)
        np.testing.assert_allclose(out, expected, rtol=1e-13, atol=1e-13)


def test_ensemble_default_weights_are_equal() -> None:
    windows = np.array([[0.0, 10.0]])
    out = np.empty((1, 2))
    Ensemble([Recorder(0.0), Recorder(4.0)], scratch=CountingPool()).predict(windows, out)
    np.testing.assert_array_equal(out, [[12.0, 12.0]])


def test_ensemble_returns_its_scratch_to_the_pool() -> None:
    pool = CountingPool()
    ensemble = Ensemble([Recorder(1.0), Recorder(2.0)], scratch=pool)
    for _ in range(3):
        ensemble.predict(np.ones((5, 3)), np.empty((5, 2)))
    assert pool.acquired == pool.released == 3
    assert not pool.outstanding


def test_ensemble_returns_its_scratch_when_a_member_raises() -> None:
    pool = CountingPool()
    ensemble = Ensemble([Recorder(1.0), Exploding(2.0)], scratch=pool)
    with pytest.raises(RuntimeError, match="member failed"):
        ensemble.predict(np.ones((5, 3)), np.empty((5, 2)))
    assert pool.acquired == pool.released == 1
    assert not pool.outstanding


def test_ensemble_rejects_a_pool_buffer_of_the_wrong_size_and_still_returns_it() -> None:
    class ShortPool(CountingPool):
        def acquire(self, n: int) -> FloatArray:
            short = super().acquire(n)[:-1]
            self.outstanding = {id(short): short}
            return short

    pool = ShortPool()
    with pytest.raises(ValueError, match=r"expected float64 \(10,\)"):
        Ensemble([Recorder(1.0), Recorder(2.0)], scratch=pool).predict(
            np.ones((5, 3)), np.empty((5, 2))
        )
    assert pool.released == 1


def test_ensemble_members_must_agree_and_the_error_names_the_member() -> None:
    with pytest.raises(ModelMismatchError, match=r"member 2.*window 16.*member 1.*window 8"):
        Ensemble(
            [Recorder(0.0), Recorder(0.0, window=8), Recorder(0.0, window=16)],
            scratch=CountingPool(),
        )
    with pytest.raises(ModelMismatchError, match=r"member 1.*horizon 3"):
        Ensemble([Recorder(0.0), Recorder(0.0, horizon=3)], scratch=CountingPool())
    a = LinearModel(np.ones(4), 0.0, window=4, horizon=1, normalize="zscore")
    b = LinearModel(np.ones(4), 0.0, window=4, horizon=1, normalize="window-zscore")
    with pytest.raises(ModelMismatchError, match=r"member 2.*'window-zscore'.*member 0.*'zscore'"):
        Ensemble([a, LastValue(), b], scratch=CountingPool())


def test_ensemble_weights_must_be_one_non_negative_number_per_member() -> None:
    with pytest.raises(ValueError, match="2 members"):
        Ensemble([LastValue(), WindowMean()], [1.0], scratch=CountingPool())
    with pytest.raises(ValueError, match=">= 0"):
        Ensemble([LastValue(), WindowMean()], [1.0, -0.5], scratch=CountingPool())
    with pytest.raises(ValueError, match="at least one"):
        Ensemble([], scratch=CountingPool())


def test_ensemble_needs_contiguous_rows_if_any_member_does() -> None:
    picky = Recorder(0.0)
    picky.needs_contiguous = True
    assert not Ensemble([Recorder(0.0), LastValue(2)], scratch=CountingPool()).needs_contiguous
    assert Ensemble([Recorder(0.0), picky], scratch=CountingPool()).needs_contiguous


# ---------------------------------------------------------------- files


def test_linear_model_survives_a_save_and_load(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    path = tmp_path / "model.npz"
    for horizon, normalize in ((1, "window-zscore"), (3, None)):
        model = LinearModel(
            rng.normal(size=(6, horizon)),
            rng.normal(size=horizon),
            window=6,
            horizon=horizon,
            normalize=normalize,
        )
        model.save(path)
        loaded = LinearModel.load(path)
        np.testing.assert_array_equal(loaded.weights, model.weights)
        np.testing.assert_array_equal(loaded.intercept, model.intercept)
        assert (loaded.window, loaded.horizon, loaded.normalize) == (6, horizon, normalize)
        assert loaded.source == str(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz"]
    with np.load(path) as data:
        assert str(data["format"]) == LINEAR_FORMAT


def _write(path: Path, **overrides: object) -> None:
    entries: dict[str, Any] = {
        "format": np.str_(LINEAR_FORMAT),
        "weights": np.ones((4, 2)),
        "intercept": np.zeros(2),
        "window": np.int64(4),
        "horizon": np.int64(2),
        "normalize": np.str_("zscore"),
    }
    for key, value in overrides.items():
        if value is None:
            del entries[key]
        else:
            entries[key] = value
    with open(path, "wb") as f:
        np.savez(f, **entries)


@pytest.mark.parametrize(
    ("overrides", "key", "found", "expected"),
    [
        ({"intercept": None}, "intercept", "no such key", "'weights', 'intercept'"),
        ({"weights": np.ones((4, 3))}, "weights", "shape (4, 3)", "(4, 2)"),
        ({"weights": np.ones((5, 2))}, "weights", "shape (5, 2)", "(4, 2)"),
        ({"intercept": np.zeros(3)}, "intercept", "shape (3,)", "(2,)"),
        ({"format": np.str_("tickpool.linear/2")}, "format", "tickpool.linear/2", LINEAR_FORMAT),
        ({"window": np.float64(4.0)}, "window", "4.0", "an integer >= 1"),
        ({"normalize": np.float64(1.0)}, "normalize", "float64", "a string"),
        ({"weights": np.full((4, 2), np.nan)}, "weights", "NaN", "finite"),
    ],
)
def test_a_malformed_model_file_names_file_key_found_and_expected(
    tmp_path: Path, overrides: dict[str, object], key: str, found: str, expected: str
) -> None:
    path = tmp_path / "bad.npz"
    _write(path, **overrides)
    with pytest.raises(ModelFileError) as info:
        LinearModel.load(path)
    message = str(info.value)
    assert str(path) in message
    assert repr(key) in message
    assert found in message
    assert expected in message
    assert info.value.key == key


def test_a_file_that_is_not_an_npz_is_a_model_file_error(tmp_path: Path) -> None:
    path = tmp_path / "model.npz"
    path.write_bytes(b"certainly not a zip archive")
    with pytest.raises(ModelFileError, match=r"a .npz archive"):
        LinearModel.load(path)
    np.save(tmp_path / "one.npy", np.ones(3))
    with pytest.raises(ModelFileError, match=r"single .npy array"):
        LinearModel.load(tmp_path / "one.npy")


def test_a_model_fitted_for_another_window_and_normalization_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.npz"
    LinearModel(np.ones(32), 0.0, window=32, horizon=1, normalize="window-zscore").save(path)
    with pytest.raises(ModelMismatchError) as info:
        resolve_model(str(path), window=64, horizon=1, normalize="zscore")
    assert str(info.value) == (
        f"{path} was fitted with window 32 and normalize 'window-zscore'; "
        "this run uses window 64 and normalize 'zscore'"
    )
    with pytest.raises(ModelMismatchError, match=r"normalize 'window-zscore'.*normalize 'zscore'"):
        LinearModel.load(path).check_compatible(32, 1, "zscore")
    with pytest.raises(ModelMismatchError, match=r"horizon 1.*horizon 2"):
        LinearModel.load(path).check_compatible(32, 2, "window-zscore")
    LinearModel.load(path).check_compatible(32, 1, "window-zscore")


# ---------------------------------------------------------------- resolve_model


def test_resolve_model_builds_the_naive_models_by_name() -> None:
    assert resolve_model("last", window=16, horizon=3, normalize="zscore") == LastValue(3)
    assert resolve_model("mean", window=16, horizon=2, normalize="zscore") == WindowMean(2)


def test_resolve_model_loads_a_compatible_linear_file(tmp_path: Path) -> None:
    path = tmp_path / "m.npz"
    LinearModel(np.ones((8, 2)), [1.0, 2.0], window=8, horizon=2, normalize="zscore").save(path)
    model = resolve_model(str(path), window=8, horizon=2, normalize="zscore")
    assert isinstance(model, LinearModel)
    assert model.source == str(path)


def test_resolve_model_says_what_a_spec_can_be_when_the_file_is_missing(tmp_path: Path) -> None:
    missing = tmp_path / "nope.npz"
    with pytest.raises(FileNotFoundError) as info:
        resolve_model(str(missing), window=8, horizon=1, normalize="zscore")
    assert str(missing) in str(info.value)
    assert "'last'" in str(info.value) and "'mean'" in str(info.value)


# ---------------------------------------------------------------- ridge_fit


def test_ridge_fit_recovers_known_weights_from_strided_windows() -> None:
    rng = np.random.default_rng(5)
    window, horizon = 12, 3
    X = strided_windows(
        rng.normal(size=600), window, 0, 1
    )  # overlapping, read-only, not contiguous
    true_w = rng.normal(size=(window, horizon))
    true_b = rng.normal(size=horizon)
    Y = np.ascontiguousarray(X) @ true_w + true_b
    weights, intercept = ridge_fit(X, Y, alpha=0.0)
    assert weights.shape == (window, horizon) and intercept.shape == (horizon,)
    np.testing.assert_allclose(weights, true_w, atol=1e-6)
    np.testing.assert_allclose(intercept, true_b, atol=1e-6)
    tiny_w, _ = ridge_fit(X, Y, alpha=1e-12)
    np.testing.assert_allclose(tiny_w, true_w, atol=1e-6)


def test_ridge_fit_keeps_its_digits_on_raw_prices() -> None:
    rng = np.random.default_rng(6)
    prices = 9700.0 + np.cumsum(rng.normal(scale=0.01, size=400))
    X = strided_windows(prices, 4, 0, 1)[:-1]
    true_w = np.array([0.1, -0.2, 0.3, 0.8])
    y = np.ascontiguousarray(X) @ true_w + 0.5
    weights, intercept = ridge_fit(X, y, alpha=0.0)
    assert weights.shape == (4, 1) and intercept.shape == (1,)
    np.testing.assert_allclose(weights[:, 0], true_w, atol=1e-6)


def test_ridge_fit_matches_an_augmented_least_squares_reference_and_leaves_x_alone() -> None:
    rng = np.random.default_rng(7)
    base = rng.normal(size=(50, 16))
    X = base[:, ::2]  # writable, not contiguous
    before = X.copy()
    Y = rng.normal(size=(50, 2))
    alpha = 0.3
    weights, intercept = ridge_fit(X, Y, alpha=alpha)
    np.testing.assert_array_equal(X, before)
    xc, yc = X - X.mean(axis=0), Y - Y.mean(axis=0)
    aug_x = np.vstack([xc, np.sqrt(alpha * 50) * np.eye(8)])
    aug_y = np.vstack([yc, np.zeros((8, 2))])
    ref_w = np.linalg.lstsq(aug_x, aug_y, rcond=None)[0]
    np.testing.assert_allclose(weights, ref_w, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(intercept, Y.mean(axis=0) - X.mean(axis=0) @ ref_w, atol=1e-12)


def test_a_larger_alpha_shrinks_the_weights() -> None:
    rng = np.random.default_rng(8)
    X = strided_windows(rng.normal(size=300), 10, 0, 1)
    y = X[:, -1] * 0.7 + rng.normal(scale=0.5, size=X.shape[0])
    norms = [float(np.linalg.norm(ridge_fit(X, y, alpha=a)[0])) for a in (1e-4, 1e-2, 1.0, 100.0)]
    assert all(a > b for a, b in itertools.pairwise(norms)), norms


def test_ridge_fit_refuses_non_finite_rows_and_mismatched_shapes() -> None:
    X = np.ones((5, 3))
    X[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"1 of 5 rows.*row 2"):
        ridge_fit(X, np.ones(5))
    with pytest.raises(ValueError, match=r"\(4,\)"):
        ridge_fit(np.ones((4, 3)), np.ones(5))
    with pytest.raises(ValueError, match="alpha"):
        ridge_fit(np.eye(3), np.ones(3), alpha=-1.0)


# ---------------------------------------------------------------- docs
