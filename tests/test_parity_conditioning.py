"""Parity tolerances scale with the conditioning of each formula (t = 1 and t = 999 steps), and only there.

The synthetic fixture plays the part of ml-mdm's float32 run: every formula is evaluated in float64 on the
float32 inputs with each elementary operation's result perturbed by a random relative error within float32
rounding (|delta| <= 2^-24; none where the exact result is a float32, as correct rounding gives), then stored
as float32, so it differs from our float32 evaluation exactly as much as
two correct float32 implementations may.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from mdm_jax.diffusion import parity, sampler, schedules

U = 2.0**-24


class _Rounding:
    """float64 arithmetic whose every result is off by a random relative error within float32 rounding."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def __call__(self, x):
        x = np.asarray(x, np.float64)
        exact = x.astype(np.float32).astype(np.float64) == x
        return np.where(exact, x, x * (1 + self.rng.uniform(-U, U, x.shape)))


def _bc(g, ndim=4):
    return np.asarray(g, np.float64).reshape((-1,) + (1,) * (ndim - 1))


def synthetic_step_fixture(t, s, seed: int = 0) -> dict[str, np.ndarray]:
    """A ``sampler_<name>.npz``-style dict (NCHW) of single-step conversions/updates at steps ``t -> s``."""
    r = _Rounding(seed)
    rng = np.random.default_rng(seed + 1)
    table = np.asarray(schedules.gamma_table("deepfloyd"))
    t, s = np.asarray(t), np.asarray(s)
    b = len(t)
    x_t = rng.normal(size=(b, 3, 8, 8)).astype(np.float32)
    v = rng.normal(size=(b, 3, 8, 8)).astype(np.float32)
    z = rng.normal(size=(b, 3, 8, 8)).astype(np.float32)
    gt, gs = _bc(table[t]), _bc(table[s])
    xt, vv, zz = (a.astype(np.float64) for a in (x_t, v, z))
    sg, s1g = r(np.sqrt(gt)), r(np.sqrt(r(1 - gt)))

    x0 = r(r(xt * sg) - r(vv * s1g))
    x0_f32 = x0.astype(np.float32).astype(np.float64)
    d = {"step/t": t, "step/s": s, "step/gamma_t": table[t], "step/gamma_s": table[s],
         "step/x_t": x_t, "step/v": v, "step/noise": z}
    d["step/x0_from_v"] = x0
    d["step/eps_from_v"] = r(r(xt - r(x0 * sg)) / s1g)
    d["step/x0_from_eps_pred"] = r(r(xt - r(vv * s1g)) / sg)
    d["step/eps_from_x0"] = r(r(xt - r(x0_f32 * sg)) / s1g)
    d["step/v_from_x0"] = r(r(r(sg * xt) - x0_f32) / s1g)
    x0c = np.clip(x0, -1, 1)
    alpha = r(gt / gs)
    beta = r(1 - alpha)
    one_m_gs = r(1 - gs)
    one_m_gt = r(1 - gt)
    bt = r(r(beta * one_m_gs) / one_m_gt)
    ddpm = r(r(r(r(x0c * beta) * r(np.sqrt(gs))) / one_m_gt) + r(r(r(xt * r(np.sqrt(alpha))) * one_m_gs) / one_m_gt))
    d["step/ddpm_clip/x0"] = x0c
    d["step/ddpm_clip/x_s"] = r(ddpm + r(r(np.sqrt(bt)) * zz))
    eps = r(r(xt - r(x0c * sg)) / s1g)
    for eta in (0, 1):
        btn = r(eta * eta * bt)
        xs = r(r(x0c * r(np.sqrt(gs))) + r(eps * r(np.sqrt(np.maximum(r(one_m_gs - btn), 0)))))
        if eta:
            xs = r(xs + r(r(np.sqrt(btn)) * zz))
        d[f"step/ddim_eta{eta}_clip/x0"] = x0c
        d[f"step/ddim_eta{eta}_clip/x_s"] = xs
    x_in = (3 * rng.normal(size=(4, 3, 8, 8))).astype(np.float32)
    d["thr/x0_in"] = x_in
    nhwc = jnp.asarray(x_in.transpose(0, 2, 3, 1))
    for kind in ("clip", "dynamic", "dynamic_if", "none"):
        d[f"thr/{kind}"] = np.asarray(sampler.threshold(nhwc, kind)).transpose(0, 3, 1, 2)
    for kind in ("dynamic", "dynamic_if"):
        d[f"thr/{kind}_s"] = np.asarray(sampler.dynamic_threshold(nhwc, *sampler.DYNAMIC_DEFAULTS[kind])[1])
    return {k: (np.asarray(a, np.float32) if np.asarray(a).dtype == np.float64 else np.asarray(a))
            for k, a in d.items()}


