"""Window prediction over tick batches for one shard: the numpy heart of tickpool (no Bytewax).

A :class:`WindowPredictor` holds the state of every symbol of one shard (the last
``W-1`` values, how many ticks it has seen, running normalization statistics) and
turns each :class:`~tickpool.operators.items.TickBatch` into one prediction
``RecordBatch`` plus dead letters:

1. read the columns zero-copy (:func:`~tickpool.operators.columns.read_ticks`);
   rows with a null or non-finite value become dead letters, not NaN predictions;
2. group the rows by symbol inside numpy (one stable radix argsort of symbol ids);
3. lay every symbol's ``tail + new values`` out in one pooled series buffer (the one
   copy on the hot path); running modes (``zscore``, ``minmax``) first normalize the new
   values in place, each symbol by its own running statistics, all symbols in one kernel call
   (:func:`~tickpool.operators.normalize.running_zscore_runs`);
4. predict every window of the batch at once:
   - the built-in models under ``window-zscore`` (and ``linear`` under ``none``), at
     strides where it pays: one call of a fused kernel (:mod:`~tickpool.operators.fused`):
     rolling sums and one correlation, no window matrix;
   - any other model or mode: the windows in chunks of one matrix
     (:mod:`~tickpool.operators.matrix`; a strided view of the series where no row is
     changed), normalized per row for per-window modes, one model call per chunk, mapped
     back to the value's units;
5. wrap the pooled outputs zero-copy as Arrow columns: the buffers return to the
   pool when the last consumer drops the prediction batch.

Results do not depend on how the ticks were cut into batches.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
from numpy.lib.stride_tricks import sliding_window_view

from tickpool.operators.columns import (
    BadRowPolicy,
    BufferSource,
    ColumnSpec,
    Ticks,
    TickSchemaError,
    read_ticks,
)
from tickpool.operators.fused import StartRuns, fused_kernel
from tickpool.operators.items import DeadLetter, TickBatch, prediction_schema
from tickpool.operators.layout import KernelSet
from tickpool.operators.matrix import MatrixLayout, WindowMatrix
from tickpool.operators.models import Ensemble, LinearModel, Model, check_compatible
from tickpool.operators.normalize import (
    NormalizeMode,
    is_running,
    is_windowed,
    parse_mode,
    running_minmax_runs,
    running_zscore_runs,
)
from tickpool.operators.symbol_column import SymbolNames
from tickpool.operators.symbols import SymbolGroups, SymbolTable, group_by_symbol
from tickpool.operators.windows import (
    window_geometries,
)

__all__ = ["SNAPSHOT_VERSION", "BatchResult", "EngineConfig", "WindowPredictor"]

FloatArray = npt.NDArray[np.float64]
SNAPSHOT_VERSION = 1
_TS_TYPE = pa.timestamp("ns", tz="UTC")


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """What the window operator computes.

    Attributes:
        window: ticks per window (W).
        stride: a window ends every ``stride`` ticks of a symbol (S).
        horizon: predictions per window, steps 1..H ahead (H).
        normalize: ``none``, ``zscore`` (running), ``window-zscore``, ``minmax``
            (running), ``window-minmax`` or ``robust`` (per window, median/IQR).
        columns: names of the ``ts``, ``symbol`` and value columns.
        bad_rows: ``drop`` (dead-letter bad rows and whole batches that do not
            fit the schema) or ``error`` (raise).
    """

    window: int = 64
    stride: int = 1
    horizon: int = 1
    normalize: NormalizeMode = "window-zscore"
    columns: ColumnSpec = field(default_factory=ColumnSpec)
    bad_rows: BadRowPolicy = "drop"

    def __post_init__(self) -> None:
        for name in ("window", "stride", "horizon"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1; got {value!r}")
        parse_mode(self.normalize)
        if self.bad_rows not in ("drop", "error"):
            raise ValueError(f"bad_rows must be 'drop' or 'error'; got {self.bad_rows!r}")


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What one input batch produced.

    ``rows`` input rows = ``processed`` + ``len(dead rows)``; a whole batch that
    could not be read is one :class:`DeadLetter` with ``row=None`` standing for
    all ``rows`` of it.
    """

    predictions: pa.RecordBatch | None
    dead_letters: list[DeadLetter]
    rows: int
    processed: int
    dead_rows: int
    latency_ns: int


