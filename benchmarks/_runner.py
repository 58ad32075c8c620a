"""Running one measurement per process: cached tick files, child processes, their memory.

The end-to-end benchmarks time every variant in a fresh Python process
(``python -m benchmarks.baselines VARIANT ...``), so no variant inherits another's heap,
imports or warm caches, and the child's memory is its own:

- *peak RSS*: the child's ``ru_maxrss`` from ``os.wait4`` (resident pages of any kind, file
  pages of the memory-mapped input included);
- *peak anon*: the largest ``RssAnon`` seen in ``/proc/<pid>/status``, sampled every few
  milliseconds while the child runs: heap, numpy arrays, pool buffers; not the page cache
  pages of the mmap'd input or of the files it writes. A peak shorter than the sampling
  interval can be missed.

Every child runs with one BLAS thread (``BLAS_THREAD_VARS``) unless the environment says
otherwise: the benchmarks measure ticks/s per worker, and a worker is one core.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = Path(tempfile.gettempdir()) / "tickpool-bench"
SEED = 2024
SAMPLE_S = 0.005
BLAS_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
"""Set to 1 in every child unless already set: a worker is one core (a multi-threaded BLAS
fighting other processes for 2 cores ran the GEMM 3-4x slower)."""


@dataclass(frozen=True, slots=True)
class Measurement:
    """One child run: what it timed and the memory it used."""

    variant: str
    ticks: int
    seconds: float
    predictions: int
    peak_rss_kb: int
    peak_anon_kb: int
    anon_start_kb: int
    kernel_seconds: float | None = None  # numpy-kernels: the time inside the kernel calls

    @property
    def ticks_per_s(self) -> float:
        return self.ticks / self.seconds if self.seconds > 0 else 0.0

    @property
    def kernel_ticks_per_s(self) -> float | None:
        """Ticks per second of kernel time alone (numpy-kernels only)."""
        if not self.kernel_seconds:
            return None
        return self.ticks / self.kernel_seconds


def tick_file(ticks: int, symbols: int = 8, data_dir: Path | None = None) -> Path:
    """The synthetic tick file of ``ticks`` ticks (fixed seed), generated once and cached.

    A run of n ticks is the prefix of any longer run with the same seed, so the small files the
    slow variants read are the first ticks of the big one.
    """
    from tickpool.connectors.synthetic import write_ticks

    folder = data_dir or DEFAULT_DATA_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"ticks-{ticks}-{symbols}sym-seed{SEED}.arrow"
    if not path.exists():
        t0 = time.perf_counter()
        write_ticks(path, ticks, symbols, seed=SEED)
        print(
            f"<!-- generated {path} in {time.perf_counter() - t0:.1f} s -->",
            file=sys.stderr,
        )
    return path


def model_file(window: int, data_dir: Path | None = None) -> Path:
    """A fixed linear window-zscore model of window ``window`` (see ``LinearJob.example``)."""
    from benchmarks.baselines import LinearJob, save_job

    folder = data_dir or DEFAULT_DATA_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"linear-w{window}.npz"
    if not path.exists():
        save_job(LinearJob.example(window), path)
    return path


def thread_settings() -> str:
    """How many BLAS threads the children get, for the tables' headings."""
    return ", ".join(f"{n}={os.environ.get(n, '1')}" for n in BLAS_THREAD_VARS[:1])


def _status_kb(pid: int, keys: Sequence[str]) -> dict[str, int]:
    found: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in keys:
                    found[key] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return found


def wait_watching_memory(
    proc: subprocess.Popen[Any], series: list[tuple[float, float, float]] | None = None
) -> tuple[int, Any, dict[str, int]]:
    """Wait for ``proc``, sampling its RssAnon and RssFile every ``SAMPLE_S`` seconds.

    Returns its wait status, its rusage and the peak of each (kB). ``series``, if given,
    receives (seconds since the call, RssAnon MB, RssFile MB) samples, for plots.
    """
    peaks = {"RssAnon": 0, "RssFile": 0}
    done = threading.Event()
    t0 = time.perf_counter()

    def sample() -> None:
        while not done.is_set():
            now = _status_kb(proc.pid, tuple(peaks))
            for key, kb in now.items():
                peaks[key] = max(peaks[key], kb)
            if series is not None and now:
                anon, file = now.get("RssAnon", 0) / 1024, now.get("RssFile", 0) / 1024
                series.append((time.perf_counter() - t0, anon, file))
            time.sleep(SAMPLE_S)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        done.set()
        sampler.join()
    return status, usage, peaks


def run_variant(variant: str, data: Path, model: Path, *, save: Path | None = None) -> Measurement:
    """Run ``variant`` on ``data`` in a child process; raise with its stderr if it fails."""
    cmd = [sys.executable, "-m", "benchmarks.baselines", variant, "--data", str(data)]
    cmd += ["--model", str(model)]
    if save is not None:
        cmd += ["--save", str(save)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    for name in BLAS_THREAD_VARS:  # one core per worker, unless told otherwise
        env.setdefault(name, "1")
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=err)
        status, usage, peaks = wait_watching_memory(proc)
        peak_anon = peaks["RssAnon"]
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        tail = "\n".join(stderr.strip().splitlines()[-15:])
        raise RuntimeError(
            f"benchmark variant {variant!r} on {data.name} exited with {proc.returncode}:\n{tail}"
        )
    record: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    return Measurement(
        variant=variant,
        ticks=int(record["ticks"]),
        seconds=float(record["seconds"]),
        predictions=int(record["predictions"]),
        peak_rss_kb=int(usage.ru_maxrss),
        peak_anon_kb=peak_anon,
        anon_start_kb=int(record["anon_start_kb"] or 0),
        kernel_seconds=record.get("kernel_seconds"),
    )


def median_of(runs: Sequence[Measurement]) -> Measurement:
    """The medians of several runs of one variant (each field separately)."""
    return Measurement(
        variant=runs[0].variant,
        ticks=runs[0].ticks,
        seconds=statistics.median(r.seconds for r in runs),
        predictions=runs[0].predictions,
        peak_rss_kb=round(statistics.median(r.peak_rss_kb for r in runs)),
        peak_anon_kb=round(statistics.median(r.peak_anon_kb for r in runs)),
        anon_start_kb=round(statistics.median(r.anon_start_kb for r in runs)),
        kernel_seconds=(
            statistics.median(r.kernel_seconds for r in runs if r.kernel_seconds is not None)
            if all(r.kernel_seconds is not None for r in runs)
            else None
        ),
    )


def load_predictions(path: Path) -> dict[str, Any]:
    """The per-symbol predictions a child saved with ``--save``."""
    import numpy as np

    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def mb(kb: int) -> float:
    return kb / 1024
