"""Summaries of a pool-statistics file: load the JSON lines, sum them up, print a table, plot them.

This is ``tickpool stats FILE``. The file has one JSON object per worker per interval (written
with orjson; DESIGN.md, "Pool statistics"); this module turns it into the few numbers that answer
"did the pool keep up, and at what memory": hit rates, the pool limit, bytes held, throughput,
per-batch latency, per worker and overall.

How the overall figures are made:

* **Counters** (hits, misses, grows, shrinks, evictions, unpooled, ticks, predictions, dead
  letters) are cumulative per worker. A worker's total is its last value; if any counter goes
  *down*, the worker restarted from zero there, and each counter's totals before and after
  are added. The
  overall total is the sum over workers, and the overall hit rate is computed from those sums.
* **Per-interval figures** (pool limit, bytes held, ticks/s, interval hit rate) are taken over
  intervals: the records of all workers at one time (times rounded to the median
  ``interval_s``) make one interval, whose limit, bytes and ticks/s are the workers' sums and
  whose hit rate is the workers' interval hit rates weighted by their leases in the interval.
* **Latency** medians pool every record of every worker (a median of per-interval percentiles:
  a guide, not an exact percentile of all batches).

Example:

>>> import orjson, tempfile, os
>>> record = {"schema": 1, "time": "2024-01-02T14:30:10Z", "worker": "0", "interval_s": 10.0,
...     "hits": 90, "misses": 10, "hit_rate": 0.9, "interval_hit_rate": 0.9, "leased": 2,
...     "free": 6, "limit": 8, "bytes_held": 65_536, "grows": 0, "shrinks": 0, "evictions": 0,
...     "unpooled": 0, "ticks": 100_000, "predictions": 99_000, "dead_letters": 0,
...     "ticks_per_s": 10_000.0, "predictions_per_s": 9_900.0, "latency_ms_p50": 0.5,
...     "latency_ms_p90": 0.9, "latency_ms_p99": 1.5}
>>> with tempfile.TemporaryDirectory() as d:
...     path = os.path.join(d, "stats.jsonl")
...     with open(path, "wb") as f:
...         _ = f.write(orjson.dumps(record) + b"\\n")
...     summary = summarize(load_stats(path))
>>> summary.overall.hit_rate, summary.overall.ticks, summary.overall.limit_last
(0.9, 100000, 8)
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

__all__ = [
    "SCHEMA_VERSIONS",
    "StatsSummary",
    "WorkerSummary",
    "load_stats",
    "plot_stats",
    "print_summary",
    "render_summary",
    "summarize",
]

SCHEMA_VERSIONS = frozenset({1})
"""Statistics schema versions this module reads."""

_COUNTS = (  # whole numbers, never null
    "hits",
    "misses",
    "leased",
    "free",
    "limit",
    "bytes_held",
    "grows",
    "shrinks",
    "evictions",
    "unpooled",
    "ticks",
    "predictions",
    "dead_letters",
)
_CUMULATIVE = (
    "hits",
    "misses",
    "grows",
    "shrinks",
    "evictions",
    "unpooled",
    "ticks",
    "predictions",
    "dead_letters",
)
_RATES = (  # numbers, or null when there was nothing to measure (orjson writes NaN as null)
    "hit_rate",
    "interval_hit_rate",
    "ticks_per_s",
    "predictions_per_s",
    "latency_ms_p50",
    "latency_ms_p90",
    "latency_ms_p99",
)
_KEYS = ("schema", "time", "worker", "interval_s", *_COUNTS, *_RATES)
_OVERALL = "all"


@dataclass(frozen=True, slots=True)
class WorkerSummary:
    """The summary of one worker's records, or of all of them (``worker == "all"``).

    ``None`` stands for "not measured" (no leases yet, no batches in any interval). Interval
    figures (``interval_hit_rate_*``, ``limit_*``, ``peak_bytes_held``, ``ticks_per_s_*``) are
    over the worker's records; for ``"all"`` over the summed intervals (see the module doc).
    """

    worker: str
    records: int
    first: datetime
    last: datetime
    span_s: float
    hits: int
    misses: int
    hit_rate: float | None
    grows: int
    shrinks: int
    evictions: int
    unpooled: int
    interval_hit_rate_min: float | None
    interval_hit_rate_median: float | None
    interval_hit_rate_last: float | None
    limit_min: int
    limit_max: int
    limit_last: int
    leased_last: int
    peak_bytes_held: int
    ticks: int
    predictions: int
    dead_letters: int
    ticks_per_s_median: float | None
    ticks_per_s_max: float | None
    predictions_per_s_median: float | None
    latency_ms_p50_median: float | None
    latency_ms_p99_median: float | None


@dataclass(frozen=True, slots=True)
class StatsSummary:
    """Per-worker summaries (sorted by worker), the overall one, and the median ``interval_s``."""

    workers: tuple[WorkerSummary, ...]
    overall: WorkerSummary
    interval_s: float


# --- loading -------------------------------------------------------------------------------------


def load_stats(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a pool-statistics JSON-lines file: one checked record per non-blank line.

    Raises ``ValueError`` naming the file and line for a line that is not a JSON object, has an
    unknown ``schema`` version, misses a key or has a value of the wrong type; and for a file with
    no records at all. Keys beyond the known ones are kept (a newer writer may add some).

    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile("w", suffix=".jsonl") as f:
    ...     _ = f.write('{"schema": 1}\\n'); f.flush()
    ...     load_stats(f.name)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: ...jsonl, line 1: missing keys 'time', 'worker', ...
    """
    records: list[dict[str, Any]] = []
    with open(path, "rb") as source:
        for number, line in enumerate(source, start=1):
            if not line.strip():
                continue
            where = f"{os.fspath(path)}, line {number}"
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError as err:
                raise ValueError(
                    f"{where}: not valid JSON ({err}); expected one pool-statistics object per line"
                ) from err
            records.append(_checked(record, where))
    if not records:
        raise ValueError(f"no statistics records in {os.fspath(path)}")
    return records


