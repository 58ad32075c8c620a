"""Append bytes to a file on a writer thread, behind the caller, with a bounded backlog.

Writing a prediction batch to a file is a copy into the page cache, the disk's writeback, and,
at the end, an ``fsync`` that waits for the device. Done on the dataflow's worker thread they add
to every batch; here one thread per file does them while the worker computes the next batch
(``write`` and ``fsync`` release the GIL).

The chunks are made on the caller's thread (a sink serializes its record batches there): that
copy lets a batch's pooled buffers go back to the pool at once, instead of staying leased while
the batch waits in the backlog.

What the caller can rely on:

- chunks reach the file in the order submitted, and nothing is lost: ``drain()`` returns once
  every submission before it is written and flushed to the OS, ``sync()`` once it is on the
  device; each submission is flushed whole, so a process that dies after it loses none of it;
- the backlog is bounded: ``submit`` waits while ``max_pending`` submissions are in flight, so a
  slow disk slows the dataflow down instead of growing memory;
- a failure is not silent: a failed write is raised on the caller's thread by the next
  ``submit``, ``drain``, ``sync`` or ``close``, naming the file, and by every call after it
  (the file has a gap from there on);
- every ``sync_every`` bytes the thread starts the device write (``fdatasync``) itself, so dirty
  pages stay bounded and the final ``sync()`` has little left to wait for.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "out.bin"
>>> with open(path, "wb") as f, BackgroundWriter(f, path) as writer:
...     writer.submit([b"hello ", b"world"])
...     writer.submit([b"!"])
...     writer.sync()
...     f.tell()
12
>>> path.read_bytes()
b'hello world!'
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Final, Self

from typing_extensions import Buffer

__all__ = ["BackgroundWriter"]

MAX_PENDING: Final = 2
"""Submissions in flight per file: one being written while the next waits hides the writes
behind the compute as well as 4 did (10 M ticks, W=16: 0.538 vs 0.527 s, medians of 7), and
holds at most ~3.4 MB per file (a prediction batch of 65,536 rows is ~1.7 MB)."""

SYNC_EVERY: Final = 8 << 20
"""Bytes between the writer's own ``fdatasync`` calls (8 MiB). With 64 MiB a 130 MB replay's
final ``fsync`` still waited 27 ms; 8 MiB leaves it a few (optimizations.md section 16)."""

_datasync: Callable[[int], None] = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync


class BackgroundWriter:
    """Write chunks to ``file`` (open for binary writing) on one background thread, in order.

    The writer does not close ``file``; ``close()`` (or leaving the ``with`` block) drains the
    backlog and stops the thread. Between ``drain()`` and the next ``submit``, ``file.tell()``
    is the end of everything submitted.
    """

    def __init__(
        self,
        file: BinaryIO,
        path: Path,
        *,
        max_pending: int = MAX_PENDING,
        sync_every: int = SYNC_EVERY,
    ) -> None:
        if max_pending < 1:
            raise ValueError(f"BackgroundWriter: max_pending is {max_pending}; expected >= 1")
        if sync_every < 1:
            raise ValueError(f"BackgroundWriter: sync_every is {sync_every}; expected >= 1")
        self._file = file
        self._path = path
        self._max_pending = max_pending
        self._sync_every = sync_every
        self._unsynced = 0  # touched by the writer thread only
        self._failed: BaseException | None = None
        self._pending: deque[Future[None]] = deque()
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"tickpool-writer-{path.name}")

    def submit(self, chunks: Iterable[Buffer]) -> None:
        """Append ``chunks`` on the thread, in order; first wait while ``max_pending`` are queued.

        The chunks must not change until they are written. One submission per batch of items:
        each costs a hand-over to the thread, some 10 us.
        """
        self._raise_if_failed()
        while len(self._pending) >= self._max_pending:
            self._wait(self._pending.popleft())
        self._pending.append(self._thread.submit(self._write, list(chunks)))

    def drain(self) -> None:
        """Return once every submission is written and flushed to the OS."""
        self._raise_if_failed()
        while self._pending:
            self._wait(self._pending.popleft())

    def sync(self) -> None:
        """Return once every submission is on the device (``fsync``)."""
        self.drain()
        try:
            os.fsync(self._file.fileno())
        except OSError as e:
            raise OSError(e.errno, f"{self._path}: fsync failed: {e.strerror}") from e

    def close(self) -> None:
        """Drain the backlog and stop the thread (the file stays open)."""
        try:
            self.drain()
        finally:
            self._thread.shutdown(wait=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _write(self, chunks: list[Buffer]) -> None:
        """On the writer thread: append and flush; every ``sync_every`` bytes also ``fdatasync``."""
        for chunk in chunks:
            self._unsynced += self._file.write(chunk)
        self._file.flush()
        if self._unsynced >= self._sync_every:
            _datasync(self._file.fileno())
            self._unsynced = 0

    def _wait(self, done: Future[None]) -> None:
        try:
            done.result()
        except OSError as e:
            self._failed = OSError(e.errno, f"{self._path}: write failed: {e.strerror}")
            raise self._failed from e
        except BaseException as e:
            self._failed = e
            raise

    def _raise_if_failed(self) -> None:
        if self._failed is not None:
            raise self._failed
