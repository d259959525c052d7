"""Building blocks of the NestedUNet (NHWC): ResNet, spatial attention with text cross-attention, resampling.

Submodule names mirror ml-mdm's module names (``conv1``, ``time_layer``, ``qkv``, ``ffn_1`` ...) so that a
PyTorch state-dict key maps onto a Flax parameter path by replacing ``.N`` with ``_N`` (see ``convert``).
Numerics follow ml-mdm: GroupNorm/LayerNorm eps 1e-5, exact GELU, q and k each scaled by ch^-1/4, float32
softmax, symmetric padding for stride-2 convolutions, nearest upsampling then a 3x3 conv.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mdm_jax.models import cpu_matmul

Array = jax.Array
Dtype = Any

NORM_EPS = 1e-5
PAD1 = ((1, 1), (1, 1))


class GroupNorm(nn.Module):
    """GroupNorm over NHWC with float32 statistics and a two-pass variance (as PyTorch; no E[x²]-E[x]² loss).

    Statistics are reduced per channel over (H, W) first and then per group: the same numbers as flax's
    ``nn.GroupNorm(use_fast_variance=False)`` but 3-8x faster on CPU, where the grouped reshape reduces over
    non-adjacent axes. Parameters are named ``scale``/``bias`` like flax's.
    """

    num_groups: int = 32
    epsilon: float = NORM_EPS
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b, c = x.shape[0], x.shape[-1]
        g = self.num_groups
        if c % g:
            raise ValueError(f"GroupNorm: {c} channels are not divisible by {g} groups")
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        xf = x.astype(jnp.float32)
        spatial = tuple(range(1, x.ndim - 1))
        bshape = (b,) + (1,) * len(spatial) + (c,)

        def group_mean(v: Array) -> Array:
            m = v.mean(axis=spatial).reshape(b, g, c // g).mean(-1, keepdims=True)
            return jnp.broadcast_to(m, (b, g, c // g)).reshape(bshape)

        centred = xf - group_mean(xf)
        y = centred * jax.lax.rsqrt(group_mean(jnp.square(centred)) + self.epsilon)
        return (y * scale + bias).astype(self.dtype)


def group_norm(groups: int, dtype: Dtype, name: str | None) -> GroupNorm:
    return GroupNorm(num_groups=groups, dtype=dtype, name=name)


def layer_norm(dtype: Dtype, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=NORM_EPS, dtype=dtype, use_fast_variance=False, name=name)


# Dense / Conv whose bf16 matmuls reach the CPU's bf16 units (cpu_matmul); identical ops on accelerators.
Dense = functools.partial(nn.Dense, dot_general=cpu_matmul.dot_general)
Conv = functools.partial(nn.Conv, conv_general_dilated=cpu_matmul.conv_general_dilated)


def conv3x3(features: int, dtype: Dtype, name: str | None, stride: int = 1, **kwargs: Any) -> nn.Conv:
    return Conv(features, (3, 3), strides=(stride, stride), padding=PAD1, dtype=dtype, name=name, **kwargs)


def gelu(x: Array) -> Array:
    return nn.gelu(x, approximate=False)


def multi_head_attention(q: Array, k: Array, v: Array, num_heads: int, mask: Array | None = None) -> Array:
    """Scaled dot-product attention over (B, L, C) inputs, heads as contiguous channel blocks.

    q and k are each scaled by ch^-1/4 (ml-mdm's fp16-friendly split of 1/sqrt(ch)); the softmax runs in float32.
    ``mask`` (B, S) with 1 for real tokens masks keys; a fully masked row gives uniform weights, not NaN.
    """
    b, lq, c = q.shape
    ch = c // num_heads
    scale = 1.0 / math.sqrt(math.sqrt(ch))
    q = (q * scale).reshape(b, lq, num_heads, ch)
    k = (k * scale).reshape(b, k.shape[1], num_heads, ch)
    v = v.reshape(b, v.shape[1], num_heads, ch)
    masks = () if mask is None else (mask,)
    if cpu_matmul.unrolled_attention_applies(q, num_heads):  # bf16 on CPU: per (batch, head) dots
        out = jax.lax.platform_dependent(q, k, v, *masks, cpu=cpu_matmul.attention, default=_batched_attention)
    else:
        out = _batched_attention(q, k, v, *masks)
    return out.reshape(b, lq, c)


def _batched_attention(q: Array, k: Array, v: Array, mask: Array | None = None) -> Array:
    """(B, L, heads, ch) attention as two batched einsums (accelerators; float32 on CPU)."""
    logits = cpu_matmul.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)
    if mask is not None:
        logits = jnp.where(mask[:, None, None, :] > 0, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return cpu_matmul.einsum("bhqk,bkhd->bqhd", weights, v)


def frame_rows(temb: Array, rows: int) -> Array:
    """Per-frame embeddings (clips, F, D) -> one per image row (clips * frames, D) at a level resolution holding
    ``frames`` = rows / clips frames per clip; each row averages the F / frames input frames it was pooled from."""
    clips, f, d = temb.shape
    frames = rows // clips
    if frames * clips != rows or f % frames:
        raise ValueError(f"frame embeddings for {f} frames cannot cover {rows} rows of {clips} clips")
    return temb.reshape(clips, frames, f // frames, d).mean(axis=2).reshape(clips * frames, d)


class ResNet(nn.Module):
    """GN -> SiLU -> conv -> GN·(1+scale)+shift -> SiLU -> dropout -> conv (zero-init), plus a (1x1) skip."""

    out_channels: int
    groups: int = 32
    dropout: float = 0.0
    deterministic: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, temb: Array) -> Array:
        c_in = x.shape[-1]
        h = nn.silu(group_norm(self.groups, self.dtype, "norm1")(x))
        h = conv3x3(self.out_channels, self.dtype, "conv1")(h)
        if temb.ndim == 3:
            temb = frame_rows(temb, h.shape[0])
        film = Dense(2 * self.out_channels, dtype=self.dtype, name="time_layer")(nn.silu(temb))
        if h.shape[0] > film.shape[0]:  # more image rows than embeddings (video frames): repeat per row
            film = jnp.repeat(film, h.shape[0] // film.shape[0], axis=0)
        scale, shift = jnp.split(film[:, None, None, :], 2, axis=-1)
        h = group_norm(self.groups, self.dtype, "norm2")(h) * (1 + scale) + shift
        h = nn.silu(h)
        h = nn.Dropout(self.dropout)(h, deterministic=self.deterministic)
        h = conv3x3(self.out_channels, self.dtype, "conv2", kernel_init=nn.initializers.zeros)(h)
        if c_in != self.out_channels:
            x = Dense(self.out_channels, dtype=self.dtype, name="conv3")(x)
        return h + x


class SpatialAttention(nn.Module):
    """Self-attention over pixels plus cross-attention to text, summed before ``proj_out``; optional FFN.

    Cross-attention reuses the self-attention queries and has its own softmax (ml-mdm's ``SelfAttention``).
    """

    num_heads: int = 8
    cond_dim: int = -1
    use_ffn: bool = False
    groups: int = 32
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, cond: Array | None = None, cond_mask: Array | None = None) -> Array:
        b, h, w, c = x.shape
        qkv = Dense(3 * c, dtype=self.dtype, name="qkv")(group_norm(self.groups, self.dtype, "norm")(x))
        q, k, v = jnp.split(qkv.reshape(b, h * w, 3 * c), 3, axis=-1)
        out = multi_head_attention(q, k, v, self.num_heads)
        if self.cond_dim > 0:
            if cond is None:
                raise ValueError("lm_outputs: this model cross-attends to text; pass text features")
            kv = Dense(2 * c, dtype=self.dtype, name="kv_cond")(layer_norm(self.dtype, "norm_cond")(cond))
            k_c, v_c = jnp.split(kv, 2, axis=-1)
            out = out + multi_head_attention(q, k_c, v_c, self.num_heads, cond_mask)
        out = Dense(c, dtype=self.dtype, kernel_init=nn.initializers.zeros, name="proj_out")(out)
        x = x + out.reshape(b, h, w, c)
        if self.use_ffn:
            y = group_norm(self.groups, self.dtype, "ffn_0")(x)
            y = gelu(Dense(4 * c, dtype=self.dtype, name="ffn_1")(y))
            x = x + Dense(c, dtype=self.dtype, kernel_init=nn.initializers.zeros, name="ffn_3")(y)
        return x


class ResNetBlock(nn.Module):
    """``num_resnets`` ResNets, each followed by ``num_attention`` attention layers, then an optional resample.

    In the up path each ResNet first concatenates ``[x, skip]`` (x first). Returns the activations that join the
    UNet skip list: each ResNet's output, then the resampled output.
    """

    out_channels: int
    num_resnets: int
    num_attention: int = 0
    resample: str | None = None  # "down" | "up" | None
    cond_dim: int = -1
    use_ffn: bool = False
    num_heads: int = 8
    groups: int = 32
    dropout: float = 0.0
    remat: bool = False
    dtype: Dtype = jnp.float32
    # Video: frames in the batch axis (rows = clips * frames, clips = rows of temb; temb may be per frame).
    num_temporal_attention: int = 0
    rope: bool = False
    temporal_resample: bool = False  # resample over frames (Conv1d) instead of over pixels

    @nn.compact
    def __call__(self, x: Array, temb: Array, skips: list[Array] | None = None, cond: Array | None = None,
                 cond_mask: Array | None = None, deterministic: bool = True,
                 return_activations: bool = False) -> Array | tuple[Array, list[Array]]:
        from mdm_jax.models import temporal  # temporal builds on this module's layers

        resnet_cls = nn.remat(ResNet) if self.remat else ResNet
        attn_cls = nn.remat(SpatialAttention) if self.remat else SpatialAttention
        tattn_cls = nn.remat(temporal.TemporalAttentionBlock, static_argnums=(2,)) if self.remat else \
            temporal.TemporalAttentionBlock
        clips = temb.shape[0]
        if cond is not None and x.shape[0] > cond.shape[0]:
            # Per-frame rows: every frame of a clip cross-attends to its clip's text (ml-mdm cannot do this).
            reps = x.shape[0] // cond.shape[0]
            cond = jnp.repeat(cond, reps, axis=0)
            cond_mask = None if cond_mask is None else jnp.repeat(cond_mask, reps, axis=0)
        activations = []
        for i in range(self.num_resnets):
            if skips is not None:
                x = jnp.concatenate([x, skips[i]], axis=-1)
            x = resnet_cls(self.out_channels, self.groups, self.dropout, deterministic, self.dtype,
                           name=f"resnets_{i}")(x, temb)
            for j in range(self.num_attention):
                x = attn_cls(self.num_heads, self.cond_dim, self.use_ffn, self.groups, self.dtype,
                             name=f"attn_{i * self.num_attention + j}")(x, cond, cond_mask)
            for j in range(self.num_temporal_attention):
                k = i * self.num_temporal_attention + j
                x = tattn_cls(x.shape[-1], self.rope, self.dtype, name=f"t_attn_{k}")(x, clips)
            activations.append(x)
        if self.resample and self.temporal_resample:
            conv = temporal.temporal_resample_conv(self.out_channels, self.resample, self.dtype)
            x = temporal.temporal_conv(conv, x, clips, self.resample)
            activations.append(x)
        elif self.resample == "down":
            x = conv3x3(self.out_channels, self.dtype, "resample", stride=2)(x)
            activations.append(x)
        elif self.resample == "up":
            x = upsample_nearest(x)
            x = conv3x3(self.out_channels, self.dtype, "resample")(x)
            activations.append(x)
        return (x, activations) if return_activations else x


def upsample_nearest(x: Array, factor: int = 2) -> Array:
    """Pixel replication (PyTorch's default ``F.interpolate`` mode), computed in float32."""
    dtype = x.dtype
    x = x.astype(jnp.float32)
    x = jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)
    return x.astype(dtype)


class SelfAttention1D(nn.Module):
    """Token self-attention of the text head: LN -> qkv -> attention -> zero-init out projection, residual."""

    num_heads: int = 8
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, mask: Array | None = None) -> Array:
        c = x.shape[-1]
        qkv = Dense(3 * c, dtype=self.dtype, name="qkv")(layer_norm(self.dtype, "norm")(x))
        q, k, v = jnp.split(qkv, 3, axis=-1)
        h = multi_head_attention(q, k, v, self.num_heads, mask)
        return x + Dense(c, dtype=self.dtype, kernel_init=nn.initializers.zeros, name="proj_out")(h)


class MLP(nn.Module):
    """LN -> Linear(4C) -> exact GELU -> zero-init Linear(C), residual (ml-mdm's ``MLP.main``)."""

    multiplier: int = 4
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = x.shape[-1]
        y = layer_norm(self.dtype, "main_0")(x)
        y = gelu(Dense(self.multiplier * c, dtype=self.dtype, name="main_1")(y))
        return x + Dense(c, dtype=self.dtype, kernel_init=nn.initializers.zeros, name="main_3")(y)


class TextHeadLayer(nn.Module):
    """One of the paper's "learnable self-attention layers" on top of the frozen language model features."""

    num_heads: int = 8
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, mask: Array | None = None) -> Array:
        x = SelfAttention1D(self.num_heads, self.dtype, name="attn")(x, mask)
        return MLP(4, self.dtype, name="mlp")(x)