def _checked(record: object, where: str) -> dict[str, Any]:
    """``record`` if it is a valid statistics record, else a ValueError saying what was expected."""
    if not isinstance(record, dict):
        raise ValueError(
            f"{where}: found a JSON {type(record).__name__}; expected a pool-statistics object"
        )
    if "schema" not in record:
        raise ValueError(f"{where}: no 'schema' key; expected a pool-statistics record")
    version = record["schema"]
    if isinstance(version, bool) or version not in SCHEMA_VERSIONS:
        known = ", ".join(str(v) for v in sorted(SCHEMA_VERSIONS))
        raise ValueError(
            f"{where}: statistics schema version {version!r} is not supported; "
            f"this tickpool reads version {known}"
        )
    missing = [key for key in _KEYS if key not in record]
    if missing:
        raise ValueError(f"{where}: missing keys {', '.join(map(repr, missing))}")
    _expect(where, "time", isinstance(record["time"], str), "an ISO-8601 string", record["time"])
    try:
        _time(record)
    except ValueError:
        _expect(where, "time", False, "an ISO-8601 time", record["time"])
    worker = record["worker"]
    _expect(where, "worker", isinstance(worker, str | int), "a string", worker)
    interval = record["interval_s"]
    _expect(where, "interval_s", _is_number(interval) and interval >= 0, "a number >= 0", interval)
    for key in _COUNTS:
        value = record[key]
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        _expect(where, key, ok, "a whole number >= 0", value)
    for key in _RATES:
        value = record[key]
        _expect(where, key, value is None or _is_number(value), "a number or null", value)
    return record


def _expect(where: str, key: str, ok: bool, expected: str, found: object) -> None:
    if not ok:
        raise ValueError(f"{where}: {key!r} is {found!r}; expected {expected}")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _time(record: Mapping[str, Any]) -> datetime:
    """The record's time, in UTC (a time without a zone is taken as UTC)."""
    parsed = datetime.fromisoformat(record["time"])
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


# --- summarizing ---------------------------------------------------------------------------------


def summarize(records: Sequence[Mapping[str, Any]]) -> StatsSummary:
    """Per-worker and overall summary of statistics records (as :func:`load_stats` returns them).

    Records may come in any order; each worker's are taken in time order. See the module doc for
    how the overall figures are made.
    """
    if not records:
        raise ValueError("no statistics records to summarize")
    checked = [_checked(dict(r), f"records[{i}]") for i, r in enumerate(records)]
    by_worker: dict[str, list[dict[str, Any]]] = {}
    for record in sorted(checked, key=_time):
        by_worker.setdefault(str(record["worker"]), []).append(record)
    step = statistics.median(float(r["interval_s"]) for r in checked) or 1.0
    workers = tuple(_summarize_worker(name, rows) for name, rows in sorted(by_worker.items()))
    overall = _summarize_overall(workers, by_worker, step)
    return StatsSummary(workers=workers, overall=overall, interval_s=step)


