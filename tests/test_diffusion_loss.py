"""Joint multi-resolution loss: ml-mdm fixture parity (network output injected), jit/grad, weights, mixed batches."""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import PARITY, needs_parity

from mdm_jax.diffusion import loss as L
from mdm_jax.diffusion import parity, process
from mdm_jax.diffusion.spec import DiffusionSpec

needs_fixtures = needs_parity


def nhwc(x):
    return jnp.asarray(np.asarray(x).transpose(0, 2, 3, 1))


@needs_fixtures
@pytest.mark.parametrize("name", ["p1", "p2"])
def test_loss_fixture_with_recorded_network_output(name):
    """Everything but the network: feed ml-mdm's recorded v-hat back and compare every intermediate."""
    configs = json.loads((PARITY / "configs.json").read_text())
    spec = parity.spec_for_fixture(name, configs)
    d = dict(np.load(PARITY / f"loss_{name}.npz"))
    recorded = [nhwc(d[f"default/pred_raw_{i}"]) for i in range(spec.num_levels)]

    def replay(xs, t, cond):
        assert [x.shape for x in xs] == [r.shape for r in recorded]
        np.testing.assert_array_equal(t, d["in/t"])
        assert set(cond) == {"lm_outputs", "lm_mask"}
        return recorded

    rows = parity.check_loss(d, spec, replay)
    bad = [r for r in rows if not r[3]]
    assert not bad, bad
    by = {r[0]: r[1] for r in rows}
    # gamma, x_t and targets are bitwise; the pooled low-res image too.
    assert all(by[k] == 0.0 for k in by if "/gamma_" in k or "/target_" in k)
    assert max(by[k] for k in by if "/x_t_" in k) <= 2e-7
    assert max(by[k] for k in by if k.endswith("/loss")) <= 1e-6


def _toy_apply(params, xs, t, cond):
    """A tiny differentiable stand-in network: per-level affine map of x_t plus a time/cond bias."""
    outs = []
    for i, x in enumerate(xs):
        b = x.shape[0]
        bias = 1e-3 * t[:b].astype(jnp.float32)[:, None, None, None] + cond["labels"][:b, None, None, None]
        outs.append(params["w"][i] * x + params["b"][i] + bias)
    return outs


def _batch(shape=(6, 16, 16, 3), seed=0):
    rng = np.random.default_rng(seed)  # NumPy draws: no threefry compiles in the test helpers
    return {"images": jnp.asarray(rng.uniform(-1, 1, shape), jnp.float32),
            "labels": jnp.arange(shape[0], dtype=jnp.float32) * 0.01}


def _noises(shapes, seed=1):
    rng = np.random.default_rng(seed)
    return [jnp.asarray(rng.standard_normal(s), jnp.float32) for s in shapes]


def test_loss_fn_jits_and_differentiates():
    spec = DiffusionSpec(scales=(4, 1), schedule_shifted=True)
    params = {"w": jnp.array([0.5, -0.2]), "b": jnp.array([0.1, 0.0])}
    batch = _batch()
    f = jax.jit(jax.value_and_grad(lambda p, b, r: L.loss_fn(p, b, r, apply_fn=_toy_apply, cfg=spec), has_aux=True))
    key = functools.partial(jax.random.key, impl="rbg")  # any key type works; rbg compiles fast on CPU
    (loss, metrics), grads = f(params, batch, key(3))
    assert np.isfinite(loss) and set(metrics) == {"loss", "mse/level0", "mse/level1"}
    assert all(np.all(np.isfinite(g)) and np.any(g != 0) for g in jax.tree.leaves(grads))
    (loss2, _), _ = f(params, batch, key(3))  # same key -> same draws
    (loss3, _), _ = f(params, batch, key(4))
    assert loss2 == loss and loss3 != loss


def test_draws_follow_mlmdm_order_and_are_independent():
    spec = DiffusionSpec(scales=(4, 1))
    draw = jax.jit(L.draw_time_and_noise, static_argnums=(1, 2))
    time, noises = draw(jax.random.PRNGKey(0), spec, ((512, 8, 8, 3), (512, 2, 2, 3)))
    assert time.shape == (512,) and time.dtype == jnp.int32
    assert int(time.min()) >= 0 and int(time.max()) <= 999 and len(np.unique(time)) > 300
    pooled = process.box_downsample(noises[0], 4) * 4  # what ml-mdm computes first, then discards
    corr = np.corrcoef(np.ravel(pooled), np.ravel(noises[1]))[0, 1]
    assert abs(corr) < 0.05 and abs(float(jnp.std(noises[1])) - 1) < 0.05


