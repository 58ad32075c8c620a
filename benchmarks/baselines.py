"""What users would otherwise write: the window z-score + linear job without tickpool.

Every function here computes exactly the job ``tickpool replay --normalize window-zscore
--model linear.npz`` computes (horizon 1, stride 1): for each symbol and each window of its
last W ticks,

    mean, std = the window's mean and population std (ddof=0)
    z         = (x - mean) / std                     (all 0.0 when std <= 1e-12 * |mean|)
    yhat      = (z . w + b) * std + mean             (so a constant window predicts its mean)

and returns each symbol's predictions in tick order (``{symbol: yhat array}``), so that the
benchmarks can check every variant against tickpool's own output before timing it.

The variants (the letters of issue 6):

- (b) :func:`bytewax_per_tick`: a skilled per-tick Bytewax flow. One ``(symbol, (ts, price))``
  tuple per tick, ``op.stateful_map`` keyed by symbol, a ``deque`` and running sums per symbol
  (taken relative to a reference value that is re-anchored every W ticks, so prices near 50,000
  keep their digits), the dot product in pure Python (``sum(map(mul, w, window))``).
- (c) :func:`river_per_tick`: River's ``utils.Rolling(stats.Var, ddof=0)`` per symbol (its
  ``mean`` is the rolling mean), a plain Python loop over the ticks, the same dot product.
- (d) :func:`pandas_rolling`: the whole file as a DataFrame, sorted by symbol, ``groupby +
  rolling`` for mean and std, and the dot product as a sum of W shifted columns.
- (e) :func:`numpy_kernels`: tickpool's own kernels (``window_zscore``, ``LinearModel.predict``,
  ``denormalize``) called directly over each symbol's whole array, in chunks of windows: no
  dataflow, no Arrow batches, no pool. Our ceiling in Python.
- (e') :func:`numpy_fused`: the same with tickpool's fused kernel (``operators/fused.py``, where
  present): rolling sums and one correlation, no window matrix.

``python -m benchmarks.baselines VARIANT --data FILE --model MODEL.npz`` runs one variant (or
``tickpool``, the replay itself) in this process and prints one JSON line: ticks, seconds,
predictions, and this process's anonymous memory right before the job. The benchmarks run
every measurement that way, one process per variant.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from operator import mul
from pathlib import Path
from typing import Any, TypeAlias, cast

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

FloatArray = npt.NDArray[np.float64]
Predictions = dict[str, FloatArray]

CONST_RTOL = 1e-12  # tickpool.operators.normalize.CONST_RTOL: a smaller std counts as 0
CHUNK_WINDOWS = 8_192  # windows per kernel call in numpy_kernels
KERNEL_SECONDS: list[float] = []  # numpy_kernels appends the time of its kernel calls

__all__ = [
    "VARIANTS",
    "LinearJob",
    "bytewax_per_tick",
    "compare",
    "load_job",
    "numpy_kernels",
    "pandas_rolling",
    "read_columns",
    "river_per_tick",
    "save_job",
    "tickpool_replay",
]


# --------------------------------------------------------------------------------------------
# The job and the data
# --------------------------------------------------------------------------------------------


class LinearJob:
    """A linear window model: weights (W,), oldest tick first, and an intercept."""

    def __init__(self, weights: npt.ArrayLike, intercept: float) -> None:
        self.weights: FloatArray = np.ascontiguousarray(weights, dtype=np.float64).reshape(-1)
        self.intercept = float(intercept)

    @property
    def window(self) -> int:
        return int(self.weights.shape[0])

    @classmethod
    def example(cls, window: int, seed: int = 3) -> LinearJob:
        """A fixed, plausible model: mostly the last value, a little of every other tick."""
        rng = np.random.default_rng([seed, window])
        w = rng.normal(0.0, 0.5, window) / window
        w[-1] += 1.0
        return cls(w, 0.01)


def save_job(job: LinearJob, path: str | Path) -> Path:
    """Write ``job`` as a tickpool linear model file (for ``tickpool replay --model``)."""
    from tickpool.operators.models import LinearModel

    model = LinearModel(
        job.weights,
        job.intercept,
        window=job.window,
        horizon=1,
        normalize="window-zscore",
    )
    model.save(path)
    return Path(path)


def load_job(path: str | Path) -> LinearJob:
    """Read a tickpool linear model file (horizon 1) back as weights and intercept."""
    with np.load(path, allow_pickle=False) as data:
        if int(data["horizon"]) != 1:
            raise ValueError(f"{path}: the baselines compute horizon 1; found {data['horizon']}")
        return LinearJob(data["weights"], float(np.asarray(data["intercept"]).reshape(-1)[0]))


def _open(path: str | Path) -> pa.ipc.RecordBatchFileReader:
    return pa.ipc.open_file(pa.memory_map(str(path)))


Coded: TypeAlias = "pa.DictionaryArray[Any, Any]"  # a dictionary-encoded symbol column


def _symbol_names(column: pa.Array[Any]) -> tuple[list[str], npt.NDArray[np.int32]]:
    """Symbol names and int32 codes of a dictionary (or plain string) symbol column."""
    if not pa.types.is_dictionary(column.type):
        column = pc.dictionary_encode(column)
    coded = cast(Coded, column)
    codes = coded.indices.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    return [str(s) for s in coded.dictionary.to_pylist()], codes


def read_columns(path: str | Path) -> tuple[list[str], npt.NDArray[np.int32], FloatArray]:
    """Symbol names, each tick's symbol code and its price, from a tick file (one copy each).

    The columns of each record batch are read zero-copy from the memory map; batches that
    share one symbol dictionary (as ``tickpool generate`` writes them) need no re-encoding.
    """
    reader = _open(path)
    batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]
    symbols = [cast(Coded, b.column("symbol")) for b in batches]
    first = symbols[0] if symbols and pa.types.is_dictionary(symbols[0].type) else None
    shared = first is not None and all(
        pa.types.is_dictionary(s.type) and s.dictionary.equals(first.dictionary) for s in symbols
    )
    if not shared:
        table = pa.Table.from_batches(batches).select(["symbol", "price"]).combine_chunks()
        names, codes = _symbol_names(cast("pa.Array[Any]", table.column("symbol").chunk(0)))
        return names, codes, table.column("price").chunk(0).to_numpy()
    assert first is not None
    names = [str(s) for s in first.dictionary.to_pylist()]
    codes = np.concatenate([s.indices.to_numpy() for s in symbols]).astype(np.int32, copy=False)
    price = np.concatenate([b.column("price").to_numpy() for b in batches])
    return names, codes, price


def _tick_lists(path: str | Path) -> Iterator[tuple[list[Any], list[Any], list[Any]]]:
    """Each record batch of a tick file as Python lists: symbols, ts (int ns), prices."""
    reader = _open(path)
    for i in range(reader.num_record_batches):
        batch = reader.get_batch(i)
        yield (
            batch.column("symbol").cast(pa.string()).to_pylist(),
            batch.column("ts").cast(pa.int64()).to_pylist(),
            batch.column("price").to_pylist(),
        )


# --------------------------------------------------------------------------------------------
# (b) and (c): one window per symbol, updated per tick
# --------------------------------------------------------------------------------------------


class RunningWindow:
    """The last W values of one symbol with running sums of ``d = x - ref`` and ``d * d``.

    ``ref`` is re-anchored (and the sums recomputed from the deque) every W ticks, so the sums
    never hold raw-price magnitudes and rounding does not accumulate: O(1) per tick amortized.
    """

    __slots__ = ("n_since", "ref", "s1", "s2", "values")

    def __init__(self, window: int) -> None:
        self.values: deque[float] = deque(maxlen=window)
        self.ref = 0.0
        self.s1 = 0.0
        self.s2 = 0.0
        self.n_since = 0

    def push(self, x: float) -> None:
        values = self.values
        if not values:
            self.ref = x
        elif len(values) == values.maxlen:
            old = values[0] - self.ref
            self.s1 -= old
            self.s2 -= old * old
        values.append(x)
        d = x - self.ref
        self.s1 += d
        self.s2 += d * d
        self.n_since += 1
        if self.n_since >= values.maxlen:  # type: ignore[operator]
            self.reanchor()

    def reanchor(self) -> None:
        ref = self.values[-1]
        s1 = s2 = 0.0
        for v in self.values:
            d = v - ref
            s1 += d
            s2 += d * d
        self.ref, self.s1, self.s2, self.n_since = ref, s1, s2, 0


def _predict_one(
    values: deque[float], mean: float, var: float, w: list[float], sum_w: float, b: float
) -> float:
    """``(z . w + b) * std + mean`` for one window, with tickpool's constant rule."""
    std = math.sqrt(var) if var > 0.0 else 0.0
    if std <= CONST_RTOL * abs(mean):
        return mean  # z is all 0: (0 + b) * 0 + mean
    # z . w = sum(w * (x - mean)) / std = (x . w - mean * sum(w)) / std
    z_dot: float = (sum(map(mul, w, values)) - mean * sum_w) / std
    return (z_dot + b) * std + mean


