"""What several test modules share: where the real market data is, and tick-like random walks."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import numpy.typing as npt
from hypothesis import strategies as st

# ../shared/data/real beside the repository (as on developer machines and in CI), unless
# TICKPOOL_REAL_DATA points elsewhere.
REAL_DATA = Path(
    os.environ.get(
        "TICKPOOL_REAL_DATA",
        Path(__file__).resolve().parents[2] / "shared" / "data" / "real",
    )
)


@st.composite
def price_walks(
    draw: st.DrawFn,
    min_size: int = 1,
    max_size: int = 250,
    *,
    max_run: int = 40,
    max_segments: int = 30,
) -> npt.NDArray[np.float64]:
    """A tick-like random walk: level 1e-3..1e5, tick 1e-6..1e-2 of the level, flat runs.

    Each segment is one move of k ticks (k may be 0) followed by run - 1 exactly equal prices,
    so constant prefixes and constant windows happen. The smallest tick, 1e-6 of the level,
    bounds the conditioning |x| / std that the 1e-7 tolerance on z-scores relies on.
    """
    level = 10.0 ** draw(st.floats(-3.0, 5.0))
    tick = level * 10.0 ** draw(st.floats(-6.0, -2.0))
    segments = draw(
        st.lists(
            st.tuples(st.integers(-5, 5), st.integers(1, max_run)),
            min_size=1,
            max_size=max_segments,
        )
    )
    steps: list[float] = []
    for k, run in segments:
        steps.append(float(k))
        steps.extend([0.0] * (run - 1))
    steps.extend([0.0] * max(0, min_size - len(steps)))
    return level + tick * np.cumsum(np.asarray(steps[:max_size], dtype=np.float64))