def _terms(spec, batch, apply_params, time, noises):
    return L.loss_terms(lambda xs, t, c: _toy_apply(apply_params, xs, t, c), spec, batch["images"], time, noises,
                        {"labels": batch["labels"]})


def test_level_weights_double_loss_and_vdm():
    batch = _batch()
    params = {"w": jnp.array([0.5, -0.2]), "b": jnp.array([0.1, 0.3])}
    time = jnp.array([0, 10, 200, 500, 900, 999], jnp.int32)
    shapes = process.level_shapes(batch["images"].shape, (4, 1))
    noises = _noises(shapes)
    base = _terms(DiffusionSpec(scales=(4, 1)), batch, params, time, noises)
    m0, m1 = base["mse"]
    np.testing.assert_allclose(base["losses"], m0 + m1, rtol=1e-6)
    np.testing.assert_allclose(base["loss"], jnp.mean(m0 + m1), rtol=1e-6)
    w = _terms(DiffusionSpec(scales=(4, 1), multi_res_weights="4:1"), batch, params, time, noises)
    np.testing.assert_allclose(w["losses"], 4 * m0 + m1, rtol=1e-6)
    nr = _terms(DiffusionSpec(scales=(4, 1), multi_res_weights="N_R/N_r"), batch, params, time, noises)
    np.testing.assert_allclose(nr["losses"], m0 + 16 * m1, rtol=1e-6)
    single = _terms(DiffusionSpec(scales=(4, 1), use_double_loss=False), batch, params, time, noises)
    np.testing.assert_allclose(single["losses"], m0, rtol=1e-6)
    vdm = _terms(DiffusionSpec(scales=(4, 1), use_vdm_loss_weights=True), batch, params, time, noises)
    wv = vdm["vdm_weights"]
    np.testing.assert_allclose(vdm["loss"], jnp.sum((m0 + m1) * wv) / jnp.sum(wv), rtol=1e-6)
    # v and x0 targets: mse is against sqrt(g) eps - sqrt(1-g) x0 and x0 respectively.
    vt = _terms(DiffusionSpec(scales=(4, 1), loss_target_type="v"), batch, params, time, noises)
    np.testing.assert_allclose(vt["pred"][0], vt["pred_raw"][0])
    x0t = _terms(DiffusionSpec(scales=(4, 1), loss_target_type="x0"), batch, params, time, noises)
    low = process.build_pyramid(batch["images"], DiffusionSpec(scales=(4, 1)))[1]
    np.testing.assert_allclose(x0t["target"][1], low)


def test_mixed_ratio_static_rows():
    spec = DiffusionSpec(scales=(4, 1), mixed_ratio="2:1")  # level 0 trains on the first int(2/3 * 6) = 4 rows
    batch = _batch()
    params = {"w": jnp.array([0.5, -0.2]), "b": jnp.array([0.1, 0.3])}
    seen = []

    def apply(p, xs, t, c):
        seen.append([x.shape[0] for x in xs])
        return _toy_apply(p, xs, t, c)

    out = jax.eval_shape(lambda p, b, r: L.loss_fn(p, b, r, apply_fn=apply, cfg=spec), params, batch,
                         jax.random.PRNGKey(0))
    assert seen == [[4, 6]] and out[0].shape == ()
    time = jnp.arange(6, dtype=jnp.int32) * 150
    shapes = process.level_shapes(batch["images"].shape, (4, 1))
    noises = _noises(shapes)
    mixed = _terms(spec, batch, params, time, noises)
    full = _terms(DiffusionSpec(scales=(4, 1)), batch, params, time, noises)
    assert np.all(np.asarray(mixed["pred_raw"][0][4:]) == 0)  # rows the network skipped are zero-padded
    expected = jnp.where(jnp.arange(6) < 4, full["mse"][0] / (2 / 3), 0.0) + full["mse"][1]
    np.testing.assert_allclose(mixed["losses"], expected, rtol=1e-5)
