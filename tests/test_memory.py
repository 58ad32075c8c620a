"""Memory that users rely on being bounded: peak of a replay, no leaks, no growth per batch.

``limit_memory`` / ``limit_leaks`` are pytest-memray markers (enforced because pyproject's
pytest options include ``--memray``). memray counts every allocation the test makes, native
ones and memory maps included: the replay's input file is mapped, so its size is part of the
budget below, while the pool's byte budget (256 MB by default) is far above what the job
actually holds.
"""

from __future__ import annotations

import gc
import itertools
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from benchmarks.bench_memory import ALLOC_CHILD
from tickpool.connectors.synthetic import CHUNK_ROWS, generate_batches
from tickpool.operators.engine import EngineConfig, WindowPredictor
from tickpool.operators.items import TickBatch
from tickpool.operators.models import LinearModel, resolve_model
from tickpool.pipeline import flow
from tickpool.pipeline.cli import main
from tickpool.pipeline.pool import BufferPool

MB = 1 << 20


@pytest.fixture(scope="module")
def million(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A million ticks of 8 symbols in batches of 65,536 rows (27 MB on disk)."""
    path = tmp_path_factory.mktemp("million") / "ticks.arrow"
    assert main(["generate", str(path), "--ticks", "1000000", "--symbols", "8"]) == 0
    return path


def empty_process_pools() -> None:
    """Give the process-wide pools' free buffers back to the allocator (as at exit)."""
    for pool in flow._POOLS.values():
        pool.clear()
    gc.collect()


@pytest.mark.limit_memory("40 MB")
def test_a_million_tick_replay_stays_within_its_memory_budget(
    million: Path, tmp_path: Path
) -> None:
    # 27 MB of it is the memory-mapped input; the rest is the job: pooled buffers for about
    # one 65,536-row batch in flight, Arrow output batches, Bytewax's own state. Nothing may
    # grow with the stream: a copy of the input or of all predictions would blow the budget.
    stats, out = tmp_path / "stats.jsonl", tmp_path / "out"
    code = main(["replay", str(million), "--out", str(out), "--stats", str(stats), "--quiet"])
    assert code == 0
    empty_process_pools()


@pytest.mark.limit_leaks("64 KB")
def test_a_long_stream_leaves_nothing_behind(million: Path, tmp_path: Path) -> None:
    # 2,000 batches: a leak of even 32 bytes per batch at one place would exceed the limit.
    args = ["replay", str(million), "--max-batch-rows", "500", "--window", "32", "--quiet"]
    args += ["--out", str(tmp_path / "out"), "--dead-letters", str(tmp_path / "dead.jsonl")]
    args += ["--stats", str(tmp_path / "stats.jsonl"), "--stats-interval", "0.05"]
    assert main(args) == 0
    empty_process_pools()


def engine_batches(rows: int, count: int) -> Iterator[TickBatch]:
    for i, batch in enumerate(generate_batches(rows * count, 8, seed=2, batch_rows=rows)):
        yield TickBatch(batch, "generated", i)


def traced_growth(predictor: WindowPredictor, batches: Iterator[TickBatch], n: int) -> int:
    """Bytes still allocated (tracemalloc) after ``n`` more batches went through."""
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    for item in itertools.islice(batches, n):
        result = predictor.process(item)
        del result, item
    gc.collect()
    return tracemalloc.get_traced_memory()[0] - before


def live_growth(normalize: str, model: str) -> tuple[int, int]:
    """Bytes still allocated (tracemalloc) after 192, then after 992 more, batches of a stream.

    Run by the test below in a child process: tracemalloc counts every allocation of the
    process, and what earlier tests leave behind (garbage, caches, pools) must not count.
    """
    window = 32
    if model == "linear":
        m = LinearModel(
            np.full(window, 1 / window),
            0.0,
            window=window,
            horizon=1,
            normalize=None if normalize == "none" else normalize,
        )
    else:
        m = resolve_model(model, window=window, horizon=1, normalize=normalize)
    # The pool frees buffers idle for 30 s of wall time: on a slow machine one could be freed
    # and leased anew between two measurements. A clock that stands still keeps the wall time
    # out of what is measured (the pool's own tests cover its idle policy).
    pool = BufferPool.for_tier("streaming", clock=lambda: 0.0)
    config = EngineConfig(window=window, normalize=normalize)  # type: ignore[arg-type]
    predictor = WindowPredictor(config, m, pool)
    # The generator holds one chunk of CHUNK_ROWS generated ticks (1.8 MB) at a time: each
    # phase below is whole chunks of batches, and the stream runs on past the last, so the
    # input holds the same at every measurement and only the engine's memory is compared.
    rows = 2048
    per_chunk = CHUNK_ROWS // rows
    batches = engine_batches(rows, 42 * per_chunk)
    tracemalloc.start()
    try:
        # warm-up: pool buffers, symbol tables, caches
        traced_growth(predictor, batches, 3 * per_chunk)
        first = traced_growth(predictor, batches, 6 * per_chunk)
        later = traced_growth(predictor, batches, 31 * per_chunk)
    finally:
        tracemalloc.stop()
    return first, later


GROWTH_CHILD = (
    "import sys\n"
    "from tests.test_memory import live_growth\n"
    "print(*live_growth(sys.argv[1], sys.argv[2]))\n"
)


@pytest.mark.parametrize(
    ("normalize", "model"),
    [("window-zscore", "linear"), ("zscore", "last"), ("robust", "mean"), ("none", "linear")],
)
def test_live_python_memory_does_not_grow_with_the_number_of_batches(
    normalize: str, model: str
) -> None:
    out = subprocess.run(
        [sys.executable, "-c", GROWTH_CHILD, normalize, model],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[1],
    )
    first, later = (int(x) for x in out.stdout.split())
    # Five times the batches may not hold more memory: small caches (numpy's dimension cache,
    # interned strings) settle within the first few hundred batches.
    assert later < 32 * 1024, f"{later} bytes held after 992 batches ({first} after 192)"


def allocations_per_batch(rows: int, batches: int) -> float:
    """Allocations (malloc and Python objects, counted by memray) per steady-state batch.

    Counted in a child process: memray allows one tracker per process, and pytest-memray's
    is running here.
    """
    out = subprocess.run(
        [sys.executable, "-c", ALLOC_CHILD, str(rows), str(batches), "64"],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return float(out.stdout.split()[0])


def test_allocations_per_batch_do_not_grow_with_batches_or_batch_size() -> None:
    few, many = allocations_per_batch(1024, 30), allocations_per_batch(1024, 120)
    assert abs(many - few) <= 0.02 * few, (few, many)
    # 4 times the rows: nothing more, nothing per tick or per block. (Compared from 16,384 rows
    # on: below that, some per-symbol counts and offsets are Python ints under 257, which
    # CPython caches, so 1,024-row batches allocate about 200 objects fewer. And 16,384-row
    # batches give the rarest symbols few enough windows that the engine prices the packed
    # layout, operators/layout.py, a fixed 30-odd allocations that 65,536-row batches skip.)
    mid, big = allocations_per_batch(16384, 30), allocations_per_batch(65536, 30)
    assert big <= 1.01 * mid, (mid, big)
    assert mid <= 1.15 * few, (few, mid)  # 16 times the rows: only those cached ints more
