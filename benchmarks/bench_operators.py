"""Operator costs: normalizing 10,000 points three ways, and window + predict throughput.

Run: ``python -m benchmarks.bench_operators`` (about 20 s on 2 cores; ``--quick``: ~6 s).
Prints markdown tables; asserts nothing.

1. Normalize one 10,000-point series (z-score, min-max, robust), median microseconds per call:
   allocating (a new array per call), pooled (lease, copy in, normalize in place, release) and in
   place on a preallocated array. The variants are interleaved, in a new random order, in every
   repeat, so machine noise hits all alike. The original (Rust) design measured 12 us allocating
   -> 8 us pooled for this z-score. Then the allocations one call of each variant makes.
2. ``WindowPredictor`` over a 1,000,000-tick, 8-symbol mixed stream in 8,192-row batches, at
   W = 16, 64, 256, against a literal numpy baseline (``sliding_window_view`` per symbol, z-score
   each window, ``@ w``) that computes the same predictions. Jobs the fused kernels
   (``operators/fused.py``) serve run twice, fused and on the general path (``fused=False``:
   the window matrix), so the table shows what fusing gains in the same run.
3. The same engine over streams of 8 to 2,048 symbols in 65,536-row batches (window z-score +
   linear, W = 16 and 64): what each symbol present in a batch costs beyond the ticks
   themselves (the kernel's tail and padding cells, and whatever Python runs per symbol).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import os
import random
import statistics
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
from numpy.lib.stride_tricks import sliding_window_view

from benchmarks._report import machine_line, markdown_table, median_ns_per_call
from tickpool.operators.engine import EngineConfig, WindowPredictor
from tickpool.operators.items import TickBatch
from tickpool.operators.models import LastValue, LinearModel, Model, WindowMean
from tickpool.operators.normalize import (
    NormalizeMode,
    minmax_inplace,
    robust_inplace,
    zscore_alloc,
    zscore_inplace,
)
from tickpool.pipeline.pool import BufferPool

FloatArray = npt.NDArray[np.float64]
Fn = Callable[[], object]

NORMALIZE_POINTS = 10_000
SYMBOLS = 8
BATCH_ROWS = 8_192
WINDOWS = (16, 64, 256)
SYMBOL_COUNTS = (8, 64, 512, 2048)
SYMBOL_WINDOWS = (16, 64, 256)
SYMBOL_BATCH_ROWS = 65_536
RUST_REFERENCE_US = {"allocating": 12.0, "pooled": 8.0}  # z-score of 10,000 points


# --------------------------------------------------------------------------------------------
# Counting numpy's data allocations
# --------------------------------------------------------------------------------------------

_vp, _size = ctypes.c_void_p, ctypes.c_size_t
_MALLOC = ctypes.CFUNCTYPE(_vp, _vp, _size)
_CALLOC = ctypes.CFUNCTYPE(_vp, _vp, _size, _size)
_REALLOC = ctypes.CFUNCTYPE(_vp, _vp, _vp, _size)
_FREE = ctypes.CFUNCTYPE(None, _vp, _vp, _size)


class _Allocator(ctypes.Structure):
    _fields_ = (
        ("ctx", _vp),
        ("malloc", _MALLOC),
        ("calloc", _CALLOC),
        ("realloc", _REALLOC),
        ("free", _FREE),
    )


class _Handler(ctypes.Structure):
    _fields_ = (
        ("name", ctypes.c_char * 127),
        ("version", ctypes.c_uint8),
        ("allocator", _Allocator),
    )


class NumpyAllocCounter:
    """Counts numpy's array-data allocations (count and bytes) while armed.

    tracemalloc reports peak bytes and the blocks still alive, but keeps no count of blocks that
    were allocated and freed again inside a call (every temporary). This installs a numpy memory
    handler (``PyDataMem_SetHandler``, numpy's public C API since 1.22, slot 304 of its API
    table) that counts each malloc/calloc/realloc and forwards it to numpy's default handler;
    frees go straight to the default handler's C function. Python objects (array headers,
    floats) are not counted here: tracemalloc's peak covers them.
    """

    def __init__(self) -> None:
        from numpy._core import _multiarray_umath  # type: ignore[attr-defined]

        api = ctypes.pythonapi
        api.PyCapsule_GetPointer.restype = _vp
        api.PyCapsule_GetPointer.argtypes = (ctypes.py_object, ctypes.c_char_p)
        api.PyCapsule_New.restype = ctypes.py_object
        api.PyCapsule_New.argtypes = (_vp, ctypes.c_char_p, _vp)
        table = ctypes.cast(
            api.PyCapsule_GetPointer(_multiarray_umath._ARRAY_API, None),
            ctypes.POINTER(_vp),
        )
        self._set = ctypes.PYFUNCTYPE(ctypes.py_object, ctypes.py_object)(table[304])
        get = ctypes.PYFUNCTYPE(ctypes.py_object)(table[305])
        self._default = get()
        default = _Handler.from_address(api.PyCapsule_GetPointer(self._default, b"mem_handler"))
        if default.version != 1:
            raise RuntimeError(f"numpy memory handler version {default.version}, expected 1")
        d = default.allocator
        self.count = 0
        self.nbytes = 0

        def malloc(ctx: int | None, size: int) -> int | None:
            self.count += 1
            self.nbytes += size
            return d.malloc(d.ctx, size)  # type: ignore[no-any-return]

        def calloc(ctx: int | None, nelem: int, elsize: int) -> int | None:
            self.count += 1
            self.nbytes += nelem * elsize
            return d.calloc(d.ctx, nelem, elsize)  # type: ignore[no-any-return]

        def realloc(ctx: int | None, ptr: int | None, size: int) -> int | None:
            self.count += 1
            self.nbytes += size
            return d.realloc(d.ctx, ptr, size)  # type: ignore[no-any-return]

        # Kept alive as long as this object: arrays allocated while armed point at them.
        self._callbacks = (_MALLOC(malloc), _CALLOC(calloc), _REALLOC(realloc))
        self._handler = _Handler(
            b"tickpool_bench_counting",
            1,
            _Allocator(d.ctx, *self._callbacks, d.free),
        )
        self._name = ctypes.c_char_p(b"mem_handler")
        self._capsule = api.PyCapsule_New(ctypes.addressof(self._handler), self._name, None)

    @contextlib.contextmanager
    def armed(self) -> Iterator[None]:
        """Count numpy data allocations made inside the block (this thread / context)."""
        self.count = self.nbytes = 0
        previous = self._set(self._capsule)
        try:
            yield
        finally:
            self._set(previous)


def _make_counter() -> NumpyAllocCounter | None:
    try:
        counter = NumpyAllocCounter()
        with counter.armed():
            np.empty(1_000).fill(0.0)
    except Exception:  # any numpy/ctypes mismatch: report "n/a" instead
        return None
    return counter if counter.count == 1 else None


# --------------------------------------------------------------------------------------------
# 1. Normalize 10,000 points
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Variant:
    kernel: str
    name: str
    fn: Fn
    rust_us: float | None = None


def normalize_variants(n: int, pool: BufferPool) -> list[Variant]:
    """Every variant, kernel by kernel; the first of each kernel is its allocating reference."""
    rng = np.random.default_rng(11)
    x: FloatArray = 9_700.0 + np.cumsum(rng.normal(0.0, 0.5, n))  # a price walk near BTC's level
    x.flags.writeable = False
    x_work = np.empty(n)
    scratch = np.empty(n)

    def refill() -> None:
        np.copyto(x_work, x)

    # z-score
    def z_alloc() -> None:
        zscore_alloc(x)

    def z_numpy() -> None:
        (x - x.mean()) / x.std()

    def z_pooled() -> None:
        buf = pool.acquire(n)
        np.copyto(buf, x)
        zscore_inplace(buf)
        pool.release(buf)

    def z_inplace() -> None:
        np.copyto(x_work, x)
        zscore_inplace(x_work)

    # min-max
    def mm_numpy() -> None:
        lo = x.min()
        (x - lo) / (x.max() - lo)

    def mm_pooled() -> None:
        buf = pool.acquire(n)
        np.copyto(buf, x)
        minmax_inplace(buf)
        pool.release(buf)

    def mm_inplace() -> None:
        np.copyto(x_work, x)
        minmax_inplace(x_work)

    # robust (median / IQR)
    def rb_numpy() -> None:
        q25, q50, q75 = np.quantile(x, (0.25, 0.5, 0.75))
        (x - q50) / (q75 - q25)

    def rb_pooled() -> None:
        buf = pool.acquire(n)
        part = pool.acquire(n)
        np.copyto(buf, x)
        robust_inplace(buf, part)
        pool.release(part)
        pool.release(buf)

    def rb_inplace() -> None:
        np.copyto(x_work, x)
        robust_inplace(x_work, scratch)

    return [
        Variant("z-score", "allocating: zscore_alloc(x)", z_alloc, RUST_REFERENCE_US["allocating"]),
        Variant("z-score", "allocating: (x - x.mean()) / x.std()", z_numpy),
        Variant(
            "z-score",
            "pooled: lease, copy in, zscore_inplace",
            z_pooled,
            RUST_REFERENCE_US["pooled"],
        ),
        Variant("z-score", "in place: refill + zscore_inplace", z_inplace),
        Variant("min-max", "allocating: (x - min) / (max - min)", mm_numpy),
        Variant("min-max", "pooled: lease, copy in, minmax_inplace", mm_pooled),
        Variant("min-max", "in place: refill + minmax_inplace", mm_inplace),
        Variant("robust", "allocating: np.quantile, (x - med) / iqr", rb_numpy),
        Variant("robust", "pooled: 2 leases, copy in, robust_inplace", rb_pooled),
        Variant("robust", "in place: refill + robust_inplace", rb_inplace),
        Variant("(all)", "refill alone: np.copyto(x_work, x)", refill),
    ]


def _calls_for(fn: Fn, target_ns: float) -> int:
    """Calls per timing sample so that one sample takes about ``target_ns``."""
    fn()
    t0 = time.perf_counter_ns()
    k = 0
    while time.perf_counter_ns() - t0 < target_ns / 4 or k < 3:
        fn()
        k += 1
    per_call = (time.perf_counter_ns() - t0) / k
    return max(3, round(target_ns / per_call))


def normalize_timing_rows(
    variants: list[Variant], repeats: int, target_ns: float
) -> list[list[object]]:
    calls = [_calls_for(v.fn, target_ns) for v in variants]
    samples: list[list[float]] = [[] for _ in variants]
    order = list(range(len(variants)))
    shuffler = random.Random(17)
    for _ in range(repeats):
        # A new order every repeat: no variant always runs first, or after the same one.
        shuffler.shuffle(order)
        for i in order:
            samples[i].append(median_ns_per_call(variants[i].fn, calls=calls[i], repeats=1))
    us = [statistics.median(s) / 1e3 for s in samples]
    refill_us = us[-1]
    reference: dict[str, float] = {}
    rows: list[list[object]] = []
    for v, t in zip(variants, us, strict=True):
        reference.setdefault(v.kernel, t)
        ref = reference[v.kernel]
        rust = "" if v.rust_us is None else f"{v.rust_us:g}"
        rows.append([v.kernel, v.name, t, ref / t if v.kernel != "(all)" else "", rust])
        if v.name.startswith("in place"):
            kernel_only = t - refill_us
            rows.append(
                [
                    v.kernel,
                    "in place, kernel only (minus refill)",
                    kernel_only,
                    ref / kernel_only if kernel_only > 0 else "",
                    "",
                ]
            )
    return rows


def allocation_rows(variants: list[Variant]) -> list[list[object]]:
    """For one call of each variant after a warm-up call: numpy buffers allocated (count,
    bytes) and tracemalloc's peak above the level before the call."""
    counter = _make_counter()
    rows: list[list[object]] = []
    for v in variants:
        v.fn()  # warm-up: pool classes filled, lazy numpy state built
        count: object = "n/a"
        nbytes: object = "n/a"
        if counter is not None:
            with counter.armed():
                v.fn()
            count, nbytes = counter.count, counter.nbytes
        gc.collect()
        tracemalloc.start()
        try:
            v.fn()
            tracemalloc.reset_peak()
            before, _ = tracemalloc.get_traced_memory()
            v.fn()
            after, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        rows.append([v.kernel, v.name, count, nbytes, peak - before, after - before])
    return rows


