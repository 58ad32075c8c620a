"""Output sinks: Arrow IPC streams and JSON lines written exactly once by byte offset, and stdout.

The file sinks are Bytewax ``FixedPartitionedSink``s with one file per named partition. A
partition's state is its file's byte offset: ``snapshot()`` makes the bytes written so far durable
(``fsync``) and returns the offset, and a resumed partition truncates its file to that offset and
appends from there. After a crash and a restart with Bytewax recovery every item is in the file
exactly once. Items arrive keyed ``(partition name, value)``.

Items are encoded on the worker's thread and written by one writer thread per file
(``BackgroundWriter``), so the ``write`` and ``fsync`` of one batch overlap the computing of the
next; the backlog is bounded (a slow disk slows the flow, it does not grow memory), a snapshot
waits for it, and a failed write is raised on the worker's thread, naming the file.

Values for JSON lines are dicts, objects with ``to_dict()``, or ``pyarrow.RecordBatch``es (one
line per row: timestamps as int nanoseconds, dictionaries decoded, NaN and infinities as null).
"""

from __future__ import annotations

import os
import sys
from abc import abstractmethod
from collections.abc import Mapping
from contextlib import suppress
from decimal import Decimal
from pathlib import Path
from typing import Any, Final, Protocol, TypeAlias, TypeVar, runtime_checkable

import orjson
import pyarrow as pa
from bytewax.outputs import (
    DynamicSink,
    FixedPartitionedSink,
    StatefulSinkPartition,
    StatelessSinkPartition,
)
from typing_extensions import Buffer, override

from .file_writer import BackgroundWriter

__all__ = [
    "IPC_STREAM_EOS",
    "ArrowStreamSink",
    "JsonItem",
    "JsonLinesSink",
    "SinkError",
    "StdoutSink",
    "SupportsToDict",
    "json_lines",
    "unwrap_item",
]

IPC_STREAM_EOS: Final = b"\xff\xff\xff\xff\x00\x00\x00\x00"
"""Arrow IPC end-of-stream marker: continuation token and a zero metadata length."""

_JSON_OPTIONS: Final = orjson.OPT_APPEND_NEWLINE | orjson.OPT_SERIALIZE_NUMPY

V = TypeVar("V")


class SinkError(ValueError):
    """A sink cannot write what it was given, or cannot resume where its snapshot says."""


@runtime_checkable
class SupportsToDict(Protocol):
    """A record that knows its JSON-ready dict (``DeadLetter``, statistics records)."""

    def to_dict(self) -> Mapping[str, Any]:
        """The record as a JSON-ready mapping."""
        ...


JsonItem: TypeAlias = Mapping[str, Any] | SupportsToDict | pa.RecordBatch
"""What the JSON-lines sinks write: a dict, an object with ``to_dict()``, or a record batch."""


def unwrap_item(item: Any) -> Any:
    """The value of a keyed ``(str key, value)`` item, or the item itself if it is not keyed."""
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
        return item[1]
    return item


def _json_default(obj: Any) -> Any:
    if isinstance(obj, SupportsToDict):
        return obj.to_dict()
    if isinstance(obj, Decimal):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


def _column_values(array: pa.Array[Any]) -> list[Any]:
    """A column as Python values for JSON: timestamps and durations become int nanoseconds."""
    kind = array.type
    if pa.types.is_dictionary(kind):
        return _column_values(array.cast(kind.value_type))
    if pa.types.is_timestamp(kind):
        array = array.cast(pa.timestamp("ns", kind.tz)).cast(pa.int64())
    elif pa.types.is_duration(kind):
        array = array.cast(pa.duration("ns")).cast(pa.int64())
    return array.to_pylist()


def _batch_lines(batch: pa.RecordBatch) -> bytes:
    names = batch.schema.names
    columns = [_column_values(batch.column(i)) for i in range(batch.num_columns)]
    dumps = orjson.dumps
    return b"".join(
        dumps(dict(zip(names, row, strict=True)), default=_json_default, option=_JSON_OPTIONS)
        for row in zip(*columns, strict=True)
    )


def json_lines(value: JsonItem) -> bytes:
    """``value`` as JSON lines (orjson; NaN and infinities become null), newline-terminated."""
    if isinstance(value, pa.RecordBatch):
        return _batch_lines(value)
    if isinstance(value, Mapping):
        return orjson.dumps(value, default=_json_default, option=_JSON_OPTIONS)
    if isinstance(value, SupportsToDict):
        return orjson.dumps(value.to_dict(), default=_json_default, option=_JSON_OPTIONS)
    msg = (
        f"cannot write {type(value).__name__} as JSON lines: "
        "expected a dict, an object with to_dict(), or a pyarrow.RecordBatch"
    )
    raise TypeError(msg)


