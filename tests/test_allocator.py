"""keep_freed_memory: a batch's large temporaries reuse freed memory instead of new pages."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tickpool.connectors.synthetic import write_ticks
from tickpool.pipeline import allocator, cli
from tickpool.pipeline.allocator import keep_freed_memory
from tickpool.pipeline.flow import from_toml

# Three 1 MiB temporaries per "batch", freed together: the pattern of a 65,536-row batch
# (argsort's order, the symbol column's bytes, ...). Minor page faults over 50 batches.
_BATCHES = textwrap.dedent(
    """
    import resource, sys
    import numpy as np
    from tickpool.pipeline.allocator import keep_freed_memory

    if sys.argv[1] == "kept":
        assert keep_freed_memory()

    def batch():
        a, b, c = np.ones(1 << 17), np.ones(1 << 17), np.ones(1 << 17)
        del a, b, c

    for _ in range(5):
        batch()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(50):
        batch()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)

GLIBC = platform.libc_ver()[0] == "glibc"


def _faults(mode: str) -> int:
    run = subprocess.run(
        [sys.executable, "-c", _BATCHES, mode], capture_output=True, text=True, check=True
    )
    return int(run.stdout)


@pytest.mark.skipif(not GLIBC, reason="mallopt thresholds are glibc's")
def test_freed_batch_temporaries_are_reused_without_page_faults() -> None:
    # Without it glibc gives the freed megabytes back and faults them in again every batch
    # (about 256 faults per MiB); with it the same batches cost no new pages at all.
    default, kept = _faults("default"), _faults("kept")
    assert default > 50 * 256  # the problem is real on this libc
    assert kept < 50


def test_keep_freed_memory_says_whether_libc_took_it() -> None:
    # In a child: the settings are process-wide, and this process's are not the test's to change.
    code = "from tickpool.pipeline.allocator import keep_freed_memory; print(keep_freed_memory())"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == str(GLIBC)


@pytest.mark.parametrize("value", [-1, 4 << 30])
def test_thresholds_outside_a_c_int_are_refused_not_wrapped(value: int) -> None:
    with pytest.raises(ValueError, match=r"trim_threshold is .*expected bytes in"):
        keep_freed_memory(trim_threshold=value)


def test_every_job_and_the_cluster_entry_point_keep_freed_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append("run_job") or True)
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append("toml") or True)
    ticks = tmp_path / "ticks.arrow"
    write_ticks(ticks, 2_000, 2, seed=1)
    assert cli.main(["replay", str(ticks), "--window", "8", "--model", "mean", "--quiet"]) == 0
    assert calls == ["run_job"]
    config = tmp_path / "run.toml"
    config.write_text(f'sources = ["{ticks}"]\nwindow = 8\n')
    from_toml(str(config))
    assert calls == ["run_job", "toml"]