# --------------------------------------------------------------------------------------------
# 2. Windows + predict throughput
# --------------------------------------------------------------------------------------------


def make_stream(
    ticks: int, rate_spread: float = 1.0, seed: int = 5
) -> tuple[list[TickBatch], pa.Array[Any]]:
    """A mixed stream of ``SYMBOLS`` random walks at levels 10..50,000, in ``BATCH_ROWS`` batches.

    Each tick's symbol is drawn at random, with rates log-spread over a factor ``rate_spread``
    (1: equal activity); ts is int64 ns with exponential gaps (mean 1 ms); symbol is a
    dictionary<int32, utf8> column.
    """
    rng = np.random.default_rng(seed)
    levels = np.geomspace(10.0, 50_000.0, SYMBOLS)
    rates = np.geomspace(1.0, rate_spread, SYMBOLS)
    codes = rng.choice(SYMBOLS, size=ticks, p=rates / rates.sum()).astype(np.int32)
    steps = rng.normal(0.0, 2e-4, ticks)  # per-tick log-return
    price = np.empty(ticks)
    for k in range(SYMBOLS):
        rows = np.flatnonzero(codes == k)
        price[rows] = levels[k] * np.exp(np.cumsum(steps[rows]))
    gaps = rng.exponential(1e6, ticks).astype(np.int64)
    ts = 1_704_205_800_000_000_000 + np.cumsum(gaps)
    names = pa.array([f"SYM{k:03d}" for k in range(SYMBOLS)], pa.string())
    batches = []
    for i, start in enumerate(range(0, ticks, BATCH_ROWS)):
        cut = slice(start, start + BATCH_ROWS)
        rb = pa.RecordBatch.from_arrays(
            [
                pa.array(ts[cut], pa.int64()),
                pa.DictionaryArray.from_arrays(pa.array(codes[cut], pa.int32()), names),
                pa.array(price[cut], pa.float64()),
            ],
            names=["ts", "symbol", "price"],
        )
        batches.append(TickBatch(rb, "bench", i))
    return batches, names


