"""Forward process: D^r pooling (bitwise vs ml-mdm), pyramid, q_sample, v/eps/x0 conversions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import PARITY

from mdm_jax.diffusion import process
from mdm_jax.diffusion.spec import DiffusionSpec


@pytest.mark.skipif(not (PARITY / "loss_p2.npz").exists(), reason=f"no parity fixtures at {PARITY}")
def test_box_pooling_matches_mlmdm_bitwise():
    d = np.load(PARITY / "loss_p2.npz")
    x = jnp.asarray(d["in/images"].transpose(0, 2, 3, 1))
    pyr = process.build_pyramid(x, DiffusionSpec(scales=(2, 1)))
    assert np.array_equal(np.asarray(pyr[1]), d["in/images_1"].transpose(0, 2, 3, 1))


def test_pyramid_shapes_and_means():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 64, 64, 3))
    pyr = process.build_pyramid(x, DiffusionSpec(scales=(16, 4, 1)))
    assert [p.shape for p in pyr] == [(2, 64, 64, 3), (2, 16, 16, 3), (2, 4, 4, 3)]
    ref = x.reshape(2, 4, 16, 4, 16, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(pyr[2], ref, atol=1e-6)
    assert process.level_shapes((2, 64, 64, 3), (16, 4, 1)) == [(2, 64, 64, 3), (2, 16, 16, 3), (2, 4, 4, 3)]


def test_bilinear_option():
    x = jnp.full((1, 16, 16, 3), 0.25)
    y = process.build_pyramid(x, DiffusionSpec(scales=(4, 1), downsample="bilinear"))[1]
    assert y.shape == (1, 4, 4, 3)
    np.testing.assert_allclose(y, 0.25, atol=1e-6)  # constants are preserved
    ramp = jnp.broadcast_to(jnp.arange(16.0)[None, :, None, None], (1, 16, 16, 1))
    z = process.bilinear_downsample(ramp, 4)
    assert np.all(np.diff(np.asarray(z[0, :, 0, 0])) > 0)


def test_parameterisations_round_trip():
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(1), 3)
    x0 = jax.random.uniform(k1, (4, 8, 8, 3), minval=-1, maxval=1)
    eps = jax.random.normal(k2, (4, 8, 8, 3))
    g = jnp.array([0.999, 0.7, 0.3, 0.01], jnp.float32)
    x_t = process.q_sample(x0, eps, g)
    gb = g[:, None, None, None]
    np.testing.assert_allclose(x_t, jnp.sqrt(gb) * x0 + jnp.sqrt(1 - gb) * eps, atol=1e-6)
    v = process.target_from_x0_eps(x0, eps, g, "v")
    np.testing.assert_allclose(v, process.v_from_x0(x_t, x0, g), atol=5e-5)
    for kind, pred in (("v", v), ("eps", eps), ("x0", x0)):
        np.testing.assert_allclose(process.x0_from_pred(x_t, pred, g, kind)[:3], x0[:3], atol=5e-5)
        np.testing.assert_allclose(process.pred_from_x0(x_t, x0, g, kind)[1:], pred[1:], atol=5e-5)
    np.testing.assert_allclose(process.convert_pred(x_t, v, g, "v", "eps")[1:], eps[1:], atol=5e-5)
    # ml-mdm's eps-loss on a v-prediction is a gamma-weighted v-loss: eps_hat - eps = sqrt(g) (v_hat - v).
    v_hat = v + 0.1 * jax.random.normal(k3, v.shape)
    diff = process.convert_pred(x_t, v_hat, g, "v", "eps") - eps
    np.testing.assert_allclose(diff, jnp.sqrt(gb) * (v_hat - v), atol=2e-4)
