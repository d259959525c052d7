"""Sampler: ml-mdm single-step/threshold fixtures, step 0 of the CFG trajectories, no-recompile, debug loop."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import PARITY, needs_parity

from mdm_jax.diffusion import parity
from mdm_jax.diffusion.sampler import _run_jit, dynamic_threshold, sample, threshold
from mdm_jax.diffusion.spec import DiffusionSpec

needs_fixtures = needs_parity


@needs_fixtures
@pytest.mark.parametrize("name", ["p1", "p2"])
def test_single_step_and_threshold_fixtures(name):
    rows = parity.check_sampler_steps(PARITY / f"sampler_{name}.npz")
    assert len(rows) == 25
    bad = [r for r in rows if not r[3]]
    assert not bad, bad
    assert max(err for n, err, _, _ in rows if "x0_from_eps" not in n) <= 5e-7
    assert max(err for n, err, _, _ in rows if n.startswith("thr/")) <= 6e-8


@needs_fixtures
@pytest.mark.parametrize("name", ["p1", "p2"])
@pytest.mark.parametrize("run", ["traj_eta0", "traj_eta1"])
def test_trajectory_first_step_with_recorded_network_output(name, run):
    """Step 0 of each CFG trajectory with ml-mdm's recorded raw network output fed back (no network needed)."""
    configs = json.loads((PARITY / "configs.json").read_text())
    spec = parity.spec_for_fixture(name, configs)
    d = dict(np.load(PARITY / f"sampler_{name}.npz"))
    recorded = [jnp.asarray(d[f"{run}/step0/net_out/level{i}"].transpose(0, 2, 3, 1)) for i in range(spec.num_levels)]

    def replay(xs, t, cond):
        assert [x.shape for x in xs] == [r.shape for r in recorded]  # the image batch is doubled for CFG
        assert cond["lm_outputs"].shape[0] == recorded[0].shape[0]
        return recorded

    rows = parity.check_sampler_trajectories(d, spec, replay, runs=(run,), num_steps=1)
    bad = [r for r in rows if not r[3]]
    assert not bad, bad
    by = {r[0]: r[1] for r in rows}
    assert by[f"{run}/net_t"] == 0.0
    assert all(err == 0.0 for n, err in by.items() if "gamma" in n)
    assert max(err for n, err in by.items() if "pred_cfg" in n or "/x0/" in n or "partial" in n) <= 2e-6


def _toy_model(calls):
    def model_fn(xs, t, cond):
        calls.append(1)  # runs once per trace
        return [0.5 * x + 0.01 * t.astype(jnp.float32)[:, None, None, None] + cond["c"][:, None, None, None]
                for x in xs]

    return model_fn


def test_guidance_eta_thresholds_and_timesteps_do_not_recompile():
    spec = DiffusionSpec(scales=(2, 1))
    calls: list[int] = []
    model_fn = _toy_model(calls)
    rng = np.random.default_rng(0)
    cond = {"c": jnp.asarray([0.0, 0.0, 0.1, -0.1])}  # [uncond x 2; cond x 2]
    noise = {"init": [jnp.asarray(rng.standard_normal((2, r, r, 3)), jnp.float32) for r in (8, 4)],
             "steps": [jnp.asarray(rng.standard_normal((10, 2, r, r, 3)), jnp.float32) for r in (8, 4)]}
    before = _run_jit._cache_size()
    outs = []
    for w, eta, q, ts in ((2.0, 0.5, 0.9, 10), (7.5, 1.0, 0.99, 10), (3.0, 0.3, 0.95, 20)):
        ts_arr = np.linspace(1000 - ts, 0, 11).round().astype(np.int32)  # different values, same length
        outs.append(sample(model_fn, spec, cond, noise=noise, timesteps=ts_arr, eta=jnp.float32(eta),
                           guidance_weight=w, threshold_kind="dynamic", threshold_quantile=q, threshold_max=1.5))
    assert len(calls) == 1 and _run_jit._cache_size() == before + 1
    assert not np.allclose(outs[0]["image"], outs[1]["image"])


def test_debug_loop_matches_scan():
    spec = DiffusionSpec(scales=(2, 1))
    cond = {"c": jnp.zeros((2,))}
    kw = dict(shape=(2, 8, 8, 3), rng=jax.random.key(1, impl="rbg"), num_steps=2, method="ddpm",
              threshold_kind="dynamic_if", return_trajectory=True)
    a = sample(_toy_model([]), spec, cond, **kw)
    b = sample(_toy_model([]), spec, cond, debug=True, **kw)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, atol=1e-6)