class _AppendFilePartition(StatefulSinkPartition[V, int]):
    """One file, appended to; the byte offset is the state, resuming truncates to it."""

    def __init__(self, path: Path, resume_state: int | None) -> None:
        offset = 0 if resume_state is None else resume_state
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(exist_ok=True)
        self.path = path
        self._f = open(path, "r+b")  # noqa: SIM115 (kept open; closed in close())
        size = self._f.seek(0, os.SEEK_END)
        if offset > size:
            self._f.close()
            msg = (
                f"{path}: cannot resume at byte {offset}: the file has only {size} bytes "
                "(was it replaced or cut since the snapshot?)"
            )
            raise SinkError(msg)
        self._f.seek(offset)
        self._f.truncate()
        self._writer = BackgroundWriter(self._f, path)

    @abstractmethod
    def _encode(self, values: list[V]) -> list[Buffer]:
        """The bytes that record ``values``, made on the worker's thread (errors raise there)."""

    @override
    def write_batch(self, values: list[V]) -> None:
        self._writer.submit(self._encode(values))

    @override
    def snapshot(self) -> int:
        self._writer.sync()
        return self._f.tell()

    def _finish(self, trailer: bytes = b"") -> None:
        try:
            if trailer:
                self._writer.submit([trailer])
            self._writer.sync()
        except BaseException:
            self._abandon()
            raise
        self._writer.close()
        self._f.close()

    def _abandon(self) -> None:
        """Stop the writer thread and close the file under an error that must stay the one raised.

        After a failed write, closing fails again (the file's buffer still holds what could not
        be written): that second error would replace the first, which names the file and step.
        """
        with suppress(OSError):
            self._writer.close()
        with suppress(OSError):
            self._f.close()

    @override
    def close(self) -> None:
        self._finish()


class _NamedPartitionsSink(FixedPartitionedSink[V, int]):
    """Partitions are the names given; an item's key is the name of its partition."""

    def __init__(self, partitions: list[str]) -> None:
        if not partitions or len(set(partitions)) != len(partitions):
            msg = f"partitions must be distinct names, at least one, got {partitions!r}"
            raise ValueError(msg)
        self._partitions = list(partitions)
        # Bytewax indexes part_fn's result into the partitions *sorted*, not as listed.
        self._index = {name: i for i, name in enumerate(sorted(partitions))}

    @override
    def list_parts(self) -> list[str]:
        return list(self._partitions)

    @override
    def part_fn(self, item_key: str) -> int:
        try:
            return self._index[item_key]
        except KeyError:
            msg = (
                f"{type(self).__name__}: item key {item_key!r} is not one of its partitions "
                f"{self._partitions!r} (items must be keyed by partition name)"
            )
            raise SinkError(msg) from None


def _has_dictionary(kind: pa.DataType) -> bool:
    return pa.types.is_dictionary(kind) or any(
        _has_dictionary(kind.field(i).type) for i in range(kind.num_fields)
    )


class _ArrowStreamPartition(_AppendFilePartition[pa.RecordBatch]):
    def __init__(
        self, path: Path, resume_state: int | None, schema: pa.Schema, partition: str
    ) -> None:
        super().__init__(path, resume_state)
        self._schema = schema
        self._partition = partition
        if self._f.tell() == 0:
            self._writer.submit([schema.serialize()])
        else:
            self._check_resumed_schema()

    def _check_resumed_schema(self) -> None:
        where = f"ArrowStreamSink partition {self._partition!r} ({self.path})"
        try:
            with pa.memory_map(str(self.path), "r") as source:
                found = pa.ipc.open_stream(source).schema
        except pa.ArrowInvalid as e:
            self._abandon()
            msg = f"{where}: the file to resume does not start with an Arrow IPC stream: {e}"
            raise SinkError(msg) from e
        if not found.equals(self._schema):
            self._abandon()
            msg = (
                f"{where}: the file to resume has another schema\n"
                f"expected:\n{_show(self._schema)}\nfound:\n{_show(found)}"
            )
            raise SinkError(msg)

    @override
    def _encode(self, values: list[pa.RecordBatch]) -> list[Buffer]:
        for batch in values:
            self._check(batch)
        # A copy made here, not on the writer thread: the batch's pooled buffers return to the
        # pool now instead of staying leased in the backlog (final stats would count them).
        return [batch.serialize() for batch in values]

    def _check(self, batch: pa.RecordBatch) -> None:
        schema = self._schema
        found = batch.schema
        problem = ""
        if found.names != schema.names or not all(
            f.type.equals(e.type) for f, e in zip(found, schema, strict=True)
        ):
            problem = "schema does not match"
        else:
            nulls = [
                e.name
                for e, column in zip(schema, batch.columns, strict=True)
                if not e.nullable and column.null_count
            ]
            if nulls:
                problem = f"has nulls in non-nullable columns {nulls}"
        if problem:
            msg = (
                f"ArrowStreamSink partition {self._partition!r} ({self.path}): record batch "
                f"{problem}\nexpected:\n{_show(schema)}\nfound:\n{_show(found)}"
            )
            raise SinkError(msg)

    @override
    def close(self) -> None:
        self._finish(IPC_STREAM_EOS)


