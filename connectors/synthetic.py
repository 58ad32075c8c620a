"""Synthetic tick feeds: deterministic, realistic-looking multi-symbol ticks as Arrow batches.

What it makes: one merged feed of ``symbols`` instruments, in time order, in the tick contract of
DESIGN.md (``ts`` timestamp[ns, tz=UTC], ``symbol`` dictionary<int32, utf8>, float64 value
columns, plus ``size``). It feeds ``tickpool generate`` and ``tickpool demo``, and gives tests and
benchmarks any volume of data without shipping files.

Why it looks the way it does (the quirks of /work/shared/data/real, on purpose):

* **Price levels from 10 to 50,000** (penny stocks to BTC), log-spread over the symbols.
* **Tick grid**: a symbol's prices are whole multiples of its tick size (0.01 below 1,000, 0.1
  below 10,000, 1.0 above), computed as ``k / ticks_per_unit`` so a price is the float a CSV
  parser would give for the decimal. Per-tick volatility is 0.3 to 1.5 ticks, so runs of equal
  prices are common, as in real trades. Each value column is a geometric random walk of a
  latent log price, rounded to the grid, and floored at one tick (so prices stay positive).
* **Unequal activity**: symbol rates are log-spread over a factor of 20 (SPY against IBM).
* **Arrivals**: the superposition of the symbols' Poisson streams is one Poisson stream with
  exponential gaps (mean 1 ms) whose ticks are labelled in proportion to the rates. Times are in
  whole microseconds. A fifth of the ticks are *bursts*: same symbol, same timestamp as the tick
  before (a sweep printing at several levels), so equal timestamps are common.
* **Sizes**: integer lots, lognormal around a median notional of about 20,000 (2,000 shares of
  a 10-dollar stock, 1 lot of a 50,000 one).

Determinism: the output depends only on ``(ticks, symbols, seed, start, value_columns)``. The
random draws are made in fixed chunks of ``CHUNK_ROWS`` ticks (always whole chunks, cut at the
end), and only then re-cut into batches of ``batch_rows``. So ``batch_rows`` changes the cuts,
never the rows, and a run of ``n`` ticks is the prefix of any longer run with the same seed.
Each value column has its own random stream: adding a column leaves the others unchanged.
Memory is bounded by ``CHUNK_ROWS + batch_rows`` ticks whatever ``ticks`` is.

``symbols > ticks`` is allowed: the dictionary lists every symbol, and the rarer ones simply get
no ticks. Use :func:`symbol_specs` to see each symbol's level, tick size, rate and volatility.

Example:

>>> import pyarrow as pa
>>> table = pa.Table.from_batches(generate_batches(1_000, 4, seed=7, batch_rows=256))
>>> table.num_rows, [b.num_rows for b in table.to_batches()]
(1000, [256, 256, 256, 232])
>>> table.schema.field("symbol").type
DictionaryType(dictionary<values=string, indices=int32, ordered=0>)
>>> table.column("symbol").chunk(0).dictionary.to_pylist()
['SYM000', 'SYM001', 'SYM002', 'SYM003']
>>> table.equals(pa.Table.from_batches(generate_batches(1_000, 4, seed=7, batch_rows=999)))
True
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa

__all__ = [
    "CHUNK_ROWS",
    "SyntheticSymbol",
    "generate_batches",
    "symbol_specs",
    "write_ticks",
]

CHUNK_ROWS = 65_536
"""Ticks drawn per random chunk. Part of the output's identity: changing it changes the data."""

DEFAULT_START = "2024-01-02T14:30:00Z"
_LEVEL_RANGE = (10.0, 50_000.0)
_RATE_SPREAD = 20.0  # busiest symbol / quietest symbol
_VOL_TICKS = (0.3, 1.5)  # per-tick log-price std, in ticks at the start level
_MEAN_GAP_NS = 1_000_000.0  # exponential inter-arrival mean before bursts
_GAP_RESOLUTION_NS = 1_000  # timestamps in whole microseconds
_BURST_PROBABILITY = 0.2  # tick shares symbol and timestamp with the one before
_MEDIAN_NOTIONAL = 20_000.0
_SIZE_SIGMA = 1.0  # lognormal sigma of the size
_RESERVED = ("ts", "symbol", "size")