def literal_numpy(
    batches: list[TickBatch], names: pa.Array[Any], weights: FloatArray, window: int
) -> Iterator[pa.RecordBatch]:
    """The literal per-batch numpy job: per symbol, tail + new values, ``sliding_window_view``,
    mean and std along axis 1, z-score every window (a new (m, W) matrix), ``@ w``, back to
    price units; one prediction ``RecordBatch`` per input batch, like the engine's.

    No constant-window rule (a float random walk has no constant window).
    """
    tails = [np.empty(0) for _ in range(SYMBOLS)]
    for item in batches:
        rb = item.batch
        ts = rb.column(0).to_numpy()
        codes = cast("pa.DictionaryArray[Any, Any]", rb.column(1)).indices.to_numpy()
        price = rb.column(2).to_numpy()
        ts_parts, sym_parts, yhat_parts = [], [], []
        for k in range(SYMBOLS):
            rows = np.flatnonzero(codes == k)
            tail = tails[k]
            series = np.concatenate((tail, price[rows]))
            tails[k] = series[-(window - 1) :] if window > 1 else series[:0]
            if series.shape[0] < window:
                continue
            win = sliding_window_view(series, window)
            mu = win.mean(axis=1, keepdims=True)
            sd = win.std(axis=1, keepdims=True)
            z = (win - mu) / sd
            yhat = (z @ weights) * sd[:, 0] + mu[:, 0]
            ends = rows[window - 1 - tail.shape[0] :]
            ts_parts.append(ts[ends])
            sym_parts.append(np.full(ends.shape[0], k, dtype=np.int32))
            yhat_parts.append(yhat)
        if yhat_parts:
            yield pa.RecordBatch.from_arrays(
                [
                    pa.array(np.concatenate(ts_parts)),
                    names.take(np.concatenate(sym_parts)),
                    pa.array(np.concatenate(yhat_parts)),
                ],
                names=["ts", "symbol", "yhat"],
            )


