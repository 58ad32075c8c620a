"""Replay Arrow IPC files, Arrow IPC streams and Parquet files as ``TickBatch`` items.

``ArrowReplaySource`` is a Bytewax source with one partition per file. A partition is its
position, ``(batch index, row offset)`` of the next rows to emit: ``snapshot()`` returns it and
resuming seeks there. ``iter_tick_batches`` reads one file the same way without Bytewax, and
``count_rows`` counts rows cheaply for progress bars.

Formats are recognised by their first bytes, not their names:

- Arrow IPC **file** (``ARROW1``, usually ``.arrow``/``.feather``): memory-mapped and read with
  ``get_batch(i)``, so batches are views of the mapped file (no copy) and resuming is a seek.
- Arrow IPC **stream** (continuation marker ``0xFFFFFFFF``, usually ``.arrows``): read from a
  memory map, so batches are views too; resuming reads past the earlier batches (cheap: no copy).
- **Parquet** (``PAR1``): decoded row group by row group, so *not* zero-copy. A Parquet "batch"
  is a row group; it is emitted in pieces of at most 65,536 rows, and resuming decodes only the
  row group it resumes in.
"""

from __future__ import annotations

import glob
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Final, NamedTuple, TypeAlias

import pyarrow as pa
import pyarrow.parquet as pq
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from typing_extensions import override

from tickpool.operators.items import TickBatch

__all__ = [
    "ArrowReplaySource",
    "PathsLike",
    "ReplayPosition",
    "TickSourceError",
    "count_rows",
    "expand_paths",
    "file_schema",
    "iter_tick_batches",
]

ReplayPosition: TypeAlias = tuple[int, int]
"""``(batch index, row offset within that batch)`` of the next rows a partition emits."""

PathsLike: TypeAlias = str | os.PathLike[str] | Iterable[str | os.PathLike[str]]
"""One path or glob pattern, or several."""

_IPC_FILE_MAGIC: Final = b"ARROW1"
_IPC_STREAM_MAGIC: Final = b"\xff\xff\xff\xff"
_PARQUET_MAGIC: Final = b"PAR1"
_PARQUET_CHUNK_ROWS: Final = 65_536
_ARROW_ERRORS: Final = (pa.ArrowException, OSError)
_TS_UNIT_NS: Final = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}
_START: Final[ReplayPosition] = (0, 0)


