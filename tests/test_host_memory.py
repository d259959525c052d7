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


_FAULTS_SCRIPT = r"""
import json, resource
from mdm_jax.training import host_memory
applied = host_memory.keep_freed_memory()
import jax, jax.numpy as jnp

def faults(fn):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    fn()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

# A program with 64 MiB of temporaries (XLA's buffer assignment), like a step's.
f = jax.jit(lambda x: sum(jnp.sin(x * i) for i in range(16)).sum())
x = jnp.ones((1024, 1024), jnp.float32)
temp_pages = f.lower(x).compile().memory_analysis().temp_size_in_bytes / 4096
assert temp_pages >= 16384, temp_pages
for _ in range(8):
    f(x).block_until_ready()
print(json.dumps({"applied": applied, "faults": [faults(lambda: f(x).block_until_ready()) / temp_pages
                                                 for _ in range(8)]}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_kept_memory_is_reused_without_page_faults():
    """With ``keep_freed_memory`` a jitted program's temporaries are reused by its next call (almost no page
    faults); with glibc's defaults they are mapped and faulted in again on every call."""
    import json
    import subprocess

    def run(env_value):
        env = dict(os.environ, **{host_memory.ENV_SWITCH: env_value})
        out = subprocess.run([sys.executable, "-c", _FAULTS_SCRIPT], env=env, capture_output=True, text=True,
                             check=True, timeout=300)
        return json.loads(out.stdout.strip().splitlines()[-1])

    kept, system = run("keep"), run("system")
    if not kept["applied"]:
        pytest.skip("not glibc")
    assert not system["applied"]
    # Page faults per call as a fraction of the temporaries' pages. The heap may still grow after warm-up (a call
    # placed in a region not touched before, depending on the threads' order), hence the sum over eight calls.
    assert sum(kept["faults"]) < 2.5 and min(system["faults"]) > 0.9, (kept, system)