@dataclass(frozen=True, slots=True)
class Job:
    window: int
    normalize: str  # an engine mode, or "literal numpy"
    model: str  # LinearModel, WindowMean or LastValue (or the literal baseline's "z @ w")
    weights: FloatArray | None
    fused: bool = True  # False: force the general path (window matrix)

    @property
    def path(self) -> str:
        if self.normalize == "literal numpy":
            return ""
        probe = _predictor(self, BufferPool.for_tier("small"))
        return "fused" if probe.fused else "general"


def _predictor(job: Job, pool: BufferPool) -> WindowPredictor:
    mode: NormalizeMode = job.normalize  # type: ignore[assignment]
    model: Model
    if job.model == "LastValue":
        model = LastValue()
    elif job.model == "WindowMean":
        model = WindowMean()
    else:
        assert job.weights is not None
        model = LinearModel(job.weights, 0.0, window=job.window, horizon=1, normalize=mode)
    return WindowPredictor(
        EngineConfig(window=job.window, normalize=mode), model, pool, fused=job.fused
    )


def run_job(job: Job, batches: list[TickBatch], names: pa.Array[Any]) -> dict[str, Any]:
    """One pass over the whole stream from a fresh state: seconds, predictions, pool stats."""
    if job.normalize == "literal numpy":
        assert job.weights is not None
        preds = 0
        t0 = time.perf_counter_ns()
        for out in literal_numpy(batches, names, job.weights, job.window):
            preds += out.num_rows
        return {"s": (time.perf_counter_ns() - t0) / 1e9, "preds": preds, "pool": None}
    pool = BufferPool()
    wp = _predictor(job, pool)
    t0 = time.perf_counter_ns()
    for item in batches:
        wp.process(item)
    seconds = (time.perf_counter_ns() - t0) / 1e9
    return {"s": seconds, "preds": wp.predictions, "pool": pool.stats()}


