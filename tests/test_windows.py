"""Window geometry: the per-symbol function and its vectorized form agree."""

from __future__ import annotations

import doctest

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from tickpool.operators import windows
from tickpool.operators.windows import window_geometries, window_geometry


@given(
    st.lists(st.tuples(st.integers(0, 500), st.integers(0, 300)), min_size=0, max_size=40),
    st.integers(1, 70),
    st.integers(1, 9),
)
def test_window_geometries_equal_window_geometry_per_symbol(
    symbols: list[tuple[int, int]], window: int, stride: int
) -> None:
    seen = np.array([s for s, _ in symbols], dtype=np.int64)
    n_new = np.array([n for _, n in symbols], dtype=np.int64)
    count, first = window_geometries(seen, n_new, window=window, stride=stride)
    for i, (s, n) in enumerate(symbols):
        g = window_geometry(
            seen=s, tail_len=min(s, window - 1), n_new=n, window=window, stride=stride
        )
        assert count[i] == g.count
        if g.count:
            assert first[i] == g.first_end_pos


def test_windows_docstring_examples() -> None:
    failures, attempted = doctest.testmod(windows)
    assert attempted > 0 and failures == 0
