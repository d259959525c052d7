"""oneDNN convolutions on CPU (mdm_jax.kernels.onednn, reached through models.cpu_matmul).

They build here (CI installs ``.[cpu]``), the CPU lowering calls them for the forward and both gradients, values
and gradients equal XLA's float32 convolution to float32 rounding (bf16: to one bf16 rounding), repeated calls
are bit-identical (exact resume), they work inside a scan and under vmap, and a missing oneDNN is a clear,
non-fatal message.
"""

from __future__ import annotations

import platform
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from mdm_jax.kernels import onednn
from mdm_jax.models import cpu_matmul

BF16 = jnp.bfloat16
DN = ("NHWC", "HWIO", "NHWC")
pytestmark = pytest.mark.skipif(not (sys.platform.startswith("linux") and platform.machine() == "x86_64"),
                                reason="oneDNN kernels are built on Linux x86_64 only")


def _rand(shape, seed, scale=1.0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape) * scale, jnp.float32)


def _rel(a, b):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_builds_and_registers_here():
    assert onednn.find_onednn() is not None, 'install the CPU extra: pip install -e ".[cpu]"'
    assert onednn._load() is None and onednn.available()


CASES = [
    ("3x3", (2, 9, 8, 16), (3, 3), (1, 1), ((1, 1), (1, 1))),
    ("3x3 stride 2", (2, 16, 16, 8), (3, 3), (2, 2), ((1, 1), (1, 1))),
    ("odd stride 2", (2, 15, 15, 8), (3, 3), (2, 2), ((1, 1), (1, 1))),
    ("asymmetric pads", (1, 7, 6, 4), (3, 3), (1, 1), ((0, 2), (2, 0))),
    ("1x1", (2, 4, 4, 8), (1, 1), (1, 1), ((0, 0), (0, 0))),
    ("3 output channels", (2, 8, 8, 32), (3, 3), (1, 1), ((1, 1), (1, 1))),
    ("3 input channels", (2, 8, 8, 3), (3, 3), (1, 1), ((1, 1), (1, 1))),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_values_and_gradients_equal_xlas_float32_convolution(case, dtype):
    _, xs, k, strides, pads = case
    cout = 3 if "output" in case[0] else 6
    x, w = _rand(xs, 0).astype(dtype), _rand((*k, xs[-1], cout), 1, 0.3).astype(dtype)

    def ref(x, w):  # XLA's float32 convolution of the same (rounded) inputs
        return lax.conv_general_dilated(x.astype(jnp.float32), w.astype(jnp.float32), strides, pads,
                                        dimension_numbers=DN)

    def ours(x, w):
        return cpu_matmul.conv_general_dilated(x, w, strides, pads, dimension_numbers=DN)

    def loss(f):
        return lambda x, w: jnp.sum(jnp.sin(f(x, w).astype(jnp.float32)))

    tol = 1e-5 if dtype == "float32" else 1e-2  # f32 sums in another order; or one bf16 rounding of them
    y = jax.jit(ours)(x, w)
    assert y.dtype == x.dtype and y.shape == ref(x, w).shape
    assert _rel(y, ref(x, w)) < tol
    got = jax.jit(jax.grad(loss(ours), (0, 1)))(x, w)
    want = jax.grad(loss(ref), (0, 1))(x, w)
    for g, r, primal in zip(got, want, (x, w), strict=True):
        assert g.dtype == primal.dtype and _rel(g, r) < 2 * tol


def test_cpu_lowering_calls_onednn_for_the_convolution_and_both_gradients():
    x, w = _rand((2, 8, 8, 16), 0), _rand((3, 3, 16, 8), 1)

    def loss(x, w):
        return jnp.sum(cpu_matmul.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=DN) ** 2)

    for dtype in (jnp.float32, BF16):
        hlo = jax.jit(jax.grad(loss, (0, 1))).lower(x.astype(dtype), w.astype(dtype)).compile().as_text()
        for target in ("forward", "backward_data", "backward_weights"):
            assert f'custom_call_target="mdm_onednn_conv_{target}"' in hlo
        assert "convolution(" not in hlo


def test_negative_padding_keeps_xlas_convolution():
    x, w = _rand((1, 8, 8, 4), 0), _rand((3, 3, 4, 4), 1)
    conv = jax.jit(lambda x, w: cpu_matmul.conv_general_dilated(x, w, (1, 1), ((-1, 1), (1, 1)), dimension_numbers=DN))
    assert "mdm_onednn" not in conv.lower(x, w).as_text()
    ref = lax.conv_general_dilated(x, w, (1, 1), ((-1, 1), (1, 1)), dimension_numbers=DN)
    np.testing.assert_array_equal(conv(x, w), ref)


def test_repeated_calls_are_bit_identical_and_scan_equals_the_unrolled_sum():
    x, w = _rand((3, 2, 16, 16, 8), 0), _rand((3, 3, 8, 8), 1)

    def grad(w, xi):
        return jax.grad(lambda w: jnp.sum(jnp.sin(cpu_matmul.conv_general_dilated(
            xi, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=DN))))(w)

    scanned = jax.jit(lambda w, x: lax.scan(lambda acc, xi: (acc + grad(w, xi), None), jnp.zeros_like(w), x)[0])
    a, b = scanned(w, x), scanned(w, x)
    np.testing.assert_array_equal(a, b)
    unrolled = sum(jax.jit(grad)(w, x[i]) for i in range(x.shape[0]))
    assert _rel(a, unrolled) < 1e-6


def test_vmap_runs_one_call_per_element():
    x, w = _rand((3, 2, 6, 6, 4), 0), _rand((3, 3, 4, 5), 1)
    conv = lambda x: cpu_matmul.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=DN)  # noqa: E731
    got = jax.jit(jax.vmap(conv))(x)
    want = jnp.stack([lax.conv_general_dilated(xi, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=DN) for xi in x])
    assert _rel(got, want) < 1e-5


def test_missing_onednn_or_opt_out_is_a_message_not_an_error(monkeypatch):
    monkeypatch.setattr(onednn, "find_onednn", lambda: None)
    why = onednn._load.__wrapped__()
    assert "mdm-jax[cpu]" in why and "ONEDNN_ROOT" in why
    monkeypatch.setenv("MDM_CPU_ONEDNN", "0")
    assert onednn._load.__wrapped__() == "MDM_CPU_ONEDNN=0"
    # and cpu_matmul then keeps XLA's convolution
    monkeypatch.setattr(cpu_matmul.onednn, "available", lambda: False)
    x, w = _rand((1, 8, 8, 4), 0), _rand((3, 3, 4, 4), 1)
    hlo = jax.jit(lambda x, w: cpu_matmul.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                                                 dimension_numbers=DN)).lower(x, w).as_text()
    assert "mdm_onednn" not in hlo and "convolution" in hlo


def test_build_failure_names_the_compiler_error(monkeypatch, tmp_path):
    monkeypatch.setenv("MDM_JAX_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setattr(onednn, "SOURCE", tmp_path / "broken.cc")
    (tmp_path / "broken.cc").write_text("this is not C++\n")
    inc, lib = onednn.find_onednn()
    with pytest.raises(RuntimeError, match="building broken.cc failed"):
        onednn.build(inc, lib, tmp_path, "g++")
    assert not list(tmp_path.glob("*.so"))  # nothing half-written left in the cache
