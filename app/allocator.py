"""glibc's malloc told to give large freed blocks back to the system at once.

glibc serves a block above its mmap threshold (128 KiB at first) with a mapping of its own,
unmapped when freed; but each time such a block is freed it raises the threshold to that
block's size (up to 32 MiB), and later blocks of that size come from its heaps, which it
returns only from their top. A server that scores a long text makes arrays of megabytes,
then answers of ~600 kB pieces: after the first ones are freed, the next come from the
heaps, and once their clients are gone the process kept most of them. Measured with
benchmarks/memory_return.py (16 clients that never read a 100,000-character score,
rounds of them): 186 MB above idle after four rounds with the threshold moving, 14 MB
with it fixed, the held peak 109 MB lower. Fixing it costs a mapping per large block,
which a server allocating a few per request does not notice.

Off glibc (musl, macOS, Windows) nothing is changed. Where MALLOC_MMAP_THRESHOLD_ is set,
glibc has taken it already and it is left as it is.
"""

from __future__ import annotations

import ctypes
import os
import platform

M_MMAP_THRESHOLD = -3  # mallopt's parameter (malloc.h)
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's own starting value, now kept


def keep_mmap_threshold() -> bool:
    """Fix glibc's mmap threshold at MMAP_THRESHOLD_BYTES for this process; → whether it
    was set (False off glibc, or where the environment sets it)."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
