"""Zero-copy column layer: a tick batch's ts, symbol and value columns as numpy, bad rows listed.

``read_ticks`` reads the three columns a kernel needs from one ``RecordBatch``:

- a float64 value column and a ``timestamp[ns]`` / int64 ``ts`` column are numpy views on the
  Arrow buffers (no copy, no pool lease);
- other numeric value types and coarser timestamps are converted once, into buffers leased from
  the pool, which ``Ticks.release`` (or leaving ``with read_ticks(...) as ticks:``) gives back;
- the symbol column becomes integer codes (the dictionary indices, zero-copy) into a list of
  symbol strings;
- rows with a null field, or a NaN or infinite value, are listed with a reason (policy ``"drop"``)
  or raise ``BadRowError`` (policy ``"error"``). A batch without such rows costs one ``sum`` and
  allocates nothing.

Views on Arrow memory are read-only: Arrow arrays are immutable and may be shared.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Literal, Protocol, Self

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "BadRowError",
    "BadRowPolicy",
    "BufferSource",
    "ColumnSpec",
    "SymbolCodes",
    "TickSchemaError",
    "Ticks",
    "check_columns",
    "float64_view",
    "read_symbols",
    "read_ticks",
]

BadRowPolicy = Literal["drop", "error"]

EXPECTED_TS: Final = "timestamp[ns] or int64 nanoseconds (timestamp[s|ms|us] is converted)"
EXPECTED_SYMBOL: Final = "utf8, large_utf8 or dictionary<int*, utf8|large_utf8>"
EXPECTED_VALUE: Final = "a numeric type (float64 is read without a copy)"

_TS_FACTORS: Final = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}
_INT64_MAX: Final = int(np.iinfo(np.int64).max)


class BufferSource(Protocol):
    """What ``read_ticks`` needs of the buffer pool (``pipeline/pool.py`` provides it)."""

    def acquire(self, n: int) -> npt.NDArray[np.float64]:
        """Lease a writable float64 array of exactly ``n`` elements."""
        ...

    def release(self, buf: npt.NDArray[np.float64]) -> None:
        """Give back the exact object ``acquire`` returned."""
        ...


@dataclass(frozen=True, slots=True)
class ColumnSpec:
    """Names of the columns a tick batch is read from."""

    ts: str = "ts"
    symbol: str = "symbol"
    value: str = "price"


class TickSchemaError(ValueError):
    """A tick batch lacks a column, or a column has a type the reader cannot use.

    ``found`` is the Arrow type found, or None when the column is missing (``columns`` then lists
    the batch's columns). ``source`` is the caller's context, e.g. ``"file x.arrow, batch 3"``.
    """

    def __init__(
        self,
        column: str,
        found: str | None,
        expected: str,
        source: str = "",
        columns: tuple[str, ...] = (),
    ) -> None:
        where = f" in {source}" if source else ""
        if found is None:
            have = ", ".join(columns) if columns else "none"
            what = f"is missing (columns found: {have})"
        else:
            what = f"has type {found}"
        super().__init__(f"column {column!r}{where} {what}; expected {expected}")
        self.column = column
        self.found = found
        self.expected = expected
        self.source = source
        self.columns = columns

    def __reduce__(self) -> tuple[Any, ...]:
        # Errors may be pickled across Bytewax workers: rebuild from the fields, not the message.
        return (type(self), (self.column, self.found, self.expected, self.source, self.columns))


class BadRowError(ValueError):
    """A row has a null field or a non-finite value, and the policy is ``"error"``."""

    def __init__(self, column: str, row: int, reason: str, source: str = "") -> None:
        where = f" in {source}" if source else ""
        super().__init__(
            f"column {column!r}{where}, row {row}: {reason}; expected a non-null, finite value "
            "(policy 'error'; policy 'drop' lists such rows in Ticks.bad_rows)"
        )
        self.column = column
        self.row = row
        self.reason = reason
        self.source = source

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.column, self.row, self.reason, self.source))


@dataclass(frozen=True, slots=True)
class SymbolCodes:
    """A symbol column as integer codes into ``symbols``.

    ``codes`` is the dictionary indices (zero-copy for a dictionary column). ``nulls`` marks rows
    whose symbol is null (None when there are none); the codes of those rows are meaningless. A
    null dictionary entry is listed in ``symbols`` as ``""``, and the rows using it in ``nulls``.
    """

    codes: npt.NDArray[np.integer[Any]]
    symbols: list[str]
    nulls: npt.NDArray[np.bool_] | None


_NO_ROWS: Final[npt.NDArray[np.intp]] = np.empty(0, dtype=np.intp)
_NO_ROWS.flags.writeable = False


@dataclass(slots=True, eq=False)
class Ticks:
    """The columns of one tick batch, ready for numpy kernels.

    ``values`` (float64) and ``ts`` (int64 ns) are views on the Arrow buffers when no cast was
    needed (``cast_values`` / ``cast_ts`` False), else pooled buffers this object holds until
    ``release``. After ``release`` the pooled arrays are replaced by empty ones: that memory
    belongs to the pool again.

    ``bad_rows`` (ascending row indices) and ``bad_reasons`` (one per bad row, e.g.
    ``"price is NaN"``) list the rows to leave out; ``keep`` holds the other rows' indices, or is
    None when every row is good. Codes of rows with a null symbol are meaningless.
    """

    values: npt.NDArray[np.float64]
    ts: npt.NDArray[np.int64]
    codes: npt.NDArray[np.integer[Any]]
    symbols: list[str]
    num_rows: int
    cast_values: bool
    cast_ts: bool
    bad_rows: npt.NDArray[np.intp]
    bad_reasons: list[str]
    keep: npt.NDArray[np.intp] | None
    _pool: BufferSource | None = field(default=None, repr=False)
    _leases: list[npt.NDArray[np.float64]] = field(default_factory=list, repr=False)
    _values_leased: bool = field(default=False, repr=False)
    _ts_leased: bool = field(default=False, repr=False)

    @property
    def leased(self) -> int:
        """How many pool buffers this object still holds."""
        return len(self._leases)

    def release(self, pool: BufferSource | None = None) -> None:
        """Return every pooled buffer to the pool it came from; calling it again does nothing.

        ``pool``, if given, must be the pool the buffers were leased from.
        """
        if pool is not None and self._pool is not None and pool is not self._pool:
            raise ValueError(
                f"Ticks.release: got pool {pool!r}; expected {self._pool!r}, "
                "the pool these buffers were leased from"
            )
        leases, self._leases = self._leases, []
        if self._values_leased:
            self.values = np.empty(0, dtype=np.float64)
            self._values_leased = False
        if self._ts_leased:
            self.ts = np.empty(0, dtype=np.int64)
            self._ts_leased = False
        if self._pool is not None:
            _release_all(self._pool, leases)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def float64_view(array: pa.Array[Any]) -> npt.NDArray[np.float64] | None:
    """``array``'s values as a read-only numpy view on its data buffer; None if it is not float64.

    Works for sliced arrays (the view starts at the array's offset) and for arrays with nulls (the
    data buffer is read as is: values under null slots are unspecified; see ``array.is_null()``).
    """
    if not isinstance(array, pa.Array) or not pa.types.is_float64(array.type):
        return None
    return _primitive_view(array, np.dtype(np.float64))


def read_symbols(batch: pa.RecordBatch, column: str = "symbol", *, source: str = "") -> SymbolCodes:
    """The symbol column of ``batch`` as codes into a list of strings (zero-copy indices).

    A plain utf8 / large_utf8 column is dictionary-encoded first (one C++ pass, new codes).
    """
    indices = batch.schema.get_all_field_indices(column)
    if len(indices) != 1:
        check_columns(batch.schema, ColumnSpec(ts=column, symbol=column, value=column), source)
    return _symbol_codes(batch.column(indices[0]), column, source)


def read_ticks(
    batch: pa.RecordBatch,
    spec: ColumnSpec,
    pool: BufferSource,
    *,
    policy: BadRowPolicy = "drop",
    source: str = "",
) -> Ticks:
    """Read the ts, symbol and value columns of ``batch`` as numpy arrays, flagging bad rows.

    Raises ``TickSchemaError`` for a missing column or a type it cannot read (before leasing
    anything), and ``BadRowError`` under policy ``"error"`` for the first row with a null field or
    a NaN/infinite value. ``source`` (e.g. ``"file x.arrow, batch 3"``) goes into error messages.
    Pooled buffers go back to the pool on ``Ticks.release`` or at the end of a ``with`` block, and
    at once if reading fails.
    """
    if not isinstance(batch, pa.RecordBatch):
        raise TypeError(
            f"read_ticks: expected a pyarrow.RecordBatch, got {type(batch).__name__} "
            "(for a Table, read each of table.to_batches())"
        )
    if policy not in ("drop", "error"):
        raise ValueError(f"read_ticks: policy is {policy!r}; expected 'drop' or 'error'")
    check_columns(batch.schema, spec, source)
    ts_col = batch.column(spec.ts)
    sym_col = batch.column(spec.symbol)
    val_col = batch.column(spec.value)

    leases: list[npt.NDArray[np.float64]] = []
    try:
        values, cast_values = _read_values(val_col, pool, leases)
        values_leased = bool(leases)
        ts, cast_ts = _read_ts(ts_col, spec.ts, source, pool, leases)
        ts_leased = len(leases) > int(values_leased)
        symbols = _symbol_codes(sym_col, spec.symbol, source)
        bad_rows, reasons, keep = _bad_rows(values, ts_col, val_col, symbols.nulls, spec)
        if policy == "error" and bad_rows.size:
            column, reason = reasons[0]
            raise BadRowError(column, int(bad_rows[0]), reason, source)
    except BaseException:
        _release_all(pool, leases)
        raise
    return Ticks(
        values=values,
        ts=ts,
        codes=symbols.codes,
        symbols=symbols.symbols,
        num_rows=batch.num_rows,
        cast_values=cast_values,
        cast_ts=cast_ts,
        bad_rows=bad_rows,
        bad_reasons=[reason for _, reason in reasons],
        keep=keep,
        _pool=pool,
        _leases=leases,
        _values_leased=values_leased,
        _ts_leased=ts_leased,
    )


# --- columns and types ---------------------------------------------------------------------------


def check_columns(schema: pa.Schema, spec: ColumnSpec, source: str = "") -> None:
    """Check that ``schema`` has the ts, symbol and value columns, once each, of usable types.

    What `read_ticks` checks first, on a schema alone: callers check a file's schema before
    any batch flows (``tickpool replay`` does, so a wrong file fails before the run starts).

    Raises:
        TickSchemaError: a column is missing or has a type the reader cannot use.
        ValueError: a column name appears more than once.
    """
    for name, expected, check in (
        (spec.ts, EXPECTED_TS, _check_ts_type),
        (spec.symbol, EXPECTED_SYMBOL, _check_symbol_type),
        (spec.value, EXPECTED_VALUE, _check_value_type),
    ):
        indices = schema.get_all_field_indices(name)
        if not indices:
            raise TickSchemaError(name, None, expected, source, tuple(schema.names))
        if len(indices) > 1:
            where = f" in {source}" if source else ""
            raise ValueError(f"column {name!r}{where} appears {len(indices)} times; expected once")
        check(schema.field(indices[0]).type, name, source)


def _check_ts_type(t: pa.DataType, column: str, source: str) -> None:
    if not (pa.types.is_int64(t) or pa.types.is_timestamp(t)):
        raise TickSchemaError(column, str(t), EXPECTED_TS, source)


def _check_symbol_type(t: pa.DataType, column: str, source: str) -> None:
    if _is_utf8(t):
        return
    if (
        isinstance(t, pa.DictionaryType)
        and pa.types.is_integer(t.index_type)
        and _is_utf8(t.value_type)
    ):
        return
    raise TickSchemaError(column, str(t), EXPECTED_SYMBOL, source)


def _check_value_type(t: pa.DataType, column: str, source: str) -> None:
    if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)):
        raise TickSchemaError(column, str(t), EXPECTED_VALUE, source)


def _is_utf8(t: pa.DataType) -> bool:
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t))


# --- reading -------------------------------------------------------------------------------------


def _primitive_view(array: pa.Array[Any], dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    """A read-only numpy view on a fixed-width primitive array's data buffer, from its offset."""
    n = len(array)
    data = array.buffers()[1]
    if data is None:  # only a zero-length array has no data buffer
        view: npt.NDArray[Any] = np.empty(0, dtype=dtype)
    else:
        view = np.frombuffer(
            memoryview(data), dtype=dtype, count=n, offset=array.offset * dtype.itemsize
        )
    view.flags.writeable = False
    return view


def _lease(
    pool: BufferSource, n: int, leases: list[npt.NDArray[np.float64]]
) -> npt.NDArray[np.float64]:
    if n == 0:
        return np.empty(0, dtype=np.float64)
    buf = pool.acquire(n)
    leases.append(buf)
    if buf.shape != (n,) or buf.dtype != np.float64:
        raise ValueError(
            f"pool {pool!r} returned an array of shape {buf.shape} and dtype {buf.dtype} for "
            f"acquire({n}); expected shape ({n},) and dtype float64"
        )
    return buf


def _release_all(pool: BufferSource, leases: list[npt.NDArray[np.float64]]) -> None:
    while leases:
        pool.release(leases.pop())


def _read_values(
    array: pa.Array[Any], pool: BufferSource, leases: list[npt.NDArray[np.float64]]
) -> tuple[npt.NDArray[np.float64], bool]:
    view = float64_view(array)
    if view is not None:
        return view, False
    if pa.types.is_decimal(array.type):
        # No numpy dtype reads Arrow decimals: Arrow converts, we view its new (unpooled) buffer.
        converted = pc.cast(array, pa.float64())
        return _primitive_view(converted, np.dtype(np.float64)), True
    raw = _primitive_view(array, np.dtype(array.type.to_pandas_dtype()))
    out = _lease(pool, len(array), leases)
    np.copyto(out, raw, casting="same_kind")
    return out, True


def _read_ts(
    array: pa.Array[Any],
    column: str,
    source: str,
    pool: BufferSource,
    leases: list[npt.NDArray[np.float64]],
) -> tuple[npt.NDArray[np.int64], bool]:
    raw: npt.NDArray[np.int64] = _primitive_view(array, np.dtype(np.int64))
    t = array.type
    factor = _TS_FACTORS[t.unit] if isinstance(t, pa.TimestampType) else 1
    if factor == 1:
        return raw, False
    if array.null_count < len(array):
        limits = pc.min_max(array.view(pa.int64()))
        low, high = limits["min"].as_py(), limits["max"].as_py()
        limit = _INT64_MAX // factor
        if low < -limit or high > limit:
            where = f" in {source}" if source else ""
            raise ValueError(
                f"column {column!r}{where} has {t} values from {low} to {high}; expected "
                f"values within +-{limit} so they fit int64 nanoseconds (years 1677 to 2262)"
            )
    out = _lease(pool, len(array), leases).view(np.int64)
    np.multiply(raw, factor, out=out)
    return out, True


def _symbol_codes(array: pa.Array[Any], column: str, source: str) -> SymbolCodes:
    _check_symbol_type(array.type, column, source)
    encoded = array if isinstance(array, pa.DictionaryArray) else pc.dictionary_encode(array)
    assert isinstance(encoded, pa.DictionaryArray)  # dictionary_encode of a string array
    dictionary = encoded.dictionary
    indices = encoded.indices
    codes = _primitive_view(indices, np.dtype(indices.type.to_pandas_dtype()))
    names = dictionary.to_pylist()
    nulls: npt.NDArray[np.bool_] | None = None
    if encoded.null_count or dictionary.null_count:
        # A dictionary array's is_null also marks rows whose index points at a null entry.
        nulls = encoded.is_null().to_numpy(zero_copy_only=False)
    symbols = [name if name is not None else "" for name in names]
    return SymbolCodes(codes=codes, symbols=symbols, nulls=nulls)


# --- bad rows ------------------------------------------------------------------------------------


def _null_mask(array: pa.Array[Any]) -> npt.NDArray[np.bool_] | None:
    if not array.null_count:
        return None
    mask: npt.NDArray[np.bool_] = array.is_null().to_numpy(zero_copy_only=False)
    return mask


def _bad_rows(
    values: npt.NDArray[np.float64],
    ts_col: pa.Array[Any],
    val_col: pa.Array[Any],
    symbol_nulls: npt.NDArray[np.bool_] | None,
    spec: ColumnSpec,
) -> tuple[npt.NDArray[np.intp], list[tuple[str, str]], npt.NDArray[np.intp] | None]:
    """Bad row indices, a (column, reason) per bad row, the good rows' indices (None if all good).

    One reason per row, the first that applies in this order: ts null, symbol null, value null,
    value NaN, value +inf, value -inf.
    """
    any_nulls = bool(ts_col.null_count or val_col.null_count or symbol_nulls is not None)
    if not any_nulls:
        with np.errstate(over="ignore", invalid="ignore"):  # overflow and inf - inf are expected
            total = values.sum()
        if np.isfinite(total):
            # A finite sum implies finite terms (NaN and inf propagate); only overflow false-alarms.
            return _NO_ROWS, [], None

    checks: list[tuple[str, str, npt.NDArray[np.bool_] | None]] = [
        (spec.ts, f"{spec.ts} is null", _null_mask(ts_col)),
        (spec.symbol, f"{spec.symbol} is null", symbol_nulls),
        (spec.value, f"{spec.value} is null", _null_mask(val_col)),
    ]
    finite = np.isfinite(values)
    if not finite.all():
        checks += [
            (spec.value, f"{spec.value} is NaN", np.isnan(values)),
            (spec.value, f"{spec.value} is +inf", values == np.inf),
            (spec.value, f"{spec.value} is -inf", values == -np.inf),
        ]
    masks = [(column, reason, mask) for column, reason, mask in checks if mask is not None]
    if not masks:
        return _NO_ROWS, [], None
    bad = np.zeros(values.shape[0], dtype=np.bool_)
    for _, _, mask in masks:
        bad |= mask
    bad_rows = np.flatnonzero(bad)
    if not bad_rows.size:
        return _NO_ROWS, [], None
    # Later assignments win, so walk the checks from the lowest priority to the highest.
    which = np.zeros(bad_rows.size, dtype=np.intp)
    for k in range(len(masks) - 1, -1, -1):
        which[masks[k][2][bad_rows]] = k
    labels = [(column, reason) for column, reason, _ in masks]
    reasons = [labels[k] for k in which.tolist()]
    return bad_rows, reasons, np.flatnonzero(~bad)