def test_three_levels_trajectory_outputs():
    spec = DiffusionSpec(scales=(4, 2, 1), schedule_shifted_power=2)
    cond = {"c": jnp.zeros((3,))}
    kw = dict(shape=(3, 16, 16, 3), rng=jax.random.key(1, impl="rbg"), num_steps=3, method="ddpm",
              threshold_kind="clip", return_trajectory=True)
    a = sample(_toy_model([]), spec, cond, **kw)
    assert [x.shape for x in a["levels"]] == [(3, 16, 16, 3), (3, 8, 8, 3), (3, 4, 4, 3)]
    np.testing.assert_array_equal(a["image"], np.clip(a["levels"][0], -1, 1))
    tr = a["trajectory"]
    assert tr["gamma_t"].shape == (3, 3) and list(np.asarray(tr["net_t"])) == [750, 499, 249]  # [751, 500, 250, 0] - 1
    # Level 0 is the most shifted (lowest gamma); the innermost row is the plain table.
    assert np.all(np.asarray(tr["gamma_t"][:, 0]) < np.asarray(tr["gamma_t"][:, 1]))
    assert np.all(np.asarray(tr["gamma_t"][:, 1]) < np.asarray(tr["gamma_t"][:, 2]))
    np.testing.assert_array_equal(tr["gamma_t"][:, 2], spec.gammas()[[751, 500, 250]])
    # Same key, same result; a different key differs; thresholded x0 stays in [-1, 1].
    c = sample(_toy_model([]), spec, cond, **kw)
    np.testing.assert_array_equal(a["levels"][0], c["levels"][0])
    d = sample(_toy_model([]), spec, cond, **{**kw, "rng": jax.random.key(2, impl="rbg")})
    assert not np.allclose(a["levels"][2], d["levels"][2])
    assert float(jnp.max(jnp.abs(tr["x0"][0]))) <= 1.0


def test_guidance_one_equals_conditional_model():
    spec = DiffusionSpec()
    rng = np.random.default_rng(2)
    init = [jnp.asarray(rng.standard_normal((2, 8, 8, 3)), jnp.float32)]
    c = jnp.asarray([0.3, -0.2])
    a = sample(_toy_model([]), spec, {"c": jnp.concatenate([c * 0, c])}, noise={"init": init}, num_steps=4,
               guidance_weight=1.0)
    b = sample(_toy_model([]), spec, {"c": c}, noise={"init": init}, num_steps=4)
    np.testing.assert_allclose(a["levels"][0], b["levels"][0], atol=1e-5)


def test_dynamic_threshold_uses_quantile_not_percentile():
    x = jnp.linspace(-3.0, 3.0, 3 * 8 * 8).reshape(1, 8, 8, 3)
    y, s = dynamic_threshold(x, 0.9, 100.0)
    np.testing.assert_allclose(s, np.quantile(np.abs(np.asarray(x)), 0.9), rtol=1e-6)
    assert float(jnp.max(jnp.abs(y))) == pytest.approx(1.0)
    np.testing.assert_array_equal(threshold(x, "clip"), np.clip(x, -1, 1))
    with pytest.raises(ValueError, match="threshold"):
        threshold(x, "percentile")


def test_sample_argument_errors():
    spec = DiffusionSpec()
    with pytest.raises(ValueError, match="rng"):
        sample(_toy_model([]), spec, {"c": jnp.zeros(1)})
    with pytest.raises(ValueError, match="steps"):
        sample(_toy_model([]), spec, {"c": jnp.zeros(1)}, noise={"init": [jnp.zeros((1, 4, 4, 3))]}, method="ddpm")
    with pytest.raises(ValueError, match="method"):
        sample(_toy_model([]), spec, {}, method="euler")


@pytest.mark.slow
@needs_fixtures
@pytest.mark.parametrize("name", ["p1", "p2"])
def test_full_trajectories_and_loss_with_converted_model(name):
    """End to end with the real NestedUNet on the converted fixture weights (needs mdm_jax.models + convert)."""
    mp = pytest.importorskip("mdm_jax.parity")
    if not hasattr(mp, "load_fixture_model"):
        pytest.skip("mdm_jax.parity.load_fixture_model not available")
    entry = json.loads((PARITY / "configs.json").read_text())["models"][name]
    with jax.default_matmul_precision("highest"):
        fm, _ = mp.load_fixture_model(PARITY, name, entry)
        rows = parity.check_sampler_trajectories(PARITY / f"sampler_{name}.npz", entry, fm.apply_fn(), fm.params)
        rows += parity.check_loss(PARITY / f"loss_{name}.npz", entry, fm.apply_fn(), fm.params)
    bad = [r for r in rows if not r[3]]
    assert not bad, bad
    assert max(err for n, err, _, _ in rows if n.startswith("traj")) <= 5e-5
