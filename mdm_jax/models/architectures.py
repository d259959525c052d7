"""The paper's NestedUNet architectures (Appendix A) as ml_collections configs.

Names spell the nested resolutions low to high as in the paper (``S64S256`` = a 256 level around the 64 UNet).
Defaults reproduce apple/ml-mdm's released models (text width 2048 from FLAN-T5-XL projected to 2048, no text
self-attention head), whose parameter counts are 461,359,107 (S64), 476,613,958 (S64S256) and 480,970,057
(S64S256S1024). ``paper_text_head=True`` gives Appendix A's literal text settings instead (two learnable
self-attention layers on 1024-d projected features).
"""

from __future__ import annotations

import math

import ml_collections

# Per outer level: resolution -> (resolution_channels, num_resnets_per_resolution), from Appendix A.
_OUTER = {
    # S64S256 / S64S256S1024 (two downsamplings, factor 4 per level).
    ("x4", 256): ([64, 128, 256], [2, 2, 1]),
    ("x4", 1024): ([32, 32, 64], [2, 2, 1]),
    # S64S128S256 / S64S128S256S512S1024 (one downsampling, factor 2 per level).
    ("x2", 128): ([128, 256], [2, 1]),
    ("x2", 256): ([64, 128], [2, 1]),
    ("x2", 512): ([32, 64], [2, 1]),
    ("x2", 1024): ([32, 32], [2, 1]),
}

ARCHITECTURES = {
    "S64": (64,),
    "S64S256": (256, 64),
    "S64S128S256": (256, 128, 64),
    "S64S256S1024": (1024, 256, 64),
    "S64S128S256S512S1024": (1024, 512, 256, 128, 64),
}


def base_unet(cond_dim: int = 2048, proj_dim: int = 2048, lm_head_layers: int = 0) -> ml_collections.ConfigDict:
    """MDM-S64: the 64x64 UNet every model nests (ml-mdm ``cc12m_64x64``)."""
    return ml_collections.ConfigDict({
        "resolution": 64,
        "resolution_channels": [256, 512, 768],
        "num_resnets_per_resolution": [2, 2, 2],
        "attention_levels": [1, 2],
        "num_attention_layers": [0, 1, 5],
        "num_heads": 8,
        "temporal_dim": 1024,
        "conditioning_feature_dim": cond_dim,
        "conditioning_feature_proj_dim": proj_dim,
        "num_lm_head_layers": lm_head_layers,
        "masked_cross_attention": 0,
        "skip_mid_blocks": False,
        "skip_cond_emb": False,
        "micro_conditioning": "scale:64",
        "resnet_config": {"num_groups_norm": 32, "dropout": 0.0, "use_attention_ffn": True},
    })


def outer_level(resolution: int, inner: ml_collections.ConfigDict, factor: int, *,
                normalize_input: bool) -> ml_collections.ConfigDict:
    """A nested level around ``inner``: convolutions only, no mid blocks, no attention (Appendix A)."""
    channels, resnets = _OUTER[(f"x{factor}", resolution)]
    return ml_collections.ConfigDict({
        "resolution": resolution,
        "resolution_channels": channels,
        "num_resnets_per_resolution": resnets,
        "attention_levels": [],
        "num_attention_layers": [0] * len(channels),
        "num_heads": 8,
        "temporal_dim": 1024,
        "conditioning_feature_dim": inner.conditioning_feature_dim,
        "conditioning_feature_proj_dim": -1,
        "num_lm_head_layers": 0,
        "masked_cross_attention": 1,
        "skip_mid_blocks": True,
        "skip_cond_emb": True,
        "micro_conditioning": f"scale:{resolution}",
        "resnet_config": {"num_groups_norm": 32, "dropout": 0.0, "use_attention_ffn": False},
        "skip_normalization": not normalize_input,
        "skip_inner_unet_input": False,
        "inner_config": inner,
    })


# Video (Appendix A): the 64x64 UNet inside a temporal level over 16 frames (MDM-S64T16), and that inside a
# per-frame 256 level (MDM-S64T16S256). Clips are mosaics: 16 frames of 64x64 are one 256x256 input.
VIDEO_ARCHITECTURES = {"S64T16": 2, "S64T16S256": 3}


