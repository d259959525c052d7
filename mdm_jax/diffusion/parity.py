"""Checks of the diffusion core against ml-mdm's parity fixtures (``shared/parity`` format, see its README).

Each ``check_*`` returns a list of ``(name, max_abs_err, tol, ok)`` rows so the project's parity command can
print and aggregate them. Fixtures are NCHW (ml-mdm layout); everything is transposed to NHWC here. Functions
that need the network take ``model_fn(xs, t, cond) -> list`` in our NHWC convention (built by the model code
from the converted ``unet_<name>.npz`` weights), or ``jax.tree_util.Partial(apply_fn, params)``.

Tolerances (absolute, on float32 values; chosen from the fixture README section 8, and stated per row):
schedules/timesteps 0 (float32 tables are bitwise); gamma values 0; single-step and thresholding math
1e-6 x the formula's condition factor at that sample's step + 1e-6 * max|ref| (``condition_factor``: e.g.
1/sqrt(1-g_t) for eps/v from x0, which is ~157 at t = 1 and amplifies float32 rounding as much; 1 for
well-conditioned formulas, so those checks stay as tight as before). ml-mdm's CPU float32 sqrt/divide is ~1 ulp
off correct rounding on some values, and an ill-conditioned formula multiplies that;
loss inputs (x_t, targets) 1e-6; network outputs 1e-4 (the model's bound); eps-hat 5e-5 (divides by
sqrt(1-g) ~ 9e-3 at time 0);
mse/losses/loss 1e-5 + 1e-5 * |ref|; sampler trajectory states and images 1e-3 (the brief's bound; a correct
float32 port lands near 1e-5).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mdm_jax.diffusion import loss as loss_lib
from mdm_jax.diffusion import process, sampler, schedules
from mdm_jax.diffusion.spec import DiffusionSpec

Row = tuple[str, float, float, bool]
ModelFn = Callable[[list[jax.Array], jax.Array, Mapping[str, jax.Array]], list[jax.Array]]

STEP_TOL = 1e-6
STEP_RTOL = 1e-6
NET_TOL = 1e-4  # network outputs: the model's parity bound (ml-mdm's own fp32-vs-fp64 spread is ~3e-6)
EPS_HAT_TOL = 5e-5
LOSS_TOL = 1e-5
TRAJ_TOL = 1e-3

# Loss variants stored in the fixtures -> DiffusionSpec overrides (README section 5 / configs.json).
LOSS_VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "vdm": {"use_vdm_loss_weights": True},
    "weighted": {"multi_res_weights": "4:1"},
    "single": {"use_double_loss": False},
}


def parity_dir() -> Path:
    """``$MDM_PARITY_DIR`` or ``<repo>/../shared/parity``."""
    env = os.environ.get("MDM_PARITY_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "shared" / "parity"


def _load(npz: str | os.PathLike | Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
    if isinstance(npz, Mapping):
        return npz
    with np.load(npz, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def nchw_to_nhwc(x: np.ndarray) -> np.ndarray:
    """Fixture tensors are NCHW; the port is NHWC."""
    x = np.asarray(x)
    return np.transpose(x, (0, 2, 3, 1)) if x.ndim == 4 else x


def condition_factor(quantity: str, gamma_t: Any, gamma_s: Any = None, eta: float = 0.0) -> np.ndarray:
    """Per-sample factor (>= 1) by which ``quantity`` amplifies float32 rounding of its inputs, from the schedule.

    First-order error analysis of each formula as written in ``process``/``sampler`` (relative rounding u on
    every operation; inputs O(1)): a division by sqrt(1-g) or sqrt(g) multiplies the absolute error by its
    reciprocal; cancellation in beta = 1 - g_t/g_s (DDPM posterior mean, exact when g_s = 1) by
    alpha sqrt(g_s)/(1-g_t); the sqrt(1 - g_s - eta^2 beta~) of DDIM(eta > 0) by its derivative. Quantities:
    'x0_from_v', 'eps_from_v', 'x0_from_eps', 'eps_from_x0', 'v_from_x0', 'x0' (a step's thresholded x0),
    'ddim_x_s', 'ddpm_x_s', 'threshold'.
    """
    g = np.asarray(gamma_t, np.float64)
    one = np.ones_like(g)
    inv_sqrt_1mg = 1.0 / np.sqrt(np.maximum(1.0 - g, 1e-30))
    if quantity in ("x0_from_v", "x0", "threshold"):
        f = one
    elif quantity in ("eps_from_v", "eps_from_x0", "v_from_x0"):
        f = inv_sqrt_1mg
    elif quantity == "x0_from_eps":
        f = 1.0 / np.sqrt(np.maximum(g, 1e-30))
    elif quantity in ("ddim_x_s", "ddpm_x_s"):
        if gamma_s is None:
            raise ValueError(f"condition_factor({quantity!r}) needs gamma_s")
        gs = np.asarray(gamma_s, np.float64)
        if quantity == "ddpm_x_s":
            alpha = g / gs
            f = np.where(gs < 1.0, alpha * np.sqrt(gs) * inv_sqrt_1mg**2, 0.0)
        else:
            # eps = (x_t - sqrt(g) x0)/sqrt(1-g) is scaled back by sqrt(1 - g_s - eta^2 beta~) <= sqrt(1-g_s).
            f = np.sqrt(np.maximum(1.0 - gs, 0.0)) * inv_sqrt_1mg
            if eta:
                bt = (eta * eta) * (1 - g / gs) * (1 - gs) / np.maximum(1 - g, 1e-30)
                rest = np.maximum(1 - gs - bt, 1e-30)
                f = f + np.where(gs < 1.0, 0.5 * inv_sqrt_1mg / np.sqrt(rest), 0.0)
    else:
        raise ValueError(f"unknown quantity {quantity!r} for condition_factor")
    return np.maximum(f, 1.0)


def _row_scaled(name: str, got: Any, ref: np.ndarray, tol: float, rtol: float, factor: np.ndarray) -> Row:
    """Like ``_row`` with a per-sample bound ``tol * factor[b] + rtol max|ref|``.

    The factor scales the absolute part only: it stands for rounding of O(1) operands amplified by cancellation
    and division; a result that is large because of the division is already covered by the relative part.

    Reports the sample with the largest error/bound ratio (its error and bound), so ``err <= tol`` iff every
    sample is within its own bound: a well-conditioned sample is not judged by an ill-conditioned one's bound.
    """
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if got.shape != ref.shape:
        return (f"{name} (shape {got.shape} != {ref.shape})", float("inf"), tol, False)
    factor = np.broadcast_to(np.asarray(factor, np.float64), (ref.shape[0],))
    err = np.abs(got - ref).reshape(ref.shape[0], -1).max(axis=1)
    bound = tol * factor + rtol * (float(np.max(np.abs(ref))) if ref.size else 0.0)
    worst = int(np.argmax(err / bound))
    label = name if np.all(factor == 1.0) else f"{name} (x{factor[worst]:.3g} cond.)"
    return (label, float(err[worst]), float(bound[worst]), bool(np.all(err <= bound)))


def _row(name: str, got: Any, ref: np.ndarray, tol: float, rtol: float = 0.0) -> Row:
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if got.shape != ref.shape:
        return (f"{name} (shape {got.shape} != {ref.shape})", float("inf"), tol, False)
    err = float(np.max(np.abs(got - ref))) if ref.size else 0.0
    bound = tol + rtol * (float(np.max(np.abs(ref))) if ref.size else 0.0)
    return (name, err, bound, bool(err <= bound))


# ----------------------------------------------------------------------------------------------------------------
# Network-free checks
# ----------------------------------------------------------------------------------------------------------------


def check_schedules(npz: str | os.PathLike | Mapping[str, np.ndarray]) -> list[Row]:
    """schedules.npz: gamma tables (float32 and float64), VDM weights, shifted per-level tables, timestep lists."""
    d = _load(npz)
    rows: list[Row] = []
    names = {"deepfloyd": "deepfloyd", "cosine": "cosine", "ddpm_linear": "ddpm"}
    for key, st in names.items():
        if f"{key}/gammas" not in d:
            continue
        g = schedules.gamma_table(st)
        rows.append(_row(f"{key}/gammas", g, d[f"{key}/gammas"], 0.0))
        if f"{key}/gammas_f64" in d:
            # float64 construction is 1 ulp (<= 2.3e-16) off on some entries: libm/SIMD exp/log differences.
            rows.append(_row(f"{key}/gammas_f64", schedules.gamma_table_f64(st), d[f"{key}/gammas_f64"], 1e-15))
        rows.append(_row(f"{key}/vdm_loss_weights", schedules.vdm_loss_weights(g), d[f"{key}/vdm_loss_weights"], 0.0))
    base = schedules.gamma_table("deepfloyd")
    for k in sorted({k.split("/")[1] for k in d if k.startswith("shift/")}):
        scales = [int(s) for s in d[f"shift/{k}/scales"]]
        power = float(d[f"shift/{k}/power"])
        got = schedules.level_gamma_tables(base, scales, power, shifted=True)
        rows.append(_row(f"shift/{k}/gammas", got, d[f"shift/{k}/gammas"], 0.0))
    for k in sorted((k for k in d if k.startswith("timesteps/n")), key=lambda s: int(s.split("n")[-1])):
        n = int(k.split("n")[-1])
        rows.append(_row(k, schedules.sampling_timesteps(n), d[k], 0.0))
    return rows


def check_sampler_steps(npz: str | os.PathLike | Mapping[str, np.ndarray]) -> list[Row]:
    """sampler_<name>.npz ``step/*`` (conversions, DDPM/DDIM updates) and ``thr/*`` (thresholding)."""
    d = _load(npz)
    f = {k: jnp.asarray(nchw_to_nhwc(d[k])) for k in d if k.startswith(("step/", "thr/"))}
    rows: list[Row] = []
    if "step/t" not in d:  # trajectory-only files (the video fixtures): nothing to check here
        return rows
    table = schedules.gamma_table("deepfloyd")
    rows.append(_row("step/gamma_t", table[d["step/t"]], d["step/gamma_t"], 0.0))
    rows.append(_row("step/gamma_s", table[d["step/s"]], d["step/gamma_s"], 0.0))
    gt, gs = f["step/gamma_t"], f["step/gamma_s"]
    x_t, v, z = f["step/x_t"], f["step/v"], f["step/noise"]

    g_t, g_s = np.asarray(d["step/gamma_t"]), np.asarray(d["step/gamma_s"])

    def add(name: str, got: Any, quantity: str = "threshold", eta: float = 0.0) -> None:
        factor = condition_factor(quantity, g_t, g_s, eta) if name.startswith("step/") else 1.0
        rows.append(_row_scaled(name, got, nchw_to_nhwc(d[name]), STEP_TOL, STEP_RTOL, factor))

    x0 = process.x0_from_v(x_t, v, gt)
    add("step/x0_from_v", x0, "x0_from_v")
    add("step/eps_from_v", process.eps_from_x0(x_t, x0, gt), "eps_from_v")
    add("step/x0_from_eps_pred", process.x0_from_eps(x_t, v, gt), "x0_from_eps")
    add("step/eps_from_x0", process.eps_from_x0(x_t, f["step/x0_from_v"], gt), "eps_from_x0")
    add("step/v_from_x0", process.v_from_x0(x_t, f["step/x0_from_v"], gt), "v_from_x0")
    for mode, method, eta, noisy in (("ddpm", "ddpm", 0.0, True), ("ddim_eta0", "ddim", 0.0, False),
                                     ("ddim_eta1", "ddim", 1.0, True)):
        for thr in ("clip", "dynamic_if"):
            if f"step/{mode}_{thr}/x_s" not in d:
                continue
            x0o, xs = sampler.update_step(x_t, v, gt, gs, prediction_type="v", method=method, eta=eta,
                                          noise=z if noisy else None, threshold_kind=thr)
            add(f"step/{mode}_{thr}/x0", x0o, "x0")
            add(f"step/{mode}_{thr}/x_s", xs, f"{method}_x_s", eta)
    x_in = f["thr/x0_in"]
    for kind in ("clip", "dynamic", "dynamic_if", "none"):
        add(f"thr/{kind}", sampler.threshold(x_in, kind))
    for kind in ("dynamic", "dynamic_if"):
        q, m = sampler.DYNAMIC_DEFAULTS[kind]
        add(f"thr/{kind}_s", sampler.dynamic_threshold(x_in, q, m)[1])
    return rows


# ----------------------------------------------------------------------------------------------------------------
# Checks that need the network
# ----------------------------------------------------------------------------------------------------------------


def spec_for_fixture(name_or_entry: str | Mapping[str, Any],
                     configs_json: str | os.PathLike | Mapping[str, Any] | None = None,
                     **overrides: Any) -> DiffusionSpec:
    """DiffusionSpec of a fixture model from configs.json (ml-mdm field names).

    ``name_or_entry`` is a model name ('p1', 'p2'; read from ``configs_json``, default the parity folder's) or
    the ``configs["models"][name]`` entry itself.
    """
    if isinstance(name_or_entry, Mapping):
        m = name_or_entry
    else:
        if configs_json is None:
            configs_json = parity_dir() / "configs.json"
        cfg = configs_json if isinstance(configs_json, Mapping) else json.loads(Path(configs_json).read_text())
        m = cfg["models"][name_or_entry]
    d = dict(m["diffusion_config"])
    d["nest_ratio"] = m["derived"].get("nest_ratio") or []
    d.update(_video_fields(m.get("unet_config", {}), len(d["nest_ratio"]) + 1))
    spec = DiffusionSpec.from_config(d)
    return spec if not overrides else DiffusionSpec(**{**_fields(spec), **overrides})


def _video_fields(unet_config: Mapping[str, Any], num_levels: int) -> dict[str, tuple]:
    """``temporal`` / ``frame_tiles`` of a fixture model, from its ml-mdm unet_config (temporal_mode levels)."""
    flags, cfg = [], unet_config
    while cfg:
        flags.append((bool(cfg.get("temporal_mode")), bool(cfg.get("temporal_spatial_ds"))))
        cfg = cfg.get("inner_config") or None
    if not any(mode for mode, _ in flags) or len(flags) != num_levels:
        return {}
    from mdm_jax.models.spec import spec_from_config

    cfg = dict(unet_config)
    cfg["resolution"] = _top_side(unet_config)
    fields = spec_from_config(cfg).diffusion_fields()
    fields.pop("scales")  # the fixture's nest_ratio gives them
    return fields


def _top_side(unet_config: Mapping[str, Any]) -> int:
    """A resolution that nests (the fields needed here do not depend on it): product of all level ratios x 2**k."""
    side, cfg = 1, unet_config
    while cfg:
        n = len(cfg["resolution_channels"]) if not isinstance(cfg["resolution_channels"], str) else \
            len(cfg["resolution_channels"].split(","))
        side *= 2 ** (n - 1)
        cfg = cfg.get("inner_config") or None
    return side * 64


def _as_spec(spec: DiffusionSpec | Mapping[str, Any]) -> DiffusionSpec:
    return spec if isinstance(spec, DiffusionSpec) else spec_for_fixture(spec)


def _as_model_fn(fn: Callable, params: Any = None) -> Callable:
    """``model_fn`` as is, or ``Partial(apply_fn, params)`` when params are given (traced, not constants)."""
    return fn if params is None else jax.tree_util.Partial(fn, params)


def _fields(spec: DiffusionSpec) -> dict[str, Any]:
    return {k: getattr(spec, k) for k in spec.__dataclass_fields__}


def check_loss(npz: str | os.PathLike | Mapping[str, np.ndarray], spec: DiffusionSpec | Mapping[str, Any],
               model_fn: ModelFn, params: Any = None,
               variants: Mapping[str, Mapping[str, Any]] | None = None) -> list[Row]:
    """loss_<name>.npz: every stored variant, injecting the fixture's time and noise.

    ``spec``: a DiffusionSpec or the fixture's configs.json model entry. ``model_fn(xs, t, cond)``, or
    ``apply_fn(params, xs, t, cond)`` together with ``params``.
    """
    d = _load(npz)
    if variants is None:
        # The fixture's own variant table (configs.json loss_fixture.variants) wins over the built-in one.
        declared = spec.get("loss_fixture", {}).get("variants", {}) if isinstance(spec, Mapping) else {}
        variants = {**LOSS_VARIANTS, **declared}
    spec = _as_spec(spec)
    model_fn = _as_model_fn(model_fn, params)
    n = spec.num_levels
    images = jnp.asarray(nchw_to_nhwc(d["in/images"]))
    time = jnp.asarray(d["in/t"], jnp.int32)
    noises = [jnp.asarray(nchw_to_nhwc(d[f"in/eps_{i}"])) for i in range(n)]
    cond = {k: jnp.asarray(d[f"in/{k}"]) for k in ("lm_outputs", "lm_mask", "labels") if f"in/{k}" in d}
    rows: list[Row] = []
    pyramid = process.build_pyramid(images, spec)
    for i in range(1, n):
        rows.append(_row(f"in/images_{i} (D^r pooling)", pyramid[i], nchw_to_nhwc(d[f"in/images_{i}"]), STEP_TOL))
    stored = sorted({k.split("/")[0] for k in d if "/" in k and not k.startswith("in/")})
    for var in stored:
        if var not in variants:
            rows.append((f"{var}: unknown variant", float("inf"), 0.0, False))
            continue
        try:
            vspec = DiffusionSpec(**{**_fields(spec), **variants[var]})
        except (TypeError, ValueError) as e:
            rows.append((f"{var}: cannot build variant {dict(variants[var])}: {e}", float("inf"), 0.0, False))
            continue
        out = loss_lib.loss_terms(model_fn, vspec, images, time, noises, cond)
        for i in range(n):
            for key, tol in (("gamma", 0.0), ("x_t", STEP_TOL), ("target", STEP_TOL), ("pred_raw", NET_TOL),
                             ("pred", EPS_HAT_TOL)):
                name = f"{var}/{key}_{i}"
                if name in d:
                    rows.append(_row(name, out[key][i], nchw_to_nhwc(d[name]), tol))
            name = f"{var}/mse_{i}"
            if name in d:
                rows.append(_row(name, out["mse"][i], d[name], LOSS_TOL, LOSS_TOL))
        rows.append(_row(f"{var}/losses", out["losses"], d[f"{var}/losses"], LOSS_TOL, LOSS_TOL))
        rows.append(_row(f"{var}/loss", out["loss"], d[f"{var}/loss"], LOSS_TOL, LOSS_TOL))
        if f"{var}/vdm_weights" in d:
            rows.append(_row(f"{var}/vdm_weights", out["vdm_weights"], d[f"{var}/vdm_weights"], 0.0))
    return rows


def trajectory_noise(d: Mapping[str, np.ndarray], run: str, spec: DiffusionSpec,
                     n_steps: int) -> dict[str, list[jax.Array]]:
    """Map the fixture's injected draws (``<run>/noise/<k>`` labelled by ``noise_desc``) to sampler noise input.

    Steps where ml-mdm drew nothing get zeros (the sampler masks them anyway).
    """
    desc = [str(s) for s in d[f"{run}/noise_desc"]]
    init: list[Any] = [None] * spec.num_levels
    steps: list[np.ndarray | None] = [None] * spec.num_levels
    for k, label in enumerate(desc):
        arr = nchw_to_nhwc(d[f"{run}/noise/{k}"]).astype(np.float32)
        where, lvl = label.split("/")
        level = int(lvl.replace("level", ""))
        if where == "init":
            init[level] = arr
        else:
            step = int(where.replace("step", ""))
            if steps[level] is None:
                steps[level] = np.zeros((n_steps,) + arr.shape, np.float32)
            steps[level][step] = arr
    for i, x in enumerate(init):
        if x is None:
            raise ValueError(f"{run}: no init noise for level {i}")
        if steps[i] is None:
            steps[i] = np.zeros((n_steps,) + x.shape, np.float32)
    return {"init": [jnp.asarray(x) for x in init], "steps": [jnp.asarray(z) for z in steps]}


def run_fixture_trajectory(d: Mapping[str, np.ndarray], run: str, model_fn: ModelFn, spec: DiffusionSpec,
                           num_steps: int | None = None, debug: bool = False) -> dict[str, Any]:
    """Run the sampler exactly as the fixture run ``run`` ('traj_eta0' | 'traj_eta1') was produced."""
    ts = np.asarray(d["traj/timesteps"], np.int32)
    if num_steps is not None:
        ts = ts[: num_steps + 1]
    n_steps = len(ts) - 1
    eta = 0.0 if run.endswith("eta0") else 1.0
    noise = trajectory_noise(d, run, spec, len(d["traj/timesteps"]) - 1)
    noise["steps"] = [z[:n_steps] for z in noise["steps"]]
    cond = {k: jnp.asarray(d[f"traj/{k}"]) for k in ("lm_outputs", "lm_mask", "labels") if f"traj/{k}" in d}
    return sampler.sample(model_fn, spec, cond, noise=noise, timesteps=ts, method="ddim", eta=eta,
                          guidance_weight=jnp.asarray(d["traj/guidance_scale"], jnp.float32),
                          threshold_kind="dynamic_if", return_trajectory=True, debug=debug)


def check_sampler_trajectories(npz: str | os.PathLike | Mapping[str, np.ndarray],
                               spec: DiffusionSpec | Mapping[str, Any], model_fn: ModelFn, params: Any = None,
                               runs: tuple[str, ...] = ("traj_eta0", "traj_eta1"),
                               num_steps: int | None = None) -> list[Row]:
    """sampler_<name>.npz ``traj_eta*``: net_t, per-step per-level gammas and states, finals, image, step-0 tensors.

    ``spec`` / ``model_fn`` / ``params`` as in ``check_loss``. ``num_steps`` limits the run to the first steps
    (compares only what those steps produce).
    """
    d = _load(npz)
    spec = _as_spec(spec)
    model_fn = _as_model_fn(model_fn, params)
    rows: list[Row] = []
    n_total = len(d["traj/timesteps"]) - 1
    n = n_total if num_steps is None else num_steps
    for run in runs:
        if f"{run}/noise_desc" not in d:
            continue
        out = run_fixture_trajectory(d, run, model_fn, spec, num_steps=n)
        tr = out["trajectory"]
        rows.append(_row(f"{run}/net_t", np.asarray(tr["net_t"]), d[f"{run}/net_t"][:n], 0.0))
        for lvl in range(spec.num_levels):
            for k in range(n):
                for key in ("gamma_t", "gamma_s"):
                    name = f"{run}/{key}/step{k}/level{lvl}"
                    ref = d[name]
                    rows.append(_row(name, np.broadcast_to(np.asarray(tr[key][k, lvl]), ref.shape), ref, 0.0))
                if k >= 1:
                    name = f"{run}/x_t/step{k}/level{lvl}"
                    rows.append(_row(name, tr["x_t"][lvl][k], nchw_to_nhwc(d[name]), TRAJ_TOL))
            for key, src in (("net_out", "net_out"), ("pred_cfg", "pred"), ("x0", "x0")):
                name = f"{run}/step0/{key}/level{lvl}"
                if name in d:
                    rows.append(_row(name, tr[src][lvl][0], nchw_to_nhwc(d[name]), TRAJ_TOL))
            if n == n_total:
                name = f"{run}/x_t/final/level{lvl}"
                rows.append(_row(name, out["levels"][lvl], nchw_to_nhwc(d[name]), TRAJ_TOL))
            elif n < n_total:
                name = f"{run}/x_t/step{n}/level{lvl}"
                rows.append(_row(name + " (after partial run)", out["levels"][lvl], nchw_to_nhwc(d[name]), TRAJ_TOL))
        if n == n_total:
            rows.append(_row(f"{run}/out/image", out["image"], nchw_to_nhwc(d[f"{run}/out/image"]), TRAJ_TOL))
    return rows


check_trajectories = check_sampler_trajectories


def summarize(rows: list[Row]) -> str:
    """One line per row plus a verdict; for printing in the parity command."""
    lines = [f"{'OK ' if ok else 'BAD'} {name:55s} max_abs_err={err:.3e} tol={tol:.1e}" for name, err, tol, ok in rows]
    bad = sum(not r[3] for r in rows)
    lines.append(f"{len(rows) - bad}/{len(rows)} ok")
    return "\n".join(lines)