class TickSourceError(ValueError):
    """A tick file cannot be read: missing, not Arrow or Parquet, empty, truncated or corrupt.

    Attributes:
        path: the file (or the pattern that matched nothing).
        batch: the batch index being read, or None when the error is not about one batch.
    """

    def __init__(self, message: str, path: str, batch: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.batch = batch

    def __reduce__(self) -> tuple[type[TickSourceError], tuple[str, str, int | None]]:
        return type(self), (str(self), self.path, self.batch)


def expand_paths(paths: PathsLike) -> list[str]:
    """The files ``paths`` names: globs expanded, sorted, duplicates (after normpath) dropped.

    Raises:
        TickSourceError: a pattern matches no file, or a plain path is missing or a directory.
    """
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    found: set[str] = set()
    for entry in paths:
        given = os.fspath(entry)
        if any(c in given for c in "*?["):
            matches = [m for m in glob.glob(given, recursive=True) if os.path.isfile(m)]
            if not matches:
                raise TickSourceError(f"no file matches {given!r}", given)
            found.update(os.path.normpath(m) for m in matches)
        elif os.path.isdir(given):
            msg = f"{given} is a directory, expected a file (or a pattern like {given!r}/*.arrow)"
            raise TickSourceError(msg, given)
        elif not os.path.exists(given):
            raise TickSourceError(f"{given}: no such file", given)
        else:
            found.add(os.path.normpath(given))
    return sorted(found)


class _Chunk(NamedTuple):
    """Rows of one file batch, from ``row_offset``; the batch has ``batch_rows`` rows in all."""

    batch_index: int
    row_offset: int
    batch: pa.RecordBatch
    batch_rows: int


def _read_error(path: str, index: int, exc: BaseException) -> TickSourceError:
    msg = f"{path}, batch {index}: truncated or corrupt ({type(exc).__name__}: {exc})"
    return TickSourceError(msg, path, index)


def _resume_error(path: str, start: ReplayPosition, found: str) -> TickSourceError:
    index, row = start
    msg = (
        f"{path}: cannot resume at batch {index}, row {row}: {found} "
        "(was the file replaced since the snapshot?)"
    )
    return TickSourceError(msg, path, index)


class _Reader(ABC):
    """One open file's batches, read in order from a position (one pass per reader)."""

    def __init__(self, path: str) -> None:
        self.path = path

    @property
    @abstractmethod
    def schema(self) -> pa.Schema:
        """The file's schema."""

    @abstractmethod
    def chunks(self, start: ReplayPosition) -> Iterator[_Chunk]:
        """The rows from ``start`` on, in file order (views where the format allows)."""

    @abstractmethod
    def count_rows(self) -> int:
        """Rows in the whole file, from metadata where the format has it."""

    @abstractmethod
    def close(self) -> None:
        """Release the file (batches already read stay valid)."""


def _start_chunk(path: str, start: ReplayPosition, batch: pa.RecordBatch) -> _Chunk:
    index, row = start
    if row > batch.num_rows:
        raise _resume_error(path, start, f"batch {index} has only {batch.num_rows} rows")
    return _Chunk(index, row, batch.slice(row) if row else batch, batch.num_rows)


class _MappedIpcReader(_Reader):
    """An Arrow IPC file or stream on a memory map; subclasses open ``self._reader`` on it."""

    _reader: pa.ipc.RecordBatchFileReader | pa.ipc.RecordBatchStreamReader

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self._map = pa.memory_map(path, "r")

    @property
    @override
    def schema(self) -> pa.Schema:
        return self._reader.schema

    @override
    def close(self) -> None:
        # The reader holds views of the map (footer, schema): drop it first, or the file
        # stays mapped until the garbage collector finds this object.
        del self._reader
        self._map.close()


class _IpcFileReader(_MappedIpcReader):
    """Arrow IPC file: memory map + footer, so ``get_batch(i)`` is a seek and a view."""

    _reader: pa.ipc.RecordBatchFileReader

    def __init__(self, path: str) -> None:
        super().__init__(path)
        try:
            self._reader = pa.ipc.open_file(self._map)
        except _ARROW_ERRORS as exc:
            error = self._diagnose_unreadable(exc)
            self._map.close()
            raise error from exc

    def _diagnose_unreadable(self, exc: BaseException) -> TickSourceError:
        """Find the batch where a file without a readable footer (cut short) breaks off.

        An IPC file is ``ARROW1`` + padding, the stream format, then the footer, so reading the
        stream part says how many batches are whole and which one was cut.
        """
        complete = 0
        broken: BaseException | None = None
        try:
            self._map.seek(8)
            stream = pa.ipc.open_stream(self._map)
            while True:
                stream.read_next_batch()
                complete += 1
        except StopIteration:
            pass
        except _ARROW_ERRORS as stream_exc:
            broken = stream_exc
        where = (
            f"batch {complete} is cut short ({broken})"
            if broken is not None
            else f"the file ends after batch {complete - 1}"
        )
        msg = (
            f"{self.path}, batch {complete}: truncated or corrupt Arrow IPC file: no readable "
            f"footer ({type(exc).__name__}: {exc}); {complete} batches are whole, {where}"
        )
        return TickSourceError(msg, self.path, complete)

    @override
    def chunks(self, start: ReplayPosition) -> Iterator[_Chunk]:
        index = start[0]
        count = self._reader.num_record_batches
        if index > count or (index == count and start[1] > 0):
            raise _resume_error(self.path, start, f"the file has {count} batches")
        for i in range(index, count):
            try:
                batch = self._reader.get_batch(i)
            except _ARROW_ERRORS as exc:
                raise _read_error(self.path, i, exc) from exc
            if i == index:
                yield _start_chunk(self.path, start, batch)
            else:
                yield _Chunk(i, 0, batch, batch.num_rows)

    @override
    def count_rows(self) -> int:
        reader = self._reader
        if hasattr(reader, "count_rows"):  # pyarrow >= 16: from the batches' metadata alone
            return int(reader.count_rows())
        return sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))