def _by_name(rows):
    return {name.split(" (")[0]: (err, tol, ok) for name, err, tol, ok in rows}


T, S = [1, 999, 500], [0, 980, 429]


def test_condition_factor_values():
    g = np.asarray(schedules.gamma_table("deepfloyd"))[[1, 500, 999]]
    f = parity.condition_factor("eps_from_x0", g)
    assert 150 < f[0] < 160  # 1/sqrt(1 - g[1]): sqrt(1 - g) ~ 0.0064 at t = 1
    assert np.allclose(f[1:], 1 / np.sqrt(1 - g[1:])) and f[2] < 1.001
    assert np.all(parity.condition_factor("x0_from_v", g) == 1.0)
    assert parity.condition_factor("x0_from_eps", g)[2] > 30  # 1/sqrt(g) at t = 999
    # DDPM's beta = 1 - g_t/g_s is exact when s = 0 (g_s = 1), cancels badly between two steps near 0.
    gs = np.asarray(schedules.gamma_table("deepfloyd"))[[0, 1]]
    f = parity.condition_factor("ddpm_x_s", np.asarray(schedules.gamma_table("deepfloyd"))[[1, 2]], gs)
    assert f[0] == 1.0 and f[1] > 1e3


def test_ill_conditioned_steps_pass_with_scaled_tolerance():
    for seed in range(3):
        d = synthetic_step_fixture(T, S, seed)
        rows = parity.check_sampler_steps(d)
        bad = [r for r in rows if not r[3]]
        assert not bad, bad


def test_flat_tolerance_would_fail_at_t1():
    """The reason for the scaling: at t = 1 two correct float32 evaluations of eps from x0 differ by >> 1e-6."""
    d = synthetic_step_fixture(T, S, seed=0)
    x_t = jnp.asarray(d["step/x_t"].transpose(0, 2, 3, 1))
    x0 = jnp.asarray(d["step/x0_from_v"].transpose(0, 2, 3, 1))
    from mdm_jax.diffusion import process

    got = np.asarray(process.eps_from_x0(x_t, x0, jnp.asarray(d["step/gamma_t"]))).transpose(0, 3, 1, 2)
    err = np.abs(got - d["step/eps_from_x0"]).reshape(3, -1).max(axis=1)
    flat = parity.STEP_TOL + parity.STEP_RTOL * np.abs(d["step/eps_from_x0"]).max()
    assert err[0] > 2 * flat  # t = 1
    assert err[2] < flat  # t = 500 is well conditioned


def test_well_conditioned_checks_not_loosened():
    """A 2e-5 error is accepted at t = 1 (x157 conditioning) but still rejected at t = 500 and in x0_from_v."""
    base = synthetic_step_fixture(T, S, seed=0)
    for sample, name, want_ok in ((0, "step/eps_from_x0", True), (2, "step/eps_from_x0", False),
                                  (0, "step/x0_from_v", False), (1, "step/eps_from_x0", False)):
        d = dict(base)
        ref = d[name].copy()
        ref[sample, 0, 0, 0] += 2e-5
        d[name] = ref
        err, tol, ok = _by_name(parity.check_sampler_steps(d))[name]
        assert ok is want_ok, (sample, name, err, tol)