class WindowPredictor:
    """Stateful window prediction for the symbols of one shard.

    Args:
        config: what to compute.
        model: maps (m, W) windows to (m, H) outputs (see
            :class:`~tickpool.operators.models.Model`); checked against ``config``.
        pool: where every hot-path buffer is leased from.
        resume: a :meth:`snapshot` to continue from.
        fused: use the fused kernels of :mod:`~tickpool.operators.fused` where the model and
            mode allow (the built-in models under ``window-zscore`` or ``none``) and the stride
            is small enough for them to pay (``FusedKernel.pays_at``): rolling sums and one
            correlation per horizon over the whole batch, no window matrix. Everything else,
            and everything with False (for comparisons; same results to float rounding), takes
            the window matrix (:mod:`~tickpool.operators.matrix`).

    Example:

    >>> import pyarrow as pa
    >>> from tickpool.operators.models import WindowMean
    >>> from tickpool.pipeline.pool import BufferPool
    >>> cfg = EngineConfig(window=3, normalize="none")
    >>> wp = WindowPredictor(cfg, WindowMean(), BufferPool.for_tier("small"))
    >>> batch = pa.record_batch({"ts": pa.array([1, 2, 3, 4], pa.int64()),
    ...     "symbol": ["A"] * 4, "price": [1.0, 2.0, 3.0, 5.0]})
    >>> r = wp.process(TickBatch(batch, "demo", 0))
    >>> r.predictions.column("yhat").to_pylist()
    [2.0, 3.3333333333333335]
    """

    def __init__(
        self,
        config: EngineConfig,
        model: Model,
        pool: BufferSource,
        resume: dict[str, Any] | None = None,
        *,
        fused: bool = True,
    ) -> None:
        check_compatible(
            model, window=config.window, horizon=config.horizon, normalize=config.normalize
        )
        self.config = config
        self.model = model
        self.pool = pool
        self.symbols = SymbolTable()
        # Per symbol id k (rows beyond len(self.symbols) are spare capacity): ticks seen, and the
        # last min(seen, W - 1) values at the start of row k of the tails (a window's first W - 1
        # values come from there). Arrays, not an object per symbol, so that a batch of thousands
        # of symbols reads and moves its state with a few array operations.
        self._seen: npt.NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self._tails: FloatArray = np.zeros((0, max(config.window - 1, 0)))
        # Running modes: (mean, M2) of every value seen under "zscore", (min, max) under "minmax"
        # (their counts are ``_seen``).
        self._running: FloatArray = np.zeros((0, 2))
        self._names = SymbolNames()  # each symbol id's name, for the symbol column
        self._dictionary: list[str] | None = None  # the last batch's symbol dictionary
        self._dictionary_ids = np.zeros(0, dtype=np.int32)  # its entries' ids in self.symbols
        self._schema = prediction_schema(config.horizon)
        kernels: KernelSet | None = None
        if fused:
            kernel = fused_kernel(model, window=config.window, normalize=config.normalize)
            if kernel is not None and kernel.pays_at(config.stride):
                kernels = KernelSet(kernel, model)
        # Any other model or mode: every symbol's windows in chunks of one matrix, one model call
        # per chunk. Rows are copied even within one symbol where a per-window mode normalizes
        # them in place, or the model wants rows of its own (BLAS, for the linear ones).
        copy_rows = (
            is_windowed(config.normalize)
            or bool(model.needs_contiguous)
            or isinstance(model, LinearModel | Ensemble)
        )
        self._planner: KernelSet | WindowMatrix = (
            kernels
            if kernels is not None
            else WindowMatrix(model, config.normalize, config.window, copy_rows=copy_rows)
        )
        self.rows = 0
        self.processed = 0
        self.dead_rows = 0
        self.predictions = 0
        self.batches = 0
        if resume is not None:
            self._restore(resume)

    # -- processing ----------------------------------------------------------

    def process(self, item: TickBatch) -> BatchResult:
        """Consume one batch of ticks; return its predictions and dead letters."""
        t0 = time.perf_counter_ns()
        cfg = self.config
        n_rows = item.batch.num_rows
        self.batches += 1
        self.rows += n_rows
        try:
            ticks = read_ticks(
                item.batch, cfg.columns, self.pool, policy=cfg.bad_rows, source=item.where
            )
        except TickSchemaError as err:
            if cfg.bad_rows == "error":
                raise
            self.dead_rows += n_rows
            letter = DeadLetter(item.source, item.index, None, f"batch rejected: {err}")
            return BatchResult(None, [letter], n_rows, 0, n_rows, time.perf_counter_ns() - t0)
        with ticks:
            dead = _dead_letters(item, ticks, cfg.columns)
            predictions = self._predict(ticks)
        processed = n_rows - len(dead)
        self.processed += processed
        self.dead_rows += len(dead)
        if predictions is not None:
            self.predictions += predictions.num_rows
        return BatchResult(
            predictions, dead, n_rows, processed, len(dead), time.perf_counter_ns() - t0
        )

    def _predict(self, ticks: Ticks) -> pa.RecordBatch | None:
        keep = ticks.keep
        codes = ticks.codes if keep is None else ticks.codes[keep]
        if codes.shape[0] == 0:
            return None
        if ticks.symbols != self._dictionary:
            # Looked up once per dictionary: the batches of a file share one. A source that
            # encodes each batch on its own still pays one lookup per entry every batch.
            ids_now = self.symbols.ids_for(ticks.symbols)
            self._dictionary, self._dictionary_ids = ticks.symbols, ids_now
        table_ids = self._dictionary_ids
        # A batch whose dictionary lists the table's symbols in id order (every batch of a file
        # written with one dictionary, after the first) needs no remapping of its codes.
        ids = codes if _is_identity(table_ids) else table_ids[codes]
        self._grow_states()
        groups = group_by_symbol(ids, len(self.symbols))
        return self._predict_laid_out(self._planner, ticks, groups)

    @property
    def fused(self) -> bool:
        """True if batches take the fused kernel path (see :mod:`~tickpool.operators.fused`)."""
        return isinstance(self._planner, KernelSet)

    def _predict_laid_out(
        self, planner: KernelSet | WindowMatrix, ticks: Ticks, groups: SymbolGroups
    ) -> pa.RecordBatch | None:
        """Every symbol's windows of this batch at once: one series buffer of each symbol's
        tail + new values, then the tails move forward. The fused kernel lays it out dense or
        packed, whichever costs less for this batch (`~tickpool.operators.layout`), and makes
        one call; any other model gets the windows in chunks of one matrix
        (`~tickpool.operators.matrix`), one call per chunk. Running modes first normalize the
        new values (`_normalize_running`: one kernel call, a prefix scan per symbol inside).

        Apart from the running modes' prefix scans (one ``accumulate`` per symbol and array,
        inside one kernel call), nothing here costs a Python step per symbol once a batch holds
        more than `~tickpool.operators.fused.SLICE_RUNS_MAX` of them: the state is read and
        written as arrays, the layout and the copies out are array operations
        (docs/optimizations.md sections 11, 17 and 21).
        """
        cfg, pool = self.config, self.pool
        w, stride, h = cfg.window, cfg.stride, cfg.horizon
        present = groups.present
        n_new = groups.counts[present].astype(np.int64)
        seen = self._seen[present]
        tail_len = np.minimum(seen, w - 1)
        count, first_end = window_geometries(seen, n_new, window=w, stride=stride)
        total = int(count.sum())
        lengths = tail_len + n_new
        layout = planner.plan(tail_len, n_new, first_end - (w - 1), count, stride)
        rows = groups.order if ticks.keep is None else ticks.keep[groups.order]
        n_rows = rows.shape[0]
        # Stride 1 with every symbol past its first W - 1 ticks: every row ends a window, so the
        # output ts are the rows' ts in symbol order, taken straight into the output.
        every_row = stride == 1 and total == n_rows
        gathered = pool.acquire(n_rows if every_row else 2 * n_rows)  # values, ts: symbol order
        series = pool.acquire(layout.series_len)
        out_lease = pool.acquire(h * total) if total else None
        ts_lease = pool.acquire(total) if total else None
        scratch = pool.acquire(layout.scratch_size()) if total else None
        n_sym = present.shape[0]
        tail_lease = pool.acquire(max(n_sym * (w - 1), 1))  # these symbols' tails
        tail_rows = tail_lease[: n_sym * (w - 1)].reshape(n_sym, w - 1)
        # Running modes: loc, scale and twice as much scratch per new tick, then loc and scale
        # per window.
        running = is_running(cfg.normalize)
        stats = pool.acquire(4 * n_rows + 2 * total) if running else None
        live = count > 0
        result = None
        updated: FloatArray | None = None
        try:
            values = gathered[:n_rows]
            # Every index here comes from the batch's own grouping, so it is in range, and
            # mode="clip" spares numpy's default ("raise") a buffered copy of ``out``: a fresh
            # temporary the size of the output and a second pass (68 against 102 us for 65,536
            # values, docs/optimizations.md section 17).
            np.take(ticks.values, rows, out=values, mode="clip")
            np.take(self._tails, present, axis=0, out=tail_rows, mode="clip")
            if stats is not None:
                updated = self._normalize_running(values, present, seen, n_new, stats)
            layout.fill(series, tail_rows, tail_len, values, n_new)
            if ts_lease is not None and out_lease is not None and scratch is not None:
                ts_out = ts_lease.view(np.int64)
                # Each window's last tick, in symbol order: runs over the new ticks (all of
                # them, in order, when every row ends a window).
                ends = None
                if every_row:
                    np.take(ticks.ts, rows, out=ts_out, mode="clip")
                else:
                    ts = gathered[n_rows:].view(np.int64)
                    np.take(ticks.ts, rows, out=ts, mode="clip")
                    row_starts = np.cumsum(n_new) - n_new
                    ends = StartRuns((row_starts + first_end - tail_len)[live], count[live], stride)
                    ends.take(ts, ts_out)
                out = out_lease.reshape(h, total)
                if stats is not None and isinstance(layout, MatrixLayout):
                    loc, scale = stats[:n_rows], stats[n_rows : 2 * n_rows]
                    if ends is not None:
                        per_window = stats[4 * n_rows :]
                        ends.take(loc, per_window[:total])
                        ends.take(scale, per_window[total:])
                        loc, scale = per_window[:total], per_window[total:]
                    layout.predict(series, out, scratch, loc, scale)
                else:
                    layout.predict(series, out, scratch)
                result = self._prediction_batch(
                    out_lease, ts_out, present[live], count[live], total
                )
            # Only then the state moves on (a failure above leaves it as it was): the tails
            # become each symbol's last min(W - 1, length) values (a symbol with fewer also
            # reads its padding, which stays past its tail length).
            if w > 1:
                tail_from = layout.bases + np.maximum(lengths - (w - 1), 0)
                self._tails[present] = sliding_window_view(series, w - 1)[tail_from]
            self._seen[present] += n_new
            if updated is not None:
                self._running[present] = updated
        except BaseException:
            for lease in (out_lease, ts_lease):
                if lease is not None:
                    pool.release(lease)
            raise
        finally:
            for lease in (scratch, series, gathered, tail_lease, stats):
                if lease is not None:
                    pool.release(lease)
        return result

    def _normalize_running(
        self,
        values: FloatArray,
        present: npt.NDArray[np.intp],
        seen: npt.NDArray[np.int64],
        n_new: npt.NDArray[np.int64],
        stats: FloatArray,
    ) -> FloatArray:
        """Running modes: the batch's new values (symbol order: ``n_new[i]`` of symbol
        ``present[i]``, which has seen ``seen[i]``) normalized in place by each symbol's running
        statistics, all symbols in one kernel call. Each new tick's loc and scale go to ``stats``
        (then scratch); returns the symbols' updated statistics as a copy: the engine's own move
        on only once the whole batch is through.
        """
        n = values.shape[0]
        loc, scale, scratch = stats[:n], stats[n : 2 * n], stats[2 * n : 4 * n]
        state = self._running[present]  # a copy
        if self.config.normalize == "zscore":
            running_zscore_runs(values, n_new, seen, state, values, loc, scale, scratch=scratch)
        else:
            running_minmax_runs(values, n_new, state, values, loc, scale, scratch=scratch)
        return state

    def _prediction_batch(
        self,
        out_lease: FloatArray,
        ts_out: npt.NDArray[np.int64],
        ids: npt.NDArray[np.intp],
        counts: npt.NDArray[np.int64],
        total: int,
    ) -> pa.RecordBatch:
        """Wrap the pooled outputs as Arrow columns (no copy) beside a symbol column of
        ``counts[i]`` rows of symbol ``ids[i]``, in output order.

        Built with ``from_buffers`` rather than ``pa.array``: ``pa.array`` imports pandas on
        first use (0.3 s and tens of MB for a process that never needs it).
        """
        names = self._names
        if len(names) < len(self.symbols):
            names.extend(self.symbols.to_list()[len(names) :])
        h = self.config.horizon
        # py_buffer keeps each view of a pooled lease alive: zero-copy hand-off.
        ts_buf = pa.py_buffer(ts_out)  # type: ignore[arg-type]  # ndarray has the buffer protocol
        columns: list[pa.Array[Any]] = [
            pa.Array.from_buffers(_TS_TYPE, total, [None, ts_buf]),
            names.column(ids, counts, total),
        ]
        columns.extend(
            pa.Array.from_buffers(
                pa.float64(),
                total,
                [None, pa.py_buffer(out_lease[i * total : (i + 1) * total])],  # type: ignore[arg-type]
            )
            for i in range(h)
        )
        return pa.RecordBatch.from_arrays(columns, schema=self._schema)

    # -- state -----------------------------------------------------------------

    def _grow_states(self) -> None:
        """Room for the state of every symbol in the table (capacity doubles: amortized O(1))."""
        n, mode = len(self.symbols), self.config.normalize
        if n > self._seen.shape[0]:
            capacity = max(n, 2 * self._seen.shape[0], 16)
            old = self._seen.shape[0]
            seen = np.zeros(capacity, dtype=np.int64)
            tails = np.zeros((capacity, self._tails.shape[1]))
            # A new symbol's running statistics: mean and M2 0, or min inf and max -inf.
            running = np.zeros((capacity if is_running(mode) else 0, 2))
            if mode == "minmax":
                running[:] = (np.inf, -np.inf)
            seen[:old] = self._seen
            tails[:old] = self._tails
            running[: self._running.shape[0]] = self._running
            self._seen, self._tails, self._running = seen, tails, running

    def snapshot(self) -> dict[str, Any]:
        """A picklable, immutable copy of every symbol's state and the counters."""
        cfg = self.config
        return {
            "version": SNAPSHOT_VERSION,
            "window": cfg.window,
            "stride": cfg.stride,
            "normalize": cfg.normalize,
            "symbols": self.symbols.to_list(),
            "states": [
                (
                    seen,
                    self._tails[k, : min(seen, cfg.window - 1)].tobytes(),
                    (seen, *self._running[k].tolist()) if cfg.normalize == "zscore" else None,
                    (seen, *self._running[k].tolist()) if cfg.normalize == "minmax" else None,
                )
                for k, seen in enumerate(self._seen[: len(self.symbols)].tolist())
            ],
            "counters": (self.rows, self.processed, self.dead_rows, self.predictions, self.batches),
        }

    def _restore(self, snap: dict[str, Any]) -> None:
        cfg = self.config
        if snap.get("version") != SNAPSHOT_VERSION:
            raise ValueError(
                f"recovery state has version {snap.get('version')!r}; this tickpool reads "
                f"version {SNAPSHOT_VERSION}: start with a fresh recovery directory"
            )
        theirs = (snap["window"], snap["stride"], snap["normalize"])
        ours = (cfg.window, cfg.stride, cfg.normalize)
        if theirs != ours:
            raise ValueError(
                "recovery state was written with window {}, stride {}, normalize {!r}; this run "
                "uses window {}, stride {}, normalize {!r}: resume with the same settings or a "
                "fresh recovery directory".format(*theirs, *ours)
            )
        self.symbols = SymbolTable.from_list(snap["symbols"])
        self._grow_states()
        states = snap["states"]
        if len(states) != len(self.symbols):
            raise ValueError(
                f"recovery state lists {len(self.symbols)} symbols and {len(states)} states; "
                "expected one state per symbol: start with a fresh recovery directory"
            )
        for k, (seen, tail, moments, rng) in enumerate(states):
            name = self.symbols.name(k)
            n_tail = min(seen, cfg.window - 1)
            if len(tail) != 8 * n_tail:  # float64 values
                raise ValueError(
                    f"recovery state of symbol {name!r} holds {len(tail) / 8:g} "
                    f"tail values after {seen} ticks; expected min({seen}, window - 1 = "
                    f"{cfg.window - 1}): start with a fresh recovery directory"
                )
            for stats, mode, what in (
                (moments, "zscore", "running moments"),
                (rng, "minmax", "running range"),
            ):
                if (stats is None) == (cfg.normalize == mode):
                    raise ValueError(
                        f"recovery state of symbol {name!r} has its {what} "
                        f"{'missing' if stats is None else 'present'} under normalize "
                        f"{cfg.normalize!r}: start with a fresh recovery directory"
                    )
                if stats is not None and stats[0] != seen:
                    raise ValueError(
                        f"recovery state of symbol {name!r} has {stats[0]} values in its {what} "
                        f"and {seen} ticks seen; expected the same count: start with a fresh "
                        "recovery directory"
                    )
            self._seen[k] = seen
            self._tails[k, :n_tail] = np.frombuffer(tail, dtype=np.float64)
            running = moments if moments is not None else rng
            if running is not None:
                self._running[k] = running[1:]
        (self.rows, self.processed, self.dead_rows, self.predictions, self.batches) = snap[
            "counters"
        ]


