"""Conditioning embeddings: timestep sinusoid + MLP, micro-conditioning, pooled text and class labels."""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mdm_jax.models.layers import Dense

Array = jax.Array


def sinusoid_frequencies(temporal_dim: int) -> np.ndarray:
    """ml-mdm's ``t_emb`` buffer: ``exp(-i·ln(1e4)/half)`` for ``i < half = td//8``, in float32.

    The divisor is ``half`` (not ``half - 1``); the product and the exp run in float32 as in PyTorch.
    """
    half = temporal_dim // 8
    step = np.float32(math.log(10000) / half)
    return np.exp(np.arange(half, dtype=np.float32) * -step, dtype=np.float32)


def timestep_sinusoid(t: Array, temporal_dim: int) -> Array:
    """``[sin(t·f), cos(t·f)]`` (td/4 features) of the raw timestep value (an index, not scaled to [0, 1])."""
    args = jnp.asarray(t, jnp.float32).reshape(-1, 1) * jnp.asarray(sinusoid_frequencies(temporal_dim))
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


class MicroConditioning(nn.Module):
    """One sinusoid + MLP per micro-condition (``scale`` is the only one ml-mdm ships), summed.

    ``scale`` defaults to the level's resolution and is clamped to at most that value; any other key is multiplied
    by 1000 before embedding, as in ml-mdm.
    """

    defaults: tuple[tuple[str, float], ...]
    temporal_dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, batch: int, micros: dict[str, Array] | None = None) -> Array:
        micros = micros or {}
        total = 0.0
        for key, default in self.defaults:
            value = jnp.asarray(micros.get(key, jnp.full((batch,), default)), jnp.float32)
            value = jnp.minimum(value / default, 1.0) * default if key == "scale" else value * 1000
            h = Dense(self.temporal_dim, dtype=self.dtype, name=f"{key}_0")(
                timestep_sinusoid(value, self.temporal_dim))
            h = Dense(self.temporal_dim, dtype=self.dtype, kernel_init=nn.initializers.zeros,
                         name=f"{key}_1")(nn.silu(h))
            total = total + h
        return total


def masked_mean(x: Array, mask: Array | None) -> Array:
    """Mean over tokens counting only real ones (mask 1); plain mean when there is no mask."""
    if mask is None:
        return x.mean(axis=1)
    mask = mask.astype(x.dtype)[..., None]
    return (mask * x).sum(axis=1) / mask.sum(axis=1)
