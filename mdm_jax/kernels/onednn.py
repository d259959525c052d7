"""oneDNN convolutions for XLA:CPU, as FFI custom calls (``onednn_conv.cc``), built on first use.

Why: on the CPUs we run on, XLA:CPU's float32 convolutions reach ~40% of oneDNN's and its bf16 ones run in f32 on
Eigen; oneDNN runs them on AVX-512 / AMX (2-6x on the UNet's convs, ``README`` Benchmarks). oneDNN comes from
PyPI (``pip install "mdm-jax[cpu]"``: ``onednn-cpu-gomp`` and its headers); the C++ file is compiled once per
environment with the system C++ compiler against jaxlib's FFI headers into a cache folder
(``$MDM_JAX_KERNEL_CACHE``, default ``~/.cache/mdm_jax/kernels``). Where any piece is missing, ``available()`` is
False (one log line says what to install) and callers keep XLA's own convolutions. ``MDM_CPU_ONEDNN=0`` turns it
off (A/B benchmarks).

Threads: oneDNN's OpenMP runtime uses ``OMP_NUM_THREADS`` (default: the CPUs this process may run on).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

Array = jax.Array
log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("onednn_conv.cc")
ONEDNN_MAJOR = 3
_TARGETS = {"forward": "MdmOnednnConvForward", "backward_data": "MdmOnednnConvBackwardData",
            "backward_weights": "MdmOnednnConvBackwardWeights"}


def enabled_by_env() -> bool:
    return os.environ.get("MDM_CPU_ONEDNN", "1") not in ("0", "false", "False")


def _prefixes() -> list[Path]:
    """Where pip puts the wheels' data files (lib/, include/): the environment, the user base, $ONEDNN_ROOT."""
    out = [Path(os.environ["ONEDNN_ROOT"])] if os.environ.get("ONEDNN_ROOT") else []
    import site

    out += [Path(sys.prefix), Path(sys.base_prefix), Path(site.getuserbase())]
    return out


def find_onednn() -> tuple[Path, Path] | None:
    """(include dir, lib dir) of a oneDNN 3.x with headers, or None."""
    for p in _prefixes():
        inc, lib = p / "include", p / "lib"
        if (inc / "oneapi" / "dnnl" / "dnnl.hpp").is_file() and (lib / f"libdnnl.so.{ONEDNN_MAJOR}").exists():
            return inc, lib
    return None


def _cache_dir() -> Path:
    return Path(os.environ.get("MDM_JAX_KERNEL_CACHE", Path.home() / ".cache" / "mdm_jax" / "kernels"))


def build(inc: Path, lib: Path, ffi_inc: Path, compiler: str) -> Path:
    """Compile the library (once per source, headers and jaxlib), atomically, and return its path."""
    import jaxlib

    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), str(inc).encode(), str(lib).encode(), jaxlib.__version__.encode(),
                 compiler.encode()):
        key.update(part)
    out = _cache_dir() / f"libmdm_onednn_conv-{key.hexdigest()[:16]}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        tmp_out = Path(tmp) / out.name
        cmd = [compiler, "-O2", "-std=c++17", "-shared", "-fPIC", "-w", f"-I{ffi_inc}", f"-I{inc}", str(SOURCE),
               f"-L{lib}", "-ldnnl", f"-Wl,-rpath,{lib}", "-o", str(tmp_out)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"building {SOURCE.name} failed ({' '.join(cmd)}):\n{res.stderr[-4000:]}")
        os.replace(tmp_out, out)  # atomic: a concurrent builder writes the same bytes
    return out


@functools.cache
def _load() -> str | None:
    """Build and register the FFI targets; None when ready, else why not."""
    if not enabled_by_env():
        return "MDM_CPU_ONEDNN=0"
    if not sys.platform.startswith("linux"):
        return "oneDNN kernels are built for Linux only"
    found = find_onednn()
    if found is None:
        return ('oneDNN 3.x not found: pip install "mdm-jax[cpu]" (onednn-cpu-gomp and onednn-devel-cpu-gomp), '
                "or set ONEDNN_ROOT to a folder with include/oneapi/dnnl and lib/libdnnl.so.3")
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not compiler:
        return "no C++ compiler (g++) to build the oneDNN kernels"
    try:
        path = build(*found, Path(jax.ffi.include_dir()), compiler)
        lib = ctypes.CDLL(str(path))
        for name, symbol in _TARGETS.items():
            jax.ffi.register_ffi_target(f"mdm_onednn_conv_{name}", jax.ffi.pycapsule(getattr(lib, symbol)),
                                        platform="cpu")
        lib.MdmOnednnVersion.restype = ctypes.c_char_p
        log.info("oneDNN %s convolutions on CPU (%s)", lib.MdmOnednnVersion().decode(), path)
    except Exception as e:  # noqa: BLE001 - any failure here means: use XLA's convolutions
        return f"building or loading the oneDNN kernels failed: {e}"
    return None


@functools.cache
def available() -> bool:
    """True when the oneDNN convolutions are built and registered (tried once per process)."""
    why = _load()
    if why is not None:  # only worth a warning where the CPU is what runs the model
        log.log(logging.WARNING if jax.default_backend() == "cpu" else logging.INFO,
                "XLA's own CPU convolutions in use (%s)", why)
    return why is None


_VMAP = "sequential"  # the kernels take rank-4 buffers: a vmapped call runs once per element


def _attrs(strides: Sequence[int], pads: Sequence[tuple[int, int]]) -> dict[str, np.int64]:
    (sh, sw), ((plh, phh), (plw, phw)) = strides, pads
    return {k: np.int64(v) for k, v in dict(sh=sh, sw=sw, plh=plh, phh=phh, plw=plw, phw=phw).items()}


def _out_size(n: int, k: int, s: int, pad: tuple[int, int]) -> int:
    return (n + pad[0] + pad[1] - k) // s + 1


def conv(x: Array, w: Array, strides: Sequence[int], pads: Sequence[tuple[int, int]]) -> Array:
    """NHWC x HWIO -> NHWC, f32 or bf16 (f32 accumulation, output in the operands' type)."""
    n, h, wd, _ = x.shape
    kh, kw, _, o = w.shape
    shape = (n, _out_size(h, kh, strides[0], pads[0]), _out_size(wd, kw, strides[1], pads[1]), o)
    return jax.ffi.ffi_call("mdm_onednn_conv_forward", jax.ShapeDtypeStruct(shape, x.dtype), vmap_method=_VMAP)(
        x, w, **_attrs(strides, pads))


def conv_input_grad(g: Array, w: Array, x_shape: Sequence[int], strides: Sequence[int],
                    pads: Sequence[tuple[int, int]]) -> Array:
    """dL/dx of ``conv`` given dL/dy = g, in g's type."""
    return jax.ffi.ffi_call("mdm_onednn_conv_backward_data", jax.ShapeDtypeStruct(tuple(x_shape), g.dtype),
                            vmap_method=_VMAP)(
        g, w, **_attrs(strides, pads))


def conv_kernel_grad(x: Array, g: Array, w_shape: Sequence[int], strides: Sequence[int],
                     pads: Sequence[tuple[int, int]]) -> Array:
    """dL/dw of ``conv`` given dL/dy = g, summed and returned in float32 (also for bf16 operands)."""
    return jax.ffi.ffi_call("mdm_onednn_conv_backward_weights", jax.ShapeDtypeStruct(tuple(w_shape), np.float32),
                            vmap_method=_VMAP)(
        x, g, **_attrs(strides, pads))
