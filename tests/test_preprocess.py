"""Preprocessing against references: np.median/np.quantile clipping, statsmodels decomposition."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from statsmodels.tsa.seasonal import seasonal_decompose as sm_seasonal_decompose

from tests.common import REAL_DATA
from tests.common import price_walks as _walks
from tickpool.operators.preprocess import clip_mad, clip_quantiles, seasonal_decompose

FloatArray = npt.NDArray[np.float64]


def price_walks(min_size: int = 1) -> st.SearchStrategy[FloatArray]:
    """Longer walks with shorter flat runs than the normalize tests use."""
    return _walks(min_size, 300, max_run=30, max_segments=40)


LEAN = REAL_DATA / "lean_us_equity_trades_20131007.arrow"
DATABENTO = REAL_DATA / "databento_glbx_esh4_mbo_20231225.arrow"
BTCUSDT = REAL_DATA / "tardis_binance_futures_btcusdt_trades_20200222.arrow"

KERNEL_SETTINGS = settings(max_examples=120, deadline=None)


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


@st.composite
def walks_with_outliers(draw: st.DrawFn) -> FloatArray:
    """A walk with a few far-away prints (like resting orders priced nowhere near the market)."""
    x = draw(price_walks(min_size=2))
    spots = draw(st.lists(st.integers(0, len(x) - 1), max_size=5))
    for i in spots:
        x[i] *= draw(st.sampled_from([0.01, 0.5, 2.0, 30.0]))
    return x


def read_prices(path: Path, symbol: str | None = None) -> FloatArray:
    if not path.exists():
        pytest.skip(f"real data not found: {path}")
    table = pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
    if symbol is not None:
        table = table.filter(pc.equal(pc.cast(table.column("symbol"), pa.string()), symbol))
    prices: FloatArray = table.column("price").to_numpy().copy()
    return prices


@pytest.fixture(scope="module")
def spy_prices() -> FloatArray:
    """The first 5,000 SPY trade prices of 2013-10-07 (167.16 to 168.08, long flat runs)."""
    return read_prices(LEAN, "SPY")[:5000]


@pytest.fixture(scope="module")
def btcusdt_prices() -> FloatArray:
    """9,999 BTCUSDT trades near 9,700: raw-price running sums would lose the 1e-9 here."""
    return read_prices(BTCUSDT)


@pytest.fixture(scope="module")
def esh4_order_prices() -> FloatArray:
    """Every ESH4 order price of 2023-12-25: near 4,800, plus resting orders down to 85."""
    return read_prices(DATABENTO)


# ---------------------------------------------------------------------------------------------
# Plain references
# ---------------------------------------------------------------------------------------------


def clip_reference(x: FloatArray, lo: float, hi: float) -> tuple[FloatArray, int]:
    return np.clip(x, lo, hi), int(np.count_nonzero((x < lo) | (x > hi)))


def mad_reference(x: FloatArray, k: float, scale: float = 1.4826) -> tuple[FloatArray, int]:
    med = np.median(x)
    mad = np.median(np.abs(x - med))
    if mad == 0:
        return x.copy(), 0
    half = k * scale * mad
    return clip_reference(x, med - half, med + half)


def quantile_reference(x: FloatArray, lower: float, upper: float) -> tuple[FloatArray, int]:
    lo, hi = np.quantile(x, [lower, upper])
    return clip_reference(x, lo, hi)


def assert_matches_statsmodels(x: FloatArray, period: int) -> None:
    n = len(x)
    trend, seasonal, resid = np.full(n, -7.0), np.full(n, -7.0), np.full(n, -7.0)
    seasonal_decompose(x, period, trend_out=trend, seasonal_out=seasonal, resid_out=resid)
    ref = sm_seasonal_decompose(x, model="additive", period=period)
    for name, got, want in (
        ("trend", trend, ref.trend),
        ("seasonal", seasonal, ref.seasonal),
        ("resid", resid, ref.resid),
    ):
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{name} NaN")
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-9, err_msg=name)
    assert np.isnan(trend).sum() == 2 * (period // 2)


# ---------------------------------------------------------------------------------------------
# Winsorizing
# ---------------------------------------------------------------------------------------------


@KERNEL_SETTINGS
@given(x=walks_with_outliers(), k=st.sampled_from([0.5, 1.0, 3.0, 5.0]))
def test_clip_mad_matches_median_reference(x: FloatArray, k: float) -> None:
    want, want_count = mad_reference(x, k)
    scratch = np.full(len(x) + 3, -7.0)  # longer than needed is fine
    count = clip_mad(x, k, scratch=scratch)
    np.testing.assert_array_equal(x, want)
    assert count == want_count


@KERNEL_SETTINGS
@given(
    x=walks_with_outliers(),
    lower=st.floats(0.0, 0.5),
    width=st.floats(0.0, 0.5),
)
def test_clip_quantiles_matches_np_quantile_reference(
    x: FloatArray, lower: float, width: float
) -> None:
    upper = lower + width
    want, want_count = quantile_reference(x, lower, upper)
    count = clip_quantiles(x, lower, upper, scratch=np.empty(len(x)))
    np.testing.assert_array_equal(x, want)
    assert count == want_count


def test_clip_mad_clips_nothing_when_mad_is_zero() -> None:
    x = np.array([100.0, 100.0, 100.0, 100.0, 101.0, 5.0, 100.0])
    assert np.median(np.abs(x - np.median(x))) == 0
    before = x.copy()
    assert clip_mad(x, scratch=np.empty(7)) == 0
    np.testing.assert_array_equal(x, before)


def test_clip_mad_clips_databento_far_away_orders(esh4_order_prices: FloatArray) -> None:
    x = esh4_order_prices.copy()
    assert x.min() == 85.0 and (x < 4000).sum() == 37
    want, want_count = mad_reference(x, 5.0)
    count = clip_mad(x, 5.0, scratch=np.empty(len(x)))
    np.testing.assert_array_equal(x, want)
    assert count == want_count >= 37
    assert x.min() > 4000


def test_clip_quantiles_clips_databento_far_away_orders(esh4_order_prices: FloatArray) -> None:
    x = esh4_order_prices.copy()
    want, want_count = quantile_reference(x, 0.001, 0.999)
    count = clip_quantiles(x, 0.001, 0.999, scratch=np.empty(len(x)))
    np.testing.assert_array_equal(x, want)
    assert count == want_count >= 37
    assert x.min() > 4000


def test_clips_refuse_nan_and_bad_arguments() -> None:
    x = np.array([1.0, np.nan, 3.0, 4.0])
    with pytest.raises(ValueError, match="NaN"):
        clip_mad(x, scratch=np.empty(4))
    with pytest.raises(ValueError, match="NaN"):
        clip_quantiles(x, scratch=np.empty(4))
    with pytest.raises(ValueError, match="at least len"):
        clip_mad(np.ones(4), scratch=np.empty(3))
    with pytest.raises(ValueError, match="lower <= upper"):
        clip_quantiles(np.ones(4), 0.9, 0.1, scratch=np.empty(4))
    assert clip_mad(np.empty(0), scratch=np.empty(0)) == 0


# ---------------------------------------------------------------------------------------------
# Seasonal decomposition
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("period", [1, 2, 7, 12, 60])
def test_seasonal_decompose_matches_statsmodels_on_spy(spy_prices: FloatArray, period: int) -> None:
    assert_matches_statsmodels(spy_prices, period)


@pytest.mark.parametrize("period", [60, 61])
def test_seasonal_decompose_matches_statsmodels_on_btcusdt(
    btcusdt_prices: FloatArray, period: int
) -> None:
    assert_matches_statsmodels(btcusdt_prices, period)


@KERNEL_SETTINGS
@given(data=st.data(), period=st.integers(1, 30))
def test_seasonal_decompose_matches_statsmodels_on_random_walks(
    data: st.DataObject, period: int
) -> None:
    x = data.draw(price_walks(min_size=2 * period))
    assert_matches_statsmodels(x, period)


def test_seasonal_decompose_needs_two_full_cycles() -> None:
    out = [np.empty(23) for _ in range(3)]
    with pytest.raises(ValueError, match="2 complete cycles, 24 values for period 12"):
        seasonal_decompose(np.ones(23), 12, trend_out=out[0], seasonal_out=out[1], resid_out=out[2])
    with pytest.raises(ValueError, match="period must be an integer"):
        seasonal_decompose(np.ones(23), 0, trend_out=out[0], seasonal_out=out[1], resid_out=out[2])
    with pytest.raises(ValueError, match="NaN or inf"):
        seasonal_decompose(
            np.r_[np.ones(22), np.nan], 2, trend_out=out[0], seasonal_out=out[1], resid_out=out[2]
        )