def per_tick_mapper(
    job: LinearJob,
) -> Callable[[RunningWindow | None, tuple[int, float]], tuple[RunningWindow, Any]]:
    """The ``stateful_map`` function of (b): ``(state, (ts, price)) -> (state, (ts, yhat))``.

    Emits None while the symbol has fewer than W ticks.
    """
    window = job.window
    w = job.weights.tolist()
    sum_w = math.fsum(w)
    b = job.intercept

    def step(state: RunningWindow | None, value: tuple[int, float]) -> tuple[RunningWindow, Any]:
        if state is None:
            state = RunningWindow(window)
        ts, x = value
        state.push(x)
        if len(state.values) < window:
            return state, None
        mean_d = state.s1 / window
        var = state.s2 / window - mean_d * mean_d
        return state, (ts, _predict_one(state.values, state.ref + mean_d, var, w, sum_w, b))

    return step


def bytewax_per_tick(path: str | Path, job: LinearJob) -> Predictions:
    """(b) The job as a per-tick Bytewax flow, run to completion with ``run_main``."""
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.inputs import DynamicSource, StatelessSourcePartition
    from bytewax.testing import TestingSink, run_main

    class _Ticks(StatelessSourcePartition[tuple[str, tuple[int, float]]]):
        """One ``(symbol, (ts, price))`` tuple per tick, a record batch at a time."""

        def __init__(self) -> None:
            self._batches = _tick_lists(path)

        def next_batch(self) -> list[tuple[str, tuple[int, float]]]:
            symbols, ts, prices = next(self._batches)  # StopIteration ends the input
            return list(zip(symbols, zip(ts, prices, strict=True), strict=True))

    class TickSource(DynamicSource[tuple[str, tuple[int, float]]]):
        def build(self, step_id: str, worker_index: int, worker_count: int) -> _Ticks:
            return _Ticks()

    out: list[tuple[str, Any]] = []
    flow = Dataflow("per_tick_window_zscore")
    ticks = op.input("ticks", flow, TickSource())
    preds = op.stateful_map("window", ticks, per_tick_mapper(job))
    op.output("out", preds, TestingSink(out))
    run_main(flow)  # type: ignore[no-untyped-call]
    series: dict[str, list[float]] = {}
    for symbol, value in out:
        if value is not None:
            series.setdefault(symbol, []).append(value[1])
    return {k: np.array(v) for k, v in series.items()}


