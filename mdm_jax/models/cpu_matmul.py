"""Matmuls and convolutions that reach the CPU's vector and bf16 units (AVX-512 / AMX) through XLA:CPU.

Convolutions (2-d, f32 or bf16) run on oneDNN where it is installed (``mdm_jax.kernels.onednn``, the ``cpu``
extra): forward and both gradients are FFI custom calls, 2-6x XLA:CPU's own. Without oneDNN, the paths below.

XLA:CPU (jaxlib 0.10) hands a dot to YNNPACK's bf16 kernels only when it is bf16 x bf16 -> **f32**; a bf16-output
dot runs on Eigen (4-8x slower here), and every bf16 convolution is converted to f32 (``../shared/design/stack.md``
item 11). So on CPU, in bf16 compute, this module

- runs dots as ``dot_general(bf16, bf16, preferred_element_type=f32)`` then rounds to bf16, and
- runs stride-1 convolutions as one such dot per kernel tap on a shifted view of the padded input (the 3x3 convs of
  the UNet become 9 [N·H·W, Cin] x [Cin, Cout] matmuls summed in f32), and strided ones (the downsamples) as the
  float32 convolution below on f32 copies,

with hand-written backward passes that feed bf16 cotangents to the same f32-accumulating dots (autodiff would
produce f32 x bf16 dots, which fall back to f32). In float32 the convolution itself stays native; its gradients
are written out in forms XLA:CPU runs fast, which it does not find by itself inside a ``lax.scan`` (gradient
accumulation; see ``_kernel_grad``): the input gradient and strided kernel gradients with autodiff's numbers, the
stride-1 kernel gradient as one dot per tap (3x faster than XLA's convolution for it, the same sums in another
order). Batched bf16 einsums are unrolled into unbatched dots where that pays, and bf16 attention runs per
(batch, head) pair with its own backward pass (``attention``). Accelerators keep the
native ops: ``jax.lax.platform_dependent`` picks the CPU branch at lowering, so TPU/GPU numerics are untouched;
the fp32 forward on CPU is XLA's own convolution without oneDNN and oneDNN's strict-f32 one with it (the same sums
in another order; the parity command passes with either). The CPU path is at least as accurate as the native bf16
op (f32 accumulation, one rounding at the end).
Set ``ENABLED = False`` (or ``MDM_CPU_NATIVE_BF16=1``) for the native ops everywhere, ``MDM_CPU_ONEDNN=0`` for the
XLA-only paths (A/B benchmarks).
"""

from __future__ import annotations

import functools
import itertools
import os
import string
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from mdm_jax.kernels import onednn

Array = jax.Array

ENABLED = os.environ.get("MDM_CPU_NATIVE_BF16", "") not in ("1", "true", "True")


def _is_bf16(*xs: Array) -> bool:
    return all(x.dtype == jnp.bfloat16 for x in xs)


# ---------------------------------------------------------------------------------------------------------- dots


def _spec(a_ndim: int, b_ndim: int, dimension_numbers: Any) -> tuple[str, str, str]:
    """einsum subscripts equal to ``lax.dot_general``'s (output: batch, lhs free, rhs free)."""
    (ca, cb), (ba, bb) = dimension_numbers
    letters = iter(string.ascii_letters)
    a = [""] * a_ndim
    b = [""] * b_ndim
    for i, j in zip(ba, bb, strict=True):
        a[i] = b[j] = next(letters)
    for i, j in zip(ca, cb, strict=True):
        a[i] = b[j] = next(letters)
    for idx in range(a_ndim):
        a[idx] = a[idx] or next(letters)
    for idx in range(b_ndim):
        b[idx] = b[idx] or next(letters)
    out = [a[i] for i in ba] + [a[i] for i in range(a_ndim) if i not in ca and i not in ba]
    out += [b[j] for j in range(b_ndim) if j not in cb and j not in bb]
    return "".join(a), "".join(b), "".join(out)


MAX_UNROLLED_BATCH = 64


