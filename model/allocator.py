"""What this project's processes tell glibc's malloc to do with the memory they free.

The two kinds of process allocate in opposite ways, so they ask opposite things:

- **Training** frees and makes again the same ~50 MB of buffers every step (the
  hand-written LSTM). glibc serves blocks that large with a mapping of their own and
  unmaps them when freed, so every step faulted them in again: 20–30 % of the step.
  `keep_freed_memory` turns mappings off and raises the trim threshold to 1 GiB, so the
  heap keeps and reuses them.
- **The service** makes large arrays per request (a scored text's results, its answer's
  pieces) and must give them back when the request ends. But glibc raises its mmap
  threshold to the size of each large block freed (up to 32 MiB), after which such blocks
  come from its heaps, which it returns only from their top: a service that had scored
  long texts kept their memory once their clients were gone (benchmarks/memory_return.py:
  +186 MB after four rounds of 16 never-read 100,000-character scores, against +13 MB
  with the threshold fixed). `return_freed_memory` fixes the threshold at glibc's own
  starting value, 128 KiB; a mapping per large block is a cost the service does not see
  (serve_load at 64 streams: 1.02x).

Both are process-wide, not undone, and do nothing off glibc (musl, macOS, Windows).
"""

from __future__ import annotations

import ctypes
import os
import platform

# mallopt's parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's starting value, kept by return_freed_memory


def keep_freed_memory() -> bool:
    """Training: no mmap for malloc and a 1 GiB trim threshold, so freed buffers stay in
    the heap for the next step. True when applied."""
    return _mallopt((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 1 << 30))


def return_freed_memory() -> bool:
    """The service: glibc's mmap threshold fixed at MMAP_THRESHOLD_BYTES, so a large block
    goes back to the system when freed. True when applied; False off glibc, or where
    MALLOC_MMAP_THRESHOLD_ is set (glibc has taken that value already)."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    return _mallopt((M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


def _mallopt(*settings: tuple[int, int]) -> bool:
    """Each (parameter, value) through glibc's mallopt; → whether every one was applied."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return all(bool(libc.mallopt(parameter, value)) for parameter, value in settings)
