"""NestedUNet: a UNet level whose bottleneck is an inner (Nested)UNet, to any depth (paper §3.2).

    temb = level embeddings (own MLPs, shared cond_emb) [+ frame_emb[f] per frame, an option ml-mdm lacks]
    x = conv_in(z_hi [/ std(z_hi)]) [+ features from the parent level]
    x, skips = down(x, temb)                                   # no mid blocks at a nested level
    lows, h = inner.denoise(z_lo..., in_adapter(x))            # inner input = conv_in(z_lo) + in_adapter(x)
    x = x + out_adapter(h)                                     # additive merge back
    x = up(x, temb, skips)                                     # skips keep the pre-merge bottom activation
    return [conv_out(SiLU(norm_out(x)))] + lows, x

Mixed-resolution batches: a higher level may carry fewer rows than the level below it (its samples are the first
rows); the in_adapter output is zero-padded and the out_adapter output sliced to match, as in ml-mdm.

Video levels (``spec.temporal_mode``, see ``temporal.py``): inputs, adapters and the features exchanged with the
parent are mosaics; conv_in, the down/up paths and the output head run on frames, (B*S*S, h, w, C) with
S = ``spec.tiles[0]``; the down path hands T*T frames (T = ``spec.tiles[1]``) to the inner level as a mosaic.
This is ml-mdm's ``temporal_wrapper`` layout, which makes the numbers match for any nesting.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from mdm_jax.models.layers import conv3x3
from mdm_jax.models.temporal import frames_to_mosaic, mosaic_to_frames
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
        if s.temporal_mode and s.frame_embedding:
            # Unit-variance rows, on the scale of the time embedding they are added to (as the label embedding).
            self.frame_emb = self.param("frame_emb", jax.nn.initializers.normal(1.0),
                                        (s.tiles[0] ** 2, s.temporal_dim))

    def conditioning(self, lm_outputs: Array | None, lm_mask: Array | None, labels: Array | None,
                     batch: int) -> Conditioning:
        return self.inner_unet.conditioning(lm_outputs, lm_mask, labels, batch)

    @property
    def _tiles(self) -> tuple[int, int]:
        return self.spec.tiles if self.spec.temporal_mode else (1, 1)

    def input_layer(self, x: Array) -> Array:
        s_tiles = self._tiles[0]
        x = mosaic_to_frames(x.astype(self.dtype), s_tiles)
        if not self.spec.skip_normalization:
            # Per-sample (per-frame in video) unbiased std over (H, W, C), as ml-mdm's torch.std.
            x = x / jnp.std(x.astype(jnp.float32), axis=(1, 2, 3), keepdims=True, ddof=1).astype(x.dtype)
        return frames_to_mosaic(self.conv_in(x), s_tiles)

    def output_layer(self, x: Array) -> Array:
        s_tiles = self._tiles[0]
        return frames_to_mosaic(super().output_layer(mosaic_to_frames(x, s_tiles)), s_tiles)

    def denoise(self, xs: Sequence[Array], x_feat: Array | None, t: Array, cond: Conditioning,
                micros: dict[str, Array] | None, deterministic: bool) -> tuple[list[Array], Array]:
        temb = self.time_embedding(t, cond.cond_emb, micros)
        if self.spec.temporal_mode and self.spec.frame_embedding:
            temb = temb[:, None, :] + self.frame_emb.astype(temb.dtype)[None]  # (B, frames, D)
        bh, bl = xs[0].shape[0], xs[1].shape[0]
        rows = Conditioning(*(None if a is None else a[:bh] for a in cond))
        x = self.input_layer(xs[0])
        if x_feat is not None:
            x = x + x_feat
        s_tiles, t_tiles = self._tiles
        x, skips = self.down(mosaic_to_frames(x, s_tiles), temb[:bh], rows, deterministic)
        x = frames_to_mosaic(x, t_tiles)
        feat = None
        if not self.spec.skip_inner_unet_input:
            feat = self.in_adapter(x)
            if bl > bh:
                feat = jnp.concatenate([feat, jnp.zeros((bl - bh, *feat.shape[1:]), feat.dtype)], axis=0)
        lows, inner_features = self.inner_unet.denoise(xs[1:], feat, t, cond, micros, deterministic)
        x = x + self.out_adapter(inner_features)[:bh]
        x = self.up(mosaic_to_frames(x, t_tiles), temb[:bh], skips, rows, deterministic)
        x = frames_to_mosaic(x, s_tiles)
        return [self.output_layer(x), *lows], x