def _is_identity(table_ids: npt.NDArray[np.int32]) -> bool:
    """True if ``table_ids[i] == i`` for every i (codes are table ids already)."""
    n = table_ids.shape[0]
    return n == 0 or bool((table_ids == np.arange(n, dtype=np.int32)).all())


def _dead_letters(item: TickBatch, ticks: Ticks, columns: ColumnSpec) -> list[DeadLetter]:
    """One dead letter per bad row, pointing back at the source position."""
    if ticks.bad_rows.shape[0] == 0:
        return []
    batch = item.batch
    rows = ticks.bad_rows.tolist()
    index = pa.Array.from_buffers(
        pa.int64(),
        len(rows),
        [None, pa.py_buffer(ticks.bad_rows.astype(np.int64))],  # type: ignore[arg-type]
    )
    taken = batch.select([columns.ts, columns.symbol, columns.value]).take(index)
    ts = taken.column(0).cast(pa.int64()).to_pylist()
    symbols = taken.column(1).cast(pa.string()).to_pylist()
    values = taken.column(2).to_pylist()
    return [
        DeadLetter(item.source, item.index, item.row_offset + row, reason, t, s, v)
        for row, reason, t, s, v in zip(rows, ticks.bad_reasons, ts, symbols, values, strict=True)
    ]
