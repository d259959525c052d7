"""Forward process pieces: D^r downsampling, the target pyramid, q(x_t | x), and v/eps/x0 conversions.

All functions are pure, NHWC, float32, and follow ml-mdm's formulas *and operation order* (so results are
bitwise or ulp-close to PyTorch's): ``x0 = sqrt(g) x_t - sqrt(1-g) v``, ``eps = (x_t - sqrt(g) x0)/sqrt(1-g)``.
``gamma`` arguments are per-sample vectors (B,) (or anything broadcastable after a trailing reshape).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from mdm_jax.diffusion.spec import DiffusionSpec

Array = jax.Array


def _bc(g: Array, x: Array) -> Array:
    """Broadcast a per-sample (B,) value against an NHWC tensor."""
    g = jnp.asarray(g, x.dtype)
    return g.reshape(g.shape + (1,) * (x.ndim - g.ndim))


# ----------------------------------------------------------------------------------------------------------------
# Downsampling D^r and the target pyramid
# ----------------------------------------------------------------------------------------------------------------


def box_downsample(x: Array, factor: int) -> Array:
    """Average pooling with kernel = stride = ``factor`` (ml-mdm's ``F.avg_pool2d``), NHWC.

    Summed window-row by window-row in PyTorch's order, then divided, so the result is bitwise PyTorch's.
    """
    if factor == 1:
        return x
    b, h, w, c = x.shape
    if h % factor or w % factor:
        raise ValueError(f"box_downsample: spatial size {(h, w)} not divisible by factor {factor}")
    xr = x.reshape(b, h // factor, factor, w // factor, factor, c)
    acc = None
    for i in range(factor):
        for j in range(factor):
            term = xr[:, :, i, :, j, :]
            acc = term if acc is None else acc + term
    return acc / jnp.asarray(factor * factor, x.dtype)


def bilinear_downsample(x: Array, factor: int) -> Array:
    """Anti-aliased bilinear (triangle-filter) downsampling by ``factor``: the paper's wording for D^r."""
    if factor == 1:
        return x
    b, h, w, c = x.shape
    return jax.image.resize(x, (b, h // factor, w // factor, c), method="bilinear", antialias=True)


def downsample(x: Array, factor: int, method: str = "box") -> Array:
    """D^r by an integer factor with ``method`` in ('box', 'bilinear')."""
    if method == "box":
        return box_downsample(x, factor)
    if method == "bilinear":
        return bilinear_downsample(x, factor)
    raise ValueError(f"downsample method must be 'box' or 'bilinear', got {method!r}")


def level_factors(scales: Sequence[int]) -> tuple[int, ...]:
    """Pooling factor from each level to the next lower one (ml-mdm pools level by level, e.g. 1024->256->64)."""
    return tuple(int(a) // int(b) for a, b in zip(scales[:-1], scales[1:], strict=True))


def build_pyramid(images: Array, spec: DiffusionSpec) -> list[Array]:
    """Targets D^r(x) for every level, high -> low: repeated pooling of the level above by the size ratio.

    Video (``spec.temporal``): below a temporal level come the frames it keeps, every (ratio**2)-th, starting
    with the first (first-frame indexing; 16 frames -> frame 0); spatial steps of a mosaic pool each frame.
    """
    out = [images]
    for i, f in enumerate(level_factors(spec.scales)):
        x = out[-1]
        if spec.temporal and spec.temporal[i]:
            out.append(first_frames(x, int(spec.scales[i]), f))
            continue
        tiles = spec.frame_tiles[i] if spec.frame_tiles else 1
        if tiles > 1:
            out.append(_per_frame(lambda v, f=f: downsample(v, f, spec.downsample), x, tiles))
        else:
            out.append(downsample(x, f, spec.downsample))
    return out


def first_frames(mosaic: Array, tiles: int, ratio: int) -> Array:
    """Frames 0, r², 2r², ... of a (B, n*h, n*w, C) mosaic of n*n frames (n = ``tiles``, r = ``ratio``), as a
    mosaic of (n/r)² frames: what a temporal level of tile ratio r hands to the level below."""
    b, hh, ww, c = mosaic.shape
    if tiles % ratio or hh % tiles or ww % tiles:
        raise ValueError(f"first_frames: a {hh}x{ww} mosaic cannot hold {tiles}x{tiles} frames reduced by {ratio}")
    h, w = hh // tiles, ww // tiles
    frames = mosaic.reshape(b, tiles, h, tiles, w, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, tiles * tiles, h, w, c)
    kept = frames[:, :: ratio * ratio]
    n = tiles // ratio
    return kept.reshape(b, n, n, h, w, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, n * h, n * w, c)


def _per_frame(fn: Any, mosaic: Array, tiles: int) -> Array:
    b, hh, ww, c = mosaic.shape
    h, w = hh // tiles, ww // tiles
    frames = mosaic.reshape(b, tiles, h, tiles, w, c).transpose(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)
    y = fn(frames)
    h2, w2 = y.shape[1:3]
    return y.reshape(b, tiles, tiles, h2, w2, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, tiles * h2, tiles * w2, c)


def level_shapes(top_shape: Sequence[int], scales: Sequence[int]) -> list[tuple[int, ...]]:
    """NHWC shapes of every level given the top-level shape (B, H, W, C)."""
    b, h, w, c = (int(v) for v in top_shape)
    shapes = []
    for s in scales:
        r = int(scales[0]) // int(s)
        if h % r or w % r:
            raise ValueError(f"top shape {(h, w)} is not divisible by the level ratio {r}")
        shapes.append((b, h // r, w // r, c))
    return shapes


# ----------------------------------------------------------------------------------------------------------------
# q(x_t | x) and parameterisations
# ----------------------------------------------------------------------------------------------------------------


def q_sample(x0: Array, eps: Array, gamma: Array) -> Array:
    """x_t = sqrt(g) x0 + sqrt(1 - g) eps."""
    g = _bc(gamma, x0)
    return jnp.sqrt(g) * x0 + jnp.sqrt(1 - g) * eps


def x0_from_v(x_t: Array, v: Array, gamma: Array) -> Array:
    """x0 = sqrt(g) x_t - sqrt(1 - g) v."""
    g = _bc(gamma, x_t)
    return x_t * jnp.sqrt(g) - v * jnp.sqrt(1 - g)


def x0_from_eps(x_t: Array, eps: Array, gamma: Array) -> Array:
    """x0 = (x_t - sqrt(1 - g) eps) / sqrt(g)."""
    g = _bc(gamma, x_t)
    return (x_t - eps * jnp.sqrt(1 - g)) / jnp.sqrt(g)


def eps_from_x0(x_t: Array, x0: Array, gamma: Array) -> Array:
    """eps = (x_t - sqrt(g) x0) / sqrt(1 - g)."""
    g = _bc(gamma, x_t)
    return (x_t - x0 * jnp.sqrt(g)) / jnp.sqrt(1 - g)


def v_from_x0(x_t: Array, x0: Array, gamma: Array) -> Array:
    """v = (sqrt(g) x_t - x0) / sqrt(1 - g)  (equals sqrt(g) eps - sqrt(1-g) x0)."""
    g = _bc(gamma, x_t)
    return (jnp.sqrt(g) * x_t - x0) / jnp.sqrt(1 - g)


def x0_from_pred(x_t: Array, pred: Array, gamma: Array, prediction_type: str) -> Array:
    """x0 implied by a network output of ``prediction_type`` ('v' | 'eps' | 'x0')."""
    if prediction_type == "v":
        return x0_from_v(x_t, pred, gamma)
    if prediction_type == "eps":
        return x0_from_eps(x_t, pred, gamma)
    if prediction_type == "x0":
        return pred
    raise ValueError(f"prediction_type must be 'v', 'eps' or 'x0', got {prediction_type!r}")


def pred_from_x0(x_t: Array, x0: Array, gamma: Array, prediction_type: str) -> Array:
    """The ``prediction_type`` quantity implied by (x_t, x0) (ml-mdm ``get_pred_from_x0_xt``)."""
    if prediction_type == "v":
        return v_from_x0(x_t, x0, gamma)
    if prediction_type == "eps":
        return eps_from_x0(x_t, x0, gamma)
    if prediction_type == "x0":
        return x0
    raise ValueError(f"prediction_type must be 'v', 'eps' or 'x0', got {prediction_type!r}")


def target_from_x0_eps(x0: Array, eps: Array, gamma: Array, target_type: str) -> Array:
    """Regression target of ``target_type`` for clean x0 and noise eps (v = sqrt(g) eps - sqrt(1-g) x0)."""
    if target_type == "eps":
        return eps
    if target_type == "v":
        g = _bc(gamma, x0)
        return jnp.sqrt(g) * eps - jnp.sqrt(1 - g) * x0
    if target_type == "x0":
        return x0
    raise ValueError(f"target type must be 'v', 'eps' or 'x0', got {target_type!r}")


def convert_pred(x_t: Array, pred: Array, gamma: Array, from_type: str, to_type: str) -> Array:
    """Re-express a prediction via an (unclipped) x0, as ml-mdm's ``get_pred_for_training`` does."""
    if from_type == to_type:
        return pred
    return pred_from_x0(x_t, x0_from_pred(x_t, pred, gamma, from_type), gamma, to_type)


def gather_gammas(level_tables: Array, index: Array) -> list[Array]:
    """Per-level gamma vectors ``level_tables[l][index]`` for an index vector (B,) (or scalar)."""
    return [level_tables[i][index] for i in range(level_tables.shape[0])]
