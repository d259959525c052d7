"""Joint multi-resolution sampler: DDPM ancestral / DDIM(eta), classifier-free guidance, thresholding.

One network call per step denoises every level; each level uses its own shifted gamma pair, guidance,
thresholding and noise (ml-mdm ``NestedSampler``). The whole trajectory is one ``jax.jit`` over a ``lax.scan``:
the timestep list, guidance weight, eta and thresholding values are arrays, so changing them never recompiles,
and compile time does not grow with the number of steps. ``debug=True`` runs the very same step function in an
eager Python loop (breakpoints, prints).

The model is any ``model_fn(xs, t, cond) -> list`` (high -> low). To sample with parameters without baking them
into the compiled program as constants, pass ``jax.tree_util.Partial(apply_fn, params)``: a Partial is a pytree,
so the parameters become traced inputs and the function itself is part of the (static) tree structure.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mdm_jax.diffusion import process, schedules
from mdm_jax.diffusion.spec import DiffusionSpec

Array = jax.Array

THRESHOLDS = ("none", "clip", "dynamic", "dynamic_if")
# (quantile, max) defaults of ml-mdm's two dynamic kinds.
DYNAMIC_DEFAULTS = {"dynamic": (0.995, 100.0), "dynamic_if": (0.95, 1.5)}
METHODS = ("ddpm", "ddim")


# ----------------------------------------------------------------------------------------------------------------
# Thresholding and the single-level update (pure, shared by scan and debug paths)
# ----------------------------------------------------------------------------------------------------------------



def uses_guidance(weight: Any) -> bool:
    """ml-mdm's meaning of the guidance weight, used everywhere here: the guided prediction is
    ``p_u + w (p_c - p_u)``, run iff ``w != 1`` (w = 1 is the conditional model alone, w = 0 the unconditional
    one); ``None`` means no guidance."""
    return weight is not None and float(weight) != 1.0


def stack_guidance_rows(cond: Mapping[str, Any], uncond: Mapping[str, Any]) -> dict[str, Any]:
    """The 2B-row conditioning the guided sampler expects: ``[uncond x B; cond x B]`` for every key."""
    if set(cond) != set(uncond):
        raise ValueError(f"guidance rows: conditional keys {sorted(cond)} != unconditional keys {sorted(uncond)}")
    return {k: np.concatenate([np.asarray(uncond[k]), np.asarray(cond[k])]) for k in cond}


def dynamic_threshold(x0: Array, quantile: Array | float, max_value: Array | float) -> tuple[Array, Array]:
    """Imagen dynamic thresholding per sample: s = clamp(quantile(|x0|, q), 1, max); x0 <- clip(x0, -s, s) / s.

    The quantile is over all C*H*W values of each sample with linear interpolation (``jnp.quantile``, the
    q-th quantile -- not ``jnp.percentile``). Returns (x0, s).
    """
    b = x0.shape[0]
    flat = jnp.abs(x0.reshape(b, -1).astype(jnp.float32))
    s = jnp.quantile(flat, jnp.asarray(quantile, jnp.float32), axis=1, method="linear")
    s = jnp.clip(s, 1.0, jnp.asarray(max_value, jnp.float32))
    s4 = s.reshape((b,) + (1,) * (x0.ndim - 1)).astype(x0.dtype)
    return (jnp.clip(x0, -s4, s4) / s4), s


def threshold(x0: Array, kind: str, quantile: Array | float | None = None, max_value: Array | float | None = None,
              image_scale: float = 1.0) -> Array:
    """ml-mdm ``clip_sample``: kind in THRESHOLDS, applied to ``x0 * image_scale`` then divided back.

    For 'dynamic'/'dynamic_if' the quantile and max default to ml-mdm's (0.995, 100) / (0.95, 1.5).
    """
    if kind == "none":
        return x0
    s = jnp.float32(image_scale)
    xs = x0 * s if image_scale != 1 else x0
    if kind == "clip":
        y = jnp.clip(xs, -1.0, 1.0)
    elif kind in DYNAMIC_DEFAULTS:
        dq, dm = DYNAMIC_DEFAULTS[kind]
        y, _ = dynamic_threshold(xs, dq if quantile is None else quantile, dm if max_value is None else max_value)
    else:
        raise ValueError(f"threshold must be one of {THRESHOLDS}, got {kind!r}")
    return y / s if image_scale != 1 else y


def update_step(
    x_t: Array,
    pred: Array,
    gamma_t: Array,
    gamma_s: Array,
    *,
    prediction_type: str = "v",
    method: str = "ddim",
    eta: Array | float = 0.0,
    noise: Array | None = None,
    need_noise: Array | bool = True,
    threshold_kind: str = "clip",
    threshold_quantile: Array | float | None = None,
    threshold_max: Array | float | None = None,
    image_scale: float = 1.0,
) -> tuple[Array, Array]:
    """One t -> s update of one level (ml-mdm ``get_prediction_xt_last``); returns (thresholded x0, x_s).

    With alpha = g_t/g_s, beta = 1 - alpha, beta~ = beta (1 - g_s)/(1 - g_t):
    'ddpm' posterior mean  x0 beta sqrt(g_s)/(1-g_t) + x_t sqrt(alpha)(1-g_s)/(1-g_t)  + sqrt(beta~) z;
    'ddim' with eps from the thresholded x0:  sqrt(g_s) x0 + sqrt(1 - g_s - eta^2 beta~) eps + eta sqrt(beta~) z.
    ``noise`` None means no noise term (DDIM eta = 0); ``need_noise`` masks it (ml-mdm skips it at the end).
    """
    g = process._bc(gamma_t, x_t)
    g_last = process._bc(gamma_s, x_t)
    alpha = g / g_last
    beta = 1 - alpha
    beta_tilde = beta * (1 - g_last) / (1 - g)
    x0 = process.x0_from_pred(x_t, pred, gamma_t, prediction_type)
    x0 = threshold(x0, threshold_kind, threshold_quantile, threshold_max, image_scale)
    if method == "ddpm":
        x_s = x0 * beta * jnp.sqrt(g_last) / (1 - g) + x_t * jnp.sqrt(alpha) * (1 - g_last) / (1 - g)
    elif method == "ddim":
        eps = (x_t - x0 * jnp.sqrt(g)) / jnp.sqrt(1 - g)
        eta = jnp.asarray(eta, x_t.dtype)
        beta_tilde = (eta * eta) * beta_tilde
        x_s = x0 * jnp.sqrt(g_last) + eps * jnp.sqrt(1 - g_last - beta_tilde)
    else:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if noise is not None:
        x_s = jnp.where(need_noise, x_s + jnp.sqrt(beta_tilde) * noise, x_s)
    return x0, x_s


# ----------------------------------------------------------------------------------------------------------------
# The joint step (all levels, one network call)
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Static:
    spec: DiffusionSpec
    method: str
    threshold: str
    use_cfg: bool
    noise_mode: str  # per-step noise: 'none' | 'key' | 'given'
    return_trajectory: bool
    shapes: tuple[tuple[int, ...], ...] | None = None  # set when noise is drawn from a key inside the program


def _step(st: _Static, model_fn: Callable, xs: list[Array], t: Array, s: Array, cond: Mapping[str, Array],
          tables: Array, guidance: Array, eta: Array, thr_q: Array, thr_max: Array,
          noise: list[Array] | None) -> tuple[list[Array], dict[str, Any]]:
    """Denoise all levels from table index t to s (scalars) with one network call."""
    spec = st.spec
    batch = xs[0].shape[0]
    g_t = [tables[i, t] for i in range(spec.num_levels)]
    g_s = [tables[i, s] for i in range(spec.num_levels)]
    net_t = t - 1
    if st.use_cfg:
        net_out = list(model_fn([jnp.concatenate([x, x]) for x in xs], jnp.full((2 * batch,), net_t, jnp.int32),
                                cond))
        preds = []
        for p in net_out:
            p_u, p_c = p[:batch], p[batch:]
            preds.append(p_u + guidance * (p_c - p_u))
    else:
        net_out = list(model_fn(list(xs), jnp.full((batch,), net_t, jnp.int32), cond))
        preds = net_out
    # ml-mdm: the nested sampler adds noise unless t == 1, the single-level one unless s == 0.
    need_noise = (t != 1) if spec.num_levels > 1 else (s != 0)
    sig = spec.signal_scales()
    x0s, new = [], []
    for i, (x, p) in enumerate(zip(xs, preds, strict=True)):
        gt = jnp.broadcast_to(g_t[i], (batch,))
        gs = jnp.broadcast_to(g_s[i], (batch,))
        x0, x_s = update_step(
            x, p, gt, gs, prediction_type=spec.prediction_type, method=st.method, eta=eta,
            noise=None if noise is None else noise[i], need_noise=need_noise, threshold_kind=st.threshold,
            threshold_quantile=thr_q, threshold_max=thr_max, image_scale=sig[i])
        x0s.append(x0)
        new.append(x_s)
    aux = {}
    if st.return_trajectory:
        aux = dict(x_t=list(xs), x0=x0s, pred=preds, net_out=net_out, net_t=net_t,
                   gamma_t=jnp.stack(g_t), gamma_s=jnp.stack(g_s))
    return new, aux


def _step_noise(st: _Static, xs_step: Any, shapes: Sequence[Sequence[int]]) -> list[Array] | None:
    if st.noise_mode == "none":
        return None
    if st.noise_mode == "given":
        return list(xs_step)
    keys = jax.random.split(xs_step, len(shapes))
    return [jax.random.normal(k, tuple(sh), jnp.float32) for k, sh in zip(keys, shapes, strict=True)]


def _run(st: _Static, model_fn: Callable, init: list[Array] | Array, timesteps: Array, cond: Mapping[str, Array],
         tables: Array, guidance: Array, eta: Array, thr_q: Array, thr_max: Array, step_src: Any,
         debug: bool = False) -> dict[str, Any]:
    ts = jnp.asarray(timesteps, jnp.int32)
    n_steps = ts.shape[0] - 1
    if st.shapes is not None:  # ``init`` is a key: draw x_T per level, then per-step keys, inside the program
        k_init, k_steps = jax.random.split(init)
        keys = jax.random.split(k_init, len(st.shapes))
        init = [jax.random.normal(k, s, jnp.float32) for k, s in zip(keys, st.shapes, strict=True)]
        if st.noise_mode == "key":
            step_src = jax.random.split(k_steps, n_steps)
    shapes = [x.shape for x in init]

    def body(xs, inp):
        t, s, src = inp
        noise = _step_noise(st, src, shapes)
        return _step(st, model_fn, xs, t, s, cond, tables, guidance, eta, thr_q, thr_max, noise)

    xs_in = (ts[:-1], ts[1:], step_src)
    if debug:
        xs, traj = list(init), []
        for i in range(ts.shape[0] - 1):
            inp = jax.tree_util.tree_map(lambda a, i=i: a[i], xs_in)
            xs, aux = body(xs, inp)
            traj.append(aux)
        traj = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *traj) if st.return_trajectory else {}
    else:
        xs, traj = jax.lax.scan(body, list(init), xs_in)
    sig = st.spec.signal_scales()
    levels = [x * jnp.float32(s) if s != 1 else x for x, s in zip(xs, sig, strict=True)]
    out = {"image": jnp.clip(levels[0], -1.0, 1.0), "levels": levels}
    if st.return_trajectory:
        out["trajectory"] = traj
    return out


_run_jit = jax.jit(_run, static_argnames=("st", "debug"))


# ----------------------------------------------------------------------------------------------------------------
# Public entry point
# ----------------------------------------------------------------------------------------------------------------


def sample(
    model_fn: Callable[[list[Array], Array, Mapping[str, Array]], Sequence[Array]],
    spec: DiffusionSpec,
    cond: Mapping[str, Array],
    *,
    shape: Sequence[int] | None = None,
    rng: Array | None = None,
    noise: Mapping[str, Sequence[Array]] | None = None,
    num_steps: int = 250,
    timesteps: Array | None = None,
    method: str = "ddim",
    eta: Array | float = 0.0,
    guidance_weight: Array | float | None = None,
    threshold_kind: str = "clip",
    threshold_quantile: Array | float | None = None,
    threshold_max: Array | float | None = None,
    return_trajectory: bool = False,
    debug: bool = False,
) -> dict[str, Any]:
    """Sample all levels jointly; returns ``{"image": top level clipped to [-1, 1], "levels": [final x, high->low]}``.

    Noise: either ``rng`` (with ``shape`` = top-level (B, H, W, C)) or injected ``noise`` =
    ``{"init": [x_T per level], "steps": [per level (num_steps, B, H, W, C)]}``; ``steps`` is only needed when
    the update is stochastic ('ddpm', or 'ddim' with eta not the Python number 0). Entries for steps where
    ml-mdm draws nothing are ignored (masked), so zeros are fine there.

    Steps: ``timesteps`` (descending table indices ending at 0, an int array so it is not static) or
    ``num_steps`` (ml-mdm's resampled list; ``num_steps = T`` is the full 1000-step chain).

    CFG: pass ``guidance_weight`` (array or float; never static) and ``cond`` with 2B rows [uncond x B; cond x B];
    the sampler duplicates the images. ``None`` means no guidance and B-row ``cond``.

    Thresholding of x0 per sample and per level: 'none' | 'clip' | 'dynamic' (defaults q=0.995, max=100) |
    'dynamic_if' (q=0.95, max=1.5); ``threshold_quantile`` / ``threshold_max`` override (arrays, not static).

    ``return_trajectory`` adds per-step ``x_t`` (state entering the step), ``x0``, guided ``pred``, raw
    ``net_out``, ``net_t``, ``gamma_t``/``gamma_s`` (levels,) stacked over steps. ``debug`` runs eagerly.
    """
    kwargs = dict(shape=shape, rng=rng, noise=noise, num_steps=num_steps, timesteps=timesteps, method=method, eta=eta,
                  guidance_weight=guidance_weight, threshold_kind=threshold_kind,
                  threshold_quantile=threshold_quantile, threshold_max=threshold_max,
                  return_trajectory=return_trajectory)
    st, args = _prepare(model_fn, spec, cond, **kwargs)
    if debug:
        return _run(st, *args, debug=True)
    return _run_jit(st, *args)


def lower_sample(
    model_fn: Callable[[list[Array], Array, Mapping[str, Array]], Sequence[Array]],
    spec: DiffusionSpec,
    cond: Mapping[str, Array],
    **kwargs: Any,
) -> tuple[jax.stages.Lowered, tuple]:
    """Ahead-of-time form of ``sample`` (same keyword arguments, no ``debug``) for timing compilation.

    Returns ``(lowered, args)``: ``lowered.compile()(*args)`` gives what ``sample`` would return.
    """
    st, args = _prepare(model_fn, spec, cond, **kwargs)
    return _run_jit.lower(st, *args), args


def _prepare(
    model_fn: Callable[[list[Array], Array, Mapping[str, Array]], Sequence[Array]],
    spec: DiffusionSpec,
    cond: Mapping[str, Array],
    *,
    shape: Sequence[int] | None = None,
    rng: Array | None = None,
    noise: Mapping[str, Sequence[Array]] | None = None,
    num_steps: int = 250,
    timesteps: Array | None = None,
    method: str = "ddim",
    eta: Array | float = 0.0,
    guidance_weight: Array | float | None = None,
    threshold_kind: str = "clip",
    threshold_quantile: Array | float | None = None,
    threshold_max: Array | float | None = None,
    return_trajectory: bool = False,
) -> tuple[_Static, tuple]:
    """Validate arguments, build the initial noise and the static/dynamic arguments of ``_run``."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if threshold_kind not in THRESHOLDS:
        raise ValueError(f"threshold_kind must be one of {THRESHOLDS}, got {threshold_kind!r}")
    if timesteps is None:
        timesteps = schedules.sampling_timesteps(num_steps, spec.num_diffusion_steps)
    timesteps = jnp.asarray(timesteps, jnp.int32)
    n_steps = int(timesteps.shape[0]) - 1
    deterministic = method == "ddim" and isinstance(eta, (int, float)) and float(eta) == 0.0

    shapes = None
    if noise is not None:
        init = [jnp.asarray(x, jnp.float32) for x in noise["init"]]
        if deterministic:
            noise_mode, step_src = "none", None
        else:
            if noise.get("steps") is None:
                raise ValueError("noise['steps'] is required for a stochastic sampler (ddpm, or ddim with eta != 0)")
            noise_mode, step_src = "given", [jnp.asarray(z, jnp.float32) for z in noise["steps"]]
            for z, x in zip(step_src, init, strict=True):
                if z.shape != (n_steps,) + x.shape:
                    raise ValueError(f"noise['steps'] entries must have shape {(n_steps,) + x.shape}, got {z.shape}")
    else:
        if rng is None or shape is None:
            raise ValueError("give either noise={'init': ..., 'steps': ...} or both rng and shape")
        shapes = tuple(process.level_shapes(shape, spec.scales))
        init = rng  # x_T and the per-step keys are drawn inside the compiled program (one compile, no eager ops)
        noise_mode = "none" if deterministic else "key"
    if shapes is None and len(init) != spec.num_levels:
        raise ValueError(f"expected {spec.num_levels} initial noise tensors, got {len(init)}")
    if noise_mode != "given":
        step_src = np.zeros((n_steps,), np.int32)  # scan needs a leading axis; per-step keys replace it in ``_run``

    use_cfg = guidance_weight is not None
    dq, dm = DYNAMIC_DEFAULTS.get(threshold_kind, (0.995, 100.0))
    st = _Static(spec=spec, method=method, threshold=threshold_kind, use_cfg=use_cfg, noise_mode=noise_mode,
                 return_trajectory=return_trajectory, shapes=shapes)
    if not isinstance(model_fn, jax.tree_util.Partial):
        model_fn = jax.tree_util.Partial(model_fn)
    args = (
        model_fn,
        init,
        timesteps,
        dict(cond),
        jnp.asarray(spec.level_gammas()),
        jnp.asarray(1.0 if guidance_weight is None else guidance_weight, jnp.float32),
        jnp.asarray(eta, jnp.float32),
        jnp.asarray(dq if threshold_quantile is None else threshold_quantile, jnp.float32),
        jnp.asarray(dm if threshold_max is None else threshold_max, jnp.float32),
        step_src,
    )
    return st, args


def timesteps_for(num_steps: int, spec: DiffusionSpec) -> np.ndarray:
    """ml-mdm's resampled timestep list for ``num_steps`` (int32, descending, ends at 0)."""
    return schedules.sampling_timesteps(num_steps, spec.num_diffusion_steps)
