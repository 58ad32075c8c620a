"""The benchmark baselines compute tickpool's job: the same predictions, tick for tick.

bench_e2e and bench_replay compare tickpool against these implementations; a baseline that
computed something else (another std, another constant-window rule, windows off by one)
would make those comparisons meaningless. So each must agree with the engine's output.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from benchmarks._report import Fixed, markdown_table, number
from benchmarks.baselines import (
    RAM_DIR,
    LinearJob,
    Predictions,
    bytewax_per_tick,
    compare,
    fused_available,
    numpy_fused,
    numpy_kernels,
    pandas_rolling,
    ram_dir_available,
    read_columns,
    read_predictions,
    river_per_tick,
    save_job,
    tickpool_replay,
)
from benchmarks.bench_original import verdicts
from tickpool.connectors.synthetic import write_ticks

needs_river = pytest.mark.skipif(
    importlib.util.find_spec("river") is None, reason="River is in the [bench] extra"
)
needs_fused = pytest.mark.skipif(
    not fused_available(), reason="this tickpool has no operators/fused.py"
)

REPO = Path(__file__).resolve().parents[1]  # benchmarks/ is importable from here
WINDOW = 16
TICKS = 3_000
SYMBOLS = 3
REL_TOL = 1e-9

Baseline = Callable[[str | Path, LinearJob], Predictions]


@pytest.fixture(scope="module")
def job_and_reference(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, LinearJob, Predictions]:
    """A small generated file (in batches of 512, so windows cross batch cuts), a linear model,
    and tickpool's own predictions for it."""
    folder = tmp_path_factory.mktemp("baselines")
    ticks = folder / "ticks.arrow"
    write_ticks(ticks, TICKS, SYMBOLS, seed=11, batch_rows=512)
    job = LinearJob.example(WINDOW)
    model = save_job(job, folder / "model.npz")
    tickpool_replay(ticks, model, WINDOW, folder / "out")
    return ticks, job, read_predictions(folder / "out")


def test_the_reference_has_a_prediction_per_window(
    job_and_reference: tuple[Path, LinearJob, Predictions],
) -> None:
    _, _, reference = job_and_reference
    assert len(reference) == SYMBOLS
    assert sum(len(v) for v in reference.values()) == TICKS - SYMBOLS * (WINDOW - 1)


def test_the_data_has_constant_windows(
    job_and_reference: tuple[Path, LinearJob, Predictions],
) -> None:
    """Equal prices in a row are common on a tick grid: the constant-window rule is exercised."""
    ticks, _, _ = job_and_reference
    _, codes, price = read_columns(ticks)
    constant = 0
    for k in range(SYMBOLS):
        x = price[codes == k]
        windows = np.lib.stride_tricks.sliding_window_view(x, WINDOW)
        constant += int((windows.max(axis=1) == windows.min(axis=1)).sum())
    assert constant > 0


@pytest.mark.parametrize(
    "baseline",
    [
        pytest.param(bytewax_per_tick, id="bytewax-per-tick"),
        pytest.param(river_per_tick, id="river", marks=needs_river),
        pytest.param(pandas_rolling, id="pandas"),
        pytest.param(numpy_kernels, id="numpy-kernels"),
        pytest.param(numpy_fused, id="numpy-fused", marks=needs_fused),
    ],
)
def test_baseline_predicts_what_tickpool_predicts(
    baseline: Baseline, job_and_reference: tuple[Path, LinearJob, Predictions]
) -> None:
    ticks, job, reference = job_and_reference
    theirs = baseline(ticks, job)
    assert {k: len(v) for k, v in theirs.items()} == {k: len(v) for k, v in reference.items()}
    _, worst_rel = compare(reference, theirs)
    assert worst_rel <= REL_TOL


def test_compare_flags_a_shifted_window() -> None:
    a = {"X": np.array([1.0, 2.0, 3.0])}
    assert compare(a, {"X": np.array([1.0, 2.0])}) == (np.inf, np.inf)
    assert compare(a, {"X": np.array([1.0, 2.0])}, prefix=True) == (0.0, 0.0)
    assert compare(a, {"X": np.array([2.0, 3.0])}, prefix=True)[1] > 0.1


