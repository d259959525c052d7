"""Video (temporal) NestedUNet: ml-mdm parity on the video fixtures, paper parameter counts, config validation,
text cross-attention inside temporal levels, mosaic layout and three-level nests."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdm_jax import parity
from mdm_jax.models import ConfigError, build_model, spec_from_config
from mdm_jax.models.architectures import get_architecture
from mdm_jax.models.temporal import frames_to_mosaic, mosaic_to_frames

VIDEO = Path(os.environ.get("MDM_PARITY_VIDEO_DIR",
                            Path(__file__).resolve().parents[2] / "shared" / "parity_video"))
needs_fixtures = pytest.mark.skipif(not (VIDEO / "configs.json").exists(), reason=f"no fixtures at {VIDEO}")


def count_params(cfg, cond_dim: int = 2048) -> int:
    spec = spec_from_config(cfg)
    model = build_model(spec)
    xs = [jax.ShapeDtypeStruct((1, r, r, 3), jnp.float32) for r in spec.resolutions]
    text = (jax.ShapeDtypeStruct((1, 4, cond_dim), jnp.float32), jax.ShapeDtypeStruct((1, 4), jnp.float32))
    shapes = jax.eval_shape(lambda xs, *c: model.init(jax.random.PRNGKey(0), xs, jnp.zeros((1,)), *c), xs, *text)
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))


@pytest.mark.parametrize("name,expected", [("S64T16", 555_493_638), ("S64T16S256", 570_748_489)])
def test_video_parameter_counts_match_mlmdm(name, expected):
    assert count_params(get_architecture(name)) == expected


@needs_fixtures
def test_video_fixture_v1f4_parity():
    entry = json.loads((VIDEO / "configs.json").read_text())["models"]["v1f4"]
    with jax.default_matmul_precision("highest"):
        fm, data = parity.load_fixture_model(VIDEO, "v1f4", entry)
        checks = parity.check_unet(fm, data, entry)
    assert len(checks) >= 15
    bad = [c.line() for c in checks if not c.ok]
    assert not bad, "\n".join(bad)


def video_cfg(frames: int = 4, frame: int = 8, **overrides) -> dict:
    """Tiny temporal level (``frames`` frames of ``frame`` pixels) around a text-conditioned image UNet."""
    n = frames.bit_length()
    inner = {"resolution_channels": [32, 32], "num_resnets_per_resolution": [1, 1], "attention_levels": [1],
             "num_attention_layers": [0, 1], "temporal_dim": 64, "conditioning_feature_dim": 16,
             "conditioning_feature_proj_dim": 32, "micro_conditioning": f"scale:{frame}"}
    cfg = {"resolution": int(np.sqrt(frames)) * frame, "resolution_channels": [32] * n,
           "num_resnets_per_resolution": [1] * n, "num_temporal_attention_layers": [1] * (n - 1) + [0],
           "temporal_mode": True, "temporal_positional_encoding": True, "temporal_dim": 64,
           "conditioning_feature_dim": 16, "skip_normalization": False, "inner_config": inner}
    cfg.update(overrides)
    return cfg


@pytest.mark.parametrize("overrides,field", [
    ({"resolution_channels": [32] * 4, "num_resnets_per_resolution": [1] * 4,
      "num_temporal_attention_layers": [1, 1, 1, 0]}, "resolution_channels"),  # 8 frames: not a square mosaic
    ({"frames": 16}, "frames"),
    ({"num_temporal_attention_layers": [1, 0]}, "num_temporal_attention_layers"),
    ({"resolution": 14}, "resolution"),  # 2x2 frames of 7 pixels: temporal attention needs even frames
    ({"resolution_channels": [32, 48, 32], "num_resnets_per_resolution": [1, 1, 1]}, r"resolution_channels\[1\]"),
])
def test_temporal_config_errors_name_the_field(overrides, field):
    cfg = video_cfg()
    cfg.update(overrides)
    with pytest.raises(ConfigError, match=field):
        spec_from_config(cfg)


def test_temporal_mode_on_innermost_level_is_an_error():
    cfg = video_cfg()
    cfg["inner_config"]["temporal_mode"] = True
    with pytest.raises(ConfigError, match=r"inner_config\.temporal_mode"):
        spec_from_config(cfg)


def test_mosaic_frames_round_trip_and_order():
    x = jnp.arange(2 * 8 * 8 * 1, dtype=jnp.float32).reshape(2, 8, 8, 1)
    f = mosaic_to_frames(x, 2)
    assert f.shape == (8, 4, 4, 1)
    np.testing.assert_array_equal(f[1], x[0, :4, 4:])  # frame 1 = tile row 0, column 1
    np.testing.assert_array_equal(f[6], x[1, 4:, :4])  # clip 1, frame 2 = tile row 1, column 0
    np.testing.assert_array_equal(frames_to_mosaic(f, 2), x)


def _apply(model, params, xs, t, text, mask):
    return jax.jit(model.apply)({"params": params}, xs, t, text, mask)


@pytest.mark.slow
def test_text_cross_attention_inside_a_temporal_level():
    """attention_levels at a temporal level: every frame attends to its clip's text (ml-mdm's crashes)."""
    spec = spec_from_config(video_cfg(attention_levels=[1], num_attention_layers=[0, 1, 0]))
    model = build_model(spec)
    rng = np.random.default_rng(0)
    xs = [jnp.asarray(rng.normal(size=(2, r, r, 3)), jnp.float32) for r in spec.resolutions]
    text = jnp.asarray(rng.normal(size=(2, 5, 16)), jnp.float32)
    mask = jnp.asarray([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], jnp.float32)
    t = jnp.asarray([10, 500])
    params = jax.jit(model.init)(jax.random.PRNGKey(1), xs, t, text, mask)["params"]
    assert "kv_cond" in params["down_blocks_1"]["attn_0"]
    # Make the zero-initialised output projections non-zero so text reaches the outputs.
    params = jax.tree_util.tree_map_with_path(
        lambda p, v: v + 0.05 if any(getattr(k, "key", "") in ("proj_out", "conv2", "conv_out", "out_adapter")
                                     for k in p) else v, params)
    out = _apply(model, params, xs, t, text, mask)
    assert [o.shape for o in out] == [x.shape for x in xs]
    text2 = text.at[1].set(-text[1])
    out2 = _apply(model, params, xs, t, text2, mask)
    assert float(jnp.abs(out2[0][1] - out[0][1]).max()) > 1e-4  # clip 1's text changes clip 1
    np.testing.assert_allclose(out2[0][0], out[0][0], atol=1e-6)  # and nothing else


@pytest.mark.slow
def test_three_level_nest_and_mixed_batch_rows():
    """Per-frame spatial level around a temporal level around an image level (S64T16S256's layout), with
    fewer rows at the top level (mixed-resolution batch)."""
    inner = video_cfg(frames=4, frame=8)
    cfg = {"resolution_channels": [32, 32], "num_resnets_per_resolution": [1, 1], "temporal_mode": True,
           "temporal_spatial_ds": True, "temporal_dim": 64, "conditioning_feature_dim": 16,
           "micro_conditioning": "scale:16", "inner_config": inner, "resolution": 32}
    spec = spec_from_config(cfg)
    assert spec.resolutions == (32, 16, 8) and spec.scales == (4, 2, 1)
    assert spec.level_tiles == (2, 2, 1) and spec.tiles == (2, 2)
    fields = spec.diffusion_fields()
    assert fields["temporal"] == (False, True, False) and fields["frame_tiles"] == (2, 2, 1)
    model = build_model(spec)
    rng = np.random.default_rng(0)
    rows = [1, 2, 2]
    xs = [jnp.asarray(rng.normal(size=(b, r, r, 3)), jnp.float32) for b, r in zip(rows, spec.resolutions, strict=True)]
    text = jnp.asarray(rng.normal(size=(2, 3, 16)), jnp.float32)
    mask = jnp.ones((2, 3), jnp.float32)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), xs, jnp.asarray([3, 4]), text, mask)["params"]
    out = _apply(model, params, xs, jnp.asarray([3, 4]), text, mask)
    assert [o.shape for o in out] == [x.shape for x in xs]
    assert all(bool(jnp.isfinite(o).all()) for o in out)


@needs_fixtures
def test_mlmdm_temporal_args_decode_to_our_config():
    """ml-mdm's args of a temporal model (the fixture's unet_config) decode to a model and diffusion config with
    the mosaic resolutions and first-frame levels (the converter used to reject temporal checkpoints)."""
    from mdm_jax.convert.mlmdm_config import decode_args
    from mdm_jax.diffusion.spec import DiffusionSpec

    entry = json.loads((VIDEO / "configs.json").read_text())["models"]["v1"]
    args = {"model": "nested_unet", "unet_config": entry["unet_config"],
            "diffusion_config": entry["diffusion_config"], "reader_config": {"image_size": 32}}
    decoded = decode_args(args)
    spec = spec_from_config(decoded.model)
    assert spec.resolutions == (32, 8) and spec.tiles == (4, 1)
    assert spec.num_temporal_attention_layers == (1, 1, 1, 1, 0) and spec.temporal_positional_encoding
    diff = DiffusionSpec.from_config(decoded.diffusion)
    assert diff.scales == (4, 1) and diff.temporal == (True, False) and diff.frame_tiles == (4, 1)


def test_frame_embedding_only_on_a_temporal_level():
    cfg = video_cfg()
    cfg["inner_config"]["frame_embedding"] = True
    with pytest.raises(ConfigError, match=r"inner_config\.frame_embedding"):
        spec_from_config(cfg)


def test_frame_rows_pools_frames_as_the_level_does():
    from mdm_jax.models.layers import frame_rows
    temb = jnp.arange(2 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 3)
    np.testing.assert_array_equal(frame_rows(temb, 8), temb.reshape(8, 3))  # full frame rate: row b*F + f
    np.testing.assert_array_equal(frame_rows(temb, 4)[1], (temb[0, 2] + temb[0, 3]) / 2)  # clip 0, frames 2-3
    np.testing.assert_array_equal(frame_rows(temb, 2)[1], temb[1].mean(0))  # one frame left per clip
    with pytest.raises(ValueError, match="cannot cover"):
        frame_rows(temb, 6)


@pytest.mark.slow
def test_frame_embedding_is_added_to_the_time_embedding():
    """``frame_embedding`` (not in ml-mdm) adds one learned (frames, temporal_dim) table and nothing else; zero
    rows give the plain model's outputs, and a row steers the clip."""
    plain, framed = spec_from_config(video_cfg()), spec_from_config(video_cfg(frame_embedding=True))
    assert framed.frame_embedding and not plain.frame_embedding
    rng = np.random.default_rng(0)
    xs = [jnp.asarray(rng.normal(size=(2, r, r, 3)), jnp.float32) for r in plain.resolutions]
    text = jnp.asarray(rng.normal(size=(2, 5, 16)), jnp.float32)
    mask, t = jnp.ones((2, 5), jnp.float32), jnp.asarray([10, 500])
    params = jax.jit(build_model(framed).init)(jax.random.PRNGKey(1), xs, t, text, mask)["params"]
    assert params["frame_emb"].shape == (4, 64)
    params = jax.tree_util.tree_map_with_path(  # non-zero output projections, so every path reaches the output
        lambda p, v: v + 0.05 if any(getattr(k, "key", "") in ("proj_out", "conv2", "conv_out", "out_adapter")
                                     for k in p) else v, params)
    base = {k: v for k, v in params.items() if k != "frame_emb"}
    out_plain = _apply(build_model(plain), base, xs, t, text, mask)
    zero = dict(params, frame_emb=jnp.zeros_like(params["frame_emb"]))
    out_zero = _apply(build_model(framed), zero, xs, t, text, mask)
    for a, b in zip(out_zero, out_plain, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    out = _apply(build_model(framed), params, xs, t, text, mask)
    assert float(jnp.abs(out[0] - out_plain[0]).max()) > 1e-3