def literal_agreement(job: Job, batches: list[TickBatch], names: pa.Array[Any]) -> float:
    """Max relative difference between the literal baseline's and the engine's predictions."""
    assert job.weights is not None
    engine_job = Job(job.window, "window-zscore", "linear", job.weights)
    wp = _predictor(engine_job, BufferPool())
    ours = [r.predictions for r in map(wp.process, batches) if r.predictions is not None]
    theirs = list(literal_numpy(batches, names, job.weights, job.window))
    a, b = pa.Table.from_batches(ours), pa.Table.from_batches(theirs)
    if a.num_rows != b.num_rows:
        return float("inf")
    worst = 0.0
    for name in map(str, names.to_pylist()):
        ya = a.filter(pc.equal(a["symbol"], pa.scalar(name)))["yhat"].to_numpy()
        yb = b.filter(pc.equal(b["symbol"], pa.scalar(name)))["yhat"].to_numpy()
        if ya.shape != yb.shape:
            return float("inf")
        if ya.size:
            worst = max(worst, float(np.max(np.abs(ya - yb) / np.abs(yb))))
    return worst


def throughput_rows(
    ticks: int, runs: int, rate_spread: float
) -> tuple[list[list[object]], list[list[object]]]:
    batches, names = make_stream(ticks, rate_spread)
    rng = np.random.default_rng(3)
    jobs: list[Job] = []
    for w in WINDOWS:
        weights = rng.normal(0.0, 1.0, w) / w
        jobs += [
            Job(w, "window-zscore", "LinearModel", weights),
            Job(w, "window-zscore", "LinearModel", weights, fused=False),
            Job(w, "window-zscore", "WindowMean", None),
            Job(w, "window-zscore", "WindowMean", None, fused=False),
            Job(w, "window-zscore", "LastValue", None),
            Job(w, "window-zscore", "LastValue", None, fused=False),
            Job(w, "none", "LinearModel", weights),
            Job(w, "none", "LinearModel", weights, fused=False),
            Job(w, "zscore", "LinearModel", weights),
            Job(w, "none", "LastValue", None),
            Job(w, "literal numpy", "z @ w", weights),
        ]
    agreement = {
        j.window: literal_agreement(j, batches[:16], names)
        for j in jobs
        if j.normalize == "literal numpy"
    }
    results: list[list[dict[str, Any]]] = [[] for _ in jobs]
    order = list(range(len(jobs)))
    shuffler = random.Random(23)
    for _ in range(runs):
        shuffler.shuffle(order)
        for i in order:
            gc.collect()
            results[i].append(run_job(jobs[i], batches, names))
    literal_s = {
        j.window: statistics.median(x["s"] for x in res)
        for j, res in zip(jobs, results, strict=True)
        if j.normalize == "literal numpy"
    }
    general_s = {
        (j.window, j.normalize, j.model): statistics.median(x["s"] for x in res)
        for j, res in zip(jobs, results, strict=True)
        if not j.fused
    }
    same_job = ("window-zscore", "literal numpy")
    rows: list[list[object]] = []
    for job, res in zip(jobs, results, strict=True):
        s = statistics.median(x["s"] for x in res)
        preds = res[-1]["preds"]
        pool = res[-1]["pool"]
        general = general_s.get((job.window, job.normalize, job.model))
        same = job.normalize in same_job and job.model in ("LinearModel", "z @ w")
        rows.append(
            [
                job.window,
                job.normalize,
                job.model,
                job.path,
                ticks / s / 1e6,
                preds / s / 1e6,
                general / s if general is not None and job.fused else "",
                literal_s[job.window] / s if same else "",
                "" if pool is None else pool.hit_rate,
                "" if pool is None else pool.leases,
                "" if pool is None else pool.peak_bytes // 1024,
            ]
        )
    check = [[w, f"{agreement[w]:.1e}", len(batches[:16]) * BATCH_ROWS] for w in sorted(agreement)]
    return rows, check