# Random streams: one key per purpose, so adding a value column changes no other column.
_STREAM_SPECS = 0
_STREAM_ARRIVALS = 1
_STREAM_VALUES = 2  # + column index

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]


@dataclass(frozen=True, slots=True)
class SyntheticSymbol:
    """How one synthetic symbol behaves.

    Attributes:
        name: ``SYM000``.. (zero-padded to the width of the largest index, at least 3 digits).
        level: the starting price, on the tick grid.
        ticks_per_unit: 100 for a 0.01 tick, 10 for 0.1, 1 for 1.0; a price is
            ``k / ticks_per_unit`` for a whole ``k``.
        share: fraction of all ticks that belong to this symbol (the shares sum to 1).
        volatility: standard deviation of the per-tick log-price step.
        median_size: median of ``size``, in whole units.
    """

    name: str
    level: float
    ticks_per_unit: int
    share: float
    volatility: float
    median_size: float

    @property
    def tick_size(self) -> float:
        """The price grid step (0.01, 0.1 or 1.0)."""
        return 1.0 / self.ticks_per_unit


def symbol_specs(symbols: int, *, seed: int = 0) -> tuple[SyntheticSymbol, ...]:
    """The parameters of each symbol of a synthetic feed (depends on ``symbols`` and ``seed`` only).

    Levels and rates are spread evenly on a log scale and then shuffled, so a small feed still
    covers 10 to 50,000 and a 20x spread of activity.

    >>> [(s.name, s.tick_size) for s in symbol_specs(3, seed=1)][:1]
    [('SYM000', 0.01)]
    >>> round(sum(s.share for s in symbol_specs(5)), 12)
    1.0
    """
    _check_positive("symbols", symbols)
    rng = np.random.default_rng([seed, _STREAM_SPECS])
    mids = (np.arange(symbols) + 0.5) / symbols
    lo, hi = np.log(_LEVEL_RANGE[0]), np.log(_LEVEL_RANGE[1])
    raw_levels = np.exp(lo + mids * (hi - lo))[rng.permutation(symbols)]
    weights = np.exp(mids * np.log(_RATE_SPREAD))[rng.permutation(symbols)]
    shares = weights / weights.sum()
    vol_ticks = np.exp(rng.uniform(np.log(_VOL_TICKS[0]), np.log(_VOL_TICKS[1]), symbols))
    width = max(3, len(str(symbols - 1)))
    specs = []
    for i in range(symbols):
        per_unit = _ticks_per_unit(float(raw_levels[i]))
        level = max(1, round(float(raw_levels[i]) * per_unit)) / per_unit
        specs.append(
            SyntheticSymbol(
                name=f"SYM{i:0{width}d}",
                level=level,
                ticks_per_unit=per_unit,
                share=float(shares[i]),
                volatility=float(vol_ticks[i]) / (per_unit * level),
                median_size=float(max(1, round(_MEDIAN_NOTIONAL / level))),
            )
        )
    return tuple(specs)


