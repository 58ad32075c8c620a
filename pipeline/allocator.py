"""Keep freed memory in the process: no page faults for each batch's temporaries.

glibc's ``malloc`` serves blocks from 128 KiB up with a fresh ``mmap`` (and raises that
threshold only as it sees such blocks freed), and gives the top of its heap back to the kernel
once more than twice that is free. A 65,536-row batch has a few temporaries of that size which
no pool can hold, because numpy allocates them itself (``argsort``'s order has no ``out=``) or
pyarrow owns them (the prediction batch's symbol bytes). Each batch got them as new pages: a
10 M-tick replay at W=16 took 55,000 minor page faults and 1.21 s; with the thresholds below,
16,500 and 1.05 s (docs/optimizations.md section 14).

`keep_freed_memory` sets the two thresholds once, like the ``MALLOC_MMAP_THRESHOLD_`` and
``MALLOC_TRIM_THRESHOLD_`` environment variables do at start-up: blocks up to 32 MiB come from
the heap, and up to 128 MiB of freed heap stays in the process for the next batch. The
process's peak is what it is either way (peak anonymous memory of that replay: 51 -> 53.5 MB);
what changes is that memory freed after the peak is not returned while the process runs.

`tickpool.pipeline.cli.run_job` calls it before it starts a job (every ``tickpool`` command,
and the benchmarks' replays), and so does `tickpool.pipeline.flow.from_toml` (the entry point
for ``python -m bytewax.run``). A flow of your own can call it, or set the environment
variables. Elsewhere than glibc (musl, macOS) it does nothing and returns False.
"""

from __future__ import annotations

import ctypes
from typing import Final

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "keep_freed_memory"]

MMAP_THRESHOLD: Final = 32 << 20
"""Blocks below this come from the heap (the ceiling of glibc's own dynamic threshold on 64-bit,
``DEFAULT_MMAP_THRESHOLD_MAX``)."""
TRIM_THRESHOLD: Final = 128 << 20
"""Free memory at the top of the heap kept before any is given back to the kernel."""

_M_TRIM_THRESHOLD: Final = -1  # glibc's <malloc.h>
_M_MMAP_THRESHOLD: Final = -3
_C_INT_MAX: Final = 2**31 - 1


def keep_freed_memory(
    mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD
) -> bool:
    """Set glibc's mmap and trim thresholds for this process; True if libc took both.

    False where the C library has no ``mallopt`` (not glibc; then nothing changed) or refused
    a value. Both are C ints: a value outside ``[0, 2**31 - 1]`` raises ValueError instead of
    wrapping (4 GiB would wrap to 0, "trim everything", the opposite of the intent).
    """
    for label, value in (("mmap_threshold", mmap_threshold), ("trim_threshold", trim_threshold)):
        if not 0 <= value <= _C_INT_MAX:
            raise ValueError(f"{label} is {value}; expected bytes in [0, {_C_INT_MAX}] (a C int)")
    try:
        # The process's own symbols: the malloc it really uses, without find_library's search.
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # TypeError: Windows has no CDLL(None)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    took_mmap: bool = mallopt(_M_MMAP_THRESHOLD, mmap_threshold) == 1
    took_trim: bool = mallopt(_M_TRIM_THRESHOLD, trim_threshold) == 1
    return took_mmap and took_trim
