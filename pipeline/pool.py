"""Bounded, thread-safe pool of float64 buffers for the hot path.

Every kernel in tickpool writes into a buffer it is given (numpy's ``out=``
convention); this pool is where those buffers come from.  It exists so that a
stream of millions of ticks allocates a handful of arrays at start-up and then
reuses them, instead of asking the allocator for fresh memory on every batch.

Shape of the pool:

* **Size classes.**  A request for ``n`` float64 elements is served from the
  class ``max(min_class, next power of two >= n)``; any free buffer of that class
  fits, so requests of different sizes still reuse each other's buffers.  The
  caller receives a view of exactly ``n`` elements.
* **Two bounds.**  A count (``limit`` buffers, between the tier's floor and top)
  and a byte budget (``max_bytes``).  At a bound the pool evicts idle buffers of
  other classes, oldest first, before it allocates.  It never blocks: a request
  it cannot pool (bigger than the budget, or every pooled buffer is leased) is
  served by a plain allocation and counted as ``unpooled``.
* **Explicit lifetimes.**  ``with pool.lease(n) as buf:`` returns the buffer on
  exit (also on exceptions); ``acquire``/``release`` do the same by hand.  A
  buffer may also be *handed downstream*: wrap it zero-copy (``pa.array(buf)``)
  and drop your own reference; the buffer comes back when the last object that
  refers to it is garbage-collected.  Views derived from a lease keep the lease
  alive, so a buffer is never reused while anything can still read it.
* **Adaptive sizing.**  Every ``adapt_interval`` leases, a hit rate below
  ``target_hit_rate`` grows ``limit`` by x1.5 (up to ``max_buffers``) when the
  limit caused misses in that interval (an eviction, or an unpooled lease
  because every pooled buffer was out); cold-start misses below the limit do
  not grow it, since a larger limit would not have turned them into hits.  Free
  buffers idle for ``idle_seconds`` are freed and ``limit`` shrinks by as many
  (down to ``min_buffers``).  ``maintain()`` runs the same checks from a timer,
  so an idle stream still gives its memory back.

Example:

>>> pool = BufferPool.for_tier("small")
>>> with pool.lease(1000) as buf:
...     buf[:] = 1.0
...     float(buf.sum())
1000.0
>>> s = pool.stats()
>>> (s.hits, s.misses, s.leased, s.free)
(0, 1, 0, 1)
>>> with pool.lease(700) as buf:   # same size class (1024): a hit
...     buf.shape
(700,)
>>> pool.stats().hits
1
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "TIERS",
    "BufferPool",
    "PoolError",
    "PoolStats",
    "Tier",
]

_ITEMSIZE = 8  # float64


class PoolError(ValueError):
    """A buffer was released twice, or was never leased from this pool."""


@dataclass(frozen=True, slots=True)
class Tier:
    """A named pool size: how many buffers the pool keeps at least and at most."""

    name: str
    min_buffers: int
    max_buffers: int


TIERS: dict[str, Tier] = {
    t.name: t
    for t in (
        Tier("small", 8, 16),
        Tier("medium", 32, 64),
        Tier("large", 64, 128),
        Tier("streaming", 128, 256),
    )
}


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A consistent snapshot of one pool's counters.

    ``hits + misses == leases``: every lease is either served from a free
    buffer (a hit) or not (a miss, which allocates: pooled or ``unpooled``).
    """

    hits: int
    misses: int
    hit_rate: float
    recent_hit_rate: float
    leases: int
    leased: int
    free: int
    limit: int
    min_buffers: int
    max_buffers: int
    bytes_held: int
    peak_bytes: int
    max_bytes: int
    grows: int
    shrinks: int
    evictions: int
    unpooled: int


class _Slab(np.ndarray):
    """A pooled buffer.

    A distinct ndarray subclass on purpose: numpy collapses chains of views to
    the first base of the *same* type, so a view taken from a lease would point
    past the lease straight at a plain base array, and the lease could die (and
    its buffer be reused) while that view still reads it.  Because the lease's
    base is a ``_Slab``, views of a lease keep the lease itself alive.
    """