def generate_batches(
    ticks: int,
    symbols: int,
    *,
    seed: int = 0,
    batch_rows: int = 65_536,
    start: str | int = DEFAULT_START,
    value_columns: Sequence[str] = ("price",),
) -> Iterator[pa.RecordBatch]:
    """Yield ``ticks`` synthetic ticks of ``symbols`` symbols as record batches of ``batch_rows``.

    Columns: ``ts`` (timestamp[ns, tz=UTC], non-decreasing), ``symbol`` (dictionary<int32, utf8>,
    one dictionary object shared by every batch, listing all symbols), one float64 column per name
    in ``value_columns`` (each its own walk per symbol, on the tick grid), and ``size`` (float64
    whole units). Every batch has ``batch_rows`` rows except the last.

    Args:
        ticks: number of rows, >= 1.
        symbols: number of symbols, >= 1 (more symbols than ticks is fine).
        seed: the same seed gives the same rows, whatever ``batch_rows``.
        batch_rows: rows per batch, >= 1; memory use is proportional to it, not to ``ticks``.
        start: time of the first tick: ISO-8601 text (a missing zone means UTC) or integer
            nanoseconds since the Unix epoch.
        value_columns: names of the float64 value columns, in order; not ``ts``/``symbol``/``size``.

    Raises:
        ValueError: a count below 1, an unparseable ``start``, or bad column names.

    >>> batch = next(generate_batches(3, 2, seed=1))
    >>> batch.schema.names, batch.num_rows
    (['ts', 'symbol', 'price', 'size'], 3)
    """
    return _feed(ticks, symbols, seed, batch_rows, start, value_columns)[1]