SYMBOL_PATHS = {  # engine path -> the normalization that sends a linear model down it
    "fused kernel": "window-zscore",
    "window matrix": "window-minmax",
    "window matrix, running": "zscore",  # each symbol normalized by its own history first
}


def symbol_count_rows(ticks: int, runs: int) -> list[list[object]]:
    """A linear model over streams of ``SYMBOL_COUNTS`` symbols, on both batched engine paths
    (the fused kernel; the window matrix any other model or mode takes, under a window mode and
    under the running z-score), interleaved."""
    from tickpool.connectors.synthetic import generate_batches

    streams = {}
    for n_sym in SYMBOL_COUNTS:
        batches = list(generate_batches(ticks, n_sym, seed=2, batch_rows=SYMBOL_BATCH_ROWS))
        codes = (cast("pa.DictionaryArray[Any, Any]", b.column("symbol")).indices for b in batches)
        present = statistics.mean(pc.count_distinct(c).as_py() for c in codes)
        streams[n_sym] = ([TickBatch(b, "bench", i) for i, b in enumerate(batches)], present)
    rng = np.random.default_rng(5)
    weights = {w: rng.normal(0.0, 1.0, (w, 1)) / w for w in SYMBOL_WINDOWS}
    jobs = [(p, w, n) for p in SYMBOL_PATHS for w in SYMBOL_WINDOWS for n in SYMBOL_COUNTS]
    seconds: dict[tuple[str, int, int], list[float]] = {job: [] for job in jobs}
    shuffler = random.Random(29)
    for _ in range(runs):
        shuffler.shuffle(jobs)
        for path, w, n_sym in jobs:
            gc.collect()
            mode = SYMBOL_PATHS[path]
            model = LinearModel(weights[w], 0.0, window=w, horizon=1, normalize=mode)
            config = EngineConfig(window=w, normalize=mode)  # type: ignore[arg-type]
            wp = WindowPredictor(config, model, BufferPool.for_tier("streaming"))
            assert wp.fused == (path == "fused kernel")
            t0 = time.perf_counter()
            for item in streams[n_sym][0]:
                wp.process(item)
            seconds[(path, w, n_sym)].append(time.perf_counter() - t0)
    rows: list[list[object]] = []
    n_batches = len(streams[SYMBOL_COUNTS[0]][0])
    base_present = streams[SYMBOL_COUNTS[0]][1]
    for path in SYMBOL_PATHS:
        for w in SYMBOL_WINDOWS:
            base_s = statistics.median(seconds[(path, w, SYMBOL_COUNTS[0])])
            for n_sym in SYMBOL_COUNTS:
                s = statistics.median(seconds[(path, w, n_sym)])
                present = streams[n_sym][1]
                extra = (
                    (s - base_s) / n_batches / (present - base_present) * 1e6
                    if present > base_present
                    else ""
                )
                label = f"{path} ({SYMBOL_PATHS[path]})"
                rows.append(
                    [label, w, n_sym, round(present), ticks / s / 1e6, s / n_batches * 1e3, extra]
                )
    return rows


