"""Give the compiler's freed heap back to the operating system (glibc's ``malloc_trim``).

Why: compiling a model like S64 allocates about a gigabyte of small objects and frees them when it is done.
glibc keeps freed small chunks in its heap, and the step's buffers (large, so ``mmap``'d) never reuse them, so
they would stay in the process's resident memory for the whole run (README, Benchmarks: S64's step).
Elsewhere (macOS, musl) this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys


def release_freed_heap() -> bool:
    """``malloc_trim(0)``: True when glibc returned memory to the system, False when none or not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:  # not glibc
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return bool(trim(0))
