"""End to end against what users would otherwise write (issue 6): ticks/s per worker by W.

Run: ``python -m benchmarks.bench_e2e`` (5 M ticks; ``--quick``: 1 M), optionally
``--plot e2e.png``. Prints markdown tables; asserts nothing except that every variant's
predictions agree with tickpool's.

The same job in every way below (8 symbols, stride 1, window z-score, a fixed linear model of
horizon 1), at W = 16, 64, 256:

- (a) ``tickpool replay --out DIR`` (one worker); (a") the same with DIR on /dev/shm (RAM);
  (a') the same without ``--out``;
- (b) a skilled per-tick Bytewax flow (one tuple per tick, ``stateful_map``, deque, running sums);
- (c) River's rolling variance per symbol per tick, in a plain loop, the same dot product;
- (d) pandas ``groupby + rolling`` on the whole file, the dot product as W shifted columns;
- (e) tickpool's numpy kernels over whole per-symbol arrays, no dataflow: the ceiling;
- (e') the same with tickpool's fused kernel (``operators/fused.py``), when this tree has it.

See ``benchmarks/baselines.py`` for the code of (b)-(e). Each measurement is one child process
with one BLAS thread; the variants and windows are interleaved in every repeat (a new random
order each time) and the tables show medians. (b) and (c) run on the first ``--prefix`` ticks
of the same data (a prefix file) so that a run takes seconds, not minutes.
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
    thread_settings,
    tick_file,
)
from benchmarks.baselines import compare, fused_available, ram_dir_available

WINDOWS = (16, 64, 256)
SYMBOLS = 8
BAD_REL_DIFF = 1e-6  # beyond this a variant is not computing the same job

VARIANTS = {  # variant -> (letter, label, reads the prefix file)
    "tickpool": ("a", "tickpool replay", False),
    "tickpool-ram": ('a"', "tickpool replay, predictions to RAM (tmpfs)", False),
    "tickpool-no-out": ("a'", "tickpool replay, predictions not written", False),
    "bytewax-per-tick": ("b", "per-tick Bytewax", True),
    "river": ("c", "River rolling, per tick", True),
    "pandas": ("d", "pandas groupby + rolling", False),
    "numpy-kernels": ("e", "numpy kernels, no dataflow", False),
}
if not ram_dir_available():  # no /dev/shm: no RAM-disk variant
    del VARIANTS["tickpool-ram"]
if fused_available():  # operators/fused.py: the fused kernel is the ceiling the engine aims at
    VARIANTS["numpy-fused"] = ("e'", "fused numpy kernel, no dataflow", False)
CEILINGS = [v for v in ("numpy-kernels", "numpy-fused") if v in VARIANTS]
PREDICTS = [v for v in VARIANTS if v != "tickpool-no-out"]  # (a') drops its predictions
PLOT_NAME = "e2e_throughput.png"  # python -m benchmarks --out DIR/x.md draws it to DIR/
TARGETS = "targets (issue 6): a/b >= 100, a/e >= 0.8"


def measure(
    ticks: int, prefix: int, repeat: int, data: Path | None
) -> tuple[dict[tuple[int, str], Measurement], list[list[object]]]:
    """Interleaved runs of every (W, variant); medians, and the agreement check's rows."""
    full = tick_file(ticks, SYMBOLS, data)
    short = tick_file(prefix, SYMBOLS, data)
    models = {w: model_file(w, data) for w in WINDOWS}
    jobs = [(w, v) for w in WINDOWS for v in VARIANTS]
    runs: dict[tuple[int, str], list[Measurement]] = {j: [] for j in jobs}
    shuffler = random.Random(6)
    check: list[list[object]] = []
    with tempfile.TemporaryDirectory(prefix="tickpool-bench-preds-") as tmp:
        for r in range(repeat):
            order = list(jobs)
            shuffler.shuffle(order)
            for w, v in order:
                source = short if VARIANTS[v][2] else full
                save = Path(tmp) / f"{v}-{w}.npz" if r == 0 and v in PREDICTS else None
                runs[(w, v)].append(run_variant(v, source, models[w], save=save))
            if r == 0:
                check = _agreement(Path(tmp))
                for f in Path(tmp).glob("*.npz"):
                    f.unlink()
    return {j: median_of(rs) for j, rs in runs.items()}, check


