"""`tickpool stats` summaries: the numbers add up, bad lines are named, tables and plots render."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from rich.console import Console

from tickpool.pipeline.report import (
    load_stats,
    plot_stats,
    print_summary,
    render_summary,
    summarize,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


COUNTS = "hits misses leased free limit bytes_held grows shrinks evictions unpooled ticks"
COUNTS += " predictions dead_letters"
RATES = "hit_rate interval_hit_rate ticks_per_s predictions_per_s latency_ms_p50 latency_ms_p90"
RATES += " latency_ms_p99"


def record(worker: str, time: str, **values: Any) -> dict[str, Any]:
    """One statistics record; counters default to zero, rates to null."""
    base: dict[str, Any] = {"schema": 1, "time": time, "worker": worker, "interval_s": 10.0}
    base.update(dict.fromkeys(COUNTS.split(), 0))
    base.update(dict.fromkeys(RATES.split()))
    base.update(values)
    return base


def two_workers() -> list[dict[str, Any]]:
    """Worker 0 busy and steady; worker 1 a second late, quieter, idle in its last interval."""
    w0 = [
        # hits, misses, interval hit rate, limit, leased, bytes, grows, evictions, unpooled,
        # ticks, predictions, dead letters, ticks/s, predictions/s, p50, p99
        (80, 20, 0.8, 8, 2, 1000, 0, 0, 0, 10_000, 9_000, 0, 1000.0, 900.0, 0.5, 2.0),
        (170, 30, 0.9, 12, 3, 3000, 1, 2, 0, 30_000, 28_000, 0, 2000.0, 1900.0, 0.7, 3.0),
        (260, 40, 0.9, 12, 0, 2500, 1, 3, 1, 60_000, 57_000, 2, 3000.0, 2900.0, 0.6, 2.5),
    ]
    w1 = [
        (30, 20, 0.6, 8, 1, 500, 0, 0, 0, 5_000, 4_000, 0, 500.0, 400.0, 1.0, 4.0),
        (90, 30, 6 / 7, 8, 1, 500, 0, 0, 0, 5_000, 4_000, 0, None, None, None, None),
        (90, 30, None, 16, 1, 4000, 1, 0, 0, 20_000, 18_000, 0, 1500.0, 1400.0, 0.8, 3.5),
    ]
    out = []
    for worker, rows, second in (("0", w0, 10), ("1", w1, 11)):
        for i, row in enumerate(rows):
            (hits, misses, rate, limit, leased, held, grows, evictions, unpooled) = row[:9]
            (ticks, predictions, dead, tps, pps, p50, p99) = row[9:]
            out.append(
                record(
                    worker,
                    f"2024-01-02T14:30:{second + 10 * i:02d}Z",
                    hits=hits,
                    misses=misses,
                    hit_rate=hits / (hits + misses),
                    interval_hit_rate=rate,
                    limit=limit,
                    leased=leased,
                    free=limit - leased,
                    bytes_held=held,
                    grows=grows,
                    evictions=evictions,
                    unpooled=unpooled,
                    ticks=ticks,
                    predictions=predictions,
                    dead_letters=dead,
                    ticks_per_s=tps,
                    predictions_per_s=pps,
                    latency_ms_p50=p50,
                    latency_ms_p90=p50,
                    latency_ms_p99=p99,
                )
            )
    return out


def write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


@pytest.fixture
def stats_file(tmp_path: Path) -> Path:
    records = two_workers()
    lines = [orjson.dumps(r) for r in records]
    lines.insert(2, b"   ")  # blank lines are skipped
    return write_lines(tmp_path / "stats.jsonl", lines)


# --- loading -------------------------------------------------------------------------------------


def test_load_reads_every_record_and_skips_blank_lines(stats_file: Path) -> None:
    records = load_stats(stats_file)
    assert len(records) == 6
    assert records == two_workers()


def test_a_malformed_line_is_named_by_file_and_number(stats_file: Path) -> None:
    lines = stats_file.read_bytes().splitlines()
    lines[3] = b'{"schema": 1, "time": '
    write_lines(stats_file, lines)
    with pytest.raises(ValueError, match=r"stats\.jsonl, line 4: not valid JSON .*expected one"):
        load_stats(stats_file)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"schema": 2}, r"line 2: statistics schema version 2 is not supported; .*version 1"),
        ({"schema": "1"}, r"line 2: statistics schema version '1' is not supported"),
        ({"hits": -1}, r"line 2: 'hits' is -1; expected a whole number >= 0"),
        ({"hits": 1.5}, r"line 2: 'hits' is 1.5; expected a whole number"),
        ({"ticks_per_s": "fast"}, r"line 2: 'ticks_per_s' is 'fast'; expected a number or null"),
        ({"time": "noon"}, r"line 2: 'time' is 'noon'; expected an ISO-8601 time"),
    ],
)
def test_a_bad_record_says_what_was_expected(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    good = record("0", "2024-01-02T14:30:00Z")
    bad = {**good, **change}
    path = write_lines(tmp_path / "stats.jsonl", [orjson.dumps(good), orjson.dumps(bad)])
    with pytest.raises(ValueError, match=message):
        load_stats(path)


def test_missing_keys_and_non_objects_are_named(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "s.jsonl", [b'{"schema": 1, "time": "2024-01-02T00:00:00Z"}'])
    with pytest.raises(ValueError, match=r"line 1: missing keys 'worker', 'interval_s', 'hits'"):
        load_stats(path)
    path = write_lines(tmp_path / "s.jsonl", [b"[1, 2]"])
    with pytest.raises(ValueError, match=r"line 1: found a JSON list; expected a pool-statistics"):
        load_stats(path)


@pytest.mark.parametrize("content", [b"", b"\n  \n\n"])
def test_a_file_without_records_is_a_clear_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"no statistics records in .*empty\.jsonl"):
        load_stats(path)


# --- summarizing ---------------------------------------------------------------------------------


def test_per_worker_summary_numbers(stats_file: Path) -> None:
    summary = summarize(load_stats(stats_file))
    w0, w1 = summary.workers
    assert (w0.worker, w0.records, w0.span_s) == ("0", 3, 20.0)
    assert (w0.hits, w0.misses, w0.hit_rate) == (260, 40, 260 / 300)
    assert (w0.grows, w0.shrinks, w0.evictions, w0.unpooled) == (1, 0, 3, 1)
    assert (w0.interval_hit_rate_min, w0.interval_hit_rate_median) == (0.8, 0.9)
    assert w0.interval_hit_rate_last == 0.9
    assert (w0.limit_min, w0.limit_max, w0.limit_last, w0.leased_last) == (8, 12, 12, 0)
    assert w0.peak_bytes_held == 3000
    assert (w0.ticks, w0.predictions, w0.dead_letters) == (60_000, 57_000, 2)
    assert (w0.ticks_per_s_median, w0.ticks_per_s_max, w0.predictions_per_s_median) == (
        2000.0,
        3000.0,
        1900.0,
    )
    assert (w0.latency_ms_p50_median, w0.latency_ms_p99_median) == (0.6, 2.5)

    assert (w1.worker, w1.records, w1.hits, w1.misses, w1.hit_rate) == ("1", 3, 90, 30, 0.75)
    # the null interval hit rate of the idle interval is skipped, not taken as zero
    assert w1.interval_hit_rate_min == 0.6
    assert w1.interval_hit_rate_median == pytest.approx((0.6 + 6 / 7) / 2, rel=1e-15)
    assert w1.interval_hit_rate_last == pytest.approx(6 / 7, rel=1e-15)
    assert (w1.limit_min, w1.limit_max, w1.limit_last, w1.peak_bytes_held) == (8, 16, 16, 4000)
    assert (w1.ticks_per_s_median, w1.ticks_per_s_max) == (1000.0, 1500.0)
    assert (w1.latency_ms_p50_median, w1.latency_ms_p99_median) == (0.9, 3.75)


def test_overall_sums_counters_and_sums_workers_per_interval(stats_file: Path) -> None:
    summary = summarize(load_stats(stats_file))
    all_ = summary.overall
    assert summary.interval_s == 10.0
    assert (all_.worker, all_.records, all_.span_s) == ("all", 6, 21.0)
    assert (all_.hits, all_.misses, all_.hit_rate) == (350, 70, 350 / 420)
    assert (all_.grows, all_.evictions, all_.unpooled) == (2, 3, 1)
    assert (all_.ticks, all_.predictions, all_.dead_letters) == (80_000, 75_000, 2)
    # intervals at :10/:11, :20/:21, :30/:31: limits 8+8, 12+8, 12+16; bytes 1500, 3500, 6500
    assert (all_.limit_min, all_.limit_max, all_.limit_last) == (16, 28, 28)
    assert (all_.peak_bytes_held, all_.leased_last) == (6500, 1)
    # hit rate weighted by leases: (0.8*100 + 0.6*50)/150, (0.9*100 + 6/7*70)/170, 0.9
    assert all_.interval_hit_rate_min == pytest.approx(110 / 150, rel=1e-15)
    assert all_.interval_hit_rate_median == pytest.approx(150 / 170, rel=1e-15)
    assert all_.interval_hit_rate_last == pytest.approx(0.9, rel=1e-15)
    # ticks/s per interval: 1500, 2000 (worker 1 unmeasured), 4500
    assert (all_.ticks_per_s_median, all_.ticks_per_s_max) == (2000.0, 4500.0)
    assert all_.predictions_per_s_median == 1900.0
    assert (all_.latency_ms_p50_median, all_.latency_ms_p99_median) == (0.7, 3.0)


def test_summary_does_not_depend_on_record_order(stats_file: Path) -> None:
    records = load_stats(stats_file)
    assert summarize(records[::-1]) == summarize(records)


def test_a_counter_that_restarts_from_zero_is_added_not_lost() -> None:
    rows = [
        record("0", f"2024-01-02T14:30:{s}Z", ticks=t, hits=h, misses=1)
        for s, t, h in (("10", 100, 5), ("20", 300, 9), ("30", 50, 2), ("40", 120, 4))
    ]
    worker = summarize(rows).workers[0]
    assert worker.ticks == 300 + 120
    assert (worker.hits, worker.misses) == (9 + 4, 2)


def test_summarize_checks_records_it_did_not_load() -> None:
    with pytest.raises(ValueError, match="no statistics records to summarize"):
        summarize([])
    with pytest.raises(ValueError, match=r"records\[0\]: missing keys 'worker'"):
        summarize([{"schema": 1, "time": "2024-01-02T14:30:00Z"}])


# --- rendering and plotting ----------------------------------------------------------------------


def test_render_summary_shows_the_key_numbers(stats_file: Path) -> None:
    summary = summarize(load_stats(stats_file))
    console = Console(record=True, width=120)
    print_summary(summary, console)
    text = console.export_text()
    for expected in (
        "worker 0",
        "worker 1",
        "all",
        "80,000",  # ticks, all
        "60,000",  # ticks, worker 0
        "86.7%",  # hit rate, worker 0
        "83.3%",  # hit rate, all
        "16 / 28 / 28",  # limits, all
        "6.3 KiB",  # peak bytes held, all
        "4,500",  # ticks/s max, all
        "0.700 ms",  # latency p50 median, all
    ):
        assert expected in text, expected
    assert render_summary(summary).row_count == 22


def test_one_worker_shows_no_all_column() -> None:
    table = render_summary(summarize([record("7", "2024-01-02T14:30:00Z")]))
    assert [c.header for c in table.columns] == ["", "worker 7"]


def test_plot_writes_a_png(stats_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "stats.png"
    assert plot_stats(load_stats(stats_file), out) == out
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 10_000


def test_plot_without_matplotlib_says_how_to_install_it(
    stats_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(
        ImportError, match=r"plotting needs matplotlib: pip install 'tickpool\[plot\]'"
    ):
        plot_stats(load_stats(stats_file), tmp_path / "stats.png")
    assert not (tmp_path / "stats.png").exists()
