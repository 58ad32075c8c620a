"""``tickpool replay`` end to end (issue 4): ticks/s and peak memory, next to a per-tick flow.

Run: ``python -m benchmarks.bench_replay`` (10 M ticks; ``--quick``: 1 M). Prints markdown
tables; asserts nothing except that every variant's predictions agree with tickpool's.

The job: 8 symbols, W=64, stride 1, window z-score, a linear model (fixed weights, horizon 1).
The data: synthetic ticks with a fixed seed, generated once into ``--data DIR`` (default: a
``tickpool-bench`` folder in the temp directory) and reused. Every measurement is one child
process (``python -m benchmarks.baselines VARIANT``); the variants are interleaved in every
repeat and the tables show medians.

- ``tickpool replay`` with ``--out DIR`` (predictions written as Arrow IPC streams) and
  without (predictions computed and dropped), on the whole file.
- A skilled per-tick Bytewax flow (one tuple per tick, ``stateful_map`` keyed by symbol, a deque
  and running sums per symbol): see ``benchmarks/baselines.py``. It runs about a hundred times
  slower, so it reads the first ``--prefix`` ticks of the same data (a prefix file).
"""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path

from benchmarks._report import machine_line, markdown_table
from benchmarks._runner import (
    DEFAULT_DATA_DIR,
    Measurement,
    load_predictions,
    mb,
    median_of,
    model_file,
    run_variant,
    tick_file,
)
from benchmarks.baselines import compare

WINDOW = 64
SYMBOLS = 8
BAD_REL_DIFF = 1e-6  # beyond this a variant is not computing the same job

LABELS = {
    "tickpool": "tickpool replay --out DIR",
    "tickpool-no-out": "tickpool replay (no --out)",
    "bytewax-per-tick": "per-tick Bytewax (stateful_map, deque, running sums)",
}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 M ticks, 2 repeats")
    ap.add_argument("--ticks", type=int, help="ticks in the replayed file (10,000,000)")
    ap.add_argument("--prefix", type=int, help="ticks the per-tick flow reads (200,000)")
    ap.add_argument("--repeat", type=int, help="interleaved runs per variant (3)")
    ap.add_argument("--data", type=Path, help=f"where the tick files live ({DEFAULT_DATA_DIR})")
    args = ap.parse_args(argv)
    ticks = args.ticks or (1_000_000 if args.quick else 10_000_000)
    prefix = min(ticks, args.prefix or (100_000 if args.quick else 200_000))
    repeat = args.repeat or (2 if args.quick else 3)

    full = tick_file(ticks, SYMBOLS, args.data)
    short = tick_file(prefix, SYMBOLS, args.data)
    model = model_file(WINDOW, args.data)
    plan = {"tickpool": full, "tickpool-no-out": full, "bytewax-per-tick": short}

    runs: dict[str, list[Measurement]] = {v: [] for v in plan}
    order = list(plan)
    shuffler = random.Random(4)
    with tempfile.TemporaryDirectory(prefix="tickpool-bench-preds-") as tmp:
        saved: dict[str, Path] = {}
        for r in range(repeat):
            shuffler.shuffle(order)
            for variant in order:
                save = None
                if r == 0 and variant != "tickpool-no-out":
                    save = saved[variant] = Path(tmp) / f"{variant}.npz"
                runs[variant].append(run_variant(variant, plan[variant], model, save=save))
        reference = load_predictions(saved["tickpool"])
        check = load_predictions(saved["bytewax-per-tick"])
    worst_abs, worst_rel = compare(reference, check, prefix=True)
    compared = sum(len(v) for v in check.values())
    if not worst_rel <= BAD_REL_DIFF:
        raise SystemExit(
            f"bench_replay: the per-tick flow's predictions differ from tickpool's (max abs "
            f"{worst_abs:.3g}, max rel {worst_rel:.3g} over {compared:,} predictions, or the "
            f"counts differ): it is not computing the same job, so its timing means nothing"
        )

    med = {v: median_of(rs) for v, rs in runs.items()}
    per_tick = med["bytewax-per-tick"].ticks_per_s
    rows: list[list[object]] = []
    for variant in plan:
        m = med[variant]
        rows.append(
            [
                LABELS[variant],
                m.ticks,
                m.seconds,
                m.ticks_per_s / 1e6,
                m.ticks_per_s / per_tick,
                mb(m.peak_rss_kb),
                mb(m.peak_anon_kb),
                mb(m.anon_start_kb),
                mb(m.peak_anon_kb - m.anon_start_kb),
            ]
        )
    print(f"# bench_replay ({machine_line()})\n")
    print(
        f"## Replay end to end: {ticks:,} ticks, {SYMBOLS} symbols, W={WINDOW}, window z-score, "
        f"linear model (median of {repeat} interleaved runs, one process each)\n"
    )
    print(
        markdown_table(
            [
                "variant",
                "ticks",
                "seconds",
                "M ticks/s",
                "x per-tick",
                "peak RSS MB",
                "peak anon MB",
                "anon at start MB",
                "anon growth MB",
            ],
            rows,
        )
    )
    print(
        f"\nThe per-tick flow reads the first {prefix:,} ticks of the same data (at its speed the "
        f"whole file would take minutes); its ticks/s is that run's. Its predictions agree with "
        f"tickpool's on those ticks: max abs diff {worst_abs:.2e}, max rel diff {worst_rel:.2e} "
        f"({compared:,} predictions).\n"
    )
    print(FOOTER)


FOOTER = """\
Columns. *seconds*: the job inside the child process (from opening the file to the last
prediction), not interpreter start-up or imports. *x per-tick*: ticks/s over the per-tick flow's.
*peak RSS*: the child's ru_maxrss (includes file-backed pages of the memory-mapped input and of
the prediction files written). *peak anon*: the largest RssAnon sampled every 5 ms (heap, arrays,
pool buffers; no file pages). *anon at start*: RssAnon after the imports, before the job;
*anon growth* = peak anon - anon at start, what the job itself holds."""


if __name__ == "__main__":
    main()