def _summarize_worker(worker: str, rows: list[dict[str, Any]]) -> WorkerSummary:
    restarts = _restarts(rows)
    totals = {key: _total(rows, restarts, key) for key in _CUMULATIVE}
    limits = [int(r["limit"]) for r in rows]
    rate_min, rate_median, rate_last = _spread([r["interval_hit_rate"] for r in rows])
    ticks_per_s = [r["ticks_per_s"] for r in rows]
    first, last = _time(rows[0]), _time(rows[-1])
    return WorkerSummary(
        worker=worker,
        records=len(rows),
        first=first,
        last=last,
        span_s=(last - first).total_seconds(),
        hits=totals["hits"],
        misses=totals["misses"],
        hit_rate=_ratio(totals["hits"], totals["hits"] + totals["misses"]),
        grows=totals["grows"],
        shrinks=totals["shrinks"],
        evictions=totals["evictions"],
        unpooled=totals["unpooled"],
        interval_hit_rate_min=rate_min,
        interval_hit_rate_median=rate_median,
        interval_hit_rate_last=rate_last,
        limit_min=min(limits),
        limit_max=max(limits),
        limit_last=limits[-1],
        leased_last=int(rows[-1]["leased"]),
        peak_bytes_held=max(int(r["bytes_held"]) for r in rows),
        ticks=totals["ticks"],
        predictions=totals["predictions"],
        dead_letters=totals["dead_letters"],
        ticks_per_s_median=_median(ticks_per_s),
        ticks_per_s_max=_max(ticks_per_s),
        predictions_per_s_median=_median([r["predictions_per_s"] for r in rows]),
        latency_ms_p50_median=_median([r["latency_ms_p50"] for r in rows]),
        latency_ms_p99_median=_median([r["latency_ms_p99"] for r in rows]),
    )


def _summarize_overall(
    workers: tuple[WorkerSummary, ...], by_worker: dict[str, list[dict[str, Any]]], step: float
) -> WorkerSummary:
    # One interval = every worker's record at one time (rounded to the interval); a worker with
    # two records in one interval counts with its later one, its leases of both added.
    t0 = min(w.first for w in workers)
    intervals: dict[int, dict[str, tuple[dict[str, Any], int]]] = {}
    for worker, rows in by_worker.items():
        for record, leases in zip(rows, _interval_leases(rows), strict=True):
            slot = round((_time(record) - t0).total_seconds() / step)
            earlier = intervals.setdefault(slot, {}).get(worker)
            intervals[slot][worker] = (record, leases + (earlier[1] if earlier else 0))
    limits: list[int] = []
    bytes_held: list[int] = []
    leased: list[int] = []
    hit_rates: list[float | None] = []
    ticks_per_s: list[float | None] = []
    predictions_per_s: list[float | None] = []
    for slot in sorted(intervals):
        members = list(intervals[slot].values())
        limits.append(sum(int(r["limit"]) for r, _ in members))
        bytes_held.append(sum(int(r["bytes_held"]) for r, _ in members))
        leased.append(sum(int(r["leased"]) for r, _ in members))
        hit_rates.append(_weighted_rate(members))
        ticks_per_s.append(_sum_or_none(r["ticks_per_s"] for r, _ in members))
        predictions_per_s.append(_sum_or_none(r["predictions_per_s"] for r, _ in members))
    everything = [r for rows in by_worker.values() for r in rows]
    rate_min, rate_median, rate_last = _spread(hit_rates)
    hits, misses = sum(w.hits for w in workers), sum(w.misses for w in workers)
    first, last = min(w.first for w in workers), max(w.last for w in workers)
    return WorkerSummary(
        worker=_OVERALL,
        records=sum(w.records for w in workers),
        first=first,
        last=last,
        span_s=(last - first).total_seconds(),
        hits=hits,
        misses=misses,
        hit_rate=_ratio(hits, hits + misses),
        grows=sum(w.grows for w in workers),
        shrinks=sum(w.shrinks for w in workers),
        evictions=sum(w.evictions for w in workers),
        unpooled=sum(w.unpooled for w in workers),
        interval_hit_rate_min=rate_min,
        interval_hit_rate_median=rate_median,
        interval_hit_rate_last=rate_last,
        limit_min=min(limits),
        limit_max=max(limits),
        limit_last=limits[-1],
        leased_last=leased[-1],
        peak_bytes_held=max(bytes_held),
        ticks=sum(w.ticks for w in workers),
        predictions=sum(w.predictions for w in workers),
        dead_letters=sum(w.dead_letters for w in workers),
        ticks_per_s_median=_median(ticks_per_s),
        ticks_per_s_max=_max(ticks_per_s),
        predictions_per_s_median=_median(predictions_per_s),
        latency_ms_p50_median=_median([r["latency_ms_p50"] for r in everything]),
        latency_ms_p99_median=_median([r["latency_ms_p99"] for r in everything]),
    )