def temporal_level(inner: ml_collections.ConfigDict, frames: int = 16, *, frame_size: int = 64,
                   rope: bool = False, normalize_input: bool = False) -> ml_collections.ConfigDict:
    """The T16 level: 5 resolutions of 256 channels over 16, 8, 4, 2, 1 frames, one temporal attention block
    after every ResNet except at the single-frame resolution, no spatial attention, no mid blocks."""
    n = frames.bit_length()  # log2(frames) + 1 resolutions
    tiles = math.isqrt(frames)
    return ml_collections.ConfigDict({
        "resolution": tiles * frame_size,
        "frames": frames,
        "resolution_channels": [256] * n,
        "num_resnets_per_resolution": [2] * (n - 1) + [1],
        "attention_levels": [],
        "num_attention_layers": [0] * n,
        "num_temporal_attention_layers": [1] * (n - 1) + [0],
        "temporal_mode": True,
        "temporal_spatial_ds": False,
        "temporal_positional_encoding": rope,
        "num_heads": 8,
        "temporal_dim": 1024,
        "conditioning_feature_dim": inner.conditioning_feature_dim,
        "conditioning_feature_proj_dim": -1,
        "num_lm_head_layers": 0,
        "masked_cross_attention": 1,
        "skip_mid_blocks": True,
        "skip_cond_emb": True,
        "micro_conditioning": f"scale:{frame_size}",
        "resnet_config": {"num_groups_norm": 32, "dropout": 0.0, "use_attention_ffn": False},
        "skip_normalization": not normalize_input,
        "skip_inner_unet_input": False,
        "inner_config": inner,
    })


def get_video_architecture(name: str, *, cond_dim: int = 2048, frames: int = 16, rope: bool = False,
                           paper_text_head: bool = False) -> ml_collections.ConfigDict:
    """MDM-S64T16 / MDM-S64T16S256 (``frames`` may be 4, 16 or 64: 3, 5 or 7 temporal resolutions).

    With 2048-d text: 555,493,638 and 570,748,489 parameters, ml-mdm's counts. ``rope`` adds rotary position
    embeddings over frames (not in Appendix A); ml-mdm then also counts 16 fixed frequencies per temporal
    attention block as parameters, which our model computes instead of storing.
    """
    if name not in VIDEO_ARCHITECTURES:
        raise ValueError(f"architecture: unknown {name!r}; expected one of {sorted(VIDEO_ARCHITECTURES)}")
    proj, head = (1024, 2) if paper_text_head else (cond_dim, 0)
    if cond_dim <= 0:
        proj, head = -1, 0
    cfg = temporal_level(base_unet(cond_dim, proj, head), frames, rope=rope,
                         normalize_input=name == "S64T16S256")
    if name == "S64T16S256":
        outer = outer_level(256, cfg, 4, normalize_input=False)
        outer.temporal_mode = True
        outer.temporal_spatial_ds = True
        outer.resolution = math.isqrt(frames) * 256
        outer.micro_conditioning = "scale:256"
        cfg = outer
    cfg.num_classes = 0
    return cfg


def get_architecture(name: str, *, cond_dim: int = 2048, num_classes: int = 0,
                     paper_text_head: bool = False) -> ml_collections.ConfigDict:
    """Model config of a named architecture (``ARCHITECTURES``).

    ``cond_dim``: width of the text features (2048 for FLAN-T5-XL; -1 for no text). ``num_classes`` > 0 adds
    the class embedding (ImageNet). Intermediate levels normalise their input by its std, as the middle level of
    ml-mdm's 1024 model does; the outermost level does not.
    """
    if name in VIDEO_ARCHITECTURES:
        return get_video_architecture(name, cond_dim=cond_dim, paper_text_head=paper_text_head)
    if name not in ARCHITECTURES:
        raise ValueError(f"architecture: unknown {name!r}; expected one of "
                         f"{sorted(ARCHITECTURES) + sorted(VIDEO_ARCHITECTURES)}")
    resolutions = ARCHITECTURES[name]
    proj, head = (1024, 2) if paper_text_head else (cond_dim, 0)
    if cond_dim <= 0:
        proj, head = -1, 0
    cfg = base_unet(cond_dim, proj, head)
    for depth, (res, low) in enumerate(zip(resolutions[-2::-1], resolutions[::-1], strict=False)):
        outermost = depth == len(resolutions) - 2
        cfg = outer_level(res, cfg, res // low, normalize_input=not outermost)
    cfg.num_classes = num_classes
    return cfg
