"""Buffer pool costs: lease/return latency against np.empty, and steady-state hit rate.

Run: ``python -m benchmarks.bench_pool`` (``--quick``: fewer calls and leases).
Prints markdown tables; asserts nothing.
The original (Rust) design promised < 1 us per get/return and a 60-80% hit rate;
tickpool aims for < 1 us in Python and > 95% hit rate in steady state.
"""

from __future__ import annotations

import argparse
import random

import numpy as np

from benchmarks._report import machine_line, markdown_table, median_ns_per_call
from tickpool.pipeline.pool import BufferPool


def latency_rows(calls: int, repeats: int) -> list[list[object]]:
    rows: list[list[object]] = []
    for n in (64, 8_192, 65_536):
        pool = BufferPool.for_tier("streaming")
        pool.release(pool.acquire(n))  # warm: the class has one free buffer

        def lease_ctx(pool: BufferPool = pool, n: int = n) -> None:
            with pool.lease(n) as buf:
                buf[0] = 1.0

        def acquire_release(pool: BufferPool = pool, n: int = n) -> None:
            buf = pool.acquire(n)
            buf[0] = 1.0
            pool.release(buf)

        def empty(n: int = n) -> None:
            buf = np.empty(n)
            buf[0] = 1.0

        def zeros(n: int = n) -> None:
            buf = np.zeros(n)
            buf[0] = 1.0

        # Interleave the variants in each repeat so machine noise hits all alike.
        results: dict[str, list[float]] = {k: [] for k in ("lease", "acq", "empty", "zeros")}
        for _ in range(repeats):
            results["lease"].append(median_ns_per_call(lease_ctx, calls=calls, repeats=1))
            results["acq"].append(median_ns_per_call(acquire_release, calls=calls, repeats=1))
            results["empty"].append(median_ns_per_call(empty, calls=calls, repeats=1))
            results["zeros"].append(median_ns_per_call(zeros, calls=calls, repeats=1))
        med = {k: float(np.median(v)) for k, v in results.items()}
        rows.append(
            [
                n,
                med["lease"],
                med["acq"],
                med["empty"],
                med["zeros"],
                med["acq"] / med["empty"],
            ]
        )
    return rows


def hit_rate_rows(leases: int) -> list[list[object]]:
    """A streaming workload: per batch, a few leases of sizes from a few classes,
    some handed downstream and returned a little later."""
    rows: list[list[object]] = []
    rng = random.Random(7)
    for tier in ("small", "medium", "streaming"):
        pool = BufferPool.for_tier(tier)
        in_flight: list[np.ndarray] = []
        warm = leases // 10
        hits_at_warm = misses_at_warm = 0
        for i in range(leases):
            if i == warm:
                s = pool.stats()
                hits_at_warm, misses_at_warm = s.hits, s.misses
            n = rng.choice([4_096, 8_192, 12_000, 16_384, 65_536]) + rng.randrange(64)
            buf = pool.acquire(n)
            in_flight.append(buf)
            if len(in_flight) > rng.randrange(2, 6):
                pool.release(in_flight.pop(0))
        for buf in in_flight:
            pool.release(buf)
        s = pool.stats()
        steady = (s.hits - hits_at_warm) / max(
            1, (s.hits + s.misses - hits_at_warm - misses_at_warm)
        )
        rows.append(
            [tier, s.leases, s.hit_rate, steady, s.limit, s.grows, s.evictions, s.bytes_held]
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer calls and leases")
    ap.add_argument("--calls", type=int, default=None, help="calls per sample (20,000)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--leases", type=int, default=None, help="leases per tier (200,000)")
    args = ap.parse_args(argv)
    args.calls = args.calls or (5_000 if args.quick else 20_000)
    args.leases = args.leases or (50_000 if args.quick else 200_000)
    print(f"# bench_pool ({machine_line()})\n")
    print("## Lease + return, median ns per call\n")
    print(
        markdown_table(
            [
                "elements",
                "with pool.lease",
                "acquire+release",
                "np.empty",
                "np.zeros",
                "acquire / empty",
            ],
            latency_rows(args.calls, args.repeats),
        )
    )
    print("\n## Hit rate of a streaming workload (5 sizes, 2-6 buffers in flight)\n")
    print(
        markdown_table(
            [
                "tier",
                "leases",
                "hit rate",
                "hit rate after warm-up",
                "limit",
                "grows",
                "evictions",
                "bytes held",
            ],
            hit_rate_rows(args.leases),
        )
    )


if __name__ == "__main__":
    main()
