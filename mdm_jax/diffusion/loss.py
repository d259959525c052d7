"""The joint multi-resolution training loss (paper Eq. 3, as ml-mdm's ``NestedDiffusion.get_loss`` computes it).

``loss_terms`` takes explicit time and noise (so fixtures can inject ml-mdm's draws) and returns every
intermediate; ``loss_fn`` draws them from a key and is what a training step differentiates. Everything shape-
related (levels, mixed-resolution row counts) is static Python, so the loss jit-compiles once per batch shape.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from mdm_jax.diffusion import process
from mdm_jax.diffusion.spec import DiffusionSpec

Array = jax.Array
ModelFn = Callable[[list[Array], Array, Mapping[str, Array]], Sequence[Array]]


def draw_time_and_noise(rng: Array, spec: DiffusionSpec, shapes: Sequence[Sequence[int]]) -> tuple[Array, list[Array]]:
    """ml-mdm's draw order, with jax.random: time ~ U{0..T-1}, then level-0 noise, then one N(0,1) per lower level.

    (ml-mdm first builds the low-res noise by pooling, then overwrites it with fresh N(0,1): levels are independent.)
    """
    keys = jax.random.split(rng, 1 + len(shapes))
    batch = int(shapes[0][0])
    time = jax.random.randint(keys[0], (batch,), 0, spec.num_diffusion_steps, dtype=jnp.int32)
    noises = [jax.random.normal(k, tuple(s), jnp.float32) for k, s in zip(keys[1:], shapes, strict=True)]
    return time, noises


def loss_terms(
    model_fn: ModelFn,
    spec: DiffusionSpec,
    images: Array | Sequence[Array],
    time: Array,
    noises: Sequence[Array],
    cond: Mapping[str, Array],
) -> dict[str, Any]:
    """Loss with explicit ``time`` (B,) in 0..T-1 and per-level ``noises``; returns all intermediates.

    ``images`` is the top-level batch (NHWC; lower levels are built with ``spec.downsample``) or the full pyramid.
    The network gets ``time`` itself (gamma index minus one) and, with ``mixed_ratio``, only the first
    ``spec.mixed_rows(B)[l]`` rows of level l (outputs with fewer rows are zero-padded back to B).

    Returns lists per level (high -> low) ``gamma``, ``x_t``, ``target``, ``pred_raw``, ``pred`` (the network
    output converted to ``loss_target_type``), ``mse`` (B,) (mean over H, W, C, unweighted), the per-level
    ``weights``, per-sample ``losses`` (B,) = sum_l w_l * mse_l (ml-mdm's mixed-ratio scaling included), the
    scalar ``loss`` (batch mean, or sum(losses*w)/sum(w) with VDM weights) and ``vdm_weights`` (B,) if used.
    """
    if isinstance(images, (list, tuple)):
        pyramid = list(images)
    else:
        pyramid = process.build_pyramid(images, spec)
    n = spec.num_levels
    if len(pyramid) != n or len(noises) != n:
        raise ValueError(f"expected {n} levels of images and noise, got {len(pyramid)} and {len(noises)}")
    batch = int(pyramid[0].shape[0])
    time = jnp.asarray(time)
    tables = jnp.asarray(spec.level_gammas())
    gammas = process.gather_gammas(tables, time + 1)
    sig = spec.signal_scales()
    x0s = [x / jnp.float32(s) if s != 1 else x for x, s in zip(pyramid, sig, strict=True)]
    x_t = [process.q_sample(x, e, g) for x, e, g in zip(x0s, noises, gammas, strict=True)]
    targets = [
        process.target_from_x0_eps(x, e, g, spec.loss_target_type)
        for x, e, g in zip(x0s, noises, gammas, strict=True)
    ]

    rows = spec.mixed_rows(batch)
    net_in = x_t if rows is None else [x[:r] for x, r in zip(x_t, rows, strict=True)]
    raw = list(model_fn(net_in, time, cond))
    if len(raw) != n:
        raise ValueError(f"model_fn returned {len(raw)} outputs for {n} levels")
    raw = [_pad_rows(p, batch) for p in raw]
    preds = [process.convert_pred(x, p, g, spec.prediction_type, spec.loss_target_type)
             for x, p, g in zip(x_t, raw, gammas, strict=True)]
    mses = [jnp.mean(jnp.square(p - t), axis=tuple(range(1, p.ndim))) for p, t in zip(preds, targets, strict=True)]

    weights = spec.level_weights()
    fractions = spec.mixed_fractions()
    losses = jnp.zeros((batch,), jnp.float32)
    for i in range(n):
        if weights[i] == 0.0:
            continue  # level not trained (use_double_loss=False or zero weight)
        li = mses[i]
        if fractions is not None:
            li = li / jnp.float32(fractions[i])
            li = jnp.where(jnp.arange(batch) < rows[i], li, 0.0)  # rows the network did not see
        losses = losses + li * jnp.float32(weights[i])

    out: dict[str, Any] = dict(gamma=gammas, x_t=x_t, target=targets, pred_raw=raw, pred=preds, mse=mses,
                               weights=weights, losses=losses)
    if spec.use_vdm_loss_weights:
        w = jnp.asarray(spec.vdm_weights())[time + 1]
        out["vdm_weights"] = w
        out["loss"] = jnp.sum(losses * w) / jnp.sum(w)
    else:
        out["loss"] = jnp.mean(losses)
    return out


def loss_fn(
    params: Any,
    batch: Mapping[str, Array],
    rng: Array,
    *,
    apply_fn: Callable[..., Sequence[Array]],
    cfg: DiffusionSpec,
) -> tuple[Array, dict[str, Array]]:
    """Training loss: ``(loss, metrics)`` for ``jax.value_and_grad(loss_fn, has_aux=True)``.

    ``batch["images"]`` is the top-resolution NHWC batch in data scale; every other key of ``batch`` is passed
    untouched to ``apply_fn(params, xs, t, cond)`` as ``cond``. ``metrics`` holds the scalar loss and each level's
    mean (unweighted) mse over the rows that level trained on.
    """
    time, noises = draw_for_batch(rng, cfg, batch["images"].shape)
    return loss_from_draws(params, batch, time, noises, apply_fn=apply_fn, cfg=cfg)


def draw_for_batch(rng: Array, cfg: DiffusionSpec, top_shape: Sequence[int]) -> tuple[Array, list[Array]]:
    """Time and per-level noise for a whole batch whose top level has shape ``top_shape``."""
    return draw_time_and_noise(rng, cfg, process.level_shapes(top_shape, cfg.scales))


def loss_normaliser(time: Array, cfg: DiffusionSpec) -> Array:
    """The denominator of the batch loss: the batch size, or the sum of the VDM weights of its times."""
    if cfg.use_vdm_loss_weights:
        return jnp.sum(jnp.asarray(cfg.vdm_weights())[time + 1])
    return jnp.float32(time.shape[0])


def loss_from_draws(
    params: Any,
    batch: Mapping[str, Array],
    time: Array,
    noises: Sequence[Array],
    *,
    apply_fn: Callable[..., Sequence[Array]],
    cfg: DiffusionSpec,
    normaliser: Array | None = None,
) -> tuple[Array, dict[str, Array]]:
    """``loss_fn`` with explicit draws. With ``normaliser`` (``loss_normaliser`` of the *whole* batch) the loss is
    this batch's share of the whole batch's loss, so shares of micro-batches add up to the full-batch loss
    exactly (gradient accumulation); without it, the batch's own loss."""
    images = batch["images"]
    cond = {k: v for k, v in batch.items() if k != "images"}

    def model_fn(xs, t, c):
        return apply_fn(params, xs, t, c)

    terms = loss_terms(model_fn, cfg, images, time, noises, cond)
    if normaliser is None:
        loss = terms["loss"]
    else:
        w = terms.get("vdm_weights", 1.0)
        loss = jnp.sum(terms["losses"] * w) / normaliser
    metrics = {"loss": loss}
    rows = cfg.mixed_rows(images.shape[0])
    for i, m in enumerate(terms["mse"]):
        metrics[f"mse/level{i}"] = jnp.mean(m if rows is None else m[: rows[i]])
    return loss, metrics


def _pad_rows(x: Array, batch: int) -> Array:
    if x.shape[0] == batch:
        return x
    pad = [(0, batch - x.shape[0])] + [(0, 0)] * (x.ndim - 1)
    return jnp.pad(x, pad)
