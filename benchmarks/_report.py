"""Small helpers the benchmarks share: timing medians and markdown tables."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np


def median_ns_per_call(fn: Callable[[], object], *, calls: int, repeats: int) -> float:
    """Median over ``repeats`` runs of the mean nanoseconds per call of ``fn``."""
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter_ns() - t0) / calls)
    return statistics.median(samples)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Render rows as a GitHub-flavoured markdown table."""
    cells = [[str(h) for h in headers], *[[_fmt(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def machine_line() -> str:
    """One line naming the machine and library versions, printed above results."""
    return (
        f"python {platform.python_version()}, numpy {np.__version__}, "
        f"{platform.machine()}, {platform.system()} {platform.release()}"
    )