def river_per_tick(path: str | Path, job: LinearJob) -> Predictions:
    """(c) River's rolling variance (and its mean) per symbol, one tick at a time."""
    from river import stats, utils

    window = job.window
    w = job.weights.tolist()
    sum_w = math.fsum(w)
    b = job.intercept
    rolling: dict[str, Any] = {}
    values: dict[str, deque[float]] = {}
    out: dict[str, list[float]] = {}
    for symbols, _ts, prices in _tick_lists(path):
        for symbol, x in zip(symbols, prices, strict=True):
            var: Any = rolling.get(symbol)
            if var is None:
                var = rolling[symbol] = utils.Rolling(stats.Var, window_size=window, ddof=0)
                values[symbol] = deque(maxlen=window)
                out[symbol] = []
            var.update(x)
            buf = values[symbol]
            buf.append(x)
            if len(buf) == window:
                mean = float(var.obj.mean.get())
                out[symbol].append(_predict_one(buf, mean, float(var.get()), w, sum_w, b))
    return {k: np.array(v) for k, v in out.items() if v}


# --------------------------------------------------------------------------------------------
# (d) pandas, (e) numpy: whole arrays
# --------------------------------------------------------------------------------------------


def pandas_rolling(path: str | Path, job: LinearJob) -> Predictions:
    """(d) The whole file as a DataFrame: groupby + rolling mean/std, dot product by shifts.

    Sorting by symbol (stable) puts each symbol's ticks together in time order, so a plain
    ``shift(k)`` is the k-th previous tick of the same symbol wherever the rolling mean is
    defined (the first W-1 ticks of every symbol are NaN and dropped).
    """
    table = _open(path).read_all().select(["ts", "symbol", "price"])
    df = table.to_pandas()
    df = df.sort_values("symbol", kind="stable", ignore_index=True)
    window = job.window
    g = df.groupby("symbol", observed=True, sort=True)["price"]
    roll = g.rolling(window)
    mean = roll.mean().to_numpy()
    std = roll.std(ddof=0).to_numpy()
    x = df["price"]
    z_dot = np.zeros(len(df))
    for k, wk in enumerate(job.weights[::-1]):  # k ticks back weighs w[W-1-k]
        z_dot += wk * ((x.shift(k) - mean) / std).to_numpy()
    yhat = (z_dot + job.intercept) * std + mean
    constant = std <= CONST_RTOL * np.abs(mean)
    yhat[constant] = mean[constant]
    frame = df[["symbol"]].assign(yhat=yhat)[~np.isnan(mean)]
    return {
        str(k): v.to_numpy() for k, v in frame.groupby("symbol", observed=True, sort=False)["yhat"]
    }