# --------------------------------------------------------------------------------------------


FOOTER = """\
Columns.
- *us per call*: median over the repeats of the mean time per call (many calls per sample); the
  variants are interleaved, in a new random order, in every repeat. *vs allocating*: the
  kernel's first (allocating) row's time divided by this row's (> 1: faster). *in place, kernel
  only*: the in-place row minus *refill alone* (the np.copyto that restores the input each call);
  the pooled rows include their copy-in, as a pipeline stage that must not touch its input would.
  *original design (Rust)*: the figure the Rust design reported for the same z-score.
- *numpy buffers allocated / bytes*: array-data allocations of one call after a warm-up call, as
  counted by a counting numpy memory handler (tracemalloc cannot count blocks freed within the
  call); 0-d reduction results (8 B) count too. *tracemalloc peak*: the most bytes alive above
  the level before the call (numpy data and Python objects); *left behind*: bytes still held after.
- *M ticks/s*, *M predictions/s*: ticks (predictions) of the whole stream divided by the median
  wall time of the runs; each run starts a fresh WindowPredictor and BufferPool (cold symbols and
  a cold pool included) and takes the jobs in a new random order. *path*: ``fused`` (the
  kernels of operators/fused.py: rolling sums and one correlation, no window matrix) or
  ``general`` (window matrix, per-window normalization, ``model.predict``; forced with
  ``fused=False`` for the rows that would otherwise be fused). *x general*: the same job's
  general-path time divided by the fused time (> 1: fusing is faster). *x literal*: the literal
  numpy baseline's median time at the same W divided by this job's (> 1: faster), shown only for
  window-zscore + LinearModel, the job the baseline computes (the others do less work).
  *pool hit rate*, *leases*, *pool peak KiB*: the run's BufferPool statistics (hits / leases
  over the whole run).
- The literal baseline builds one prediction RecordBatch per input batch like the engine;
  *max rel. diff* compares its predictions with the engine's (window-zscore, same weights).
- *Symbols per batch*: the same linear model on the engine's two batched paths: the fused
  kernel (window z-score) and the window matrix (any model or mode the fused kernels do not
  cover: operators/matrix.py), under window min-max and under the running z-score, whose
  statistics are each symbol's history (one kernel call for all symbols, a prefix scan per
  symbol inside it: normalize.running_zscore_runs). *present per batch*, the mean number of
  symbols with at least one tick in a batch (the synthetic rates are log-spread, so the rarest
  symbols miss some batches); *us per extra symbol*: the median time per batch above the
  8-symbol stream's, divided by the extra symbols present (what one more symbol in a batch
  costs).
"""


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller stream, fewer repeats (~10 s)")
    ap.add_argument("--ticks", type=int, default=None, help="ticks in the stream (1,000,000)")
    ap.add_argument("--runs", type=int, default=3, help="interleaved runs per throughput job")
    ap.add_argument("--repeats", type=int, default=None, help="normalize samples per variant")
    ap.add_argument(
        "--rate-spread",
        type=float,
        default=1.0,
        help="busiest / quietest symbol's tick rate (1: all equal)",
    )
    args = ap.parse_args(argv)
    ticks = args.ticks or (200_000 if args.quick else 1_000_000)
    repeats = args.repeats or (7 if args.quick else 21)
    target_ns = 4e6 if args.quick else 25e6

    blas_threads = os.environ.get("OPENBLAS_NUM_THREADS", "unset")
    print(
        f"# bench_operators ({machine_line()}, pyarrow {pa.__version__}, "
        f"{os.cpu_count()} CPUs, OPENBLAS_NUM_THREADS={blas_threads})\n"
    )
    pool = BufferPool.for_tier("streaming")
    variants = normalize_variants(NORMALIZE_POINTS, pool)
    print(f"## Normalize {NORMALIZE_POINTS:,} points, median us per call ({repeats} repeats)\n")
    print(
        markdown_table(
            ["kernel", "variant", "us per call", "vs allocating", "original design (Rust)"],
            normalize_timing_rows(variants, repeats, target_ns),
        )
    )
    print(f"\n## Allocations of one call ({NORMALIZE_POINTS:,} points = 80,000 B)\n")
    print(
        markdown_table(
            [
                "kernel",
                "variant",
                "numpy buffers allocated",
                "bytes",
                "tracemalloc peak B",
                "left behind B",
            ],
            allocation_rows(variants),
        )
    )
    print(
        f"\n## Windows + predict: {ticks:,} ticks, {SYMBOLS} symbols, {BATCH_ROWS:,}-row batches,"
        f" symbol rates spread x{args.rate_spread:g}, stride 1, horizon 1"
        f" (median of {args.runs} runs)\n"
    )
    rows, check = throughput_rows(ticks, args.runs, args.rate_spread)
    print(
        markdown_table(
            [
                "W",
                "normalize",
                "model",
                "path",
                "M ticks/s",
                "M predictions/s",
                "x general",
                "x literal",
                "pool hit rate",
                "leases",
                "pool peak KiB",
            ],
            rows,
        )
    )
    print(
        "\nDESIGN.md, W=64 on its machine A: literal numpy 3.1 M ticks/s, "
        "tight numpy kernel 16.8 M ticks/s.\n"
    )
    print(markdown_table(["W", "literal vs engine: max rel. diff", "ticks compared"], check))
    print(
        f"\n## Symbols per batch: {ticks:,} ticks, {SYMBOL_BATCH_ROWS:,}-row batches,"
        f" LinearModel, stride 1, horizon 1 (median of {args.runs} runs)\n"
    )
    print(
        markdown_table(
            [
                "engine path (normalization)",
                "W",
                "symbols",
                "present per batch",
                "M ticks/s",
                "ms per batch",
                "us per extra symbol",
            ],
            symbol_count_rows(ticks, args.runs),
        )
    )
    print("\n" + FOOTER)


if __name__ == "__main__":
    main()
