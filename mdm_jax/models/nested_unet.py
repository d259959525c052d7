"""NestedUNet: a UNet level whose bottleneck is an inner (Nested)UNet, to any depth (paper §3.2).

    temb = level embeddings (own MLPs, shared cond_emb)
    x = conv_in(z_hi [/ std(z_hi)]) [+ features from the parent level]
    x, skips = down(x, temb)                                   # no mid blocks at a nested level
    lows, h = inner.denoise(z_lo..., in_adapter(x))            # inner input = conv_in(z_lo) + in_adapter(x)
    x = x + out_adapter(h)                                     # additive merge back
    x = up(x, temb, skips)                                     # skips keep the pre-merge bottom activation
    return [conv_out(SiLU(norm_out(x)))] + lows, x

Mixed-resolution batches: a higher level may carry fewer rows than the level below it (its samples are the first
rows); the in_adapter output is zero-padded and the out_adapter output sliced to match, as in ml-mdm.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from mdm_jax.models.layers import conv3x3
from mdm_jax.models.unet import Conditioning, UNet

Array = jax.Array


class NestedUNet(UNet):
    """Outer level + ``inner_unet`` (a UNet or another NestedUNet); returns outputs high -> low."""

    def setup(self) -> None:
        super().setup()
        s = self.spec
        inner_cls = NestedUNet if s.inner.is_nested else UNet
        self.inner_unet = inner_cls(s.inner, dtype=self.dtype, remat=self.remat)
        inner_ch, outer_ch = s.inner.resolution_channels[0], s.resolution_channels[-1]
        zeros = jax.nn.initializers.zeros
        if not s.skip_inner_unet_input:
            self.in_adapter = conv3x3(inner_ch, self.dtype, None, kernel_init=zeros)
        self.out_adapter = conv3x3(outer_ch, self.dtype, None, kernel_init=zeros)

    def conditioning(self, lm_outputs: Array | None, lm_mask: Array | None, labels: Array | None,
                     batch: int) -> Conditioning:
        return self.inner_unet.conditioning(lm_outputs, lm_mask, labels, batch)

    def input_layer(self, x: Array) -> Array:
        x = x.astype(self.dtype)
        if not self.spec.skip_normalization:
            # Per-sample unbiased std over (H, W, C): the 1024 model's middle level (ml-mdm uses torch.std).
            x = x / jnp.std(x.astype(jnp.float32), axis=(1, 2, 3), keepdims=True, ddof=1).astype(x.dtype)
        return self.conv_in(x)

    def denoise(self, xs: Sequence[Array], x_feat: Array | None, t: Array, cond: Conditioning,
                micros: dict[str, Array] | None, deterministic: bool) -> tuple[list[Array], Array]:
        temb = self.time_embedding(t, cond.cond_emb, micros)
        bh, bl = xs[0].shape[0], xs[1].shape[0]
        rows = Conditioning(*(None if a is None else a[:bh] for a in cond))
        x = self.input_layer(xs[0])
        if x_feat is not None:
            x = x + x_feat
        x, skips = self.down(x, temb[:bh], rows, deterministic)
        feat = None
        if not self.spec.skip_inner_unet_input:
            feat = self.in_adapter(x)
            if bl > bh:
                feat = jnp.concatenate([feat, jnp.zeros((bl - bh, *feat.shape[1:]), feat.dtype)], axis=0)
        lows, inner_features = self.inner_unet.denoise(xs[1:], feat, t, cond, micros, deterministic)
        x = x + self.out_adapter(inner_features)[:bh]
        x = self.up(x, temb[:bh], skips, rows, deterministic)
        return [self.output_layer(x), *lows], x