def write_ticks(
    path: str | os.PathLike[str],
    ticks: int,
    symbols: int,
    *,
    seed: int = 0,
    batch_rows: int = 65_536,
    progress: Callable[[int], None] | None = None,
    start: str | int = DEFAULT_START,
    value_columns: Sequence[str] = ("price",),
) -> int:
    """Write a synthetic feed to ``path`` as an uncompressed Arrow IPC file; return rows written.

    The file is memory-mappable zero-copy (``pa.ipc.open_file(pa.memory_map(path))``), like the
    files in /work/shared/data/real. It is written to ``path.tmp`` and renamed over ``path`` only
    when complete, so a reader never sees half a file; on error the temporary file is removed.
    ``progress(rows_so_far)`` is called after each batch with the *cumulative* row count (for
    ``rich``: ``lambda n: bar.update(task, completed=n)``). Arguments as in
    :func:`generate_batches`; the same seed gives a byte-identical file.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     write_ticks(Path(d) / "ticks.arrow", 10_000, 8, progress=lambda n: None)
    10000
    """
    target = Path(path)
    # validates the arguments before any file is touched
    schema, batches = _feed(ticks, symbols, seed, batch_rows, start, value_columns)
    tmp = target.with_name(target.name + ".tmp")
    written = 0
    try:
        with open(tmp, "wb") as sink:
            with pa.ipc.new_file(sink, schema) as writer:
                for batch in batches:
                    writer.write_batch(batch)
                    written += batch.num_rows
                    if progress is not None:
                        progress(written)
            sink.flush()
            os.fsync(sink.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return written


# --- generation ----------------------------------------------------------------------------------


def _feed(
    ticks: int,
    symbols: int,
    seed: int,
    batch_rows: int,
    start: str | int,
    value_columns: Sequence[str],
) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """Check the arguments now (not at the first ``next``) and return the schema and the batches."""
    _check_positive("ticks", ticks)
    _check_positive("symbols", symbols)
    _check_positive("batch_rows", batch_rows)
    columns = _check_value_columns(value_columns)
    start_ns = _parse_start(start)
    specs = symbol_specs(symbols, seed=seed)
    schema = _schema(columns, seed=seed, ticks=ticks, symbols=symbols, start_ns=start_ns)
    chunks = _chunks(ticks, specs, seed=seed, start_ns=start_ns, n_values=len(columns))
    return schema, _batches(_recut(chunks, batch_rows), specs, schema)


def _batches(
    pieces: Iterator[list[npt.NDArray[np.generic]]],
    specs: Sequence[SyntheticSymbol],
    schema: pa.Schema,
) -> Iterator[pa.RecordBatch]:
    """Wrap column pieces as record batches, zero-copy, all sharing one symbol dictionary."""
    dictionary = pa.array([s.name for s in specs], pa.string())
    for arrays in pieces:
        ts, codes, values, size = arrays[0], arrays[1], arrays[2:-1], arrays[-1]
        yield pa.RecordBatch.from_arrays(
            [
                pa.array(ts).view(pa.timestamp("ns", tz="UTC")),
                pa.DictionaryArray.from_arrays(pa.array(codes), dictionary),
                *(pa.array(v) for v in values),
                pa.array(size),
            ],
            schema=schema,
        )


def _chunks(
    ticks: int, specs: Sequence[SyntheticSymbol], *, seed: int, start_ns: int, n_values: int
) -> Iterator[list[npt.NDArray[np.generic]]]:
    """Whole random chunks of ``CHUNK_ROWS`` ticks, the last one cut to ``ticks`` in total.

    Each chunk is ``[ts int64, codes int32, value columns float64..., size float64]``. State
    carried from chunk to chunk: the generators, the last timestamp and symbol, and each
    symbol's latent log price per value column.
    """
    n_symbols = len(specs)
    arrivals = np.random.default_rng([seed, _STREAM_ARRIVALS])
    walks = [np.random.default_rng([seed, _STREAM_VALUES + j]) for j in range(n_values)]
    cdf = np.cumsum([s.share for s in specs])
    cdf[-1] = 1.0
    volatility = np.array([s.volatility for s in specs])
    per_unit = np.array([float(s.ticks_per_unit) for s in specs])
    log_median_size = np.log([s.median_size for s in specs])
    log_price = [np.log([s.level for s in specs]) for _ in range(n_values)]
    last_ts = start_ns
    last_code = -1  # no tick yet: the first tick cannot be a burst
    remaining = ticks
    positions = np.arange(CHUNK_ROWS, dtype=np.int64)
    while remaining > 0:
        n = min(CHUNK_ROWS, remaining)
        # Always draw a whole chunk, in a fixed order, so a shorter run is a prefix of a longer one.
        gaps = arrivals.exponential(_MEAN_GAP_NS, CHUNK_ROWS)[:n]
        burst = (arrivals.random(CHUNK_ROWS) < _BURST_PROBABILITY)[:n]
        labels = np.searchsorted(cdf, arrivals.random(CHUNK_ROWS), side="right")[:n]
        size_z = arrivals.standard_normal(CHUNK_ROWS)[:n]
        steps = [walk.standard_normal(CHUNK_ROWS)[:n] for walk in walks]
        if last_code < 0:
            burst[0] = False
        # Timestamps: whole microseconds; a burst tick adds no time.
        gap_ns = (gaps // _GAP_RESOLUTION_NS).astype(np.int64) * _GAP_RESOLUTION_NS
        gap_ns[burst] = 0
        ts = last_ts + np.cumsum(gap_ns)
        # Symbols: a burst tick repeats the symbol of the last non-burst tick before it.
        source = np.maximum.accumulate(np.where(burst, -1, positions[:n]))
        codes = np.where(
            source >= 0, np.minimum(labels, n_symbols - 1)[np.maximum(source, 0)], last_code
        ).astype(np.int32)
        # Per-symbol walks: sort the chunk by symbol (stable: time order within a symbol), take
        # running sums per symbol segment, add each symbol's carried log price.
        order = np.argsort(codes, kind="stable")
        sorted_codes = codes[order]
        counts = np.bincount(codes, minlength=n_symbols)
        ends = np.cumsum(counts)
        starts = ends - counts
        values: list[npt.NDArray[np.generic]] = []
        for j, z in enumerate(steps):
            running = np.concatenate(([0.0], np.cumsum(z[order] * volatility[sorted_codes])))
            before = running[starts]
            latent = np.empty(n)
            # carried log price + this symbol's steps so far in the chunk
            latent[order] = np.repeat(log_price[j] - before, counts) + running[1:]
            log_price[j] = log_price[j] + (running[ends] - before)
            grid = np.maximum(np.rint(np.exp(latent) * per_unit[codes]), 1.0)
            values.append(grid / per_unit[codes])
        size = np.maximum(np.rint(np.exp(log_median_size[codes] + _SIZE_SIGMA * size_z)), 1.0)
        yield [ts, codes, *values, size]
        last_ts = int(ts[-1])
        last_code = int(codes[-1])
        remaining -= n


def _recut(
    chunks: Iterator[list[npt.NDArray[np.generic]]], batch_rows: int
) -> Iterator[list[npt.NDArray[np.generic]]]:
    """Re-cut a stream of column chunks into pieces of exactly ``batch_rows`` rows (last: fewer).

    A piece inside one chunk is a view (no copy); a piece spanning chunks is concatenated.
    """
    pending: list[list[npt.NDArray[np.generic]]] = []
    held = 0
    for chunk in chunks:
        pending.append(chunk)
        held += len(chunk[0])
        while held >= batch_rows:
            taken: list[list[npt.NDArray[np.generic]]] = []
            need = batch_rows
            while need > 0:
                head = pending[0]
                rows = len(head[0])
                if rows <= need:
                    taken.append(pending.pop(0))
                    need -= rows
                else:
                    taken.append([a[:need] for a in head])
                    pending[0] = [a[need:] for a in head]
                    need = 0
            held -= batch_rows
            yield _join(taken)
    if held:
        yield _join(pending)


def _join(pieces: list[list[npt.NDArray[np.generic]]]) -> list[npt.NDArray[np.generic]]:
    if len(pieces) == 1:
        return pieces[0]
    return [np.concatenate(cols) for cols in zip(*pieces, strict=True)]


# --- arguments and schema ------------------------------------------------------------------------


def _ticks_per_unit(level: float) -> int:
    if level < 1_000:
        return 100
    if level < 10_000:
        return 10
    return 1


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"synthetic ticks: {name} must be an integer >= 1, got {value!r}")


def _check_value_columns(value_columns: Sequence[str]) -> tuple[str, ...]:
    columns = (value_columns,) if isinstance(value_columns, str) else tuple(value_columns)
    if not columns:
        raise ValueError("synthetic ticks: value_columns is empty; expected at least one name")
    for name in columns:
        if not isinstance(name, str) or not name or name in _RESERVED:
            raise ValueError(
                f"synthetic ticks: value column name {name!r} is not allowed; expected a "
                f"non-empty string other than {', '.join(_RESERVED)}"
            )
    if len(set(columns)) != len(columns):
        raise ValueError(f"synthetic ticks: value_columns {columns!r} repeats a name")
    return columns


def _parse_start(start: str | int) -> int:
    """Nanoseconds since the epoch from ISO-8601 text (no zone = UTC) or an integer."""
    if isinstance(start, bool):
        raise ValueError(f"synthetic ticks: start must be ISO-8601 text or an int, got {start!r}")
    if isinstance(start, int | np.integer):
        return int(start)
    if isinstance(start, str):
        text = pa.array([start])
        for target in (pa.timestamp("ns", tz="UTC"), pa.timestamp("ns")):
            try:
                value = text.cast(target).cast(pa.int64())[0].as_py()
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                continue
            if value is not None:
                return int(value)
    raise ValueError(
        f"synthetic ticks: cannot read start={start!r}; expected ISO-8601 text such as "
        f"{DEFAULT_START!r} or integer nanoseconds since the Unix epoch"
    )


def _schema(
    columns: tuple[str, ...], *, seed: int, ticks: int, symbols: int, start_ns: int
) -> pa.Schema:
    fields = [
        pa.field("ts", pa.timestamp("ns", tz="UTC")),
        pa.field("symbol", pa.dictionary(pa.int32(), pa.string())),
        *(pa.field(name, pa.float64()) for name in columns),
        pa.field("size", pa.float64()),
    ]
    generator = {
        "generator": "tickpool.connectors.synthetic",
        "seed": seed,
        "ticks": ticks,
        "symbols": symbols,
        "start_ns": start_ns,
        "chunk_rows": CHUNK_ROWS,
    }
    description = f"synthetic ticks: {ticks} rows, {symbols} symbols, seed {seed}"
    return pa.schema(
        fields,
        metadata={
            "tickpool.source": json.dumps(generator, sort_keys=True),
            "tickpool.description": description,
        },
    )
