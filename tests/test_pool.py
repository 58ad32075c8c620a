"""The buffer pool keeps its promises: bounded, no double lending, stats add up."""

from __future__ import annotations

import gc
import random
import threading

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

from tickpool.pipeline.pool import TIERS, BufferPool, PoolError

Buf = npt.NDArray[np.float64]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def assert_consistent(pool: BufferPool) -> None:
    s = pool.stats()
    assert s.hits + s.misses == s.leases
    assert s.min_buffers <= s.limit <= s.max_buffers
    assert 0 <= s.bytes_held <= s.max_bytes
    assert s.free >= 0 and s.leased >= 0
    # Pooled buffers (free + pooled leases) never exceed the limit... except
    # leases taken out before the limit shrank, which are dropped on return.
    assert s.free <= s.limit


# -- basic behaviour --------------------------------------------------------


def test_lease_gives_exactly_n_writable_float64_and_returns_on_exit() -> None:
    pool = BufferPool.for_tier("small")
    with pool.lease(100) as buf:
        assert buf.shape == (100,) and buf.dtype == np.float64
        assert buf.flags.writeable
        buf[:] = np.arange(100)
        assert pool.stats().leased == 1
    s = pool.stats()
    assert (s.leased, s.free, s.misses) == (0, 1, 1)


def test_lease_returns_buffer_when_block_raises() -> None:
    pool = BufferPool.for_tier("small")
    with pytest.raises(RuntimeError), pool.lease(10):
        raise RuntimeError("boom")
    assert pool.stats().leased == 0


def test_sizes_in_one_class_reuse_the_same_buffer() -> None:
    pool = BufferPool.for_tier("small")
    a = pool.acquire(600)
    base_ptr = a.__array_interface__["data"][0]
    pool.release(a)
    b = pool.acquire(1000)  # same power-of-two class (1024)
    assert b.__array_interface__["data"][0] == base_ptr
    assert b.shape == (1000,)
    pool.release(b)
    s = pool.stats()
    assert (s.hits, s.misses) == (1, 1)


@pytest.mark.parametrize("bad", [0, -5])
def test_non_positive_size_is_a_clear_error(bad: int) -> None:
    with pytest.raises(ValueError, match="buffer size must be positive"):
        BufferPool().acquire(bad)


@pytest.mark.parametrize("bad", [1.5, "10", True, None])
def test_non_integer_size_is_a_clear_error(bad: object) -> None:
    with pytest.raises(TypeError, match="buffer size must be an int"):
        BufferPool().acquire(bad)  # type: ignore[arg-type]


def test_numpy_integer_size_is_accepted() -> None:
    pool = BufferPool()
    with pool.lease(np.int64(12)) as buf:  # type: ignore[arg-type]
        assert buf.shape == (12,)


def test_double_release_is_a_clear_error() -> None:
    pool = BufferPool()
    buf = pool.acquire(10)
    pool.release(buf)
    with pytest.raises(PoolError, match="already released"):
        pool.release(buf)


def test_releasing_a_foreign_array_or_a_slice_is_an_error() -> None:
    pool = BufferPool()
    with pytest.raises(PoolError):
        pool.release(np.zeros(10))
    buf = pool.acquire(10)
    with pytest.raises(PoolError):
        pool.release(buf[:5])
    pool.release(buf)
    assert pool.stats().leased == 0


def test_unknown_tier_names_the_choices() -> None:
    with pytest.raises(ValueError, match="small, medium, large, streaming"):
        BufferPool.for_tier("huge")


@pytest.mark.parametrize("name", list(TIERS))
def test_tiers_set_floor_and_top(name: str) -> None:
    s = BufferPool.for_tier(name).stats()
    assert (s.min_buffers, s.max_buffers) == (TIERS[name].min_buffers, TIERS[name].max_buffers)


def test_streaming_is_the_default_tier() -> None:
    s = BufferPool().stats()
    assert (s.min_buffers, s.max_buffers) == (128, 256)


# -- hand-off downstream ------------------------------------------------------


def test_buffer_handed_to_arrow_returns_when_the_arrow_array_is_dropped() -> None:
    pool = BufferPool.for_tier("small")
    buf = pool.acquire(1000)
    buf[:] = np.arange(1000.0)
    arr = pa.array(buf)  # zero-copy: Arrow keeps the numpy array alive
    assert np.shares_memory(arr.to_numpy(zero_copy_only=True), buf)
    del buf
    gc.collect()
    assert pool.stats().leased == 1, "Arrow still refers to the buffer: it must stay leased"
    # A second lease must not get the memory Arrow still reads.
    other = pool.acquire(1000)
    other[:] = -1.0
    assert arr.to_numpy()[999] == 999.0
    pool.release(other)
    del arr
    gc.collect()
    s = pool.stats()
    assert s.leased == 0 and s.free == 2


