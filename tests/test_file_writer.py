"""The sinks' writer thread: bytes in order, a bounded backlog, failures raised, periodic syncs."""

from __future__ import annotations

import errno
import io
import threading
from concurrent.futures import Future
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tickpool.connectors import file_writer
from tickpool.connectors.file_writer import BackgroundWriter


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(st.binary(max_size=40), max_size=4), max_size=12), st.integers(1, 3))
def test_chunks_reach_the_file_in_order(submissions: list[list[bytes]], max_pending: int) -> None:
    f = io.BytesIO(b"head")
    f.seek(0, io.SEEK_END)
    with BackgroundWriter(f, Path("mem"), max_pending=max_pending) as writer:
        for chunks in submissions:
            writer.submit(chunks)
        writer.drain()
        assert f.getvalue() == b"head" + b"".join(b"".join(c) for c in submissions)
        assert f.tell() == len(f.getvalue())


class GatedFile(io.BytesIO):
    """A file whose writes wait until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    def write(self, data: object) -> int:
        assert self.gate.wait(timeout=30)
        return super().write(data)  # type: ignore[arg-type]


def test_submit_waits_while_the_backlog_is_full() -> None:
    f = GatedFile()
    writer = BackgroundWriter(f, Path("slow"), max_pending=2)
    writer.submit([b"a"])  # on the thread, held at the gate
    writer.submit([b"b"])  # queued: the backlog is full
    opener = threading.Timer(0.2, f.gate.set)
    opener.start()
    writer.submit([b"c"])  # must wait for "a", i.e. for the gate
    assert f.gate.is_set(), "a third submission went through with two in flight"
    opener.join()
    writer.close()
    assert f.getvalue() == b"abc"


def test_an_interrupt_while_waiting_is_not_a_write_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    f = GatedFile()
    writer = BackgroundWriter(f, Path("x"), max_pending=1)
    writer.submit([b"a"])
    real = Future.exception

    def interrupted(self: Future[None], timeout: float | None = None) -> BaseException | None:
        raise KeyboardInterrupt

    monkeypatch.setattr(Future, "exception", interrupted)
    with pytest.raises(KeyboardInterrupt):
        writer.submit([b"b"])  # waits for "a": Ctrl-C
    monkeypatch.setattr(Future, "exception", real)
    f.gate.set()
    writer.submit([b"b"])  # the interrupt was not recorded as a failure
    writer.close()
    assert f.getvalue() == b"ab"


class FullDisk(io.BytesIO):
    """Takes ``room`` bytes, then fails like a full disk."""

    def __init__(self, room: int = 0) -> None:
        super().__init__()
        self.room = room

    def write(self, data: object) -> int:
        n = memoryview(data).nbytes  # type: ignore[arg-type]
        if n > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= n
        return super().write(data)  # type: ignore[arg-type]


def test_a_failed_write_is_raised_on_the_caller_naming_the_file_and_every_call_after() -> None:
    f = FullDisk(room=3)
    writer = BackgroundWriter(f, Path("/data/predictions-0.arrows"), max_pending=3)
    for chunk in (b"abc", b"defg", b"h"):  # the second does not fit
        writer.submit([chunk])
    with pytest.raises(OSError, match=r"/data/predictions-0.arrows: write failed: No space left"):
        writer.drain()
    for call in (lambda: writer.submit([b"y"]), writer.drain, writer.sync, writer.close):
        with pytest.raises(OSError, match="No space left") as info:
            call()
        assert info.value.errno == errno.ENOSPC
    f.room = 100
    assert f.getvalue() == b"abc", "a write after the failed one would leave a gap in the file"


def test_the_thread_syncs_every_sync_every_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    monkeypatch.setattr(file_writer, "_datasync", synced.append)
    path = tmp_path / "out.bin"
    with open(path, "wb") as f, BackgroundWriter(f, path, sync_every=10) as writer:
        fd = f.fileno()
        for _ in range(7):
            writer.submit([b"abcd"])  # 28 bytes: a sync after bytes 12 and 24
    assert synced == [fd, fd]
    assert path.read_bytes() == b"abcd" * 7


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="max_pending is 0; expected >= 1"):
        BackgroundWriter(io.BytesIO(), Path("x"), max_pending=0)
    with pytest.raises(ValueError, match="sync_every is 0; expected >= 1"):
        BackgroundWriter(io.BytesIO(), Path("x"), sync_every=0)
