"""The replay flow as a Bytewax cluster: two processes of two workers, via ``bytewax.run``."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from tests.test_cli import assert_same_predictions, numpy_reference, predictions, read_table
from tickpool.pipeline.cli import main


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def test_two_processes_of_two_workers_give_the_single_process_predictions(
    tmp_path: Path,
) -> None:
    ticks = tmp_path / "ticks.arrow"
    assert main(["generate", str(ticks), "--ticks", "30000", "--symbols", "6"]) == 0
    out = tmp_path / "out"
    config = tmp_path / "run.toml"
    config.write_text(f'sources = ["{ticks}"]\nout = "{out}"\nwindow = 24\nshards = 4\n')
    addresses = ";".join(f"127.0.0.1:{p}" for p in free_ports(2))
    flow = f"tickpool.pipeline.flow:from_toml({str(config)!r})"
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "bytewax.run", flow, "-w", "2", "-i", str(i), "-a", addresses],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    logs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    want = numpy_reference(read_table(ticks), window=24)
    assert_same_predictions(predictions(out), want)
