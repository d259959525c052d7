"""Video pieces of the NestedUNet (ml-mdm's temporal mode), NHWC.

A clip of F = S*S frames travels between levels, through the loss and the sampler as one mosaic image
(B, S*h, S*w, C), frame f at tile row f // S, column f % S. Inside a temporal level the frames move into the
batch axis, (B*F, h, w, C) with row b*F + f, so that convolutions, GroupNorm and spatial attention act per frame;
only ``TemporalAttentionBlock`` and the temporal resampling convolutions mix frames.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mdm_jax.models import cpu_matmul
from mdm_jax.models.layers import MLP, Conv, Dense, conv3x3, layer_norm, upsample_nearest

Array = jax.Array

HEAD_CHANNELS = 32
ROPE_BASE = 10000.0


def mosaic_to_frames(x: Array, tiles: int) -> Array:
    """(B, n*h, n*w, C) -> (B*n*n, h, w, C), frames row-major within each sample."""
    if tiles == 1:
        return x
    b, hh, ww, c = x.shape
    h, w = hh // tiles, ww // tiles
    x = x.reshape(b, tiles, h, tiles, w, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b * tiles * tiles, h, w, c)


def frames_to_mosaic(x: Array, tiles: int) -> Array:
    """Inverse of ``mosaic_to_frames``."""
    if tiles == 1:
        return x
    bf, h, w, c = x.shape
    b = bf // (tiles * tiles)
    x = x.reshape(b, tiles, tiles, h, w, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, tiles * h, tiles * w, c)


def rope_frequencies(head_dim: int = HEAD_CHANNELS) -> Array:
    """theta_i = 10000^(-2i/d), i < d/2, computed as ml-mdm's rotary embedding does (1 / base**(arange/d))."""
    exps = jnp.arange(0, head_dim, 2, dtype=jnp.float32)[: head_dim // 2] / head_dim
    return 1.0 / (ROPE_BASE ** exps)


def apply_rope(x: Array, freqs: Array) -> Array:
    """Rotate feature pairs (2i, 2i+1) of x (..., T, heads, d) by position * theta_i, position = frame index."""
    t = x.shape[-3]
    angles = jnp.arange(t, dtype=jnp.float32)[:, None] * freqs[None, :]  # (T, d/2)
    angles = jnp.repeat(angles, 2, axis=-1)[:, None, :]  # (T, 1, d): pairs share an angle
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    xf = x.astype(jnp.float32)
    pairs = xf.reshape(*xf.shape[:-1], -1, 2)
    rotated = jnp.stack([-pairs[..., 1], pairs[..., 0]], axis=-1).reshape(xf.shape)
    return (xf * cos + rotated * sin).astype(x.dtype)


class FrameAttention(nn.Module):
    """Self-attention over the frames of each pixel sequence (ml-mdm ``SelfAttention1D``, optional RoPE).

    q and k are each scaled by d^-1/4 after the rotation; softmax in float32, no mask.
    """

    num_heads: int
    rope: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        n, t, c = x.shape
        d = c // self.num_heads
        qkv = Dense(3 * c, dtype=self.dtype, name="qkv")(layer_norm(self.dtype, "norm")(x))
        q, k, v = (a.reshape(n, t, self.num_heads, d) for a in jnp.split(qkv, 3, axis=-1))
        if self.rope:
            freqs = rope_frequencies(d)
            q, k = apply_rope(q, freqs), apply_rope(k, freqs)
            self.sow("intermediates", "q_rotated", q.transpose(0, 2, 1, 3))
            self.sow("intermediates", "k_rotated", k.transpose(0, 2, 1, 3))
        scale = 1.0 / math.sqrt(math.sqrt(d))
        logits = cpu_matmul.einsum("bqhd,bkhd->bhqk", q * scale, k * scale).astype(jnp.float32)
        probs = jax.nn.softmax(logits, axis=-1)
        self.sow("intermediates", "attn_probs", probs)
        ctx = cpu_matmul.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v).reshape(n, t, c)
        out = Dense(c, dtype=self.dtype, kernel_init=nn.initializers.zeros, name="proj_out")(ctx)
        return x + out


class TemporalAttentionBlock(nn.Module):
    """x + up_conv(up2(MLP(Attn_frames(down_conv(x))))): attention over frames at half spatial size.

    ``x``: (B*T, H, W, C) frames (H, W even); ``num_clips`` = B gives T = rows / B.
    """

    channels: int
    rope: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, num_clips: int) -> Array:
        bt, hgt, wid, c = x.shape
        if hgt % 2 or wid % 2:
            raise ValueError(f"TemporalAttentionBlock: frames of {hgt}x{wid} pixels; expected even sizes")
        t = bt // num_clips
        y = conv3x3(c, self.dtype, "down_conv", stride=2)(x)
        h, w = y.shape[1:3]
        seq = y.reshape(num_clips, t, h, w, c).transpose(0, 2, 3, 1, 4).reshape(num_clips * h * w, t, c)
        seq = FrameAttention(c // HEAD_CHANNELS, self.rope, self.dtype, name="attn")(seq)
        seq = MLP(4, self.dtype, name="mlp")(seq)
        y = seq.reshape(num_clips, h, w, t, c).transpose(0, 3, 1, 2, 4).reshape(bt, h, w, c)
        return x + conv3x3(c, self.dtype, "up_conv")(upsample_nearest(y))


def temporal_conv(conv: nn.Module, x: Array, num_clips: int, mode: str) -> Array:
    """ml-mdm's temporal resampling: a kernel-3 Conv1d over frames at every pixel, stride 2 ("down") or after
    nearest x2 over frames ("up"). ``conv`` is a 1-D ``nn.Conv`` (named ``resample`` like ml-mdm's module)."""
    bt, h, w, c = x.shape
    t = bt // num_clips
    seq = x.reshape(num_clips, t, h, w, c).transpose(0, 2, 3, 1, 4).reshape(num_clips * h * w, t, c)
    if mode == "up":
        seq = jnp.repeat(seq.astype(jnp.float32), 2, axis=1).astype(seq.dtype)
    seq = conv(seq)
    t2, c2 = seq.shape[1], seq.shape[2]
    return seq.reshape(num_clips, h, w, t2, c2).transpose(0, 3, 1, 2, 4).reshape(num_clips * t2, h, w, c2)


def temporal_resample_conv(features: int, mode: str, dtype: Any) -> nn.Conv:
    return Conv(features, (3,), strides=(2 if mode == "down" else 1,), padding=((1, 1),), dtype=dtype,
                   name="resample")
