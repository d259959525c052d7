"""Video loss: first-frame indexing for any frame count (ml-mdm's fixed 4x4 grid is only right for 16 frames),
per-frame pooling below per-frame levels, mixed-resolution rows and level weights on mosaics."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from mdm_jax.diffusion import loss as loss_lib
from mdm_jax.diffusion import process
from mdm_jax.diffusion.spec import DiffusionSpec


def clip_mosaic(frames: int, size: int, batch: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(B, n*size, n*size, 3) mosaic whose frame f holds f*100 + a pixel pattern; also the (B, F, ...) frames."""
    n = int(np.sqrt(frames))
    pattern = np.arange(size * size * 3, dtype=np.float32).reshape(size, size, 3) / 1000
    clips = np.stack([np.stack([f * 100 + b * 10 + pattern for f in range(frames)]) for b in range(batch)])
    mosaic = clips.reshape(batch, n, n, size, size, 3).transpose(0, 1, 3, 2, 4, 5).reshape(batch, n * size,
                                                                                         n * size, 3)
    return mosaic, clips


@pytest.mark.parametrize("frames", [4, 16, 64])
def test_level_below_a_temporal_level_is_the_first_frame(frames):
    n = int(np.sqrt(frames))
    mosaic, clips = clip_mosaic(frames, 4)
    spec = DiffusionSpec(scales=(n, 1), temporal=(True, False), frame_tiles=(n, 1))
    pyramid = process.build_pyramid(jnp.asarray(mosaic), spec)
    assert pyramid[1].shape == (2, 4, 4, 3)
    np.testing.assert_array_equal(np.asarray(pyramid[1]), clips[:, 0])


def test_mlmdm_fixed_grid_differs_for_four_frames():
    """ml-mdm reads 4x4 tiles whatever the frame count: for 4 frames its target mixes frames 0 and 2."""
    mosaic, clips = clip_mosaic(4, 8)  # 2x2 frames of 8x8
    tiles = mosaic.reshape(2, 4, 4, 4, 4, 3).transpose(0, 1, 3, 2, 4, 5).reshape(2, 16, 4, 4, 3)  # 4x4 grid
    mlmdm = tiles[:, ::4].reshape(2, 2, 2, 4, 4, 3).transpose(0, 1, 3, 2, 4, 5).reshape(2, 8, 8, 3)
    spec = DiffusionSpec(scales=(2, 1), temporal=(True, False), frame_tiles=(2, 1))
    ours = np.asarray(process.build_pyramid(jnp.asarray(mosaic), spec)[1])
    assert {int(v) // 100 for v in mlmdm[..., 0].ravel()} == {0, 2}
    np.testing.assert_array_equal(ours, clips[:, 0])


def test_three_level_video_pyramid():
    """Per-frame 2x pooling below a per-frame level, then the first frame below the temporal level."""
    mosaic, clips = clip_mosaic(4, 8)  # 4 frames of 8x8 at the top (a 16x16 mosaic)
    spec = DiffusionSpec(scales=(4, 2, 1), temporal=(False, True, False), frame_tiles=(2, 2, 1))
    top, mid, low = process.build_pyramid(jnp.asarray(mosaic), spec)
    pooled = clips.reshape(2, 4, 4, 2, 4, 2, 3).mean(axis=(3, 5))  # (B, F, 4, 4, 3)
    want_mid = pooled.reshape(2, 2, 2, 4, 4, 3).transpose(0, 1, 3, 2, 4, 5).reshape(2, 8, 8, 3)
    np.testing.assert_allclose(np.asarray(mid), want_mid, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(low), pooled[:, 0], rtol=1e-6)


def test_mixed_rows_and_level_weights_on_video():
    frames, n = 16, 4
    mosaic, _ = clip_mosaic(frames, 4, batch=4)
    spec = DiffusionSpec(scales=(n, 1), temporal=(True, False), frame_tiles=(n, 1), mixed_ratio="1:1",
                         multi_res_weights="4:1")
    rows_seen = []

    def model_fn(xs, t, cond):
        rows_seen.append([x.shape[0] for x in xs])
        return [0.5 * x for x in xs]

    rng = np.random.default_rng(0)
    noises = [jnp.asarray(rng.normal(size=s), jnp.float32) for s in process.level_shapes(mosaic.shape, spec.scales)]
    out = loss_lib.loss_terms(model_fn, spec, jnp.asarray(mosaic / 1000.0), jnp.asarray([5, 100, 500, 900]), noises,
                              {})
    assert rows_seen == [[2, 4]]  # the 16-frame level trains on half the clips, the first frames on all
    mse0, mse1 = (np.asarray(m) for m in out["mse"])
    want = np.where(np.arange(4) < 2, mse0 / 0.5, 0.0) * 4.0 + mse1 / 1.0 * 1.0
    np.testing.assert_allclose(np.asarray(out["losses"]), want, rtol=1e-6)