class _IpcStreamReader(_MappedIpcReader):
    """Arrow IPC stream on a memory map: batches are views; resuming reads past earlier ones."""

    _reader: pa.ipc.RecordBatchStreamReader

    def __init__(self, path: str) -> None:
        super().__init__(path)
        try:
            self._reader = pa.ipc.open_stream(self._map)
        except _ARROW_ERRORS as exc:
            self._map.close()
            msg = f"{self.path}: unreadable Arrow IPC stream schema ({type(exc).__name__}: {exc})"
            raise TickSourceError(msg, path) from exc

    @override
    def chunks(self, start: ReplayPosition) -> Iterator[_Chunk]:
        index = 0
        while True:
            try:
                batch = self._reader.read_next_batch()
            except StopIteration:
                break
            except _ARROW_ERRORS as exc:
                raise _read_error(self.path, index, exc) from exc
            if index == start[0]:
                yield _start_chunk(self.path, start, batch)
            elif index > start[0]:
                yield _Chunk(index, 0, batch, batch.num_rows)
            index += 1
        if start[0] > index or (start[0] == index and start[1] > 0):
            raise _resume_error(self.path, start, f"the stream has {index} batches")

    @override
    def count_rows(self) -> int:
        return sum(chunk.batch.num_rows for chunk in self.chunks(_START))


class _ParquetReader(_Reader):
    """Parquet, decoded (a copy) row group by row group; batch index = row group index."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        try:
            self._file = pq.ParquetFile(path, memory_map=True)
        except _ARROW_ERRORS as exc:
            msg = f"{self.path}: truncated or corrupt Parquet file ({type(exc).__name__}: {exc})"
            raise TickSourceError(msg, path) from exc

    @property
    @override
    def schema(self) -> pa.Schema:
        return self._file.schema_arrow

    @override
    def chunks(self, start: ReplayPosition) -> Iterator[_Chunk]:
        meta = self._file.metadata
        count = meta.num_row_groups
        if start[0] > count or (start[0] == count and start[1] > 0):
            raise _resume_error(self.path, start, f"the file has {count} row groups")
        for group in range(start[0], count):
            rows = meta.row_group(group).num_rows
            skip = start[1] if group == start[0] else 0
            if skip > rows:
                raise _resume_error(self.path, start, f"row group {group} has only {rows} rows")
            batches = self._file.iter_batches(
                batch_size=_PARQUET_CHUNK_ROWS, row_groups=[group], use_threads=False
            )
            offset = 0
            while True:
                try:
                    batch = next(batches)
                except StopIteration:
                    break
                except _ARROW_ERRORS as exc:
                    raise _read_error(self.path, group, exc) from exc
                end = offset + batch.num_rows
                if end > skip:
                    cut = max(skip - offset, 0)
                    yield _Chunk(group, offset + cut, batch.slice(cut) if cut else batch, rows)
                offset = end

    @override
    def count_rows(self) -> int:
        return int(self._file.metadata.num_rows)

    @override
    def close(self) -> None:
        self._file.close()


def _open_reader(path: str) -> _Reader:
    """Open ``path`` with the reader its first bytes call for."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise TickSourceError(f"{path}: cannot open ({exc.strerror or exc})", path) from exc
    if not head:
        msg = f"{path} is empty (0 bytes), expected an Arrow IPC file or stream, or Parquet"
        raise TickSourceError(msg, path)
    if head.startswith(_IPC_FILE_MAGIC):
        return _IpcFileReader(path)
    if head.startswith(_IPC_STREAM_MAGIC):
        return _IpcStreamReader(path)
    if head.startswith(_PARQUET_MAGIC):
        return _ParquetReader(path)
    msg = f"{path} is not an Arrow IPC file or stream, nor Parquet (first bytes {head!r})"
    raise TickSourceError(msg, path)


