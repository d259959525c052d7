"""The process's heap policy on Linux/glibc: keep step buffers mapped between steps, and give the compiler's
freed heap back once.

Why: XLA:CPU (and torch) allocate each step's temporaries fresh. glibc serves every block over 32 MiB with its own
``mmap`` and unmaps it on free, so every step pays a page fault (and a page of zeroing) per 4 KiB of temporaries
again: a bf16 3x3 conv at 64x64x256, batch 2, spends half its time faulting (35 ms -> 16 ms without it), and a
train step of S64 re-faults gigabytes. ``keep_freed_memory`` makes glibc serve large blocks from its main heap and
never shrink it on its own, so freed step buffers are reused; peak RSS is unchanged in kind (the heap's high-water
mark is the step's peak), and ``release_freed_heap`` still returns memory explicitly (after compiling).
Elsewhere (macOS, musl) both are no-ops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
ENV_SWITCH = "MDM_HOST_MALLOC"  # "auto" (default) | "keep" | "system" (glibc's defaults)


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    if getattr(libc, "mallopt", None) is None or getattr(libc, "malloc_trim", None) is None:  # not glibc
        return None
    libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    return libc


def _has_accelerator() -> bool:
    """A GPU or TPU on this host (device files; no JAX backend needed, so callable before JAX starts)."""
    return any(os.path.exists(p) for p in ("/dev/nvidia0", "/dev/accel0", "/dev/vfio/0"))


def keep_freed_memory(mode: str | None = None) -> bool:
    """Serve large blocks from glibc's main heap and stop automatic trimming (True when applied).

    Call it first thing in a process, before JAX starts its threads: one arena (``M_ARENA_MAX=1``) is what makes
    the compiler's and the runtime's threads allocate from the main heap too (a thread's own arena maps anything
    over 64 MiB separately). ``mode`` (default: ``$MDM_HOST_MALLOC``, else "auto"): "keep", "system" (leave
    glibc's defaults) or "auto", which keeps on hosts without a GPU/TPU only, where the steps' buffers are host
    memory (on accelerator hosts, one arena would only serialise the input pipeline's threads)."""
    mode = mode or os.environ.get(ENV_SWITCH, "") or "auto"
    if mode not in ("auto", "keep", "system"):
        raise ValueError(f"{ENV_SWITCH}={mode!r}: expected 'auto', 'keep' or 'system'")
    if mode == "system" or (mode == "auto" and _has_accelerator()):
        return False
    libc = _glibc()
    if libc is None:
        return False
    ok = libc.mallopt(_M_ARENA_MAX, 1) and libc.mallopt(_M_MMAP_MAX, 0) and libc.mallopt(_M_TRIM_THRESHOLD, -1)
    return bool(ok)


def release_freed_heap() -> bool:
    """``malloc_trim(0)``: True when glibc returned memory to the system, False when none or not glibc.

    Compiling a model like S64 allocates about a gigabyte of small objects and frees them when it is done; without
    this they would stay resident for the whole run (README, Benchmarks: S64's step)."""
    libc = _glibc()
    return bool(libc is not None and libc.malloc_trim(0))
