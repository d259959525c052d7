"""The sampler as a Python generator that yields previews while it denoises (web page, notebooks).

``sample`` runs the whole trajectory as one ``lax.scan``; here the same step (``sampler._step``) is jitted once and
called step by step, so a caller sees every level's current x0 estimate every ``preview_every`` steps. Noise is
drawn from ``rng`` exactly as ``sample`` draws it, so the final images are ``sample``'s (same seed, same result up
to float32 reassociation between the scanned and the unrolled program).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mdm_jax.diffusion import sampler
from mdm_jax.diffusion.spec import DiffusionSpec


@functools.partial(jax.jit, static_argnames=("st",))
def _one_step(st: Any, model_fn: Callable, xs: list, t: jax.Array, s: jax.Array, cond: Mapping[str, jax.Array],
              tables: jax.Array, guidance: jax.Array, eta: jax.Array, thr_q: jax.Array, thr_max: jax.Array,
              step_key: jax.Array) -> tuple[list, list]:
    noise = sampler._step_noise(st, step_key, [x.shape for x in xs])
    new, aux = sampler._step(st, model_fn, xs, t, s, cond, tables, guidance, eta, thr_q, thr_max, noise)
    return new, aux["x0"]


def sample_progressively(
    model_fn: Callable[[list[jax.Array], jax.Array, Mapping[str, jax.Array]], Sequence[jax.Array]],
    spec: DiffusionSpec,
    cond: Mapping[str, Any],
    *,
    shape: Sequence[int],
    rng: jax.Array,
    num_steps: int = 50,
    method: str = "ddim",
    eta: float = 0.0,
    guidance_weight: float | None = None,
    threshold_kind: str = "dynamic_if",
    preview_every: int = 1,
) -> Iterator[dict[str, Any]]:
    """Yield ``{"step", "num_steps", "levels" (float32 NHWC per level in [-1, 1], high -> low), "done"}``.

    Before the last step ``levels`` are the thresholded x0 estimates (what the image will become); the final
    yield (``done`` True) holds the sampler's output, as ``sample`` returns it. Arguments as in ``sample``
    (``guidance_weight`` None: no guidance and B-row ``cond``).
    """
    if preview_every < 1:
        raise ValueError(f"preview_every must be >= 1, got {preview_every}")
    st, args = sampler._prepare(model_fn, spec, cond, shape=shape, rng=rng, num_steps=num_steps, method=method,
                                eta=eta, guidance_weight=guidance_weight, threshold_kind=threshold_kind,
                                return_trajectory=True)
    model_fn, key, timesteps, cond, tables, guidance, eta_a, thr_q, thr_max, _ = args
    ts = np.asarray(timesteps if timesteps is not None else sampler.timesteps_for(num_steps, spec), np.int32)
    n = len(ts) - 1
    # Noise as ``sampler._run`` draws it from a key.
    k_init, k_steps = jax.random.split(key)
    keys = jax.random.split(k_init, len(st.shapes))
    xs = [jax.random.normal(k, s, jnp.float32) for k, s in zip(keys, st.shapes, strict=True)]
    step_keys = jax.random.split(k_steps, n) if st.noise_mode == "key" else jnp.zeros((n,), jnp.int32)
    sig = spec.signal_scales()
    for i in range(n):
        xs, x0 = _one_step(st, model_fn, xs, jnp.int32(ts[i]), jnp.int32(ts[i + 1]), cond, tables, guidance, eta_a,
                           thr_q, thr_max, step_keys[i])
        if i == n - 1:
            levels = [np.clip(np.asarray(x) * np.float32(s), -1.0, 1.0) for x, s in zip(xs, sig, strict=True)]
            yield {"step": n, "num_steps": n, "levels": levels, "done": True}
        elif (i + 1) % preview_every == 0:
            levels = [np.clip(np.asarray(x) * np.float32(s), -1.0, 1.0) for x, s in zip(x0, sig, strict=True)]
            yield {"step": i + 1, "num_steps": n, "levels": levels, "done": False}