def _pieces(
    reader: _Reader, start: ReplayPosition, max_batch_rows: int | None
) -> Iterator[tuple[TickBatch, ReplayPosition]]:
    """Each piece to emit (slices of at most ``max_batch_rows``) and the position after it."""
    for chunk in reader.chunks(start):
        rows = chunk.batch.num_rows
        step = rows if max_batch_rows is None else max_batch_rows
        for cut in range(0, rows, step):
            piece = chunk.batch if step >= rows else chunk.batch.slice(cut, step)
            end = chunk.row_offset + cut + piece.num_rows
            index = chunk.batch_index
            after = (index, end) if end < chunk.batch_rows else (index + 1, 0)
            yield TickBatch(piece, reader.path, index, chunk.row_offset + cut), after


def _check_max_batch_rows(max_batch_rows: int | None) -> None:
    if max_batch_rows is not None and max_batch_rows < 1:
        raise ValueError(f"max_batch_rows must be None or >= 1, got {max_batch_rows}")


def iter_tick_batches(
    path: str | os.PathLike[str], *, max_batch_rows: int | None = None
) -> Iterator[TickBatch]:
    """Read one file (IPC file, IPC stream or Parquet) as ``TickBatch``es, outside Bytewax.

    The same reader as ``ArrowReplaySource``: IPC batches are views of the memory-mapped file;
    with ``max_batch_rows`` larger batches come as zero-copy slices.

    Raises:
        TickSourceError: the file is missing, not Arrow or Parquet, empty, truncated or corrupt.
    """
    _check_max_batch_rows(max_batch_rows)
    reader = _open_reader(os.fspath(path))
    try:
        for piece, _after in _pieces(reader, _START, max_batch_rows):
            yield piece
    finally:
        reader.close()


def file_schema(path: str | os.PathLike[str]) -> pa.Schema:
    """The schema of one tick file (IPC file, IPC stream or Parquet), read without its data.

    Raises:
        TickSourceError: the file is missing, not Arrow or Parquet, empty or unreadable.
    """
    reader = _open_reader(os.fspath(path))
    try:
        return reader.schema
    finally:
        reader.close()


def count_rows(paths: PathsLike) -> int:
    """Total rows in the files ``paths`` names (globs allowed), for progress bars.

    Cheap for IPC files (footer and batch headers) and Parquet (metadata); IPC streams are read
    through (from a memory map, so without copying).
    """
    total = 0
    for path in expand_paths(paths):
        reader = _open_reader(path)
        try:
            total += reader.count_rows()
        finally:
            reader.close()
    return total


def _first_ts_ns(piece: TickBatch, column: str) -> int | None:
    """The piece's first ``column`` value in nanoseconds (None if null)."""
    array = piece.batch.column(column)
    scalar = array[0]
    if not scalar.is_valid:
        return None
    if pa.types.is_timestamp(array.type):
        return int(scalar.value) * _TS_UNIT_NS[array.type.unit]
    return int(scalar.as_py())


class _Pacer:
    """When each piece is due at ``speed`` x market time; the run starts at its first piece."""

    def __init__(self, speed: float, column: str) -> None:
        self._speed = speed
        self._column = column
        self._start_wall: datetime | None = None
        self._start_ts: int | None = None

    def due(self, piece: TickBatch) -> datetime:
        if self._start_wall is None:
            self._start_wall = datetime.now(UTC)
        ts = _first_ts_ns(piece, self._column)
        if ts is None:
            return self._start_wall
        if self._start_ts is None:
            self._start_ts = ts
        delay_ns = (ts - self._start_ts) / self._speed
        return self._start_wall + timedelta(microseconds=delay_ns / 1_000)


def _check_pacing_column(reader: _Reader, column: str) -> None:
    schema = reader.schema
    index = schema.get_field_index(column)
    if index < 0:
        msg = f"{reader.path}: no column {column!r} to pace the replay by (columns: {schema.names})"
        raise TickSourceError(msg, reader.path)
    found = schema.field(index).type
    if not (pa.types.is_timestamp(found) or pa.types.is_int64(found)):
        msg = (
            f"{reader.path}: column {column!r} is {found}, "
            "expected timestamp[s|ms|us|ns] or int64 nanoseconds to pace the replay by"
        )
        raise TickSourceError(msg, reader.path)


