"""Gradient accumulation: one optimiser step over ``k`` micro-batches run in a ``lax.scan``.

Why: the paper's global batches (512-2048) do not fit in one forward/backward on small accelerators (or in host
RAM on CPU); accumulation bounds activation memory by the micro-batch on every backend, where rematerialisation
depends on what the compiler honours.

Exactness: time and noise are drawn for the *whole* batch with the step's key, exactly as without accumulation,
and each micro-batch contributes its share ``sum(losses * w) / normaliser(whole batch)``; the shares (and their
gradients) add up to the full-batch loss and gradient, up to float summation order. Micro-batch ``i`` takes rows
``i, i + k, i + 2k, ...``: with a batch sharded over devices in contiguous blocks, every device then feeds every
micro-batch from its own rows and nothing moves between devices. Two documented differences: dropout masks are
drawn per micro-batch, and a ``mixed_ratio`` split applies within each micro-batch (the same fractions of rows).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from mdm_jax.diffusion import loss as loss_lib
from mdm_jax.diffusion.spec import DiffusionSpec

Array = jax.Array


def micro_batches(tree: Any, k: int) -> Any:
    """(B, ...) leaves -> (k, B/k, ...), micro-batch i holding rows i, i+k, ... (device-local under sharding)."""

    def split(x: Array) -> Array:
        return jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1)

    return jax.tree.map(split, tree)


def check_divisible(batch_size: int, k: int, per_device: int | None = None, where: str = "phase") -> None:
    """Fail with the field name when a batch cannot be split into ``k`` equal micro-batches."""
    if k < 1:
        raise ValueError(f"{where}: grad_accum_steps must be >= 1, got {k}")
    if batch_size % k:
        raise ValueError(f"{where}: batch_size {batch_size} is not divisible by grad_accum_steps {k}")
    if per_device is not None and per_device % k:
        raise ValueError(f"{where}: the per-device batch {per_device} is not divisible by grad_accum_steps {k} "
                         "(each device splits its own rows into micro-batches)")


def value_and_grad(
    params: Any,
    batch: Mapping[str, Array],
    rng: Array,
    *,
    apply_for_key: Callable[[Array], Callable[..., Sequence[Array]]],
    cfg: DiffusionSpec,
    k: int,
    dropout_rng: Array,
    prepare: Callable[[Any], Any] = lambda p: p,
) -> tuple[tuple[Array, dict[str, Array]], Any]:
    """``((loss, metrics), grads)`` of the whole batch, computed in ``k`` micro-batches.

    ``apply_for_key(dropout_key)`` returns the model's ``apply_fn`` for one micro-batch; ``prepare`` maps the
    parameters before the loss (e.g. ``stop_gradient`` on frozen subtrees). ``k == 1`` is the plain step.
    """
    time, noises = loss_lib.draw_for_batch(rng, cfg, batch["images"].shape)

    def share(p: Any, mb: Mapping[str, Array], t: Array, n: Sequence[Array], key: Array, norm: Array | None):
        return loss_lib.loss_from_draws(prepare(p), mb, t, n, apply_fn=apply_for_key(key), cfg=cfg,
                                        normaliser=norm)

    grad_fn = jax.value_and_grad(share, has_aux=True)
    if k == 1:
        return grad_fn(params, batch, time, noises, dropout_rng, None)

    norm = loss_lib.loss_normaliser(time, cfg)
    xs = micro_batches((dict(batch), time, list(noises)), k)
    keys = jax.random.split(dropout_rng, k)

    def body(carry: tuple[Any, dict[str, Array]], x: Any) -> tuple[tuple[Any, dict[str, Array]], None]:
        g_sum, m_sum = carry
        (mb, t, n), key = x
        (_, metrics), grads = grad_fn(params, mb, t, n, key, norm)
        g_sum = jax.tree.map(jnp.add, g_sum, grads)
        m_sum = jax.tree.map(jnp.add, m_sum, metrics)
        return (g_sum, m_sum), None

    zeros_g = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.result_type(p)), params)
    metric_shapes = jax.eval_shape(lambda: grad_fn(params, jax.tree.map(lambda x: x[0], xs[0]),
                                                   xs[1][0], [n[0] for n in xs[2]], keys[0], norm)[0][1])
    zeros_m = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metric_shapes)
    (grads, sums), _ = jax.lax.scan(body, (zeros_g, zeros_m), (xs, keys))
    metrics = {name: (v if name == "loss" else v / k) for name, v in sums.items()}  # shares add; means average
    return (metrics["loss"], metrics), grads