class _LeaseRef(weakref.ref[npt.NDArray[np.float64]]):
    """Weak reference to a leased array, carrying what is needed to take it back."""

    __slots__ = ("key", "slab")
    key: int
    slab: _Slab | None


class _Lease:
    """Context manager returned by :meth:`BufferPool.lease`."""

    __slots__ = ("_buf", "_n", "_pool")

    def __init__(self, pool: BufferPool, n: int) -> None:
        self._pool = pool
        self._n = n
        self._buf: npt.NDArray[np.float64] | None = None

    def __enter__(self) -> npt.NDArray[np.float64]:
        self._buf = self._pool.acquire(self._n)
        return self._buf

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        buf, self._buf = self._buf, None
        if buf is not None:
            self._pool.release(buf)


class BufferPool:
    """Bounded, thread-safe, adaptive pool of float64 buffers.

    Args:
        min_buffers: the floor of ``limit`` (adaptive shrinking stops here).
        max_buffers: the top of ``limit`` (adaptive growth stops here).
        max_bytes: byte budget for all pooled buffers, free and leased.
        target_hit_rate: adaptive sizing grows ``limit`` when the hit rate over
            the last ``adapt_interval`` leases is below this.
        adaptive: when False, ``limit`` stays at ``max_buffers`` and idle buffers
            are kept.
        initial_limit: starting ``limit`` (default ``min_buffers`` when adaptive,
            else ``max_buffers``).
        adapt_interval: leases per adaptive-sizing interval.
        idle_seconds: a free buffer unused this long is freed by the next
            adaptive check or ``maintain()`` call.
        min_class: smallest size class, in elements.
        clock: monotonic clock in seconds (injectable for tests).
    """

    def __init__(
        self,
        min_buffers: int = 128,
        max_buffers: int = 256,
        max_bytes: int = 256 * 1024 * 1024,
        target_hit_rate: float = 0.95,
        adaptive: bool = True,
        *,
        initial_limit: int | None = None,
        adapt_interval: int = 256,
        idle_seconds: float = 30.0,
        min_class: int = 64,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 1 <= min_buffers <= max_buffers:
            raise ValueError(
                f"BufferPool needs 1 <= min_buffers <= max_buffers; got min_buffers="
                f"{min_buffers}, max_buffers={max_buffers}"
            )
        if max_bytes <= 0:
            raise ValueError(f"BufferPool max_bytes must be positive; got {max_bytes}")
        if not 0.0 <= target_hit_rate <= 1.0:
            raise ValueError(f"BufferPool target_hit_rate must be in [0, 1]; got {target_hit_rate}")
        if adapt_interval < 1 or idle_seconds <= 0 or min_class < 1:
            raise ValueError(
                "BufferPool needs adapt_interval >= 1, idle_seconds > 0 and min_class >= 1"
            )
        self.min_buffers = min_buffers
        self.max_buffers = max_buffers
        self.max_bytes = max_bytes
        self.target_hit_rate = target_hit_rate
        self.adaptive = adaptive
        self.adapt_interval = adapt_interval
        self.idle_seconds = idle_seconds
        self.min_class = 1 << (min_class - 1).bit_length()
        self._clock = clock
        if initial_limit is None:
            initial_limit = min_buffers if adaptive else max_buffers
        self._limit = min(max(initial_limit, min_buffers), max_buffers)

        self._lock = threading.Lock()
        # size class -> free slabs with the time each was returned; LIFO at the
        # right end (warm caches), the idlest at the left end.
        self._free: dict[int, deque[tuple[_Slab, float]]] = {}
        self._n_free = 0
        self._n_pooled = 0  # pooled slabs in existence: free + leased
        self._bytes = 0
        self._peak_bytes = 0
        self._live: dict[int, _LeaseRef] = {}
        # Filled by weakref callbacks (any thread, possibly inside our own lock
        # when a garbage collection runs there): only an atomic append happens
        # in the callback; the pool drains this under its lock.
        self._collected: deque[_LeaseRef] = deque()
        self._on_collect = self._collected.append

        self._hits = 0
        self._misses = 0
        self._i_hits = 0
        self._i_leases = 0
        self._i_pressure = 0  # misses in this interval that the limit caused
        self._recent_hit_rate = 1.0
        self._grows = 0
        self._shrinks = 0
        self._evictions = 0
        self._unpooled = 0

    @classmethod
    def for_tier(cls, name: str = "streaming", **overrides: Any) -> BufferPool:
        """A pool sized by a named tier (``small``, ``medium``, ``large``, ``streaming``)."""
        try:
            tier = TIERS[name]
        except KeyError:
            raise ValueError(
                f"unknown pool tier {name!r}; expected one of {', '.join(TIERS)}"
            ) from None
        kwargs: dict[str, Any] = {
            "min_buffers": tier.min_buffers,
            "max_buffers": tier.max_buffers,
        }
        kwargs.update(overrides)
        return cls(**kwargs)

    # -- leasing -----------------------------------------------------------

    def lease(self, n: int) -> _Lease:
        """``with pool.lease(n) as buf:`` a writable float64 view of exactly ``n``
        elements, returned to the pool when the block exits (also on errors)."""
        return _Lease(self, n)

    def acquire(self, n: int) -> npt.NDArray[np.float64]:
        """Lease a writable float64 array of exactly ``n`` elements.

        Give it back with :meth:`release`, or hand it downstream and let the
        garbage collector return it once nothing refers to it any more.  The
        contents are whatever the previous holder left: initialize what you read.
        """
        if type(n) is not int:
            if isinstance(n, bool) or not isinstance(n, np.integer):
                raise TypeError(f"buffer size must be an int; got {type(n).__name__} {n!r}")
            n = int(n)
        if n <= 0:
            raise ValueError(f"buffer size must be positive; got {n}")
        cap = 1 << (n - 1).bit_length()
        if cap < self.min_class:
            cap = self.min_class
        with self._lock:
            if self._collected:
                self._drain()
            self._i_leases += 1
            free = self._free.get(cap)
            if free:
                slab: _Slab | None = free.pop()[0]
                self._n_free -= 1
                self._hits += 1
                self._i_hits += 1
            else:
                self._misses += 1
                slab = self._new_slab(cap)
            if self._i_leases >= self.adapt_interval:
                self._adapt()
            if slab is None:
                self._unpooled += 1
                arr: npt.NDArray[np.float64] = np.empty(n, dtype=np.float64)
            else:
                arr = slab[:n].view(np.ndarray)
            ref = _LeaseRef(arr, self._on_collect)
            ref.slab = slab
            ref.key = key = id(arr)
            self._live[key] = ref
        return arr

    def release(self, buf: npt.NDArray[np.float64]) -> None:
        """Return a buffer that :meth:`acquire` gave out.

        Raises:
            PoolError: ``buf`` was already released, or is not an array this pool
                leased (a slice or copy of a lease is not the lease).
        """
        with self._lock:
            if self._collected:
                self._drain()
            ref = self._live.pop(id(buf), None)
            if ref is None or ref() is not buf:
                if ref is not None:
                    self._live[ref.key] = ref
                raise PoolError(
                    "release() got an array this pool has not leased out: it was "
                    "already released, or it is not the exact array acquire() returned "
                    "(a slice or copy of it is not)"
                )
            self._put_back(ref)

    # -- maintenance -------------------------------------------------------

    def maintain(self) -> None:
        """Run the adaptive checks now (call from a timer while the stream is idle)."""
        with self._lock:
            if self._collected:
                self._drain()
            self._adapt()

    def clear(self) -> int:
        """Free every idle buffer now; returns how many bytes were released."""
        with self._lock:
            if self._collected:
                self._drain()
            before = self._bytes
            for free in self._free.values():
                while free:
                    self._drop(free.popleft()[0])
            return before - self._bytes

    def stats(self) -> PoolStats:
        """A consistent snapshot of the counters (see :class:`PoolStats`)."""
        with self._lock:
            if self._collected:
                self._drain()
            leases = self._hits + self._misses
            return PoolStats(
                hits=self._hits,
                misses=self._misses,
                hit_rate=self._hits / leases if leases else 1.0,
                recent_hit_rate=self._recent_hit_rate,
                leases=leases,
                leased=len(self._live),
                free=self._n_free,
                limit=self._limit,
                min_buffers=self.min_buffers,
                max_buffers=self.max_buffers,
                bytes_held=self._bytes,
                peak_bytes=self._peak_bytes,
                max_bytes=self.max_bytes,
                grows=self._grows,
                shrinks=self._shrinks,
                evictions=self._evictions,
                unpooled=self._unpooled,
            )

    @property
    def limit(self) -> int:
        """The current bound on pooled buffers (free + leased)."""
        return self._limit

    def __repr__(self) -> str:
        s = self.stats()
        return (
            f"BufferPool(limit={s.limit} in [{s.min_buffers}, {s.max_buffers}], "
            f"leased={s.leased}, free={s.free}, bytes_held={s.bytes_held}, "
            f"hit_rate={s.hit_rate:.3f})"
        )

    # -- internals (called with the lock held) ------------------------------

    def _new_slab(self, cap: int) -> _Slab | None:
        """Allocate a pooled slab of ``cap`` elements, evicting idle ones to fit,
        or return None when the request cannot be pooled."""
        nbytes = cap * _ITEMSIZE
        if nbytes > self.max_bytes:
            return None
        if self._n_pooled >= self._limit or self._bytes + nbytes > self.max_bytes:
            self._i_pressure += 1
        while self._n_pooled >= self._limit or self._bytes + nbytes > self.max_bytes:
            if not self._evict_idlest():
                return None
        slab = np.ndarray.__new__(_Slab, (cap,), np.float64)
        self._n_pooled += 1
        self._bytes += nbytes
        self._peak_bytes = max(self._peak_bytes, self._bytes)
        return slab

    def _evict_idlest(self) -> bool:
        oldest: deque[tuple[_Slab, float]] | None = None
        for free in self._free.values():
            if free and (oldest is None or free[0][1] < oldest[0][1]):
                oldest = free
        if oldest is None:
            return False
        self._drop(oldest.popleft()[0])
        self._evictions += 1
        return True

    def _drop(self, slab: _Slab) -> None:
        self._n_free -= 1
        self._n_pooled -= 1
        self._bytes -= slab.shape[0] * _ITEMSIZE

    def _put_back(self, ref: _LeaseRef) -> None:
        slab = ref.slab
        if slab is None:
            return
        cap = slab.shape[0]
        if self._n_pooled > self._limit:
            # The limit shrank while this buffer was out: let it go.
            self._n_pooled -= 1
            self._bytes -= cap * _ITEMSIZE
            return
        free = self._free.get(cap)
        if free is None:
            free = self._free[cap] = deque()
        free.append((slab, self._clock()))
        self._n_free += 1

    def _drain(self) -> None:
        collected = self._collected
        live = self._live
        while collected:
            ref = collected.popleft()
            if live.get(ref.key) is ref:
                del live[ref.key]
                self._put_back(ref)

    def _adapt(self) -> None:
        if self._i_leases:
            self._recent_hit_rate = self._i_hits / self._i_leases
        if not self.adaptive:
            self._i_hits = self._i_leases = self._i_pressure = 0
            return
        if (
            self._i_leases >= self.adapt_interval
            and self._recent_hit_rate < self.target_hit_rate
            and self._i_pressure
            and self._limit < self.max_buffers
        ):
            self._limit = min(self.max_buffers, math.ceil(self._limit * 1.5))
            self._grows += 1
        if self._i_leases >= self.adapt_interval:
            self._i_hits = self._i_leases = self._i_pressure = 0
        self._shrink_idle()

    def _shrink_idle(self) -> None:
        cutoff = self._clock() - self.idle_seconds
        freed = 0
        for free in self._free.values():
            while free and free[0][1] <= cutoff:
                self._drop(free.popleft()[0])
                freed += 1
        if freed:
            new_limit = max(self.min_buffers, self._limit - freed)
            self._limit = new_limit
            self._shrinks += 1