@pytest.mark.parametrize(
    "variant",
    [
        "tickpool",
        pytest.param(
            "tickpool-ram",
            marks=pytest.mark.skipif(not ram_dir_available(), reason="no room in /dev/shm"),
        ),
        "tickpool-no-out",
    ],
)
def test_every_tickpool_variant_runs_the_whole_job(
    variant: str, job_and_reference: tuple[Path, LinearJob, Predictions], tmp_path: Path
) -> None:
    # bench_e2e's (a), (a") and (a') differ only in where the predictions go: each must process
    # every tick and make every prediction, and the two that write must write the same ones.
    ticks, job, reference = job_and_reference
    model = save_job(job, tmp_path / "model.npz")
    save = tmp_path / "preds.npz"
    args = [variant, "--data", str(ticks), "--model", str(model)]
    if variant != "tickpool-no-out":
        args += ["--save", str(save)]
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.baselines", *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        cwd=REPO,
    )
    record = json.loads(out.stdout.splitlines()[-1])
    where = {"tickpool": tempfile.gettempdir(), "tickpool-ram": RAM_DIR, "tickpool-no-out": None}
    if where[variant] is None:
        assert record["out_dir"] is None
    else:
        assert Path(record["out_dir"]).parent == Path(where[variant])
    assert record["ticks"] == TICKS
    assert record["predictions"] == sum(len(v) for v in reference.values())
    if variant != "tickpool-no-out":
        with np.load(save) as saved:
            assert compare(reference, {k: saved[k] for k in saved.files}) == (0.0, 0.0)


def test_verdicts_set_our_gains_against_the_originals_like_for_like() -> None:
    # Made-up tables as bench_original builds them: normalize allocating / pooled / in place
    # (us), loading before / after (ms), inference before / pooled at batch 32 / one call (per s).
    prep: list[list[object]] = [["a", Fixed(24.0), 16], ["p", Fixed(12.0), 5], ["i", 10.0, 5]]
    loading: list[list[object]] = [["a", Fixed(1.0, ".2f")], ["p", Fixed(0.5, ".2f")]]
    inference: list[list[object]] = [["a", 1_000_000], ["p", Fixed(1.1e6)], ["w", 8_000_000.0]]
    rows = {r[0]: r for r in verdicts(prep, loading, inference, {"reuse": 0.99, "leases": 10})}
    normalize = rows["normalize 10,000 points: allocating -> pooled"]
    assert normalize[1] == "12 -> 8 us (1.50x)"
    assert normalize[2].startswith("24.0 -> 12.0 us (2.00x); in place 10.0 us (2.40x)")
    # Our pooled gain 2.00x against the original's 1.50x; 12 us against its 8 us per call.
    assert normalize[3] == "beats the original's gain (1.33x of it); 1.5x its time per call"
    batch = rows["inference, predictions/s at batch 32: allocating -> pooled"]
    assert "1.0 M -> 1.1 M (1.10x); one call of 1,000: 8.0 M (8.0x)" in batch[2]
    assert batch[3].startswith("short of the original's gain")  # 1.10x < 2,800 / 2,100
    assert rows["batch loading, one epoch"][2] == "1.00 -> 0.50 ms (2.0x)"
    assert rows["buffer reuse"][3] == "+21 points"


def test_table_cells_print_their_format_and_stay_numbers() -> None:
    cells = [Fixed(1234.5678, ",.1f"), 7, 2.5]
    assert markdown_table(["a", "b", "c"], [cells]).splitlines()[2] == "| 1,234.6 | 7 | 2.500 |"
    assert [number(c) for c in cells] == [1234.5678, 7.0, 2.5]
    with pytest.raises(TypeError, match="'1,234' is not a number"):
        number("1,234")  # a formatted string is text, not a number


def test_bench_original_prints_the_comparison_with_the_original() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_original", "--quick"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        cwd=REPO,
    ).stdout
    table = out[out.index("## Against the original's numbers") :]
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + 6  # header, then one row per measure