class _ArrowFilePartition(StatefulSourcePartition[TickBatch, ReplayPosition]):
    """One file; the position of the next piece to emit is the whole state."""

    def __init__(
        self,
        path: str,
        resume_state: ReplayPosition | None,
        max_batch_rows: int | None,
        speed: float,
        ts_column: str,
    ) -> None:
        self._position = _START if resume_state is None else resume_state
        self._reader = _open_reader(path)
        self._pacer: _Pacer | None = None
        if speed > 0:
            try:
                _check_pacing_column(self._reader, ts_column)
            except TickSourceError:
                self._reader.close()
                raise
            self._pacer = _Pacer(speed, ts_column)
        self._pieces = _pieces(self._reader, self._position, max_batch_rows)
        self._pending: tuple[TickBatch, ReplayPosition] | None = None

    def _peek(self) -> tuple[TickBatch, ReplayPosition] | None:
        if self._pending is None:
            self._pending = next(self._pieces, None)
        return self._pending

    @override
    def next_batch(self) -> list[TickBatch]:
        pending = self._peek()
        if pending is None:
            raise StopIteration
        piece, after = pending
        if self._pacer is not None and self._pacer.due(piece) > datetime.now(UTC):
            return []
        self._pending = None
        self._position = after
        return [piece]

    @override
    def next_awake(self) -> datetime | None:
        if self._pacer is None:
            return None
        pending = self._peek()
        return None if pending is None else self._pacer.due(pending[0])

    @override
    def snapshot(self) -> ReplayPosition:
        return self._position

    @override
    def close(self) -> None:
        self._reader.close()


class ArrowReplaySource(FixedPartitionedSource[TickBatch, ReplayPosition]):
    """Replay tick files (Arrow IPC file or stream, or Parquet) as ``TickBatch`` items.

    Each file is one partition (key: its path, globs expanded, sorted, deduplicated), so files
    spread over workers. Snapshots are ``(batch index, row offset)``; a resumed partition emits
    exactly the rows after the snapshot. IPC batches are views of the memory-mapped file;
    Parquet is decoded (a copy).

    Args:
        paths: files and/or glob patterns.
        max_batch_rows: cut larger batches into zero-copy slices of at most this many rows
            (each a ``TickBatch`` with the file batch's ``index`` and its ``row_offset``).
        speed: 0 replays as fast as possible; ``S > 0`` replays at S times market speed by the
            ``ts_column`` (a piece is due when its first ts minus the run's first ts, divided by
            S, has elapsed since the run's first piece).
        ts_column: the timestamp column used for pacing (timestamp[*] or int64 nanoseconds).

    Raises:
        TickSourceError: from ``list_parts`` (a missing file, a pattern matching nothing),
            ``build_part`` (not Arrow or Parquet, empty, no footer, no pacing column) or while
            reading (a truncated or corrupt batch); it names the file and the batch.
    """

    def __init__(
        self,
        paths: PathsLike,
        *,
        max_batch_rows: int | None = None,
        speed: float = 0.0,
        ts_column: str = "ts",
    ) -> None:
        _check_max_batch_rows(max_batch_rows)
        if not speed >= 0.0 or speed == float("inf"):
            msg = f"speed must be 0 (as fast as possible) or a finite S > 0, got {speed}"
            raise ValueError(msg)
        self._paths = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
        self._max_batch_rows = max_batch_rows
        self._speed = speed
        self._ts_column = ts_column

    @override
    def list_parts(self) -> list[str]:
        return expand_paths(self._paths)

    @override
    def build_part(
        self, step_id: str, for_part: str, resume_state: ReplayPosition | None
    ) -> _ArrowFilePartition:
        return _ArrowFilePartition(
            for_part, resume_state, self._max_batch_rows, self._speed, self._ts_column
        )
