"""Validated, hashable description of a (Nested)UNet, built from an ml_collections config.

Flax modules want hashable, immutable attributes and users want errors that name the bad field, so the
config (data) is turned into a tree of frozen dataclasses (``UNetSpec``) once, up front. Field names follow
ml-mdm's ``UNetConfig``/``NestedUNetConfig`` so that a checkpoint's pickled ``args`` maps over directly.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

NUM_GROUPS_NORM = 32


class ConfigError(ValueError):
    """A model config field has a bad value; the message names the field and what was expected."""


def _ints(value: Any, field: str, path: str) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [v for v in value.replace(" ", "").split(",") if v]
    elif isinstance(value, int):
        value = [value]
    try:
        return tuple(int(v) for v in value)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{path}{field}: expected a list of ints, got {value!r}") from e


def parse_micro_conditioning(value: str | None) -> tuple[tuple[str, float], ...]:
    """'scale:64,foo:0' -> (('scale', 64.0), ('foo', 0.0)), ml-mdm's LABEL:DEFAULT format."""
    if not value:
        return ()
    out = []
    for item in str(value).split(","):
        key, _, default = item.partition(":")
        if not key or not default:
            raise ConfigError(f"micro_conditioning: expected 'label:default[,label:default]', got {value!r}")
        out.append((key.strip(), float(default)))
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class UNetSpec:
    """One level of a NestedUNet (or a plain UNet when ``inner`` is None).

    ``cond_dim`` is the effective width of the text features this level's cross-attention reads (ml-mdm
    overwrites ``conditioning_feature_dim`` with ``conditioning_feature_proj_dim`` when the latter is > 0);
    ``input_cond_dim`` is the width of the features this level receives.
    """

    resolution: int
    resolution_channels: tuple[int, ...]
    num_resnets_per_resolution: tuple[int, ...]
    attention_levels: tuple[int, ...] = ()
    num_attention_layers: tuple[int, ...] = ()
    temporal_dim: int = 1024
    input_cond_dim: int = -1
    cond_dim: int = -1
    conditioning_feature_proj_dim: int = -1
    num_lm_head_layers: int = 0
    masked_cross_attention: bool = False
    skip_mid_blocks: bool = False
    skip_cond_emb: bool = False
    micro_conditioning: tuple[tuple[str, float], ...] = ()
    use_attention_ffn: bool = True
    num_groups_norm: int = NUM_GROUPS_NORM
    num_heads: int = 8
    dropout: float = 0.0
    num_classes: int = 0
    input_channels: int = 3
    output_channels: int = 3
    # Nested levels only.
    inner: UNetSpec | None = None
    skip_normalization: bool = True
    skip_inner_unet_input: bool = False
    nesting: bool = False  # True when this level sits inside another one.
    # Video (ml-mdm's temporal mode). A temporal level halves the number of frames per resolution instead of the
    # spatial size; ``temporal_spatial_ds`` makes it a spatial level run frame by frame. Inputs stay mosaics.
    temporal_mode: bool = False
    temporal_spatial_ds: bool = False
    temporal_positional_encoding: bool = False  # RoPE over frames in the temporal attention blocks
    num_temporal_attention_layers: tuple[int, ...] = ()
    # Not in ml-mdm: a learned embedding of the frame index added to the level's time embedding, so that every
    # ResNet's scale/shift can depend on (prompt, frame) together; without it a frame knows its place in the clip
    # only through the zero padding of the frame convolutions (RoPE attention is relative).
    frame_embedding: bool = False

    # ---- derived facts -------------------------------------------------------------------------------
    @property
    def num_resolutions(self) -> int:
        return len(self.resolution_channels)

    @property
    def is_nested(self) -> bool:
        return self.inner is not None

    @property
    def is_temporal(self) -> bool:
        """Resolutions step over frames (16 -> 8 -> ... -> 1) rather than over pixels."""
        return self.temporal_mode and not self.temporal_spatial_ds

    @property
    def nest_ratio(self) -> int:
        """Factor between the side of this level's input (mosaic) and its inner level's input.

        Spatial levels halve the size per resolution; a temporal level halves the frames, 2**(L-1) frames become
        one, i.e. sqrt(2**(L-1)) mosaic tiles per side (ml-mdm's ``int(np.sqrt(nest_ratio))``).
        """
        ratio = 2 ** (self.num_resolutions - 1)
        return math.isqrt(ratio) if self.is_temporal else ratio

    @property
    def tiles(self) -> tuple[int, int]:
        """(S, T): mosaic tiles per side of this level's input and of its down path's output (ml-mdm's
        ``temporal_wrapper``). A temporal level holds S*S frames; a per-frame spatial level keeps T*T frames."""
        sc = self.scales
        inner = sc[1] if len(sc) > 1 else 1
        return (inner, inner) if self.temporal_spatial_ds else (sc[0], inner)

    @property
    def level_tiles(self) -> tuple[int, ...]:
        """Mosaic tiles per side of every level's input, high -> low (1: a plain image level)."""
        return tuple(level.tiles[0] if level.temporal_mode else 1 for level in self.levels)

    def diffusion_fields(self) -> dict[str, tuple]:
        """What the diffusion process needs from the model: level scales and, for video, temporal levels and
        tiles (DiffusionSpec ``scales``, ``temporal``, ``frame_tiles``)."""
        out: dict[str, tuple] = {"scales": tuple(self.scales)}
        if any(level.temporal_mode for level in self.levels):
            out["temporal"] = tuple(level.is_temporal for level in self.levels)
            out["frame_tiles"] = self.level_tiles
        return out

    def temporal_attention_layers_at(self, level: int) -> int:
        if not self.is_temporal or not self.num_temporal_attention_layers:
            return 0
        return self.num_temporal_attention_layers[level]

    @property
    def levels(self) -> list[UNetSpec]:
        """All levels, outermost (highest resolution) first."""
        out, spec = [], self
        while spec is not None:
            out.append(spec)
            spec = spec.inner
        return out

    @property
    def innermost(self) -> UNetSpec:
        return self.levels[-1]

    @property
    def resolutions(self) -> tuple[int, ...]:
        return tuple(level.resolution for level in self.levels)

    @property
    def scales(self) -> tuple[int, ...]:
        """Per-level size ratio to the innermost level (ml-mdm's ``nest_ratio + [1]``), high -> low."""
        low = self.resolutions[-1]
        return tuple(r // low for r in self.resolutions)

    def attention_layers_at(self, level: int) -> int:
        if level not in self.attention_levels:
            return 0
        return self.num_attention_layers[level]

    @property
    def builds_text_conditioning(self) -> bool:
        """ml-mdm builds lm_proj/lm_head/cond_emb here (only the innermost level ever runs them)."""
        return self.input_cond_dim > 0 and not self.skip_cond_emb

    @property
    def uses_text(self) -> bool:
        return self.innermost.input_cond_dim > 0


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    """Read a field from a ConfigDict/dict/dataclass; None counts as absent."""
    value = cfg.get(key, None) if isinstance(cfg, Mapping) or hasattr(cfg, "get") else getattr(cfg, key, None)
    return default if value is None else value


def spec_from_config(cfg: Mapping[str, Any], *, resolution: int | None = None,
                     input_cond_dim: int | None = None, num_classes: int | None = None,
                     nesting: bool = False, path: str = "") -> UNetSpec:
    """Build and validate a ``UNetSpec`` tree from a (nested) config mapping.

    ``cfg`` uses ml-mdm's field names (``resolution_channels``, ``num_resnets_per_resolution``,
    ``attention_levels``, ``num_attention_layers``, ``conditioning_feature_dim``, ``inner_config``, ...) plus
    ``resolution`` (input size of the outermost level; inner sizes follow from the nest ratio) and
    ``num_classes`` (class conditioning, absent in ml-mdm; given at the top, it is owned by the innermost level,
    next to ``cond_emb``). ``resnet_config`` fields may be nested as in ml-mdm or
    given flat (``use_attention_ffn``, ``num_groups_norm``, ``dropout``).
    """
    def get(key: str, default: Any = None) -> Any:
        return _get(cfg, key, default)

    resnet_cfg = get("resnet_config", {})

    def rget(key: str, default: Any) -> Any:  # flat field first, then ml-mdm's nested resnet_config
        return get(key, _get(resnet_cfg, key, default))

    channels = _ints(get("resolution_channels"), "resolution_channels", path)
    if not channels:
        raise ConfigError(f"{path}resolution_channels: expected a non-empty list of ints")
    n = len(channels)
    resnets = _ints(get("num_resnets_per_resolution", 2), "num_resnets_per_resolution", path)
    if len(resnets) == 1:
        resnets = resnets * n
    if len(resnets) != n:
        raise ConfigError(f"{path}num_resnets_per_resolution: expected {n} values (one per resolution_channels "
                          f"entry), got {list(resnets)}")
    attn_levels = _ints(get("attention_levels", ()), "attention_levels", path)
    attn_layers = _ints(get("num_attention_layers", 1), "num_attention_layers", path)
    if len(attn_layers) == 1:
        attn_layers = attn_layers * n
    if len(attn_layers) != n:
        raise ConfigError(f"{path}num_attention_layers: expected {n} values, got {list(attn_layers)}")
    for lvl in attn_levels:
        if not 0 <= lvl < n:
            raise ConfigError(f"{path}attention_levels: level {lvl} out of range 0..{n - 1}")

    groups = int(rget("num_groups_norm", NUM_GROUPS_NORM))
    for i, c in enumerate(channels):
        if c % groups:
            raise ConfigError(f"{path}resolution_channels[{i}]: {c} is not divisible by the {groups} GroupNorm "
                              f"groups (expected a multiple of {groups})")

    td = get("temporal_dim", None)
    td = 4 * channels[0] if td is None or int(td) <= 0 else int(td)
    if td % 8:
        raise ConfigError(f"{path}temporal_dim: {td} must be a multiple of 8 (td/8 sinusoid frequencies)")

    res = get("resolution", None) if resolution is None else resolution
    if res is None:
        raise ConfigError(f"{path}resolution: required (input size of this level)")
    res = int(res)
    temporal_mode = bool(get("temporal_mode", False))
    spatial_ds = bool(get("temporal_spatial_ds", False))
    is_temporal = temporal_mode and not spatial_ds
    t_layers = _ints(get("num_temporal_attention_layers", ()), "num_temporal_attention_layers", path)
    frame_embedding = bool(get("frame_embedding", False))
    if frame_embedding and not temporal_mode:
        raise ConfigError(f"{path}frame_embedding: set on a level without temporal_mode (no frames to embed)")
    if temporal_mode and not get("inner_config", None):
        raise ConfigError(f"{path}temporal_mode: only a nested level (one with an inner_config) can be temporal or "
                          f"per-frame; the innermost level is the single-frame image UNet")
    if is_temporal:
        ratio = _temporal_ratio(n, get("frames", None), path)
        if len(t_layers) == 1:
            t_layers = t_layers * n
        if t_layers and len(t_layers) != n:
            raise ConfigError(f"{path}num_temporal_attention_layers: expected {n} values (one per "
                              f"resolution_channels entry), got {list(t_layers)}")
        for i, c in enumerate(channels):
            if t_layers and t_layers[i] and c % TEMPORAL_HEAD_CHANNELS:
                raise ConfigError(f"{path}resolution_channels[{i}]: {c} is not a multiple of "
                                  f"{TEMPORAL_HEAD_CHANNELS} (temporal attention heads have {TEMPORAL_HEAD_CHANNELS} "
                                  f"channels)")
    else:
        ratio = 2 ** (n - 1)
        if t_layers and any(t_layers) and not temporal_mode:
            raise ConfigError(f"{path}num_temporal_attention_layers: {list(t_layers)} set on a level without "
                              f"temporal_mode")
        t_layers = ()
    if res % ratio:
        what = "tiles per side" if is_temporal else f"2**{n - 1} (the level downsamples {n - 1} times)"
        raise ConfigError(f"{path}resolution: {res} is not divisible by {ratio} ({what})")

    feat = int(get("conditioning_feature_dim", -1) if input_cond_dim is None else input_cond_dim)
    proj = int(get("conditioning_feature_proj_dim", -1))
    cond_dim = proj if feat > 0 and proj > 0 else feat

    heads = int(get("num_heads", 8))
    for lvl in attn_levels:
        if attn_layers[lvl] and channels[lvl] % heads:
            raise ConfigError(f"{path}resolution_channels[{lvl}]: {channels[lvl]} not divisible by num_heads={heads}")

    classes = int(get("num_classes", 0) if num_classes is None else num_classes)
    if classes < 0:
        raise ConfigError(f"{path}num_classes: expected >= 0, got {classes}")
    inner_cfg = get("inner_config", None)
    is_nested = bool(inner_cfg)
    inner = None
    if is_nested:
        inner_res = res // ratio
        declared = inner_cfg.get("resolution", None) if hasattr(inner_cfg, "get") else None
        if declared is not None and int(declared) != inner_res:
            raise ConfigError(
                f"{path}inner_config.resolution: {declared} does not nest inside resolution {res} with "
                f"{n} resolution_channels (expected {res} / {ratio} = {inner_res})")
        inner = spec_from_config(inner_cfg, resolution=inner_res, input_cond_dim=cond_dim,
                                 num_classes=classes, nesting=True, path=f"{path}inner_config.")
        if inner.resolution_channels[0] % groups:
            raise ConfigError(f"{path}inner_config.resolution_channels[0]: not divisible by {groups}")
        if inner.temporal_dim != td:
            raise ConfigError(f"{path}temporal_dim: every level needs the same temporal_dim (cond_emb is shared); "
                              f"got {td} here and {inner.temporal_dim} in inner_config")

    spec = UNetSpec(
        resolution=res,
        resolution_channels=channels,
        num_resnets_per_resolution=resnets,
        attention_levels=attn_levels,
        num_attention_layers=attn_layers,
        temporal_dim=td,
        input_cond_dim=feat,
        cond_dim=cond_dim,
        conditioning_feature_proj_dim=proj,
        num_lm_head_layers=int(get("num_lm_head_layers", 0)),
        masked_cross_attention=bool(int(get("masked_cross_attention", 0))),
        skip_mid_blocks=bool(get("skip_mid_blocks", is_nested)),
        skip_cond_emb=bool(get("skip_cond_emb", is_nested)),
        micro_conditioning=parse_micro_conditioning(get("micro_conditioning", None)),
        use_attention_ffn=bool(rget("use_attention_ffn", False)),
        num_groups_norm=groups,
        num_heads=heads,
        dropout=float(rget("dropout", 0.0)),
        num_classes=0 if is_nested else classes,
        input_channels=int(get("input_channels", 3)),
        output_channels=int(get("output_channels", 3)),
        inner=inner,
        skip_normalization=bool(get("skip_normalization", True)),
        skip_inner_unet_input=bool(get("skip_inner_unet_input", False)),
        nesting=nesting,
        temporal_mode=temporal_mode,
        temporal_spatial_ds=spatial_ds,
        temporal_positional_encoding=bool(get("temporal_positional_encoding", False)) and is_temporal,
        num_temporal_attention_layers=t_layers,
        frame_embedding=frame_embedding,
    )
    if temporal_mode:
        _check_frames(spec, path)
    if spec.num_lm_head_layers and spec.builds_text_conditioning and spec.cond_dim % heads:
        raise ConfigError(f"{path}conditioning_feature_proj_dim: {spec.cond_dim} not divisible by {heads} heads")
    return spec


TEMPORAL_HEAD_CHANNELS = 32  # ml-mdm's TemporalAttentionBlock(num_head_channels=32)


def _temporal_ratio(n: int, frames: Any, path: str) -> int:
    """Tiles per side a temporal level removes: its 2**(n-1) frames must form a square mosaic (n odd)."""
    if n < 2:
        raise ConfigError(f"{path}resolution_channels: a temporal level needs at least 3 resolutions (frames "
                          f"halve per resolution down to one frame), got {n}")
    if frames is not None and int(frames) != 2 ** (n - 1):
        raise ConfigError(f"{path}frames: {frames} frames need log2({frames}) + 1 resolutions; resolution_channels "
                          f"has {n} entries (2**{n - 1} = {2 ** (n - 1)} frames)")
    if (n - 1) % 2:
        raise ConfigError(f"{path}resolution_channels: a temporal level with {n} resolutions would hold "
                          f"2**{n - 1} = {2 ** (n - 1)} frames, which is not a square mosaic of tiles; use an odd "
                          f"number of resolutions (3: 4 frames, 5: 16 frames, 7: 64 frames)")
    return math.isqrt(2 ** (n - 1))


def _check_frames(spec: UNetSpec, path: str) -> None:
    """Each frame (mosaic tile) must be a whole number of pixels, even where temporal attention halves it."""
    s_tiles, t_tiles = spec.tiles
    for tiles, where in ((s_tiles, "input"), (t_tiles, "inner level input")):
        side = spec.resolution if where == "input" else spec.inner.resolution
        if side % tiles:
            raise ConfigError(f"{path}resolution: the {where} side {side} is not divisible into {tiles} mosaic "
                              f"tiles per side")
    frame = spec.resolution // s_tiles
    if spec.is_temporal and any(spec.num_temporal_attention_layers) and frame % 2:
        raise ConfigError(f"{path}resolution: frames of {frame}x{frame} pixels; temporal attention blocks need an "
                          f"even frame size (stride-2 conv then x2 upsampling)")
    if spec.temporal_spatial_ds and frame % 2 ** (spec.num_resolutions - 1):
        raise ConfigError(f"{path}resolution: per-frame level with frames of {frame} pixels cannot downsample "
                          f"{spec.num_resolutions - 1} times")


def expected_input_shapes(spec: UNetSpec, batch: int) -> list[tuple[int, int, int, int]]:
    """NHWC shapes of the inputs, high -> low."""
    return [(batch, lvl.resolution, lvl.resolution, lvl.input_channels) for lvl in spec.levels]


def check_inputs(spec: UNetSpec, xs: Sequence[Any]) -> None:
    """Raise a ConfigError naming the level and expected shape when inputs do not match the spec."""
    levels = spec.levels
    if len(xs) != len(levels):
        raise ConfigError(f"inputs: expected {len(levels)} arrays (one per level, high -> low resolutions "
                          f"{[lvl.resolution for lvl in levels]}), got {len(xs)}")
    for i, (x, lvl) in enumerate(zip(xs, levels, strict=True)):
        want = (lvl.resolution, lvl.resolution, lvl.input_channels)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ConfigError(f"inputs[{i}]: expected NHWC shape (B, {want[0]}, {want[1]}, {want[2]}) for level "
                              f"{i}, got {tuple(x.shape)}")
    for i in range(1, len(xs)):
        if xs[i].shape[0] < xs[i - 1].shape[0]:
            raise ConfigError(f"inputs[{i}]: a lower level needs at least as many rows as the level above "
                              f"({xs[i - 1].shape[0]}), got {xs[i].shape[0]}")