def _symbol_prices(path: str | Path, window: int) -> Iterator[tuple[str, FloatArray]]:
    """Each symbol's prices in tick order (one gathered array per symbol), for the symbols
    with at least ``window`` ticks: what (e) and (e') feed their kernels, read and grouped
    the same way (``read_columns``, then tickpool's ``group_by_symbol``)."""
    from tickpool.operators.symbols import group_by_symbol

    names, codes, price = read_columns(path)
    groups = group_by_symbol(codes, len(names))
    for k in groups.present.tolist():
        rows = groups.rows(k)
        if rows.shape[0] >= window:
            yield names[k], price[rows]


def numpy_kernels(path: str | Path, job: LinearJob) -> Predictions:
    """(e) tickpool's kernels over each symbol's whole array: the ceiling without a dataflow.

    The columns are read from the memory-mapped file (one copy into whole arrays), grouped by
    symbol with tickpool's ``group_by_symbol`` (one radix argsort), gathered into one array
    per symbol, and each symbol's windows go through ``window_zscore``, ``LinearModel.predict``
    and ``denormalize`` in chunks of ``CHUNK_WINDOWS`` rows, in a matrix allocated once. The
    seconds spent in that chunk loop alone (the kernel time, without reading, grouping and
    gathering) are appended to ``KERNEL_SECONDS``.
    """
    from numpy.lib.stride_tricks import sliding_window_view

    from tickpool.operators.models import LinearModel
    from tickpool.operators.normalize import denormalize, window_zscore

    window = job.window
    model = LinearModel(
        job.weights, job.intercept, window=window, horizon=1, normalize="window-zscore"
    )
    mat = np.empty((CHUNK_WINDOWS, window))
    loc, scale, scratch = np.empty(CHUNK_WINDOWS), np.empty(CHUNK_WINDOWS), np.empty(CHUNK_WINDOWS)
    out: Predictions = {}
    kernel_s = 0.0
    for name, x in _symbol_prices(path, window):
        view = sliding_window_view(x, window)
        yhat = np.empty((view.shape[0], 1))
        t0 = time.perf_counter()
        for i in range(0, view.shape[0], CHUNK_WINDOWS):
            m = min(CHUNK_WINDOWS, view.shape[0] - i)
            np.copyto(mat[:m], view[i : i + m])
            window_zscore(mat[:m], loc[:m], scale[:m], scratch=scratch[:m])
            model.predict(mat[:m], yhat[i : i + m])
            denormalize(yhat[i : i + m], loc[:m], scale[:m])
        kernel_s += time.perf_counter() - t0
        out[name] = yhat[:, 0]
    KERNEL_SECONDS.append(kernel_s)
    return out


def fused_available() -> bool:
    """True if this tickpool has the fused window kernels (``tickpool.operators.fused``)."""
    try:
        from tickpool.operators.fused import fused_kernel  # noqa: F401
    except ImportError:
        return False
    return True