def _restarts(rows: list[dict[str, Any]]) -> set[int]:
    """Indices of the records where the worker restarted: some cumulative counter went down."""
    return {
        i
        for i in range(1, len(rows))
        if any(rows[i][key] < rows[i - 1][key] for key in _CUMULATIVE)
    }


def _total(rows: list[dict[str, Any]], restarts: set[int], key: str) -> int:
    """Total of a cumulative counter: its last value, plus its value before each restart."""
    return int(rows[-1][key]) + sum(int(rows[i - 1][key]) for i in restarts)


def _interval_leases(rows: list[dict[str, Any]]) -> list[int]:
    """Leases (hits + misses) in each record's interval, from the cumulative counts."""
    restarts = _restarts(rows)
    out, previous = [], 0
    for i, record in enumerate(rows):
        leases = int(record["hits"]) + int(record["misses"])
        out.append(leases if i in restarts else leases - previous)
        previous = leases
    return out


def _weighted_rate(members: list[tuple[dict[str, Any], int]]) -> float | None:
    rated = [(r["interval_hit_rate"], w) for r, w in members if r["interval_hit_rate"] is not None]
    if not rated:
        return None
    weight = sum(w for _, w in rated)
    if weight == 0:
        return float(statistics.fmean(rate for rate, _ in rated))
    return float(sum(rate * w for rate, w in rated) / weight)


def _spread(values: Sequence[float | None]) -> tuple[float | None, float | None, float | None]:
    """Min, median and last of the measured values (nulls skipped)."""
    present = [float(v) for v in values if v is not None]
    if not present:
        return None, None, None
    return min(present), float(statistics.median(present)), present[-1]


def _max(values: Sequence[float | None]) -> float | None:
    present = [float(v) for v in values if v is not None]
    return max(present) if present else None


def _median(values: Sequence[float | None]) -> float | None:
    present = [float(v) for v in values if v is not None]
    return float(statistics.median(present)) if present else None


def _sum_or_none(values: Any) -> float | None:
    present = [float(v) for v in values if v is not None]
    return sum(present) if present else None


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


# --- rendering -----------------------------------------------------------------------------------


def render_summary(summary: StatsSummary) -> Table:
    """A rich table of the summary: one row per figure, one column per worker (and "all").

    The "all" column is shown when there is more than one worker. Missing measurements show "-".
    Typical use: ``print_summary(summarize(load_stats("stats.jsonl")))``.
    """
    columns = list(summary.workers)
    headers = [f"worker {w.worker}" for w in columns]
    if len(columns) > 1:
        columns.append(summary.overall)
        headers.append("all")
    overall = summary.overall
    table = Table(
        title=(
            f"pool statistics: {overall.records:,} records, {len(summary.workers)} worker(s), "
            f"{_when(overall.first)} to {_when(overall.last)}"
        ),
        title_justify="left",
    )
    table.add_column("")
    for header in headers:
        table.add_column(header, justify="right")
    groups: list[list[tuple[str, Any]]] = [
        [
            ("records", lambda w: _int(w.records)),
            ("span", lambda w: f"{w.span_s:,.1f} s"),
            ("ticks", lambda w: _int(w.ticks)),
            ("predictions", lambda w: _int(w.predictions)),
            ("dead letters", lambda w: _int(w.dead_letters)),
            ("ticks/s median", lambda w: _float(w.ticks_per_s_median, ",.0f")),
            ("ticks/s max", lambda w: _float(w.ticks_per_s_max, ",.0f")),
            ("predictions/s median", lambda w: _float(w.predictions_per_s_median, ",.0f")),
            ("latency p50 median", lambda w: _float(w.latency_ms_p50_median, ",.3f", " ms")),
            ("latency p99 median", lambda w: _float(w.latency_ms_p99_median, ",.3f", " ms")),
        ],
        [
            ("hits", lambda w: _int(w.hits)),
            ("misses", lambda w: _int(w.misses)),
            ("hit rate", lambda w: _percent(w.hit_rate)),
            ("interval hit rate min", lambda w: _percent(w.interval_hit_rate_min)),
            ("interval hit rate median", lambda w: _percent(w.interval_hit_rate_median)),
            ("interval hit rate last", lambda w: _percent(w.interval_hit_rate_last)),
        ],
        [
            ("limit min / max / last", lambda w: f"{w.limit_min} / {w.limit_max} / {w.limit_last}"),
            ("leased at the end", lambda w: _int(w.leased_last)),
            ("peak bytes held", lambda w: _bytes(w.peak_bytes_held)),
            ("grows / shrinks", lambda w: f"{w.grows:,} / {w.shrinks:,}"),
            ("evictions", lambda w: _int(w.evictions)),
            ("unpooled", lambda w: _int(w.unpooled)),
        ],
    ]
    for group in groups:
        for label, cell in group:
            table.add_row(label, *(cell(column) for column in columns))
        if group is not groups[-1]:
            table.add_section()
    return table


