"""One UNet level: time/text/class embeddings, down path, mid blocks, up path, output head (NHWC).

The paper's pseudo-code, for a level that is not nested:

    temb = MLP_t(sin(t)) + cond_emb + MLP_scale(sin(scale))
    x = conv_in(z) [+ features from the parent level]
    x, skips = down(x, temb)           # skips: conv_in output, each resnet output, each downsample output
    x = mid(x, temb)                   # resnet + attention, resnet
    x = up(x, temb, skips)             # consumes skips last-in-first-out, [x, skip] concatenated
    return conv_out(SiLU(norm_out(x))), x
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from mdm_jax.models.embeddings import MicroConditioning, masked_mean, timestep_sinusoid
from mdm_jax.models.layers import Dense, ResNetBlock, TextHeadLayer, conv3x3, group_norm
from mdm_jax.models.spec import UNetSpec, check_inputs

Array = jax.Array


class Conditioning(NamedTuple):
    """What every level receives, computed once by the innermost level (which owns lm_proj and cond_emb)."""

    cond_emb: Array | None  # added to each level's time embedding
    text: Array | None  # (B, S, cond_dim) features for cross-attention
    mask: Array | None  # (B, S) key mask for cross-attention, None when masking is off


class UNet(nn.Module):
    """A single-resolution UNet; also the innermost level of a NestedUNet (``spec.nesting``)."""

    spec: UNetSpec
    dtype: Any = jnp.float32
    remat: bool = False

    def setup(self) -> None:
        s, td = self.spec, self.spec.temporal_dim
        self.temb_layer1 = Dense(td, dtype=self.dtype)
        self.temb_layer2 = Dense(td, dtype=self.dtype)
        if s.micro_conditioning:
            self.cond_layers = MicroConditioning(s.micro_conditioning, td, self.dtype)
        self.conv_in = conv3x3(s.resolution_channels[0], self.dtype, None)
        if s.builds_text_conditioning:
            if s.conditioning_feature_proj_dim > 0:
                self.lm_proj = Dense(s.cond_dim, dtype=self.dtype)
            self.lm_head = [TextHeadLayer(s.num_heads, self.dtype) for _ in range(s.num_lm_head_layers)]
            self.cond_emb = Dense(td, use_bias=False, dtype=self.dtype)
        if s.num_classes:
            # One extra row is the null label used for classifier-free guidance. Unit-variance rows (ADM's
            # nn.Embedding init) put the label on the scale of the time embedding it is added to, so it steers
            # from the first steps; a 0.02 init made it ~50x weaker and it stayed ignored for hundreds of steps.
            self.label_emb = nn.Embed(s.num_classes + 1, td, embedding_init=nn.initializers.normal(1.0))

        block = dict(num_heads=s.num_heads, groups=s.num_groups_norm, dropout=s.dropout, remat=self.remat,
                     dtype=self.dtype, use_ffn=s.use_attention_ffn, rope=s.temporal_positional_encoding,
                     temporal_resample=s.is_temporal)
        n = s.num_resolutions
        down = []
        for i, ch in enumerate(s.resolution_channels):
            layers = s.attention_layers_at(i)
            down.append(ResNetBlock(ch, s.num_resnets_per_resolution[i], layers, "down" if i < n - 1 else None,
                                    s.cond_dim if i in s.attention_levels else -1,
                                    num_temporal_attention=s.temporal_attention_layers_at(i), **block))
        self.down_blocks = down
        if not s.skip_mid_blocks and not s.is_nested:  # a nested level never runs its mid blocks (ml-mdm)
            ch = s.resolution_channels[-1]
            self.mid_blocks = [ResNetBlock(ch, 1, 1, None, s.cond_dim, **block),
                               ResNetBlock(ch, 1, 0, None, -1, **block)]
        up = []
        for i in reversed(range(n)):
            layers = s.attention_layers_at(i)
            up.append(ResNetBlock(s.resolution_channels[i], s.num_resnets_per_resolution[i] + 1, layers,
                                  "up" if i > 0 else None, s.cond_dim if i in s.attention_levels else -1,
                                  num_temporal_attention=s.temporal_attention_layers_at(i), **block))
        self.up_blocks = up
        self.norm_out = group_norm(s.num_groups_norm, self.dtype, None)
        self.conv_out = conv3x3(s.output_channels, self.dtype, None, kernel_init=nn.initializers.zeros)

    # ---- conditioning ------------------------------------------------------------------------------------
    def conditioning(self, lm_outputs: Array | None, lm_mask: Array | None, labels: Array | None,
                     batch: int) -> Conditioning:
        """Project and pool the text, embed the label: ml-mdm's ``forward_conditioning`` (+ class labels)."""
        s = self.spec
        cond_emb, text, mask = None, None, None
        if s.input_cond_dim > 0:
            if lm_outputs is None:
                raise ValueError(f"lm_outputs: this model is text-conditioned; expected (B, S, {s.input_cond_dim})")
            if lm_outputs.shape[-1] != s.input_cond_dim:
                raise ValueError(f"lm_outputs: expected feature size {s.input_cond_dim}, got {lm_outputs.shape[-1]}")
            text, mask = lm_outputs.astype(self.dtype), lm_mask
            if s.builds_text_conditioning:
                if s.conditioning_feature_proj_dim > 0:
                    text = self.lm_proj(text)
                head_mask = mask if s.masked_cross_attention else None
                for layer in self.lm_head:
                    text = layer(text, head_mask)
                plain = mask is None or (not s.masked_cross_attention and s.num_lm_head_layers > 0)
                cond_emb = self.cond_emb(masked_mean(text, None if plain else mask))
            if not s.masked_cross_attention:
                mask = None  # pad tokens take part in cross-attention, as in ml-mdm
        if s.num_classes:
            if labels is None:
                labels = jnp.full((batch,), s.num_classes, jnp.int32)  # unconditional: the null label
            label_emb = self.label_emb(labels).astype(self.dtype)
            cond_emb = label_emb if cond_emb is None else cond_emb + label_emb
        return Conditioning(cond_emb, text, mask)

    def time_embedding(self, t: Array, cond_emb: Array | None, micros: dict[str, Array] | None) -> Array:
        temb = self.temb_layer2(nn.silu(self.temb_layer1(timestep_sinusoid(t, self.spec.temporal_dim))))
        if cond_emb is not None:
            temb = temb + cond_emb
        if self.spec.micro_conditioning:
            temb = temb + self.cond_layers(t.shape[0], micros)
        return temb

    # ---- the level's paths -------------------------------------------------------------------------------
    def input_layer(self, x: Array) -> Array:
        return self.conv_in(x.astype(self.dtype))

    def down(self, x: Array, temb: Array, cond: Conditioning, deterministic: bool) -> tuple[Array, list[Array]]:
        skips = [x]
        for block in self.down_blocks:
            x, acts = block(x, temb, None, cond.text, cond.mask, deterministic, return_activations=True)
            skips.extend(acts)
        return x, skips

    def mid(self, x: Array, temb: Array, cond: Conditioning, deterministic: bool) -> Array:
        if self.spec.skip_mid_blocks:
            return x
        x = self.mid_blocks[0](x, temb, None, cond.text, cond.mask, deterministic)
        return self.mid_blocks[1](x, temb, None, None, None, deterministic)

    def up(self, x: Array, temb: Array, skips: list[Array], cond: Conditioning, deterministic: bool) -> Array:
        skips = list(skips)
        for block, level in zip(self.up_blocks, reversed(range(self.spec.num_resolutions)), strict=True):
            k = self.spec.num_resnets_per_resolution[level] + 1
            taken, skips = skips[-k:][::-1], skips[:-k]
            x = block(x, temb, taken, cond.text, cond.mask, deterministic)
        return x

    def output_layer(self, x: Array) -> Array:
        return self.conv_out(nn.silu(self.norm_out(x)))

    def denoise(self, xs: Sequence[Array], x_feat: Array | None, t: Array, cond: Conditioning,
                micros: dict[str, Array] | None, deterministic: bool) -> tuple[list[Array], Array]:
        """Run this level on ``xs = [x]``; returns ([output], pre-head features for the parent level)."""
        temb = self.time_embedding(t, cond.cond_emb, micros)
        x = self.input_layer(xs[0])
        if x_feat is not None:
            x = x + x_feat
        x, skips = self.down(x, temb, cond, deterministic)
        x = self.mid(x, temb, cond, deterministic)
        x = self.up(x, temb, skips, cond, deterministic)
        return [self.output_layer(x)], x

    def __call__(self, xs: Sequence[Array] | Array, t: Array, lm_outputs: Array | None = None,
                 lm_mask: Array | None = None, labels: Array | None = None,
                 micros: dict[str, Array] | None = None, deterministic: bool = True) -> list[Array]:
        """Denoise every level at once. ``xs``: NHWC inputs high -> low; ``t``: the network time input (B,).

        Returns one output per level, high -> low, in float32.
        """
        if not isinstance(xs, (list, tuple)):
            xs = [xs]
        check_inputs(self.spec, xs)
        t = jnp.asarray(t)
        batch = xs[-1].shape[0]
        if t.ndim == 0:
            t = jnp.full((batch,), t)
        if t.shape != (batch,):
            raise ValueError(f"t: expected shape ({batch},) (one time per sample of the largest level), "
                             f"got {t.shape}")
        cond = self.conditioning(lm_outputs, lm_mask, labels, batch)
        outs, _ = self.denoise(list(xs), None, t, cond, micros, deterministic)
        return [o.astype(jnp.float32) for o in outs]