def numpy_fused(path: str | Path, job: LinearJob) -> Predictions:
    """(e') Like (e), with tickpool's fused kernel (rolling sums + one correlation, no window
    matrix) over each symbol's whole array, in chunks of about ``CHUNK_WINDOWS`` windows.

    Each chunk's values are copied into one buffer allocated once, padded with the chunk's last
    value as the kernel's block layout wants. Kernel time is appended to ``KERNEL_SECONDS``.
    """
    from tickpool.operators.fused import fused_kernel
    from tickpool.operators.models import LinearModel

    window = job.window
    model = LinearModel(
        job.weights, job.intercept, window=window, horizon=1, normalize="window-zscore"
    )
    fk = fused_kernel(model, window=window, normalize="window-zscore")
    if fk is None:
        raise RuntimeError(f"tickpool has no fused kernel for a linear model at W={window}")
    block = fk.block
    n_blocks = -(-CHUNK_WINDOWS // block)
    chunk = n_blocks * block
    series = np.empty((n_blocks + 1) * block + window)
    starts = np.arange(chunk, dtype=np.intp)
    scratch = np.empty(fk.scratch_size(n_blocks, chunk))
    buf = np.empty((1, chunk))
    out: Predictions = {}
    kernel_s = 0.0
    for name, x in _symbol_prices(path, window):
        m = x.shape[0] - window + 1
        yhat = np.empty(m)
        t0 = time.perf_counter()
        for i in range(0, m, chunk):
            c = min(chunk, m - i)
            nb = -(-c // block)
            seg = x[i : i + c + window - 1]
            series[: seg.shape[0]] = seg
            series[seg.shape[0] :] = seg[-1]
            fk.predict(series, starts[:c], nb, buf[:, :c], scratch)
            yhat[i : i + c] = buf[0, :c]
        kernel_s += time.perf_counter() - t0
        out[name] = yhat
    KERNEL_SECONDS.append(kernel_s)
    return out


# --------------------------------------------------------------------------------------------
# (a) tickpool itself, and the comparison
# --------------------------------------------------------------------------------------------


def read_predictions(out_dir: str | Path) -> Predictions:
    """Each symbol's ``yhat`` in order from the ``predictions-*.arrows`` files of a replay."""
    parts = []
    for f in sorted(Path(out_dir).glob("predictions-*.arrows")):
        with pa.ipc.open_stream(pa.memory_map(str(f))) as reader:
            parts.append(reader.read_all())
    if not parts:
        return {}
    table = pa.concat_tables(parts)
    symbols = table.column("symbol").cast(pa.string())
    yhat = table.column("yhat").to_numpy()
    names, codes = _symbol_names(pc.dictionary_encode(symbols).combine_chunks())
    return {name: yhat[codes == k] for k, name in enumerate(names)}


def tickpool_replay(
    path: str | Path, model_path: str | Path, window: int, out_dir: str | Path | None
) -> dict[str, Any]:
    """(a) ``tickpool replay`` in this process (window z-score, the linear model), quiet."""
    from tickpool.pipeline.cli import run_replay
    from tickpool.pipeline.config import PipelineConfig

    config = PipelineConfig(
        sources=(str(path),),
        window=window,
        normalize="window-zscore",
        model=str(model_path),
        out=None if out_dir is None else str(out_dir),
        stats_interval=3600.0,
    )
    summary: dict[str, Any] = run_replay(config, quiet=True)
    return summary


def compare(ours: Predictions, theirs: Predictions, *, prefix: bool = False) -> tuple[float, float]:
    """Max absolute and max relative difference of two prediction sets.

    With ``prefix``, ``theirs`` may cover only the first ticks of ``ours`` (a variant run on a
    prefix of the file): each of its symbols is compared with the same number of leading
    predictions. Otherwise symbols and counts must match. Any mismatch gives ``(inf, inf)``.
    """
    if (set(theirs) - set(ours)) if prefix else (set(ours) != set(theirs)):
        return math.inf, math.inf
    worst_abs = worst_rel = 0.0
    for k, b in theirs.items():
        a = ours[k]
        if prefix and a.shape[0] >= b.shape[0]:
            a = a[: b.shape[0]]
        if a.shape != b.shape:
            return math.inf, math.inf
        if a.size:
            diff = np.abs(a - b)
            if not np.isfinite(diff).all():
                return math.inf, math.inf
            worst_abs = max(worst_abs, float(diff.max()))
            worst_rel = max(worst_rel, float((diff / np.maximum(np.abs(a), 1e-300)).max()))
    return worst_abs, worst_rel


VARIANTS: dict[str, Callable[[str | Path, LinearJob], Predictions]] = {
    "bytewax-per-tick": bytewax_per_tick,
    "river": river_per_tick,
    "pandas": pandas_rolling,
    "numpy-kernels": numpy_kernels,
    "numpy-fused": numpy_fused,
}


# --------------------------------------------------------------------------------------------
# One measurement per process
# --------------------------------------------------------------------------------------------

RAM_DIR = "/dev/shm"
TICKPOOL_OUTPUTS: dict[str, str | None] = {  # tickpool variant -> where its --out goes
    "tickpool": None,  # the temporary directory (a disk on most machines)
    "tickpool-no-out": None,  # no prediction sink at all
    "tickpool-ram": RAM_DIR,  # a tmpfs: the same files, without the disk's write path
}


def ram_dir_available(min_free: int = 1 << 30) -> bool:
    """True where ``/dev/shm`` is a writable directory (a tmpfs on Linux) with ``min_free``
    bytes free (a container's default /dev/shm is 64 MB: too small for 5 M predictions)."""
    return (
        os.path.isdir(RAM_DIR)
        and os.access(RAM_DIR, os.W_OK)
        and shutil.disk_usage(RAM_DIR).free >= min_free
    )


WARM_IMPORTS = {  # imported before the clock starts
    "tickpool": ("tickpool.pipeline.cli", "tickpool.pipeline.flow"),
    "bytewax-per-tick": ("bytewax.operators", "bytewax.testing", "bytewax.inputs"),
    "river": ("river.stats", "river.utils"),
    "pandas": ("pandas",),
    "numpy-kernels": (
        "tickpool.operators.models",
        "tickpool.operators.normalize",
        "tickpool.operators.symbols",
    ),
    "numpy-fused": ("tickpool.operators.fused", "tickpool.operators.symbols"),
}


def _anon_kb() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _count_rows(path: str | Path) -> int:
    reader = _open(path)
    return sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run one variant of the job; print a JSON line.")
    ap.add_argument("variant", choices=[*TICKPOOL_OUTPUTS, *VARIANTS])
    ap.add_argument("--data", required=True, help="Arrow IPC tick file")
    ap.add_argument("--model", required=True, help="linear .npz model (window-zscore, H=1)")
    ap.add_argument("--save", help="write the predictions per symbol to this .npz")
    args = ap.parse_args(argv)
    job = load_job(args.model)
    ticks = _count_rows(args.data)
    # Warm the imports outside the timed region (every variant pays its own at start-up).
    # pyarrow's first Array.to_numpy() imports pandas when it is installed (~0.2 s): every
    # variant reads columns that way, so it is paid here, before the clock starts.
    pa.array([0.0]).to_numpy()
    warm = "tickpool" if args.variant in TICKPOOL_OUTPUTS else args.variant
    for module in WARM_IMPORTS.get(warm, ()):
        importlib.import_module(module)
    anon_start = _anon_kb()
    preds: Predictions | None = None
    out_parent = TICKPOOL_OUTPUTS.get(args.variant)
    with tempfile.TemporaryDirectory(prefix="tickpool-bench-out-", dir=out_parent) as tmp:
        writes = args.variant in TICKPOOL_OUTPUTS and args.variant != "tickpool-no-out"
        out_dir = tmp if writes else None
        t0 = time.perf_counter()
        if args.variant.startswith("tickpool"):
            summary = tickpool_replay(args.data, args.model, job.window, out_dir)
            seconds = time.perf_counter() - t0
            n_preds = int(summary["predictions"])
            if args.save and out_dir is not None:
                preds = read_predictions(out_dir)
        else:
            preds = VARIANTS[args.variant](args.data, job)
            seconds = time.perf_counter() - t0
            n_preds = sum(len(v) for v in preds.values())
    if args.save:
        if preds is None:
            raise SystemExit(f"{args.variant} writes no predictions: nothing to --save")
        np.savez(args.save, **preds)  # type: ignore[arg-type]
    record = {
        "variant": args.variant,
        "ticks": ticks,
        "seconds": seconds,
        "predictions": n_preds,
        "anon_start_kb": anon_start,
        "kernel_seconds": KERNEL_SECONDS[-1] if KERNEL_SECONDS else None,
        "out_dir": out_dir,  # where a tickpool variant wrote its predictions (None: nowhere)
    }
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