def _agreement(folder: Path) -> list[list[object]]:
    """Compare every variant's saved predictions with tickpool's; stop if one is off."""
    rows: list[list[object]] = []
    for w in WINDOWS:
        reference = load_predictions(folder / f"tickpool-{w}.npz")
        for v, (letter, label, on_prefix) in VARIANTS.items():
            if v not in PREDICTS or v == "tickpool":
                continue
            theirs = load_predictions(folder / f"{v}-{w}.npz")
            worst_abs, worst_rel = compare(reference, theirs, prefix=on_prefix)
            n = sum(len(x) for x in theirs.values())
            if not worst_rel <= BAD_REL_DIFF:
                raise SystemExit(
                    f"bench_e2e: ({letter}) {label} at W={w} disagrees with tickpool (max abs "
                    f"{worst_abs:.3g}, max rel {worst_rel:.3g} over {n:,} predictions, or the "
                    f"counts differ): it is not computing the same job, so its timing means "
                    f"nothing"
                )
            rows.append([w, f"({letter}) {label}", n, f"{worst_abs:.1e}", f"{worst_rel:.1e}"])
    return rows


def plot(med: dict[tuple[int, str], Measurement], path: Path) -> None:
    """Throughput against W, one line per variant, log scales."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    for v, (letter, label, _) in VARIANTS.items():
        ys = [med[(w, v)].ticks_per_s for w in WINDOWS]
        ax.plot(WINDOWS, ys, marker="o", label=f"({letter}) {label}")
    for v in CEILINGS:
        kernels = [med[(w, v)].kernel_ticks_per_s or float("nan") for w in WINDOWS]
        label = f"({VARIANTS[v][0]}) kernel calls alone"
        ax.plot(WINDOWS, kernels, marker="o", linestyle="--", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(WINDOWS, [str(w) for w in WINDOWS])
    ax.set_xlabel("window W (ticks)")
    ax.set_ylabel("ticks/s per worker")
    ax.set_title("Window z-score + linear model, 8 symbols, one worker")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))  # beside the lines
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 M ticks, 60 k prefix, 2 repeats")
    ap.add_argument("--ticks", type=int, help="ticks for (a), (d), (e) (5,000,000)")
    ap.add_argument("--prefix", type=int, help="ticks for the per-tick (b), (c) (300,000)")
    ap.add_argument("--repeat", type=int, help="interleaved runs per variant and W (3)")
    ap.add_argument("--data", type=Path, help=f"where the tick files live ({DEFAULT_DATA_DIR})")
    ap.add_argument("--plot", type=Path, help="also draw ticks/s against W to this PNG")
    args = ap.parse_args(argv)
    ticks = args.ticks or (1_000_000 if args.quick else 5_000_000)
    prefix = min(ticks, args.prefix or (60_000 if args.quick else 300_000))
    repeat = args.repeat or (2 if args.quick else 3)

    med, check = measure(ticks, prefix, repeat, args.data)

    print(f"# bench_e2e ({machine_line()}, {thread_settings()})\n")
    print(
        f"## Ticks/s per worker by window: {SYMBOLS} symbols, stride 1, window z-score, linear "
        f"model (median of {repeat} interleaved runs, one process each)\n"
    )
    rows: list[list[object]] = []
    for w in WINDOWS:
        a = med[(w, "tickpool")].ticks_per_s
        for v, (letter, label, on_prefix) in VARIANTS.items():
            m = med[(w, v)]
            rows.append(
                [
                    w,
                    f"({letter}) {label}",
                    f"{m.ticks:,}" + (" (prefix)" if on_prefix else ""),
                    m.seconds,
                    m.ticks_per_s / 1e6,
                    a / m.ticks_per_s,
                    mb(m.peak_anon_kb),
                ]
            )
            if m.kernel_seconds:
                rows.append(
                    [
                        w,
                        f"({letter}) of which the kernel calls alone",
                        f"{m.ticks:,}",
                        m.kernel_seconds,
                        m.ticks / m.kernel_seconds / 1e6,
                        a * m.kernel_seconds / m.ticks,
                        "",
                    ]
                )
    print(
        markdown_table(
            ["W", "variant", "ticks", "seconds", "M ticks/s", "a / this", "peak anon MB"], rows
        )
    )
    print("\n## Summary: M ticks/s per worker\n")
    summary: list[list[object]] = []
    ratios: list[list[object]] = []
    b = "bytewax-per-tick"
    mains = [v for v in ("tickpool", "tickpool-ram", "tickpool-no-out") if v in VARIANTS]
    for w in WINDOWS:
        tps = {v: med[(w, v)].ticks_per_s for v in VARIANTS}
        kernels = {v: med[(w, v)].kernel_ticks_per_s or float("nan") for v in CEILINGS}
        summary.append(
            [w, *(tps[v] / 1e6 for v in VARIANTS), *(kernels[v] / 1e6 for v in CEILINGS)]
        )
        row: list[object] = [w, *(tps[v] / tps[b] for v in mains)]
        a = tps["tickpool"]
        for v in CEILINGS:
            row += [a / tps[v], a / kernels[v], tps["tickpool-no-out"] / kernels[v]]
        ratios.append(row)
    headers = ["W", *(f"({VARIANTS[v][0]})" for v in VARIANTS)]
    headers += [f"({VARIANTS[v][0]}) kernel calls alone" for v in CEILINGS]
    print(markdown_table(headers, summary))
    print(f"\n## Ratios ({TARGETS})\n")
    headers = ["W", *(f"{VARIANTS[v][0]}/b" for v in mains)]
    for v in CEILINGS:
        letter = VARIANTS[v][0]
        headers += [f"a/{letter}", f"a / {letter} kernel calls", f"a' / {letter} kernel calls"]
    print(markdown_table(headers, ratios))
    print("\n## Every variant computes the same predictions (checked on the first repeat)\n")
    print(
        markdown_table(
            ["W", "variant vs (a)", "predictions compared", "max abs diff", "max rel diff"],
            check,
        )
    )
    if args.plot is not None:
        plot(med, args.plot)
        print(f"\n![ticks/s against W]({args.plot.name})")
    print("\n" + FOOTER.format(prefix=prefix))


FOOTER = """\
Columns. *seconds*: the job inside the child process, from opening the file to the last
prediction (not interpreter start-up or imports); *M ticks/s*: ticks / seconds; *a / this*:
tickpool's ticks/s over this variant's. (b) and (c) read the first {prefix:,} ticks of the same
data (a prefix file), the others the whole file: a per-tick flow's rate does not depend on the
stream's length, but (a) and (d) pay fixed start-up costs (Bytewax's, pandas' conversion) that a
short file would exaggerate. *peak anon*: the child's largest sampled RssAnon (heap and arrays,
not file pages), interpreter and imports included.

Outputs. (a) writes its predictions as Arrow IPC files to the temporary directory (this
machine's disk); (a") writes the same files to /dev/shm (a tmpfs: RAM, without the disk's write
path and the final fsync); (a') runs without a prediction sink. (b)-(e) keep their predictions
in memory, so *a"/b* and *a'/b* compare like with like; *a/b* includes writing about 26 bytes
per prediction to disk.

Ceilings. *(e) kernel calls alone*: the same run of (e) timed inside its kernel calls only
(window matrix copy, z-score, predict, back to prices; for (e') the fused kernel's calls),
without reading the file, grouping by symbol and gathering each symbol's array. Issue 6's "at
least 80% of (e)" is *a/e* (and *a/e'*) read as whole runs; the stricter reading, "the dataflow,
pool and Arrow plumbing may cost at most a fifth of the kernel time", is *a / e kernel calls*
(and *a' / e' kernel calls* for the fused kernel the engine runs for this job, without the
output file). (e) as a whole pays for whole-array copies into fresh memory, which tickpool's
per-batch pooled buffers avoid; that is why (a) can beat it."""


if __name__ == "__main__":
    main()