def _einsum_f32(spec: str, a: Array, b: Array) -> Array:
    """Two-operand einsum as one ``lax.dot_general(..., preferred_element_type=f32)`` (+ a transpose).

    Not ``jnp.einsum(..., preferred_element_type=f32)``: that converts bf16 operands to f32 first, so XLA:CPU
    would run an f32 dot."""
    ins, out = spec.split("->")
    sa, sb = ins.split(",")
    batch = [c for c in sa if c in sb and c in out]
    if batch:  # XLA:CPU runs no batched bf16 x bf16 -> f32 dot: unrolled, or the f32 dot XLA would run anyway
        if _unroll(spec, a, b):
            return _batch_unrolled(spec, a, b, batch)
        a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    contract = [c for c in sa if c in sb and c not in out]
    dims = (([sa.index(c) for c in contract], [sb.index(c) for c in contract]),
            ([sa.index(c) for c in batch], [sb.index(c) for c in batch]))
    y = lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)
    order = batch + [c for c in sa if c not in sb] + [c for c in sb if c not in sa]
    return y if "".join(order) == out else jnp.transpose(y, [order.index(c) for c in out])


def _unroll(spec: str, a: Array, b: Array) -> bool:
    """Unroll a batched dot when the batch is small and the output small beside the larger operand: stacking the
    per-element outputs copies the output, which for attention's logits (``bhqk``) costs more than it saves."""
    ins, out = spec.split("->")
    sa, sb = ins.split(",")
    dims = {**dict(zip(sa, a.shape, strict=True)), **dict(zip(sb, b.shape, strict=True))}
    out_size = 1
    for c in out:
        out_size *= dims[c]
    return _batch_size(spec, a) <= MAX_UNROLLED_BATCH and 2 * out_size <= max(a.size, b.size)


def _batch_size(spec: str, a: Array) -> int:
    """Number of batch elements of a two-operand einsum (indices in both operands and the output)."""
    ins, out = spec.split("->")
    sa, sb = ins.split(",")
    n = 1
    for i, c in enumerate(sa):
        if c in sb and c in out:
            n *= a.shape[i]
    return n


def _batch_unrolled(spec: str, a: Array, b: Array, batch: list[str]) -> Array:
    """A batched einsum as one unbatched f32-accumulating dot per batch element, stacked.

    XLA:CPU converts a batched bf16 dot to f32 (only unbatched bf16 x bf16 -> f32 dots reach YNNPACK's bf16
    kernels, and its batched dot runtime rejects that type): attention's ``bhqk,bkhd->bqhd`` runs 3x faster
    unrolled over (b, h). The logits ``bqhd,bkhd->bhqk`` are not unrolled (``_unroll``), their gradients are."""
    ins, out = spec.split("->")
    sa, sb = ins.split(",")
    sizes = [a.shape[sa.index(c)] for c in batch]
    n = _batch_size(spec, a)
    at = jnp.transpose(a, [sa.index(c) for c in batch] + [i for i, c in enumerate(sa) if c not in batch])
    bt = jnp.transpose(b, [sb.index(c) for c in batch] + [i for i, c in enumerate(sb) if c not in batch])
    at = at.reshape(n, *at.shape[len(batch):])
    bt = bt.reshape(n, *bt.shape[len(batch):])
    sa2, sb2 = (t.translate({ord(c): None for c in batch}) for t in (sa, sb))
    out2 = out.translate({ord(c): None for c in batch})
    y = jnp.stack([_einsum_f32(f"{sa2},{sb2}->{out2}", at[i], bt[i]) for i in range(n)])
    y = y.reshape(*sizes, *y.shape[1:])
    order = batch + list(out2)
    return y if "".join(order) == out else jnp.transpose(y, [order.index(c) for c in out])