def print_summary(summary: StatsSummary, console: Console | None = None) -> None:
    """Print :func:`render_summary` to ``console`` (a new stdout console by default)."""
    (console or Console()).print(render_summary(summary))


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") + "Z"


def _int(value: int) -> str:
    return f"{value:,}"


def _float(value: float | None, spec: str, unit: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{unit}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _bytes(value: int) -> str:
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{value:,} B" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


# --- plotting ------------------------------------------------------------------------------------


def plot_stats(records: Sequence[Mapping[str, Any]], out_png: str | os.PathLike[str]) -> Path:
    """Plot the records over time to a PNG; return its path.

    Three stacked panels, one line per worker: hit rate (overall solid, interval dashed), pool
    limit (solid) and leased buffers (dashed), ticks/s. Uses matplotlib's Agg canvas directly, so
    it needs no display and changes no global matplotlib state. matplotlib is optional: without it
    this raises ``ImportError`` saying how to install it.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError("plotting needs matplotlib: pip install 'tickpool[plot]'") from err
    if not records:
        raise ValueError("no statistics records to plot")
    checked = [_checked(dict(r), f"records[{i}]") for i, r in enumerate(records)]
    by_worker: dict[str, list[dict[str, Any]]] = {}
    for record in sorted(checked, key=_time):
        by_worker.setdefault(str(record["worker"]), []).append(record)

    figure = Figure(figsize=(10, 8), layout="constrained")
    FigureCanvasAgg(figure)
    hit_ax, pool_ax, tps_ax = figure.subplots(3, 1, sharex=True)
    for index, (worker, rows) in enumerate(sorted(by_worker.items())):
        color = f"C{index % 10}"
        times = [_time(r) for r in rows]

        def series(key: str, rows: list[dict[str, Any]] = rows) -> list[float]:
            return [float("nan") if r[key] is None else float(r[key]) for r in rows]

        # markers: an interval between two unmeasured ones (null) still shows as a point
        line = {"color": color, "marker": "o", "markersize": 3}
        hit_ax.plot(times, series("hit_rate"), **line, label=f"worker {worker} overall")
        hit_ax.plot(times, series("interval_hit_rate"), **line, linestyle="--", label="interval")
        step = {**line, "drawstyle": "steps-post"}
        pool_ax.plot(times, series("limit"), **step, label=f"worker {worker} limit")
        pool_ax.plot(times, series("leased"), **step, linestyle="--", label="leased")
        tps_ax.plot(times, series("ticks_per_s"), **line, label=f"worker {worker}")
    hit_ax.set_ylabel("hit rate")
    hit_ax.set_ylim(-0.02, 1.02)
    pool_ax.set_ylabel("buffers")
    tps_ax.set_ylabel("ticks/s")
    tps_ax.set_xlabel("time (UTC)")
    for axes in (hit_ax, pool_ax, tps_ax):
        axes.grid(True, alpha=0.3)
        axes.legend(loc="best", fontsize="small", ncols=2)
    figure.suptitle(f"tickpool pool statistics, {len(by_worker)} worker(s)")
    target = Path(out_png)
    figure.savefig(target, format="png", dpi=100)
    return target