def test_views_of_a_lease_keep_it_leased() -> None:
    pool = BufferPool.for_tier("small")
    buf = pool.acquire(64)
    windows = np.lib.stride_tricks.sliding_window_view(buf, 8)
    reshaped = buf.reshape(8, 8).T
    del buf
    gc.collect()
    assert pool.stats().leased == 1
    del windows
    gc.collect()
    assert pool.stats().leased == 1
    del reshaped
    gc.collect()
    assert pool.stats().leased == 0


def test_explicitly_released_buffer_is_not_returned_twice_by_the_collector() -> None:
    pool = BufferPool.for_tier("small")
    buf = pool.acquire(10)
    pool.release(buf)
    del buf
    gc.collect()
    s = pool.stats()
    assert s.free == 1 and s.leased == 0


# -- bounds ----------------------------------------------------------------------


def test_request_larger_than_budget_succeeds_unpooled() -> None:
    pool = BufferPool(min_buffers=2, max_buffers=4, max_bytes=8 * 1024)
    with pool.lease(10_000) as big:
        assert big.shape == (10_000,)
        assert pool.stats().bytes_held == 0
    s = pool.stats()
    assert s.unpooled == 1 and s.free == 0 and s.leased == 0


def test_at_the_count_limit_idle_buffers_of_other_classes_are_evicted() -> None:
    pool = BufferPool(min_buffers=2, max_buffers=2, adaptive=False)
    pool.release(pool.acquire(64))
    pool.release(pool.acquire(128))
    assert pool.stats().free == 2
    with pool.lease(512):
        s = pool.stats()
        assert s.evictions == 1 and s.free == 1 and s.unpooled == 0


def test_at_the_limit_with_everything_leased_it_does_not_block() -> None:
    pool = BufferPool(min_buffers=2, max_buffers=2, adaptive=False)
    held = [pool.acquire(64) for _ in range(5)]
    s = pool.stats()
    assert s.leased == 5 and s.unpooled == 3
    for b in held:
        pool.release(b)
    s = pool.stats()
    assert s.free == 2 and s.leased == 0


def test_byte_budget_holds() -> None:
    pool = BufferPool(min_buffers=64, max_buffers=64, max_bytes=64 * 1024, adaptive=False)
    rng = random.Random(1)
    held: list[Buf] = []
    for _ in range(2000):
        if held and rng.random() < 0.5:
            pool.release(held.pop(rng.randrange(len(held))))
        else:
            held.append(pool.acquire(rng.choice([10, 100, 1000, 5000])))
        assert pool.stats().bytes_held <= 64 * 1024
    for b in held:
        pool.release(b)
    assert pool.stats().leased == 0


# -- adaptive sizing ------------------------------------------------------------


def test_miss_heavy_phase_grows_limit_to_top_and_idle_phase_shrinks_to_floor() -> None:
    clock = FakeClock()
    pool = BufferPool.for_tier("medium", adapt_interval=64, idle_seconds=10.0, clock=clock)
    assert pool.limit == 32
    # Miss-heavy: hold many buffers at once, so most leases cannot be hits.
    for _ in range(20):
        held = [pool.acquire(256) for _ in range(64)]
        for b in held:
            pool.release(b)
    s = pool.stats()
    assert s.limit == 64, s
    assert s.grows >= 2  # 32 -> 48 -> 64
    bytes_busy = s.bytes_held
    assert bytes_busy >= 64 * 256 * 8
    # Idle: nothing leased for longer than idle_seconds.
    clock.now += 60.0
    pool.maintain()
    s = pool.stats()
    assert s.limit == 32 and s.shrinks >= 1
    assert s.bytes_held < bytes_busy
    assert s.free == 0 and s.bytes_held == 0


def test_steady_workload_has_high_hit_rate_and_does_not_grow() -> None:
    pool = BufferPool.for_tier("small", adapt_interval=32)
    for _ in range(1000):
        with pool.lease(4096) as a, pool.lease(100) as b:
            a[0] = b[0] = 1.0
    s = pool.stats()
    assert s.hit_rate > 0.99 and s.grows == 0 and s.limit == 8


def test_non_adaptive_pool_keeps_its_limit() -> None:
    clock = FakeClock()
    pool = BufferPool(min_buffers=4, max_buffers=8, adaptive=False, clock=clock)
    assert pool.limit == 8
    pool.release(pool.acquire(10))
    clock.now += 1e6
    pool.maintain()
    s = pool.stats()
    assert s.limit == 8 and s.free == 1 and s.shrinks == 0


