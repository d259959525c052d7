"""``host_memory.release_freed_heap``: freed small heap chunks really leave the process's resident memory."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

import pytest

from mdm_jax.training import host_memory


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc_trim")
def test_freed_small_chunks_are_returned_to_the_system():
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    if not hasattr(libc, "malloc_trim"):
        pytest.skip("not glibc")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    n, size = 100_000, 2048  # 200 MB of chunks below the mmap threshold, like the compiler's small objects
    chunks = [libc.malloc(size) for _ in range(n)]
    for p in chunks:
        ctypes.memset(p, 1, size)  # touch them: resident
    pin = libc.malloc(size)  # keeps the heap top in use, so free() alone cannot shrink the heap
    ctypes.memset(pin, 1, size)
    for p in chunks:
        libc.free(p)
    before = _rss_bytes()
    assert host_memory.release_freed_heap()
    after = _rss_bytes()
    libc.free(pin)
    assert before - after > 0.5 * n * size, (before, after)
