"""bf16/f16 sums on XLA:CPU accumulate in float32 (``mdm_jax.models.cpu_reductions``).

Without it, XLA:CPU sums bf16 in bf16: the bias gradients of bf16 training (autodiff's ``reduce_sum`` over
batch x H x W) were 6-40% off on a small model, and sums over several axes 67-92% too small.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from mdm_jax.models import build_model, cpu_reductions
from mdm_jax.models.spec import spec_from_config


def _jitted_sum(axes):
    return jax.jit(lambda a: lax.reduce_sum_p.bind(a, axes=axes, out_sharding=None))


def _sum(x, axes):
    return _jitted_sum(axes)(x)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("shape,axes", [((4, 64, 64, 32), (0, 1, 2)), ((2, 32, 32, 16), (1, 2)),
                                        ((4, 1024, 64), (0, 1)), ((8192, 16), (0,))])
def test_low_precision_sum_is_float32_accurate(dtype, shape, axes):
    x = jnp.asarray(np.random.default_rng(0).uniform(0.5, 1.0, shape), dtype)
    out = _sum(x, axes)
    ref = np.asarray(x, np.float64).sum(axes)
    assert out.dtype == dtype and out.shape == ref.shape
    # one rounding of the exact sum: within half a unit in the last place (bf16 2^-9, f16 2^-12, relative)
    tol = 2.0 ** -8 if dtype == jnp.bfloat16 else 2.0 ** -11
    np.testing.assert_allclose(np.asarray(out, np.float64), ref, rtol=tol)


def test_float32_lowering_is_jaxs_own():
    x = jnp.ones((4, 8, 8, 16), jnp.float32)
    text = _jitted_sum((0, 1, 2)).lower(x).as_text()
    assert "convert" not in text and "stablehlo.reduce" in text
    low = _jitted_sum((0, 1, 2)).lower(x.astype(jnp.bfloat16)).as_text()
    assert "convert" in low and cpu_reductions.REGISTERED


def test_bf16_model_gradients_match_float32_leaf_by_leaf():
    """Every parameter's gradient of a bf16 model (biases, FiLM, norms included) within bf16 error of float32."""
    cfg = {"resolution": 32, "resolution_channels": [16, 32], "num_resnets_per_resolution": [1, 1],
           "attention_levels": [1], "num_attention_layers": [0, 1], "num_heads": 2, "temporal_dim": 32,
           "num_classes": 4, "skip_mid_blocks": True,
           "resnet_config": {"num_channels": -1, "output_channels": -1, "num_groups_norm": 8, "dropout": 0.0,
                             "use_attention_ffn": True}}
    spec = spec_from_config(cfg)
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((4, 32, 32, 3)), jnp.float32)
    target = jnp.asarray(rng.standard_normal((4, 32, 32, 3)), jnp.float32)
    t, labels = jnp.array([10, 200, 500, 900]), jnp.array([0, 1, 2, 3])
    f32, bf16 = build_model(spec), build_model(spec, dtype="bfloat16")
    params = f32.init(jax.random.PRNGKey(0), [x], t, labels)["params"]
    # non-zero output layers, so that every parameter gets a gradient
    params = jax.tree.map(lambda p: p + 0.05 * jnp.asarray(rng.standard_normal(p.shape), p.dtype), params)

    def grads(model):
        def loss(p):
            out = model.apply({"params": p}, [x], t, labels)[0].astype(jnp.float32)
            return jnp.mean((out - target) ** 2)
        return jax.jit(jax.grad(loss))(params)

    ref, low = grads(f32), grads(bf16)
    worst = {}
    for (path, r), g in zip(jax.tree_util.tree_leaves_with_path(ref), jax.tree.leaves(low), strict=True):
        r, g = np.asarray(r, np.float64), np.asarray(g, np.float64)
        worst[jax.tree_util.keystr(path)] = np.linalg.norm(g - r) / max(np.linalg.norm(r), 1e-12)
    bad = {k: round(v, 3) for k, v in worst.items() if v > 0.05}
    assert not bad, f"bf16 gradients off by > 5% of float32's: {bad}"
