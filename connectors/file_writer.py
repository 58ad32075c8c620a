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
- a failure is not silent: after a failed ``write`` or ``fdatasync`` the thread writes nothing
  more (the file would have a gap), and the error, naming the file, is raised on the caller's
  thread by the next call that waits for the thread (``submit`` with a full backlog,
  ``drain``, ``sync``, ``close``) and by every call after it; an interrupt (Ctrl-C) while the
  caller waits is raised as it is and is not taken for a failure;
- every ``sync_every`` bytes the thread waits for the device itself (``fdatasync``), so dirty
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
behind the compute as well as 4 did (10 M ticks, W=16: 0.538 vs 0.527 s, medians of 7). With the
batch being submitted, about 5 MB per file at most (a 65,536-row prediction batch is ~1.7 MB)."""

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
        self._thread_error: OSError | None = None  # set by the writer thread only
        self._failed: OSError | None = None  # set by the caller's thread only
        self._pending: deque[Future[None]] = deque()
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"tickpool-writer-{path.name}")

    def submit(self, chunks: Iterable[Buffer]) -> None:
        """Append ``chunks`` on the thread, in order; first wait while ``max_pending`` are queued.

        The chunks must not change until they are written. One submission per batch of items:
        each costs a hand-over to the thread, some 10 us.
        """
        self._raise_if_failed()
        while len(self._pending) >= self._max_pending:
            self._wait_oldest()
        self._pending.append(self._thread.submit(self._write, list(chunks)))

    def drain(self) -> None:
        """Return once every submission is written and flushed to the OS."""
        self._raise_if_failed()
        while self._pending:
            self._wait_oldest()

    def sync(self) -> None:
        """Return once every submission is on the device (``fsync``)."""
        self.drain()
        try:
            os.fsync(self._file.fileno())
        except OSError as e:
            raise _failure(self._path, "fsync", e) from e

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
        """On the writer thread: append and flush; every ``sync_every`` bytes also ``fdatasync``.

        After one failure it only raises that failure again: nothing lands after a gap.
        """
        if self._thread_error is not None:
            raise self._thread_error
        step = "write"
        try:
            for chunk in chunks:
                self._unsynced += self._file.write(chunk)
            self._file.flush()
            if self._unsynced >= self._sync_every:
                step = "fdatasync"
                _datasync(self._file.fileno())
                self._unsynced = 0
        except Exception as e:  # an OSError, or a chunk that is not bytes-like
            self._thread_error = _failure(self._path, step, e)
            raise self._thread_error from e

    def _wait_oldest(self) -> None:
        """Wait for the oldest submission; it leaves the backlog only once it is written."""
        done = self._pending[0]
        error = done.exception()  # an interrupt here propagates and leaves the backlog as it is
        self._pending.popleft()
        if error is None:
            return
        self._failed = error if isinstance(error, OSError) else _failure(self._path, "write", error)
        raise self._failed

    def _raise_if_failed(self) -> None:
        if self._failed is not None:
            raise self._failed


def _failure(path: Path, step: str, error: BaseException) -> OSError:
    """An ``OSError`` naming the file and the step, keeping the cause's errno if it has one."""
    if isinstance(error, OSError) and error.errno is not None:
        return OSError(error.errno, f"{path}: {step} failed: {error.strerror}")
    return OSError(f"{path}: {step} failed: {error}")
