"""Small helpers the benchmarks share: timing medians and markdown tables."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class Fixed:
    """A table cell that prints with its own format and stays a number for later arithmetic.

    Row builders return these instead of formatted strings, so code that computes from a
    table (a verdict, a note under it) reads ``float(cell)`` rather than parsing the text.

    >>> cell = Fixed(12345.678, ",.1f")
    >>> str(cell), float(cell) * 2
    ('12,345.7', 24691.356)
    """

    value: float
    spec: str = ",.3f"

    def __float__(self) -> float:
        return float(self.value)

    def __str__(self) -> str:
        return format(self.value, self.spec)


def number(cell: object) -> float:
    """The number in a table cell built from ints, floats or `Fixed`."""
    if isinstance(cell, Fixed | int | float):
        return float(cell)
    raise TypeError(f"table cell {cell!r} is not a number (expected int, float or Fixed)")


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
