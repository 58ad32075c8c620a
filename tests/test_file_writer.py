"""The sinks' writer thread: bytes in order, a bounded backlog, failures raised, periodic syncs."""

from __future__ import annotations

import errno
import io
import threading
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
    writer.submit([b"a"])  # on the thread, blocked at the gate
    writer.submit([b"b"])  # queued: the backlog is full
    third = threading.Thread(target=writer.submit, args=([b"c"],))
    third.start()
    third.join(timeout=0.3)
    assert third.is_alive(), "a third submission went through with two in flight"
    f.gate.set()
    third.join(timeout=30)
    writer.close()
    assert f.getvalue() == b"abc"


class FullDisk(io.BytesIO):
    def write(self, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_failed_write_is_raised_on_the_caller_naming_the_file_and_every_call_after() -> None:
    writer = BackgroundWriter(FullDisk(), Path("/data/predictions-0.arrows"))
    writer.submit([b"x" * 10])
    with pytest.raises(OSError, match=r"/data/predictions-0.arrows: write failed: No space left"):
        writer.drain()
    for call in (lambda: writer.submit([b"y"]), writer.drain, writer.sync, writer.close):
        with pytest.raises(OSError, match="No space left") as info:
            call()
        assert info.value.errno == errno.ENOSPC


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
