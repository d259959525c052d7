"""NestedUNet: ml-mdm parity, parameter counts of the released architectures, input validation, options."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import PARITY, needs_parity

from mdm_jax import parity
from mdm_jax.models import ConfigError, build_model, spec_from_config
from mdm_jax.models.architectures import get_architecture

needs_fixtures = needs_parity


def count_params(cfg, cond_dim: int = 2048) -> int:
    spec = spec_from_config(cfg)
    model = build_model(spec)
    xs = [jax.ShapeDtypeStruct((1, r, r, 3), jnp.float32) for r in spec.resolutions]
    text = (jax.ShapeDtypeStruct((1, 4, cond_dim), jnp.float32), jax.ShapeDtypeStruct((1, 4), jnp.float32))
    shapes = jax.eval_shape(lambda xs, *c: model.init(jax.random.PRNGKey(0), xs, jnp.zeros((1,)), *c), xs, *text)
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))


@pytest.mark.parametrize("name,expected", [("S64", 461_359_107), ("S64S256", 476_613_958),
                                           ("S64S256S1024", 480_970_057)])
def test_parameter_counts_match_released_models(name, expected):
    assert count_params(get_architecture(name)) == expected


@needs_fixtures
@pytest.mark.parametrize("name", ["p1", "p2"])
def test_unet_fixture_parity(name):
    entry = json.loads((PARITY / "configs.json").read_text())["models"][name]
    with jax.default_matmul_precision("highest"):
        fm, data = parity.load_fixture_model(PARITY, name, entry)
        checks = parity.check_unet(fm, data, entry)
    assert len(checks) >= 12
    bad = [c.line() for c in checks if not c.ok]
    assert not bad, "\n".join(bad)


def tiny(levels: int = 2, **overrides) -> dict:
    """A small nested config (text-conditioned) for option tests."""
    cfg = {"resolution": 8, "resolution_channels": [32, 32], "num_resnets_per_resolution": [1, 1],
           "attention_levels": [1], "num_attention_layers": [0, 1], "temporal_dim": 64,
           "conditioning_feature_dim": 16, "conditioning_feature_proj_dim": 32, "micro_conditioning": "scale:8",
           "use_attention_ffn": True}
    for _ in range(levels - 1):
        cfg = {"resolution_channels": [32, 32], "num_resnets_per_resolution": [1, 1], "temporal_dim": 64,
               "conditioning_feature_dim": 16, "micro_conditioning": "scale:16", "skip_normalization": False,
               "inner_config": cfg}
    cfg["resolution"] = 8 * 2 ** (levels - 1)
    cfg.update(overrides)
    return cfg


def run(cfg, batch=(2, 2), tokens=5, key=0, params=None, **kw):
    spec = spec_from_config(cfg)
    model = build_model(spec, **kw)
    rng = np.random.default_rng(key)
    n = len(spec.levels)
    sizes = (list(batch) + [batch[-1]] * n)[:n]
    xs = [jnp.asarray(rng.normal(size=(b, r, r, 3)), jnp.float32) for b, r in zip(sizes, spec.resolutions,
                                                                                     strict=True)]
    b = sizes[-1]
    text = jnp.asarray(rng.normal(size=(b, tokens, 16)), jnp.float32)
    mask = jnp.ones((b, tokens)).at[0, 3:].set(0)
    t = jnp.asarray(rng.integers(0, 1000, size=b))
    if params is None:
        params = model.init(jax.random.PRNGKey(key), xs, t, text, mask)["params"]
        # Zero-initialised layers would hide bugs: perturb every parameter.
        leaves, tree = jax.tree.flatten(params)
        keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
        params = jax.tree.unflatten(tree, [p + 0.05 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys,
                                                                                                   strict=True)])
    return model.apply({"params": params}, xs, t, text, mask), params, spec


def test_three_levels_return_one_output_per_resolution_high_to_low():
    outs, params, spec = run(tiny(3))
    assert spec.resolutions == (32, 16, 8)
    assert [o.shape for o in outs] == [(2, 32, 32, 3), (2, 16, 16, 3), (2, 8, 8, 3)]
    assert set(params) >= {"inner_unet", "in_adapter", "out_adapter"}
    assert "inner_unet" in params["inner_unet"]
    assert all(bool(jnp.isfinite(o).all()) for o in outs)


def test_inner_params_are_the_inner_model():
    """Growing a model: the inner subtree of a nested model is exactly a model of the inner config."""
    inner_cfg = tiny(1)
    _, inner_params, _ = run(inner_cfg)
    outer_cfg = tiny(2)
    _, outer_params, _ = run(outer_cfg)
    shapes = lambda t: jax.tree.map(lambda x: x.shape, t)  # noqa: E731
    assert shapes(outer_params["inner_unet"]) == shapes(inner_params)


def test_mixed_resolution_batch_rows_match_full_batch():
    """With fewer high-res rows, the rows present equal those of a full batch (zero-padded adapter rows)."""
    _, params, spec = run(tiny(2))
    model = build_model(spec)
    rng = np.random.default_rng(3)
    hi, lo = (jnp.asarray(rng.normal(size=(2, r, r, 3)), jnp.float32) for r in spec.resolutions)
    text, mask, t = jnp.asarray(rng.normal(size=(2, 5, 16)), jnp.float32), jnp.ones((2, 5)), jnp.array([3, 700])
    full = model.apply({"params": params}, [hi, lo], t, text, mask)
    part = model.apply({"params": params}, [hi[:1], lo], t, text, mask)
    assert part[0].shape == (1, 16, 16, 3) and part[1].shape == (2, 8, 8, 3)
    np.testing.assert_allclose(part[0], full[0][:1], atol=1e-5)
    np.testing.assert_allclose(part[1][:1], full[1][:1], atol=1e-5)
    assert not np.allclose(part[1][1:], full[1][1:], atol=1e-3)  # row 1 got no features from the outer level


def test_lm_head_and_masked_cross_attention_options():
    outs, params, _ = run(tiny(2, inner_config={**tiny(1), "num_lm_head_layers": 2, "masked_cross_attention": 1}))
    assert "lm_head_1" in params["inner_unet"]
    assert set(params["inner_unet"]["lm_head_0"]) == {"attn", "mlp"}
    assert all(bool(jnp.isfinite(o).all()) for o in outs)


@pytest.mark.slow  # default run: see README "Test" (kept under ~15 min)
def test_remat_and_bfloat16_agree_with_float32():
    ref, params, _ = run(tiny(2))
    rem, _, _ = run(tiny(2), params=params, remat=True)
    bf16, _, _ = run(tiny(2), params=params, dtype="bfloat16")
    for a, b, c in zip(ref, rem, bf16, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
        assert b.dtype == c.dtype == jnp.float32
        assert float(jnp.abs(a - c).max()) < 0.1 * float(jnp.abs(a).max())


def test_class_conditioning_uses_a_null_label_for_guidance():
    cfg = {"resolution": 8, "resolution_channels": [32, 32], "num_resnets_per_resolution": [1, 1],
           "temporal_dim": 64, "num_classes": 10}
    spec = spec_from_config(cfg)
    model = build_model(spec)
    x = [jnp.ones((3, 8, 8, 3))]
    params = model.init(jax.random.PRNGKey(0), x, jnp.zeros(3), labels=jnp.array([0, 1, 10]))["params"]
    assert params["label_emb"]["embedding"].shape == (11, 64)
    params = jax.tree.map(lambda p: p + 0.05, params)
    a = model.apply({"params": params}, x, jnp.zeros(3), labels=jnp.array([0, 1, 10]))[0]
    b = model.apply({"params": params}, x, jnp.zeros(3))[0]  # no labels: the null label
    assert not np.allclose(a[0], a[1])
    np.testing.assert_allclose(a[2], b[2], atol=1e-6)


@pytest.mark.parametrize("change,field", [
    ({"resolution_channels": [32, 48]}, "resolution_channels[1]"),
    ({"resolution": 9}, "resolution"),
    ({"num_resnets_per_resolution": [1, 1, 1]}, "num_resnets_per_resolution"),
    ({"attention_levels": [3]}, "attention_levels"),
])
def test_bad_configs_name_the_field(change, field):
    with pytest.raises(ConfigError, match=field.replace("[", r"\[").replace("]", r"\]")):
        spec_from_config({**tiny(1), **change})


def test_inner_resolution_that_does_not_nest_is_rejected():
    cfg = tiny(2)
    cfg["inner_config"] = {**cfg["inner_config"], "resolution": 4}
    with pytest.raises(ConfigError, match=r"inner_config.resolution: 4 .*expected 16 / 2 = 8"):
        spec_from_config(cfg)


def test_wrong_input_size_or_missing_level_is_rejected():
    spec = spec_from_config(tiny(2))
    model = build_model(spec)
    with pytest.raises(ConfigError, match=r"inputs\[1\]: expected NHWC shape \(B, 8, 8, 3\)"):
        model.init(jax.random.PRNGKey(0), [jnp.zeros((1, 16, 16, 3)), jnp.zeros((1, 9, 9, 3))], jnp.zeros(1),
                   jnp.zeros((1, 2, 16)), jnp.ones((1, 2)))
    with pytest.raises(ConfigError, match="expected 2 arrays"):
        model.init(jax.random.PRNGKey(0), [jnp.zeros((1, 16, 16, 3))], jnp.zeros(1), jnp.zeros((1, 2, 16)),
                   jnp.ones((1, 2)))
