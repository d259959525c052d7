"""Schedules, timestep lists and DiffusionSpec: ml-mdm fixture parity, shift algebra, config validation."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import PARITY, needs_parity

from mdm_jax.diffusion import parity, schedules
from mdm_jax.diffusion.spec import DiffusionSpec

needs_fixtures = needs_parity


@needs_fixtures
def test_schedules_fixture_parity():
    rows = parity.check_schedules(PARITY / "schedules.npz")
    assert len(rows) == 17
    bad = [r for r in rows if not r[3]]
    assert not bad, bad
    # The float32 tables, VDM weights, shifted tables and timestep lists are bitwise equal.
    assert all(err == 0.0 for name, err, _, _ in rows if not name.endswith("_f64"))


def test_deepfloyd_known_values():
    g = schedules.gamma_table("deepfloyd")
    assert g.dtype == np.float32 and g.shape == (1001,) and g[0] == 1.0
    np.testing.assert_allclose(g[[1, 500, 999, 1000]], [0.999958694, 0.493843585, 2.4288e-6, 2.4288e-9], rtol=1e-4)
    assert np.all(np.diff(g) < 0)


@pytest.mark.parametrize("scale,power", [(4, 1), (16, 2), (2, 1)])
def test_shift_is_logsnr_offset(scale, power):
    g = schedules.gamma_table("deepfloyd")
    gs = schedules.shift_gammas(g, scale, power)
    assert gs[0] == 1.0
    inner = slice(1, 990)  # away from float32 saturation
    lg = np.log(g[inner].astype(np.float64) / (1 - g[inner].astype(np.float64)))
    lgs = np.log(gs[inner].astype(np.float64) / (1 - gs[inner].astype(np.float64)))
    np.testing.assert_allclose(lgs - lg, -power * math.log(scale), atol=2e-3)
    assert np.array_equal(schedules.shift_gammas(g, 1, power), g)


def test_timesteps_examples():
    n50 = schedules.sampling_timesteps(50)
    assert list(n50[:3]) == [981, 962, 942] and list(n50[-2:]) == [20, 0]
    assert list(schedules.sampling_timesteps(250)[:2]) == [997, 993]
    assert list(schedules.sampling_timesteps(6)) == [858, 715, 572, 429, 286, 143, 0]
    assert np.array_equal(schedules.sampling_timesteps(1000), np.arange(1000, -1, -1))


def test_continuous_gamma_is_monotone_and_differentiable():
    tau = jnp.linspace(0.0, 1.0, 11)
    g = schedules.continuous_gamma(tau)
    assert np.all(np.diff(np.asarray(g)) < 0)
    d = jax.grad(lambda x: schedules.continuous_gamma(x, "cosine", shift_logsnr=math.log(4)))(0.5)
    assert np.isfinite(d) and d < 0


def test_spec_from_mlmdm_config_and_hashable():
    cfg = {
        "sampler_config": {"schedule_type": "DEEPFLOYD", "prediction_type": "V_PREDICTION",
                           "loss_target_type": "DDPM", "schedule_shifted": True, "schedule_shifted_power": 2,
                           "threshold_function": "CLIP", "num_diffusion_steps": 1000},
        "use_double_loss": True, "multi_res_weights": "16:4:1", "nest_ratio": [16, 4],
        "use_vdm_loss_weights": False, "no_use_residual": True,
    }
    spec = DiffusionSpec.from_config(cfg)
    assert spec.scales == (16, 4, 1) and spec.prediction_type == "v" and spec.loss_target_type == "eps"
    assert spec.multi_res_weights == (16.0, 4.0, 1.0) and spec.level_weights() == (16.0, 4.0, 1.0)
    assert hash(spec) == hash(DiffusionSpec.from_config(cfg))
    lg = spec.level_gammas()
    assert lg.shape == (3, 1001) and np.array_equal(lg[2], spec.gammas())

    ml_collections = pytest.importorskip("ml_collections")
    spec2 = DiffusionSpec.from_config(ml_collections.ConfigDict(cfg))
    assert spec2 == spec


@needs_fixtures
def test_spec_for_fixture_models():
    configs = json.loads((PARITY / "configs.json").read_text())
    p1 = parity.spec_for_fixture("p1", configs)
    p2 = parity.spec_for_fixture(configs["models"]["p2"])
    assert p1.scales == (1,) and not p1.schedule_shifted and p1.signal_scales() == (1.0,)
    assert p2.scales == (2, 1) and p2.schedule_shifted and p2.signal_scales() == (1.0, 1.0)


@pytest.mark.parametrize("kwargs,field", [
    ({"schedule_type": "linear"}, "schedule_type"),
    ({"prediction_type": "score"}, "prediction_type"),
    ({"scales": (4, 2)}, "scales"),
    ({"scales": (3, 2, 1)}, "scales"),
    ({"scales": (4, 1), "multi_res_weights": (1.0,)}, "multi_res_weights"),
    ({"scales": (4, 1), "multi_res_weights": "4:1", "use_double_loss": False}, "multi_res_weights"),
    ({"scales": (4, 1), "mixed_ratio": "1:1:1"}, "mixed_ratio"),
    ({"downsample": "bicubic"}, "downsample"),
    ({"beta_start": 0.1, "beta_end": 0.01}, "beta_start"),
])
def test_spec_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        DiffusionSpec(**kwargs)


def test_spec_unknown_config_key():
    with pytest.raises(ValueError, match="unknown field"):
        DiffusionSpec.from_config({"shedule_type": "deepfloyd"})


def test_spec_derived_values():
    spec = DiffusionSpec(scales=(4, 1), mixed_ratio="2:1", multi_res_weights="n_ratio")
    assert spec.mixed_fractions() == pytest.approx((2 / 3, 1.0))
    assert spec.mixed_rows(6) == (4, 6)
    assert spec.level_weights() == (1.0, 16.0)
    assert DiffusionSpec(scales=(4, 1), schedule_shifted=False).signal_scales() == (4.0, 1.0)
    assert DiffusionSpec(rescale_signal=2.0).signal_scales() == (2.0,)
    assert DiffusionSpec(scales=(4, 1), use_double_loss=False).level_weights() == (1.0, 0.0)