# -- stateful model of random use ---------------------------------------------


class PoolMachine(RuleBasedStateMachine):
    """Random acquire/release/lease/hand-off sequences against a tiny pool.

    Holdings are kept in plain lists (not hypothesis Bundles, which would keep
    a reference to every array and so stop a handed-off buffer from returning).
    """

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.pool = BufferPool(
            min_buffers=2,
            max_buffers=6,
            max_bytes=32 * 1024,
            adapt_interval=8,
            idle_seconds=5.0,
            clock=self.clock,
        )
        self.outstanding: list[tuple[Buf, float]] = []
        self.handed_off: list[pa.Array] = []
        self.leases = 0

    def _check_unshared(self, buf: Buf) -> None:
        for other, _ in self.outstanding:
            assert not np.shares_memory(buf, other), "one buffer lent to two holders"
        for arr in self.handed_off:
            assert not np.shares_memory(buf, arr.to_numpy(zero_copy_only=True))

    @rule(n=st.integers(1, 3000))
    def acquire(self, n: int) -> None:
        buf = self.pool.acquire(n)
        self.leases += 1
        assert buf.shape == (n,)
        self._check_unshared(buf)
        tag = float(self.leases)
        buf[:] = tag
        self.outstanding.append((buf, tag))

    @precondition(lambda self: bool(self.outstanding))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        buf, tag = self.outstanding.pop(data.draw(st.integers(0, len(self.outstanding) - 1)))
        assert np.all(buf == tag), "someone else wrote into a leased buffer"
        self.pool.release(buf)

    @precondition(lambda self: bool(self.outstanding))
    @rule(data=st.data())
    def hand_off(self, data: st.DataObject) -> None:
        buf, _ = self.outstanding.pop(data.draw(st.integers(0, len(self.outstanding) - 1)))
        self.handed_off.append(pa.array(buf))

    @precondition(lambda self: bool(self.handed_off))
    @rule(data=st.data())
    def drop_handed_off(self, data: st.DataObject) -> None:
        del self.handed_off[data.draw(st.integers(0, len(self.handed_off) - 1))]
        gc.collect()

    @rule(n=st.integers(1, 3000))
    def lease_block(self, n: int) -> None:
        with self.pool.lease(n) as buf:
            self.leases += 1
            self._check_unshared(buf)
            buf[:] = -1.0

    @rule(seconds=st.floats(0.0, 20.0))
    def time_passes(self, seconds: float) -> None:
        self.clock.now += seconds
        self.pool.maintain()

    @invariant()
    def bounds_and_counts_hold(self) -> None:
        assert_consistent(self.pool)
        s = self.pool.stats()
        assert s.leases == self.leases
        assert s.leased >= len(self.outstanding)

    def teardown(self) -> None:
        for buf, _ in self.outstanding:
            self.pool.release(buf)
        self.outstanding.clear()
        self.handed_off.clear()
        gc.collect()
        s = self.pool.stats()
        assert s.leased == 0, "everything returns at the end"
        assert_consistent(self.pool)


TestPoolMachine = PoolMachine.TestCase
TestPoolMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


# -- threads ---------------------------------------------------------------------


def test_threaded_stress_never_lends_a_buffer_twice() -> None:
    pool = BufferPool.for_tier("medium", max_bytes=8 * 1024 * 1024, adapt_interval=128)
    n_threads, per_thread = 8, 4000
    errors: list[str] = []
    start = threading.Barrier(n_threads)

    def work(tid: int) -> None:
        rng = random.Random(tid)
        start.wait()
        held: list[tuple[Buf, float]] = []
        for i in range(per_thread):
            tag = tid * 1_000_000.0 + i
            if rng.random() < 0.5:
                with pool.lease(rng.choice([16, 200, 1500, 4000])) as buf:
                    buf[:] = tag
                    if not np.all(buf == tag):
                        errors.append(f"thread {tid}: lease overwritten")
            else:
                buf = pool.acquire(rng.choice([16, 200, 1500, 4000]))
                buf[:] = tag
                held.append((buf, tag))
                if len(held) > 4 or rng.random() < 0.3:
                    old, old_tag = held.pop(0)
                    if not np.all(old == old_tag):
                        errors.append(f"thread {tid}: buffer shared with another holder")
                    pool.release(old)
        for buf, tag in held:
            if not np.all(buf == tag):
                errors.append(f"thread {tid}: buffer shared with another holder")
            pool.release(buf)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:5]
    s = pool.stats()
    assert s.leases == n_threads * per_thread
    assert s.leased == 0
    assert_consistent(pool)
