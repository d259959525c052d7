"""The CPU bf16 matmul path (mdm_jax.models.cpu_matmul) and the sampler's kernel pre-cast (models.precision).

The convolution tests here run the XLA-only path (fixture ``xla_convs``: what runs where oneDNN is not
installed); ``test_onednn.py`` tests the oneDNN convolutions that run where it is. bf16 convolutions, Dense layers
and attention einsums take f32-accumulating dots on CPU: values and gradients agree with float32 references to
bf16 rounding, the CPU lowering really has no convolution left, float32 keeps the native forward (the parity
path) with gradients equal to autodiff's bit for bit that stay in XLA:CPU's fast form inside a scan, and
pre-casting kernels for sampling changes no bit of the output.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from mdm_jax.models import build_model, cpu_matmul
from mdm_jax.models.precision import cast_kernels

BF16 = jnp.bfloat16


def _rand(shape, seed, scale=1.0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape) * scale, jnp.float32)


def _rel(a, b):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture
def xla_convs(monkeypatch):
    """The convolution paths used without oneDNN (``mdm_jax.kernels.onednn`` unavailable)."""
    monkeypatch.setattr(cpu_matmul.onednn, "available", lambda: False)


def _conv(fn, x, w, pads, dn):
    nd = lax.conv_dimension_numbers(x.shape, w.shape, dn)
    return fn(x, w, (1,) * (x.ndim - 2), pads, dimension_numbers=nd)


@pytest.mark.parametrize("case", [
    ("3x3", (2, 6, 5, 8), (3, 3, 8, 4), ((1, 1), (1, 1)), ("NHWC", "HWIO", "NHWC")),
    ("asym", (1, 7, 6, 4), (3, 3, 4, 6), ((0, 2), (2, 0)), ("NHWC", "HWIO", "NHWC")),
    ("1x1", (2, 4, 4, 8), (1, 1, 8, 3), ((0, 0), (0, 0)), ("NHWC", "HWIO", "NHWC")),
    ("1d", (3, 16, 8), (3, 8, 8), ((1, 1),), ("NWC", "WIO", "NWC")),
])
def test_tap_conv_matches_float32_conv_and_its_gradients(case, xla_convs):
    _, xs, ws, pads, dn = case
    x, w = _rand(xs, 0), _rand(ws, 1, 0.3)

    def ours(x, w):
        return _conv(cpu_matmul.conv_general_dilated, x.astype(BF16), w.astype(BF16), pads, dn)

    def ref(x, w):  # float32 conv of the same bf16-rounded inputs
        return _conv(lax.conv_general_dilated, x.astype(BF16).astype(jnp.float32),
                     w.astype(BF16).astype(jnp.float32), pads, dn)

    y = jax.jit(ours)(x, w)
    assert y.dtype == BF16
    assert _rel(y, ref(x, w)) < 1e-2  # one bf16 rounding of an f32-accumulated sum

    def loss(f):
        return lambda x, w: jnp.sum(f(x, w).astype(jnp.float32) * jnp.cos(jnp.arange(y.size).reshape(y.shape)))

    gx, gw = jax.jit(jax.grad(loss(ours), (0, 1)))(x, w)
    rx, rw = jax.grad(loss(ref), (0, 1))(x, w)
    assert _rel(gx, rx) < 2e-2 and _rel(gw, rw) < 2e-2


def test_cpu_lowering_has_no_convolution_in_bf16_and_keeps_it_in_float32(xla_convs):
    x, w = _rand((1, 8, 8, 16), 0), _rand((3, 3, 16, 16), 1)
    dn = ("NHWC", "HWIO", "NHWC")

    def f(x, w):
        return _conv(cpu_matmul.conv_general_dilated, x, w, ((1, 1), (1, 1)), dn)

    bf16 = jax.jit(f).lower(x.astype(BF16), w.astype(BF16)).as_text()
    assert "convolution" not in bf16 and bf16.count("dot_general") == 9
    assert "convolution" in jax.jit(f).lower(x, w).as_text()  # float32: the native op, untouched numerics
    # Strided convs (downsampling) in bf16: a float32 convolution, as XLA:CPU would compute the native one.
    nd = lax.conv_dimension_numbers(x.shape, w.shape, dn)
    strided = jax.jit(lambda x, w: cpu_matmul.conv_general_dilated(x, w, (2, 2), ((1, 1), (1, 1)),
                                                                    dimension_numbers=nd))
    convs = [ln for ln in strided.lower(x.astype(BF16), w.astype(BF16)).as_text().splitlines() if "convolution" in ln]
    assert len(convs) == 1 and "bf16" not in convs[0] and "f32" in convs[0]


@pytest.mark.parametrize("case", [
    ("3x3 stride 2", (2, 16, 16, 8), (3, 3), (2, 2), ((1, 1), (1, 1))),
    ("odd stride 2", (2, 15, 15, 8), (3, 3), (2, 2), ((1, 1), (1, 1))),
    ("1d stride 2", (3, 8, 8), (3,), (2,), ((1, 1),)),
], ids=lambda c: c[0])
def test_strided_bf16_conv_is_the_native_forward_with_float32_accurate_gradients(case, xla_convs):
    _, xs, k, strides, pads = case
    dn = ("NHWC", "HWIO", "NHWC") if len(xs) == 4 else ("NWC", "WIO", "NWC")
    x, w = _rand(xs, 0).astype(BF16), _rand((*k, xs[-1], 6), 1, 0.3).astype(BF16)

    def f32_conv(x, w, *args, **kwargs):  # float32 conv of the same bf16 inputs: the reference
        return lax.conv_general_dilated(x.astype(jnp.float32), w.astype(jnp.float32), *args, **kwargs)

    def loss(fn):
        return lambda x, w: jnp.sum(jnp.sin(fn(x, w, strides, pads, dimension_numbers=dn).astype(jnp.float32)))

    ours = jax.jit(lambda x, w: cpu_matmul.conv_general_dilated(x, w, strides, pads, dimension_numbers=dn))(x, w)
    native = jax.jit(lambda x, w: lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=dn))(x, w)
    assert ours.dtype == BF16
    np.testing.assert_array_equal(np.asarray(ours, np.float32), np.asarray(native, np.float32))
    got = jax.jit(jax.grad(loss(cpu_matmul.conv_general_dilated), (0, 1)))(x, w)
    ref = jax.grad(loss(f32_conv), (0, 1))(x, w)
    for a, b in zip(got, ref, strict=True):
        assert a.dtype == BF16 and _rel(a, b) < 1e-2  # f32 sums, one bf16 rounding (as the native op's gradients)


@pytest.mark.parametrize("spec,sa,sb", [
    ("bqhd,bkhd->bhqk", (2, 5, 3, 4), (2, 7, 3, 4)),
    ("bhqk,bkhd->bqhd", (2, 3, 5, 7), (2, 7, 3, 4)),
    ("bhqk,bkhd->bqhd", (2, 3, 8, 16), (2, 16, 3, 4)),  # unrolled: 6 dots
    ("ab,bc->ac", (6, 5), (5, 3)),
    ("bcda,ae->bcde", (1, 2, 3, 4), (4, 5)),
])
def test_einsum_and_its_gradients(spec, sa, sb):
    a, b = _rand(sa, 0), _rand(sb, 1)

    def ours(a, b):
        return cpu_matmul.einsum(spec, a.astype(BF16), b.astype(BF16)).astype(jnp.float32)

    def ref(a, b):
        return jnp.einsum(spec, a.astype(BF16).astype(jnp.float32), b.astype(BF16).astype(jnp.float32))

    assert _rel(jax.jit(ours)(a, b), ref(a, b)) < 1e-2
    for g, r in zip(jax.grad(lambda a, b: jnp.sum(ours(a, b) ** 2), (0, 1))(a, b),
                    jax.grad(lambda a, b: jnp.sum(ref(a, b) ** 2), (0, 1))(a, b), strict=True):
        assert _rel(g, r) < 2e-2
    # bf16 operands go to the dot as bf16 (jnp.einsum(preferred_element_type=f32) would convert them to f32), in
    # unbatched dots: a batched one is unrolled per batch element, or (attention's logits, whose output is larger
    # than its operands) run on f32 operands, as XLA:CPU would run a batched bf16 dot anyway.
    dots = [ln for ln in jax.jit(ours).lower(a, b).as_text().splitlines() if "dot_general" in ln]
    ins, out = spec.split("->")
    batched = any(c in ins.split(",")[1] and c in out for c in ins.split(",")[0])
    if batched and not cpu_matmul._unroll(spec, a, b):
        assert len(dots) == 1 and "batching_dims" in dots[0] and "bf16" not in dots[0]
    else:
        n = cpu_matmul._batch_size(spec, a) if batched else 1
        assert len(dots) == n and all("batching_dims" not in d and "bf16" in d for d in dots), dots


def test_dot_general_with_batch_dims_equals_lax():
    a, b = _rand((3, 4, 5, 6), 0), _rand((3, 6, 2, 5), 1)
    dims = (((3, 2), (1, 3)), ((0,), (0,)))  # contract (6, 5), batch 3: output (3, 4, 2)
    ours = cpu_matmul.dot_general(a.astype(BF16), b.astype(BF16), dims)
    ref = lax.dot_general(a.astype(BF16).astype(jnp.float32), b.astype(BF16).astype(jnp.float32), dims)
    assert ours.shape == ref.shape == (3, 4, 2) and ours.dtype == BF16
    assert _rel(ours, ref) < 1e-2


def test_disabled_gives_the_native_ops(monkeypatch):
    monkeypatch.setattr(cpu_matmul, "ENABLED", False)
    x, w = _rand((1, 8, 8, 16), 0).astype(BF16), _rand((3, 3, 16, 16), 1).astype(BF16)
    hlo = jax.jit(lambda x, w: _conv(cpu_matmul.conv_general_dilated, x, w, ((1, 1), (1, 1)),
                                     ("NHWC", "HWIO", "NHWC"))).lower(x, w).as_text()
    assert "convolution" in hlo


def _tiny_model(dtype):
    from mdm_jax.models.spec import spec_from_config

    cfg = {"resolution": 16, "resolution_channels": [16, 32], "num_resnets_per_resolution": [1, 1],
           "attention_levels": [1], "num_attention_layers": [0, 1], "num_heads": 2, "temporal_dim": 32,
           "conditioning_feature_dim": 24, "conditioning_feature_proj_dim": 32, "num_lm_head_layers": 0,
           "masked_cross_attention": 0, "skip_mid_blocks": False, "skip_cond_emb": False,
           "resnet_config": {"num_channels": -1, "output_channels": -1, "num_groups_norm": 8, "dropout": 0.0,
                             "use_attention_ffn": True}}
    return build_model(spec_from_config(cfg), dtype=dtype)


def test_precast_kernels_change_no_bit_of_a_bf16_model_and_keep_float32_untouched():
    model = _tiny_model("bfloat16")
    xs = [_rand((2, 16, 16, 3), 0)]
    t = jnp.array([10, 500])
    text, mask = _rand((2, 5, 24), 1), jnp.ones((2, 5))
    params = model.init(jax.random.PRNGKey(0), xs, t, text, mask)["params"]
    cast = cast_kernels(params, model.dtype)
    kinds = {(getattr(p[-1], "key", ""), leaf.dtype.name) for p, leaf in jax.tree_util.tree_leaves_with_path(cast)}
    assert ("kernel", "bfloat16") in kinds and ("kernel", "float32") not in kinds
    assert ("scale", "float32") in kinds and ("bias", "float32") in kinds  # norms and biases as they were
    f = jax.jit(lambda p: model.apply({"params": p}, xs, t, text, mask)[0])
    np.testing.assert_array_equal(np.asarray(f(params)), np.asarray(f(cast)))
    assert cast_kernels(params, jnp.float32) is params


@pytest.mark.parametrize("case", [
    ("3x3", (2, 16, 16, 8), (3, 3), (1, 1), ((1, 1), (1, 1))),
    ("3x3 stride 2", (2, 16, 16, 8), (3, 3), (2, 2), ((1, 1), (1, 1))),
    ("odd stride 2", (2, 15, 15, 8), (3, 3), (2, 2), ((1, 1), (1, 1))),
    ("asym", (1, 7, 6, 4), (3, 3), (1, 1), ((0, 2), (2, 0))),
    ("1x1", (2, 4, 4, 8), (1, 1), (1, 1), ((0, 0), (0, 0))),
    ("1d stride 2", (3, 8, 8), (3,), (2,), ((1, 1),)),
], ids=lambda c: c[0])
def test_float32_conv_gradients_equal_autodiffs(case, xla_convs):
    """float32 convolutions keep the native forward; their hand-written input gradients equal JAX's autodiff bit
    for bit, and so do strided kernel gradients; stride-1 kernel gradients are per-tap dots, the same sums in
    another order (float32 rounding)."""
    _, xs, k, strides, pads = case
    dn = ("NHWC", "HWIO", "NHWC") if len(xs) == 4 else ("NWC", "WIO", "NWC")
    x, w = _rand(xs, 0), _rand((*k, xs[-1], 6), 1)

    def loss(fn):
        return lambda x, w: jnp.sum(jnp.sin(fn(x, w, strides, pads, dimension_numbers=dn)))

    ref = jax.jit(jax.grad(loss(lax.conv_general_dilated), (0, 1)))(x, w)
    out = jax.jit(jax.grad(loss(cpu_matmul.conv_general_dilated), (0, 1)))(x, w)
    np.testing.assert_array_equal(out[0], ref[0])
    if any(s != 1 for s in strides):
        np.testing.assert_array_equal(out[1], ref[1])
    else:
        assert _rel(out[1], ref[1]) < 1e-6


def test_conv_gradients_inside_a_scan_stay_in_the_fast_form(xla_convs):
    """Inside a ``lax.scan`` (gradient accumulation) XLA:CPU leaves autodiff's convolution gradients in their raw
    form (kernel gradient ``f01b_i01o->01bf``, input gradient with a flipped ``01oi`` kernel) and runs them as
    naive loops, 10-30x slower; ours reach the compiled loop body as plain NHWC x HWIO convolutions."""
    x, w = _rand((4, 2, 16, 16, 8), 0), _rand((3, 3, 8, 8), 1)

    def accumulated(conv):
        def body(acc, xi):
            def loss(w):
                y = conv(xi, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
                return jnp.sum(jnp.sin(conv(y, w, (1, 1), ((1, 1), (1, 1)),
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))))
            return acc + jax.grad(loss)(w), None
        return jax.jit(lambda w, x: lax.scan(body, jnp.zeros_like(w), x)[0])

    def conv_forms_of(lowered):
        hlo = lowered.compile().as_text()
        return {line.split("dim_labels=")[1].split(",")[0] for line in hlo.splitlines() if "convolution(" in line}

    def conv_forms(fn):
        return conv_forms_of(fn.lower(w, x))

    assert conv_forms(accumulated(cpu_matmul.conv_general_dilated)) == {"b01f_01io->b01f"}
    assert conv_forms(accumulated(lax.conv_general_dilated)) - {"b01f_01io->b01f"}  # what this guards against
    # A bf16 downsample too: its gradients are the float32 ones on f32 copies, in the same fast form.
    xb, wb = x.astype(BF16), w.astype(BF16)

    def downsample_loss(w, xi):
        y = cpu_matmul.conv_general_dilated(xi, w, (2, 2), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.sum(jnp.sin(y.astype(jnp.float32)))

    def strided_sum(w, x):
        step = lambda acc, xi: (acc + jax.grad(downsample_loss)(w, xi).astype(jnp.float32), None)  # noqa: E731
        return lax.scan(step, jnp.zeros(w.shape, jnp.float32), x)[0]
    strided = jax.jit(strided_sum)
    assert conv_forms_of(strided.lower(wb, xb)) == {"b01f_01io->b01f"}
    # Same sums in another order (Eigen vs the naive loops): equal to float32 rounding of the largest entry.
    assert _rel(accumulated(cpu_matmul.conv_general_dilated)(w, x), accumulated(lax.conv_general_dilated)(w, x)) < 1e-5


@pytest.mark.parametrize("lk,masked", [(12, False), (7, True)])
def test_bf16_attention_per_head_pair_matches_float32_and_its_gradients(lk, masked):
    """bf16 attention on CPU runs per (batch, head) pair with a hand-written backward pass: values and gradients
    within bf16 rounding of float32 attention on the same (rounded) inputs; masked keys get no gradient, a fully
    masked row attends uniformly; the lowering holds only unbatched bf16 dots."""
    from mdm_jax.models.layers import multi_head_attention

    b, lq, c, heads = 3, 10, 16, 2
    q, k, v = _rand((b, lq, c), 0), _rand((b, lk, c), 1), _rand((b, lk, c), 2)
    mask = jnp.asarray(np.array([[1] * lk, [1] * 3 + [0] * (lk - 3), [0] * lk], np.float32)) if masked else None
    ct = _rand((b, lq, c), 3)

    def ours(q, k, v):
        out = multi_head_attention(q.astype(BF16), k.astype(BF16), v.astype(BF16), heads, mask)
        return jnp.sum(out.astype(jnp.float32) * ct), out

    def ref(q, k, v):
        q, k, v = (x.astype(BF16).astype(jnp.float32) for x in (q, k, v))
        qh, kh, vh = (x.reshape(b, -1, heads, c // heads) for x in (q, k, v))
        logits = jnp.einsum("bqhd,bkhd->bhqk", qh, kh) / np.sqrt(c // heads)
        if mask is not None:
            logits = jnp.where(mask[:, None, None, :] > 0, logits, jnp.finfo(jnp.float32).min)
        out = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, -1), vh).reshape(b, lq, c)
        return jnp.sum(out * ct), out

    assert cpu_matmul.unrolled_attention_applies(q.astype(BF16).reshape(b, lq, heads, -1), heads)
    (_, out), grads = jax.jit(jax.value_and_grad(ours, (0, 1, 2), has_aux=True))(q, k, v)
    (_, out_r), grads_r = jax.value_and_grad(ref, (0, 1, 2), has_aux=True)(q, k, v)
    assert out.dtype == BF16 and _rel(out, out_r) < 1e-2
    for g, r in zip(grads, grads_r, strict=True):
        assert _rel(g, r) < 3e-2
    if masked:
        assert float(jnp.abs(grads[1][1, 3:]).max()) == 0.0 and float(jnp.abs(grads[2][1, 3:]).max()) == 0.0
        np.testing.assert_allclose(np.asarray(out[2], np.float32), np.asarray(out_r[2]), rtol=2e-2, atol=2e-2)
    hlo = jax.jit(jax.grad(lambda *a: ours(*a)[0], (0, 1, 2))).lower(q, k, v).as_text()
    dots = [ln for ln in hlo.splitlines() if "dot_general" in ln]
    assert dots and all("batching_dims" not in d and "bf16" in d.split("->")[0] for d in dots)


def test_float32_attention_keeps_the_batched_ops():
    from mdm_jax.models.layers import multi_head_attention

    q = _rand((2, 6, 8), 0)
    hlo = jax.jit(lambda q: multi_head_attention(q, q, q, 2)).lower(q).as_text()
    assert sum("dot_general" in ln and "batching_dims" in ln for ln in hlo.splitlines()) == 2
    assert not cpu_matmul.unrolled_attention_applies(q.reshape(2, 6, 2, 4), 2)