def _supported(spec: str) -> bool:
    """Specs ``_einsum_f32`` handles: two operands, no ellipsis or repeated index, every index in two terms (or
    three: a batch index)."""
    if "..." in spec or "->" not in spec or spec.count(",") != 1:
        return False
    ins, out = spec.split("->")
    terms = [*ins.split(","), out]
    if any(len(set(t)) != len(t) for t in terms):
        return False
    return all(sum(c in t for t in terms) >= 2 for c in set("".join(terms)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _f32acc_einsum(spec: str, a: Array, b: Array) -> Array:
    return _einsum_f32(spec, a, b).astype(jnp.bfloat16)


def _f32acc_einsum_fwd(spec: str, a: Array, b: Array) -> tuple[Array, tuple[Array, Array]]:
    return _f32acc_einsum(spec, a, b), (a, b)


def _f32acc_einsum_bwd(spec: str, res: tuple[Array, Array], g: Array) -> tuple[Array, Array]:
    # For C = einsum(A,B) with every index in two of A, B, C (or in all three: batch): dA = einsum(C,B->A),
    # dB = einsum(A,C->B).
    a, b = res
    ins, out = spec.split("->")
    sa, sb = ins.split(",")
    g = g.astype(jnp.bfloat16)
    da = _einsum_f32(f"{out},{sb}->{sa}", g, b).astype(a.dtype)
    db = _einsum_f32(f"{sa},{out}->{sb}", a, g).astype(b.dtype)
    return da, db


_f32acc_einsum.defvjp(_f32acc_einsum_fwd, _f32acc_einsum_bwd)


def einsum(spec: str, a: Array, b: Array) -> Array:
    """``jnp.einsum`` of two operands; bf16 operands on CPU go through f32-accumulating (AMX) dots."""
    if not (ENABLED and _is_bf16(a, b) and _supported(spec)):
        return jnp.einsum(spec, a, b)
    return lax.platform_dependent(a, b, cpu=lambda a, b: _f32acc_einsum(spec, a, b),
                                  default=lambda a, b: jnp.einsum(spec, a, b))


def dot_general(lhs: Array, rhs: Array, dimension_numbers: Any, precision: Any = None,
                preferred_element_type: Any = None, **kwargs: Any) -> Array:
    """Drop-in for ``lax.dot_general`` (flax's ``nn.Dense(dot_general=...)``)."""
    if not (ENABLED and _is_bf16(lhs, rhs)) or preferred_element_type not in (None, jnp.bfloat16) or kwargs:
        return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type, **kwargs)
    sa, sb, so = _spec(lhs.ndim, rhs.ndim, dimension_numbers)
    return einsum(f"{sa},{sb}->{so}", lhs, rhs)


# ---------------------------------------------------------------------------------------------------- convolutions


def _windows(x: Array, pads: Sequence[tuple[int, int]], ksize: Sequence[int], out_sp: Sequence[int]):
    """(tap, the padded input's window seen by that kernel tap) for every tap of a stride-1 convolution."""
    xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    for tap in itertools.product(*map(range, ksize)):
        yield tap, xp[(slice(None), *(slice(t, t + o) for t, o in zip(tap, out_sp, strict=True)), slice(None))]


def _tap_conv_f32(x: Array, w: Array, pads: Sequence[tuple[int, int]]) -> Array:
    """Stride-1 NHWC x HWIO convolution (any number of spatial dims) as one f32-accumulating dot per tap."""
    ksize = w.shape[:x.ndim - 2]
    out_sp = [n + lo + hi - k + 1 for n, (lo, hi), k in zip(x.shape[1:-1], pads, ksize, strict=True)]
    out = None
    for tap, window in _windows(x, pads, ksize, out_sp):
        y = lax.dot_general(window, w[tap], (((x.ndim - 1,), (0,)), ((), ())), preferred_element_type=jnp.float32)
        out = y if out is None else out + y
    return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _tap_conv(x: Array, w: Array, pads: tuple[tuple[int, int], ...]) -> Array:
    return _tap_conv_f32(x, w, pads).astype(jnp.bfloat16)


def _tap_conv_fwd(x: Array, w: Array, pads: tuple[tuple[int, int], ...]) -> tuple[Array, tuple[Array, Array]]:
    return _tap_conv(x, w, pads), (x, w)


def _tap_conv_bwd(pads: tuple[tuple[int, int], ...], res: tuple[Array, Array], g: Array) -> tuple[Array, Array]:
    x, w = res
    g = g.astype(jnp.bfloat16)
    nsp = x.ndim - 2
    ksize = w.shape[:nsp]
    # dx: the "full" correlation of g with the flipped, in/out-swapped kernel.
    w_t = jnp.swapaxes(jnp.flip(w, axis=tuple(range(nsp))), -1, -2)
    pads_t = tuple((k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip(ksize, pads, strict=True))
    dx = _tap_conv_f32(g, w_t, pads_t).astype(x.dtype)
    # Not flattened in bf16: flattening bf16 windows made S64's bf16 train step slower (6.7 vs 5.5 s).
    return dx, _tap_kernel_grad(x, g, ksize, pads, flatten=False).astype(w.dtype)


_tap_conv.defvjp(_tap_conv_fwd, _tap_conv_bwd)


def _tap_kernel_grad(x: Array, g: Array, ksize: Sequence[int], pads: Sequence[tuple[int, int]],
                     flatten: bool = True) -> Array:
    """dL/dw (f32, HWIO) of a stride-1 convolution: dw[tap] = window(tap)^T g, one [Cin, N·H·W] x [N·H·W, Cout]
    dot per tap. The operands are flattened to matrices first: XLA:CPU's dot runs 2x faster on them than on the
    4-d contraction, and 3x faster than XLA's own kernel-gradient convolution (f32, S64's 64x64x256 at batch 4:
    157 vs 477 ms; README, Benchmarks)."""
    cin, cout = x.shape[-1], g.shape[-1]
    axes = (0,) if flatten else tuple(range(x.ndim - 1))  # contracted: batch and output positions
    g2 = g.reshape(-1, cout) if flatten else g
    taps = [lax.dot_general(window.reshape(-1, cin) if flatten else window, g2, ((axes, axes), ((), ())),
                            preferred_element_type=jnp.float32)
            for _, window in _windows(x, pads, ksize, g.shape[1:-1])]
    return jnp.stack(taps).reshape(*ksize, cin, cout)


def _is_nhwc_hwio(dimension_numbers: Any, ndim: int) -> bool:
    if dimension_numbers is None:
        return False
    dn = lax.conv_dimension_numbers((1,) * ndim, (1,) * ndim, dimension_numbers)
    nsp = ndim - 2
    return (tuple(dn.lhs_spec) == (0, ndim - 1, *range(1, ndim - 1))
            and tuple(dn.rhs_spec) == (ndim - 1, ndim - 2, *range(nsp))
            and tuple(dn.out_spec) == (0, ndim - 1, *range(1, ndim - 1)))


# -------------------------------------------------------------------- float32 convolution gradients in loop bodies


def _kernel_grad_padding(in_sp: Sequence[int], ksize: Sequence[int], strides: Sequence[int],
                         out_sp: Sequence[int], pads: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Padding of the kernel-gradient convolution (JAX's transpose rule for the kernel, no dilations)."""
    out = []
    for n, k, s, o, (lo, _) in zip(in_sp, ksize, strides, out_sp, pads, strict=True):
        out.append((lo, (o - 1) * s + 1 - n + k - lo - 1))
    return out


def _kernel_grad(x: Array, g: Array, ksize: Sequence[int], strides: Sequence[int],
                 pads: Sequence[tuple[int, int]]) -> Array:
    """dL/dw of an NHWC x HWIO convolution in the canonical form XLA:CPU's fast (Eigen) convolution takes:
    (Cin, spatial, N) x (spatial, N, Cout) -> (Cin, k, Cout), transposed to HWIO.

    XLA:CPU rewrites the kernel gradient to this form itself, except inside a loop body (a ``lax.scan`` over
    micro-batches), where it stays in its raw layout and runs as naive loops: 27x slower for a 3x3 conv
    (``benchmarks/bench_train.py --grad_accum``; jax-ml/jax#12868). The barrier stops XLA from folding the
    transposes back into the convolution. Same numbers as XLA's own rewrite (bit-identical where measured)."""
    nd = x.ndim
    nsp = nd - 2
    xt = jnp.transpose(x, (nd - 1, *range(1, nd - 1), 0))
    gt = jnp.transpose(g, (*range(1, nd - 1), 0, nd - 1))
    xt, gt = lax.optimization_barrier((xt, gt))
    pads_t = _kernel_grad_padding(x.shape[1:-1], ksize, strides, g.shape[1:-1], pads)
    out = lax.conv_general_dilated(xt, gt, (1,) * nsp, pads_t, rhs_dilation=tuple(strides),
                                   dimension_numbers=_nhwc_dims(nd))
    return jnp.transpose(out, (*range(1, nd - 1), 0, nd - 1))


def _nhwc_dims(nd: int) -> lax.ConvDimensionNumbers:
    return lax.ConvDimensionNumbers((0, nd - 1, *range(1, nd - 1)), (nd - 1, nd - 2, *range(nd - 2)),
                                    (0, nd - 1, *range(1, nd - 1)))


def _native_nhwc(x: Array, w: Array, strides: tuple[int, ...], pads: tuple[tuple[int, int], ...],
                 lhs_dilation: tuple[int, ...] | None = None) -> Array:
    return lax.conv_general_dilated(x, w, strides, pads, lhs_dilation=lhs_dilation,
                                    dimension_numbers=_nhwc_dims(x.ndim))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _f32_conv(x: Array, w: Array, strides: tuple[int, ...], pads: tuple[tuple[int, int], ...]) -> Array:
    return _native_nhwc(x, w, strides, pads)


def _f32_conv_fwd(x: Array, w: Array, strides: tuple[int, ...], pads: tuple[tuple[int, int], ...]):
    return _native_nhwc(x, w, strides, pads), (x, w)


def _input_grad(g: Array, w: Array, in_sp: Sequence[int], strides: Sequence[int],
                pads: Sequence[tuple[int, int]]) -> Array:
    """dL/dx of an NHWC x HWIO convolution: g correlated with the flipped kernel, its in/out channels swapped,
    written out (HWIO) before the convolution sees it. As for ``_kernel_grad``: XLA:CPU does this rewrite itself
    except inside a loop body, where the raw (flipped, "01oi") form runs as naive loops."""
    nsp = g.ndim - 2
    ksize = w.shape[:nsp]
    w_t = jnp.swapaxes(jnp.flip(w, axis=tuple(range(nsp))), -1, -2)
    g, w_t = lax.optimization_barrier((g, w_t))  # also: flip the kernel only when its gradient is due
    pads_t = []
    for n, k, s, o, (lo, _) in zip(in_sp, ksize, strides, g.shape[1:-1], pads, strict=True):
        before = k - lo - 1
        pads_t.append((before, n + k - 1 - ((o - 1) * s + 1) - before))
    return _native_nhwc(g, w_t, (1,) * nsp, tuple(pads_t), lhs_dilation=tuple(strides))


def _f32_conv_bwd(strides: tuple[int, ...], pads: tuple[tuple[int, int], ...], res: tuple[Array, Array],
                  g: Array) -> tuple[Array, Array]:
    x, w = res
    ksize = w.shape[:x.ndim - 2]
    dx = _input_grad(g, w, x.shape[1:-1], strides, pads).astype(x.dtype)
    if all(s == 1 for s in strides):
        return dx, _tap_kernel_grad(x, g, ksize, pads).astype(w.dtype)
    return dx, _kernel_grad(x, g, ksize, strides, pads).astype(w.dtype)


_f32_conv.defvjp(_f32_conv_fwd, _f32_conv_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _onednn_conv(x: Array, w: Array, strides: tuple[int, ...], pads: tuple[tuple[int, int], ...]) -> Array:
    return onednn.conv(x, w, strides, pads)


def _onednn_conv_fwd(x: Array, w: Array, strides: tuple[int, ...], pads: tuple[tuple[int, int], ...]):
    return onednn.conv(x, w, strides, pads), (x, w)


def _onednn_conv_bwd(strides: tuple[int, ...], pads: tuple[tuple[int, int], ...], res: tuple[Array, Array],
                     g: Array) -> tuple[Array, Array]:
    x, w = res
    g = g.astype(x.dtype)
    return (onednn.conv_input_grad(g, w, x.shape, strides, pads),
            onednn.conv_kernel_grad(x, g, w.shape, strides, pads).astype(w.dtype))


_onednn_conv.defvjp(_onednn_conv_fwd, _onednn_conv_bwd)


def conv_general_dilated(lhs: Array, rhs: Array, window_strides: Sequence[int], padding: Any,
                         lhs_dilation: Sequence[int] | None = None, rhs_dilation: Sequence[int] | None = None,
                         dimension_numbers: Any = None, feature_group_count: int = 1,
                         batch_group_count: int = 1, precision: Any = None,
                         preferred_element_type: Any = None) -> Array:
    """Drop-in for ``lax.conv_general_dilated`` (flax's ``nn.Conv(conv_general_dilated=...)``)."""

    def native(lhs: Array, rhs: Array) -> Array:
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                        dimension_numbers, feature_group_count, batch_group_count, precision,
                                        preferred_element_type)

    plain = (ENABLED and not isinstance(padding, str)
             and all(d == 1 for d in (lhs_dilation or ())) and all(d == 1 for d in (rhs_dilation or ()))
             and feature_group_count == 1 and batch_group_count == 1
             and _is_nhwc_hwio(dimension_numbers, lhs.ndim))
    if not plain:
        return native(lhs, rhs)
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    strides = tuple(int(s) for s in window_strides)
    if (lhs.ndim == 4 and lhs.dtype == rhs.dtype and lhs.dtype in (jnp.float32, jnp.bfloat16) and precision is None
            and preferred_element_type in (None, lhs.dtype) and min(min(p) for p in pads) >= 0  # oneDNN: no crops
            and onednn.available()):
        return lax.platform_dependent(lhs, rhs, cpu=lambda x, w: _onednn_conv(x, w, strides, pads), default=native)
    if lhs.dtype == rhs.dtype == jnp.float32 and preferred_element_type in (None, jnp.float32) and precision is None:
        return lax.platform_dependent(lhs, rhs, cpu=lambda x, w: _f32_conv(x, w, strides, pads), default=native)
    if not (_is_bf16(lhs, rhs) and preferred_element_type in (None, jnp.bfloat16)):
        return native(lhs, rhs)
    if all(s == 1 for s in strides):
        return lax.platform_dependent(lhs, rhs, cpu=lambda x, w: _tap_conv(x, w, pads), default=native)
    return lax.platform_dependent(lhs, rhs, cpu=lambda x, w: _strided_bf16(x, w, strides, pads), default=native)


def _strided_bf16(x: Array, w: Array, strides: tuple[int, ...], pads: tuple[tuple[int, int], ...]) -> Array:
    """A strided bf16 convolution (the downsamples) on CPU: the float32 path on f32 copies, rounded once.

    XLA:CPU computes a bf16 convolution in f32 anyway, so the values are the native op's; what changes is the
    gradient, which the native op leaves to autodiff and thus to the naive loops inside a ``lax.scan``."""
    return _f32_conv(x.astype(jnp.float32), w.astype(jnp.float32), strides, pads).astype(jnp.bfloat16)


# ------------------------------------------------------------------------------------------------------- attention

MAX_UNROLLED_ATTENTION = 64  # (batch x heads) pairs; beyond it the batched ops (the HLO grows with the pairs)


def unrolled_attention_applies(q: Array, num_heads: int) -> bool:
    """Whether ``attention`` replaces the batched ops for these bf16 queries (B, Lq, heads, ch) on CPU."""
    return ENABLED and _is_bf16(q) and q.shape[0] * num_heads <= MAX_UNROLLED_ATTENTION


def attention(q: Array, k: Array, v: Array, mask: Array | None = None) -> Array:
    """``softmax(q k^T) v`` per (batch, head) for bf16 (B, L, heads, ch) operands, q and k already scaled; ``mask``
    (B, Lk) with 1 for keys to attend to. Returns (B, Lq, heads, ch) bf16.

    Why: XLA:CPU has no batched bf16 dot, so attention's batched logits run as an f32 dot (Eigen; 100-480 ms per
    32x32 layer of S64 at batch 4) and its softmax gradient materialises full-size broadcasts. Here every (batch,
    head) pair is two unbatched bf16 x bf16 -> f32 dots (YNNPACK, AMX) around an f32 softmax, with a hand-written
    backward pass (gradients stacked per pair; autodiff's transposed slices become a 32-operand sum per
    element): 1.3-2.5x faster forward and 1.2-2.1x with gradients at S64's shapes (``bench_attention.py``).
    The logits stay f32 (the batched path rounds them to bf16); the probabilities are rounded to bf16 once, for
    the second dot, and the backward pass uses them as rounded."""
    keep = jnp.ones((q.shape[0], k.shape[1]), jnp.float32) if mask is None else mask.astype(jnp.float32)
    qt, kt, vt = (jnp.transpose(x, (0, 2, 1, 3)) for x in (q, k, v))
    out = _pairwise_attention(qt, kt, vt, keep, mask is not None)
    return jnp.transpose(out, (0, 2, 1, 3))


def _dot2(a: Array, b: Array, ca: int, cb: int) -> Array:
    """2-d bf16 x bf16 -> f32 dot contracting ``a``'s axis ``ca`` with ``b``'s axis ``cb``."""
    return lax.dot_general(a, b, (((ca,), (cb,)), ((), ())), preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _pairwise_attention(q: Array, k: Array, v: Array, keep: Array, masked: bool) -> Array:
    return _pairwise_attention_fwd(q, k, v, keep, masked)[0]


def _pairwise_attention_fwd(q: Array, k: Array, v: Array, keep: Array, masked: bool):
    """q, k, v: (B, heads, L, ch); keep: (B, Lk)."""
    rows, probs = [], []
    for i in range(q.shape[0]):
        heads = []
        for j in range(q.shape[1]):
            logits = _dot2(q[i, j], k[i, j], 1, 1)
            if masked:
                logits = jnp.where(keep[i][None, :] > 0, logits, jnp.finfo(jnp.float32).min)
            p = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
            heads.append(_dot2(p, v[i, j], 1, 0).astype(v.dtype))
            probs.append(p)
        rows.append(jnp.stack(heads))
    return jnp.stack(rows), (q, k, v, keep, probs)


def _pairwise_attention_bwd(masked: bool, res: tuple, g: Array) -> tuple[Array, Array, Array, Array]:
    # o = p v, p = softmax(s): dv = p^T do; dp = do v^T; ds = p * (dp - rowsum(dp * p)); dq = ds k; dk = ds^T q.
    q, k, v, keep, probs = res
    g = g.astype(v.dtype)
    dq, dk, dv = [], [], []
    for i in range(q.shape[0]):
        rq, rk, rv = [], [], []
        for j in range(q.shape[1]):
            pb = probs[i * q.shape[1] + j]
            rv.append(_dot2(pb, g[i, j], 0, 0).astype(v.dtype))
            dp = _dot2(g[i, j], v[i, j], 1, 1)
            p = pb.astype(jnp.float32)
            ds = p * (dp - jnp.sum(dp * p, axis=-1, keepdims=True))
            if masked:  # masked logits are constants: no gradient (a fully masked row has uniform p)
                ds = jnp.where(keep[i][None, :] > 0, ds, 0.0)
            ds = ds.astype(q.dtype)
            rq.append(_dot2(ds, k[i, j], 1, 0).astype(q.dtype))
            rk.append(_dot2(ds, q[i, j], 0, 0).astype(k.dtype))
        dq.append(jnp.stack(rq))
        dk.append(jnp.stack(rk))
        dv.append(jnp.stack(rv))
    return jnp.stack(dq), jnp.stack(dk), jnp.stack(dv), jnp.zeros_like(keep)


_pairwise_attention.defvjp(_pairwise_attention_fwd, _pairwise_attention_bwd)