def _show(schema: pa.Schema) -> str:
    return schema.to_string(show_schema_metadata=False)


class ArrowStreamSink(_NamedPartitionsSink[pa.RecordBatch]):
    """Write record batches to ``directory/{prefix}-{partition}.arrows`` as Arrow IPC streams.

    Each file is the schema message, then one message per batch (append-only bytes), and the
    end-of-stream marker when the dataflow completes. Snapshots are byte offsets between
    messages, so a resumed file (truncated to the snapshot, the marker with it) stays a valid
    stream: ``pa.ipc.open_stream(path).read_all()`` reads it, even after a crash.

    Values must have ``schema``'s names and types in order (metadata and field nullability may
    differ, but a non-nullable field must have no nulls); anything else is a ``SinkError``
    naming the partition and both schemas. Dictionary columns are not supported (they would
    need dictionary messages): decode them first.

    Args:
        directory: where the files go (created if missing).
        partitions: the partition names; items are keyed by these names.
        schema: the schema of every batch.
        prefix: file name prefix.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        partitions: list[str],
        schema: pa.Schema,
        prefix: str = "predictions",
    ) -> None:
        super().__init__(partitions)
        dictionaries = [f.name for f in schema if _has_dictionary(f.type)]
        if dictionaries:
            msg = (
                f"ArrowStreamSink cannot write dictionary columns {dictionaries}: "
                "cast them to their value type (e.g. pa.string()) first"
            )
            raise SinkError(msg)
        self._directory = Path(directory)
        self._schema = schema
        self._prefix = prefix

    def path(self, partition: str) -> Path:
        """The file of ``partition``."""
        return self._directory / f"{self._prefix}-{partition}.arrows"

    @override
    def build_part(
        self, step_id: str, for_part: str, resume_state: int | None
    ) -> _ArrowStreamPartition:
        return _ArrowStreamPartition(self.path(for_part), resume_state, self._schema, for_part)


class _JsonLinesPartition(_AppendFilePartition[JsonItem]):
    @override
    def _encode(self, values: list[JsonItem]) -> list[Buffer]:
        return [b"".join(json_lines(value) for value in values)]


class JsonLinesSink(_NamedPartitionsSink[JsonItem]):
    """Write dicts, ``to_dict()`` records or record batches as JSON lines (orjson), exactly once.

    ``path_or_dir`` is a directory (existing, or written with a trailing slash): one file
    ``{prefix}-{partition}.jsonl`` per partition in it. Otherwise it is a file path: with one
    partition exactly that file (``--stats stats.jsonl``), with several ``{stem}-{partition}
    {suffix}`` beside it. NaN and infinities become null; record batch timestamps are int ns.

    Args:
        path_or_dir: the file, or the directory, to write.
        partitions: the partition names; items are keyed by these names.
        prefix: file name prefix in a directory.
    """

    def __init__(
        self,
        path_or_dir: str | os.PathLike[str],
        partitions: list[str],
        prefix: str = "predictions",
    ) -> None:
        super().__init__(partitions)
        given = os.fspath(path_or_dir)
        base = Path(given)
        if base.is_dir() or given.endswith(("/", os.sep)):
            self._paths = {p: base / f"{prefix}-{p}.jsonl" for p in partitions}
        elif len(partitions) == 1:
            self._paths = {partitions[0]: base}
        else:
            self._paths = {p: base.with_name(f"{base.stem}-{p}{base.suffix}") for p in partitions}

    def path(self, partition: str) -> Path:
        """The file of ``partition``."""
        return self._paths[partition]

    @override
    def build_part(
        self, step_id: str, for_part: str, resume_state: int | None
    ) -> _JsonLinesPartition:
        return _JsonLinesPartition(self.path(for_part), resume_state)


class _StdoutPartition(StatelessSinkPartition[Any]):
    @override
    def write_batch(self, items: list[Any]) -> None:
        data = b"".join(json_lines(unwrap_item(item)) for item in items)
        out = sys.stdout
        buffer = getattr(out, "buffer", None)
        if buffer is not None:
            buffer.write(data)  # one write: lines of concurrent workers do not interleave
        else:
            out.write(data.decode())
        out.flush()


class StdoutSink(DynamicSink[Any]):
    """Write items as JSON lines to standard output (``--out -``); at-least-once, no state.

    Items are what ``JsonLinesSink`` writes, keyed ``(str, value)`` or not (the key is dropped).
    """

    @override
    def build(self, step_id: str, worker_index: int, worker_count: int) -> _StdoutPartition:
        return _StdoutPartition()
