"""Decode ml-mdm's pickled ``args`` (the authoritative per-checkpoint config) into our model and diffusion configs.

ml-mdm's YAMLs are not a trustworthy record of training (top-level keys are silently ignored, first-release files
were wrong), so a checkpoint's own ``args`` decides: ``args.unet_config`` (UNetConfig / NestedUNetConfig /
Nested2UNetConfig, recursive ``inner_config``), ``args.diffusion_config`` (+ ``sampler_config``) and
``args.reader_config`` (image size). Fields a pickle lacks (older ml-mdm versions) take ml-mdm's class defaults,
and every such default is reported.

The model config keeps ml-mdm's field names (what ``mdm_jax.models.spec_from_config`` reads) plus our
``resolution`` per level; the diffusion config is the flat layout ``mdm_jax.diffusion.DiffusionSpec.from_config``
reads, with ml-mdm's enums mapped to our names (DEEPFLOYD -> 'deepfloyd', V_PREDICTION -> 'v', DDPM -> 'eps',
CLIP -> 'clip') and ml-mdm-only fields kept under their own names.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from mdm_jax.convert.torch_pickle import ConfigObject, EnumMember


class ConfigDecodeError(ValueError):
    """The checkpoint's config cannot be turned into ours; the message names the field."""


# ml-mdm's dataclass defaults (ml_mdm/models/unet.py, nested_unet.py, samplers.py, diffusion.py), used only for
# fields an (older) pickle does not carry.
UNET_DEFAULTS: dict[str, Any] = {
    "num_resnets_per_resolution": "2", "temporal_dim": None, "attention_levels": "2,3",
    "num_attention_layers": "1", "num_temporal_attention_layers": None, "conditioning_feature_dim": -1,
    "conditioning_feature_proj_dim": -1, "num_lm_head_layers": 0, "masked_cross_attention": 1,
    "resolution_channels": "128,256,256,512,1024", "skip_mid_blocks": False, "skip_cond_emb": False,
    "nesting": False, "micro_conditioning": None, "temporal_mode": False, "temporal_spatial_ds": False,
    "temporal_positional_encoding": False,
}
NESTED_DEFAULTS: dict[str, Any] = {
    "skip_mid_blocks": True, "skip_cond_emb": True, "skip_inner_unet_input": False, "skip_normalization": False,
    "initialize_inner_with_pretrained": None, "freeze_inner_unet": False, "interp_conditioning": False,
}
RESNET_DEFAULTS: dict[str, Any] = {"num_groups_norm": 32, "dropout": 0.0, "use_attention_ffn": False}
SAMPLER_DEFAULTS: dict[str, Any] = {
    "num_diffusion_steps": 32, "reproject_signal": False, "schedule_type": "DDPM", "prediction_type": "DDPM",
    "loss_target_type": None, "beta_start": 0.0001, "beta_end": 0.02, "threshold_function": "CLIP",
    "rescale_schedule": 1.0, "rescale_signal": None, "schedule_shifted": False, "schedule_shifted_power": 1,
}
DIFFUSION_DEFAULTS: dict[str, Any] = {"model_output_scale": 0, "use_vdm_loss_weights": True}
NESTED_DIFFUSION_DEFAULTS: dict[str, Any] = {
    "use_double_loss": False, "multi_res_weights": None, "no_use_residual": False, "use_random_interp": False,
    "mixed_ratio": None, "random_downsample": False, "average_downsample": False, "mid_downsample": False,
}
ML_MDM_NUM_HEADS = 8  # hard-coded in ml-mdm's SelfAttention

_SCHEDULES = {"DEEPFLOYD": "deepfloyd", "COSINE": "cosine", "DDPM": "ddpm"}
_PREDICTIONS = {"V_PREDICTION": "v", "DDPM": "eps", "DDIM": "eps"}
_THRESHOLDS = {"NONE": "none", "CLIP": "clip", "DYNAMIC": "dynamic", "DYNAMIC_IF": "dynamic_if"}


@dataclasses.dataclass
class DecodedConfig:
    """Our configs plus what the decoder had to assume (``notes``) and ml-mdm's model name (``unet``, ...)."""

    model: ml_collections.ConfigDict
    diffusion: ml_collections.ConfigDict
    notes: list[str]
    model_name: str | None = None
    source: str | None = None


_ABSENT = object()


def _field(obj: Any, key: str) -> Any:
    """A field of a ConfigObject / dict / ConfigDict / namespace, or ``_ABSENT``."""
    if obj is None:
        return _ABSENT
    if isinstance(obj, ConfigObject):
        return obj.__dict__.get(key, _ABSENT)
    if isinstance(obj, Mapping):
        return obj.get(key, _ABSENT)
    if isinstance(obj, ml_collections.ConfigDict):
        return obj[key] if key in obj else _ABSENT
    return getattr(obj, key, _ABSENT)


def _class_name(obj: Any) -> str:
    if isinstance(obj, ConfigObject):
        return obj._mlmdm_class.rsplit(".", 1)[-1]
    value = _field(obj, "_class")
    return str(value).rsplit(".", 1)[-1] if value is not _ABSENT else ""


class _Reader:
    """Reads fields with ml-mdm's defaults and records every default it had to use."""

    def __init__(self, notes: list[str]) -> None:
        self.notes = notes

    def get(self, obj: Any, key: str, defaults: Mapping[str, Any], where: str) -> Any:
        value = _field(obj, key)
        if value is _ABSENT:
            value = defaults[key]
            self.notes.append(f"{where}{key}: absent from the checkpoint's args; using ml-mdm's default {value!r}")
        return value


def _int_list(value: Any, field: str, length: int | None = None) -> list[int]:
    """ml-mdm's comma-separated int fields (already lists once its __post_init__ ran), expanded like ml-mdm."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [v for v in value.replace(" ", "").split(",") if v]
    try:
        out = [int(v) for v in value]
    except (TypeError, ValueError) as e:
        raise ConfigDecodeError(f"{field}: expected a list of ints, got {value!r}") from e
    if length is not None and len(out) == 1:
        out = out * length
    return out


def enum_name(value: Any) -> str | None:
    """'DEEPFLOYD' from an EnumMember, 'DEEPFLOYD', 'ScheduleType.DEEPFLOYD' or 'deepfloyd'."""
    if value is None:
        return None
    if isinstance(value, EnumMember):
        return str(value)
    return str(value).rsplit(".", 1)[-1].upper()


def _map_enum(value: Any, table: Mapping[str, str], field: str) -> str | None:
    name = enum_name(value)
    if name is None:
        return None
    if name.lower() in table.values():
        return name.lower()
    if name not in table:
        raise ConfigDecodeError(f"{field}: ml-mdm value {name!r} is not supported (known: {sorted(table)})")
    return table[name]


def _decode_unet(cfg: Any, resolution: int, rd: _Reader, where: str) -> ml_collections.ConfigDict:
    nested_value = _field(cfg, "inner_config")
    is_nested = (nested_value is not _ABSENT and nested_value is not None) or "Nested" in _class_name(cfg)
    if is_nested and nested_value in (_ABSENT, None):
        raise ConfigDecodeError(f"{where}inner_config: a {_class_name(cfg) or 'nested'} config without an inner "
                                f"config")
    defaults = {**UNET_DEFAULTS, **(NESTED_DEFAULTS if is_nested else {})}

    def get(key: str) -> Any:
        return rd.get(cfg, key, defaults, where)

    channels = _int_list(get("resolution_channels"), f"{where}resolution_channels")
    n = len(channels)
    if not n:
        raise ConfigDecodeError(f"{where}resolution_channels: empty")
    temporal_mode, spatial_ds = bool(get("temporal_mode")), bool(get("temporal_spatial_ds"))
    t_layers = get("num_temporal_attention_layers")
    if t_layers and not temporal_mode:
        rd.notes.append(f"{where}num_temporal_attention_layers: set but only used by video models; ignored")
    td = get("temporal_dim")
    resnet = _field(cfg, "resnet_config")
    if resnet is _ABSENT:
        rd.notes.append(f"{where}resnet_config: absent; using ml-mdm's defaults {RESNET_DEFAULTS}")
        resnet = None
    out = ml_collections.ConfigDict()
    out.resolution = int(resolution)
    out.resolution_channels = channels
    out.num_resnets_per_resolution = _int_list(get("num_resnets_per_resolution"),
                                               f"{where}num_resnets_per_resolution", n)
    out.attention_levels = _int_list(get("attention_levels"), f"{where}attention_levels")
    out.num_attention_layers = _int_list(get("num_attention_layers"), f"{where}num_attention_layers", n)
    out.num_heads = ML_MDM_NUM_HEADS
    out.temporal_dim = 4 * channels[0] if td is None else int(td)
    out.conditioning_feature_dim = int(get("conditioning_feature_dim"))
    out.conditioning_feature_proj_dim = int(get("conditioning_feature_proj_dim"))
    out.num_lm_head_layers = int(get("num_lm_head_layers"))
    out.masked_cross_attention = int(get("masked_cross_attention"))
    out.skip_mid_blocks = bool(get("skip_mid_blocks"))
    out.skip_cond_emb = bool(get("skip_cond_emb"))
    micro = get("micro_conditioning")
    out.micro_conditioning = None if micro is None else str(micro)
    out.resnet_config = ml_collections.ConfigDict({
        key: RESNET_DEFAULTS[key] if resnet is None else rd.get(resnet, key, RESNET_DEFAULTS, f"{where}resnet_config.")
        for key in ("num_groups_norm", "dropout", "use_attention_ffn")})
    out.resnet_config.num_groups_norm = int(out.resnet_config.num_groups_norm)
    out.resnet_config.dropout = float(out.resnet_config.dropout)
    out.resnet_config.use_attention_ffn = bool(out.resnet_config.use_attention_ffn)
    if temporal_mode:
        out.temporal_mode = True
        out.temporal_spatial_ds = spatial_ds
        out.temporal_positional_encoding = bool(get("temporal_positional_encoding"))
        out.num_temporal_attention_layers = [] if spatial_ds else _int_list(
            t_layers, f"{where}num_temporal_attention_layers")
    if is_nested:
        out.skip_normalization = bool(get("skip_normalization"))
        out.skip_inner_unet_input = bool(get("skip_inner_unet_input"))
        if get("interp_conditioning"):
            rd.notes.append(f"{where}interp_conditioning: True; ml-mdm builds interp_layer1/2 but never runs them")
        if get("freeze_inner_unet"):
            rd.notes.append(f"{where}freeze_inner_unet: True in ml-mdm's training run (a training choice, not "
                            f"part of the model config)")
        ratio = _own_ratio(n, temporal_mode and not spatial_ds)
        if resolution % ratio:
            raise ConfigDecodeError(f"{where}resolution: {resolution} is not divisible by {ratio}")
        out.inner_config = _decode_unet(nested_value, resolution // ratio, rd, f"{where}inner_config.")
    out.num_classes = 0
    return out


def video_diffusion_fields(model: ml_collections.ConfigDict) -> dict[str, list]:
    """DiffusionSpec ``temporal`` / ``frame_tiles`` of a video model config ({} for an image model)."""
    cfg, video = model, False
    while cfg is not None:
        video = video or bool(cfg.get("temporal_mode", False))
        cfg = _inner(cfg)
    if not video:
        return {}
    from mdm_jax.models.spec import spec_from_config

    fields = spec_from_config(model).diffusion_fields()
    return {"temporal": list(fields["temporal"]), "frame_tiles": list(fields["frame_tiles"])}


def _own_ratio(n: int, temporal: bool) -> int:
    """Input side of a nested level over its inner level's: 2**(n-1), or its square root for a temporal level
    (frames halve, the mosaic loses sqrt(2**(n-1)) tiles per side; ml-mdm's ``int(np.sqrt(nest_ratio))``)."""
    ratio = 2 ** (n - 1)
    return int(np.sqrt(ratio)) if temporal else ratio


def _inner(model: Any) -> Any:
    inner = model.get("inner_config", None) if hasattr(model, "get") else None
    return inner or None


def _depth(model: ml_collections.ConfigDict) -> int:
    inner = _inner(model)
    return 0 if inner is None else 1 + _depth(inner)


def level_scales(model: ml_collections.ConfigDict) -> list[int]:
    """Per-level size ratio to the innermost level (ml-mdm's ``nest_ratio + [1]``), high -> low: each nested
    level downsamples 2**(len(resolution_channels) - 1) times before its inner level."""
    ratios, cfg = [], model
    while _inner(cfg) is not None:
        temporal = bool(cfg.get("temporal_mode", False)) and not bool(cfg.get("temporal_spatial_ds", False))
        ratios.append(_own_ratio(len(_int_list(cfg.resolution_channels, "resolution_channels")), temporal))
        cfg = _inner(cfg)
    scales = [1]
    for r in reversed(ratios):
        scales.insert(0, scales[0] * r)
    return scales


def _decode_diffusion(dc: Any, scales: list[int], rd: _Reader) -> ml_collections.ConfigDict:
    nested = len(scales) > 1 or "Nested" in _class_name(dc) or _field(dc, "use_double_loss") is not _ABSENT
    sampler = _field(dc, "sampler_config")
    if sampler is _ABSENT or sampler is None:
        rd.notes.append("diffusion_config.sampler_config: absent; using ml-mdm's SamplerConfig defaults")
        sampler = {}

    def sget(key: str) -> Any:
        return rd.get(sampler, key, SAMPLER_DEFAULTS, "diffusion_config.sampler_config.")

    def dget(key: str) -> Any:
        return rd.get(dc, key, {**DIFFUSION_DEFAULTS, **NESTED_DIFFUSION_DEFAULTS}, "diffusion_config.")

    schedule = enum_name(sget("schedule_type"))
    if schedule == "SIGMOID":
        raise ConfigDecodeError("diffusion_config.sampler_config.schedule_type: SIGMOID is not usable (ml-mdm's own "
                                "Sampler raises for it)")
    out = ml_collections.ConfigDict()
    out.schedule_type = _map_enum(schedule, _SCHEDULES, "sampler_config.schedule_type")
    out.num_diffusion_steps = int(sget("num_diffusion_steps"))
    out.beta_start = float(sget("beta_start"))
    out.beta_end = float(sget("beta_end"))
    out.rescale_schedule = float(sget("rescale_schedule"))
    out.prediction_type = _map_enum(sget("prediction_type"), _PREDICTIONS, "sampler_config.prediction_type")
    target = sget("loss_target_type")
    out.loss_target_type = (out.prediction_type if target is None
                            else _map_enum(target, _PREDICTIONS, "sampler_config.loss_target_type"))
    out.schedule_shifted = bool(sget("schedule_shifted"))
    out.schedule_shifted_power = float(sget("schedule_shifted_power"))
    signal = sget("rescale_signal")
    out.rescale_signal = None if signal is None else float(signal)
    out.threshold_function = _map_enum(sget("threshold_function"), _THRESHOLDS, "sampler_config.threshold_function")
    out.reproject_signal = bool(sget("reproject_signal"))
    out.scales = list(scales)
    out.use_vdm_loss_weights = bool(dget("use_vdm_loss_weights"))
    out.model_output_scale = float(dget("model_output_scale"))
    if out.model_output_scale:
        rd.notes.append(f"diffusion_config.model_output_scale: {out.model_output_scale} (ml-mdm squashes outputs "
                        f"with tanh; our model does not)")
    if nested:
        out.use_double_loss = bool(dget("use_double_loss"))
        for key in ("multi_res_weights", "mixed_ratio"):
            value = dget(key)
            out[key] = None if value in (None, "", "None") else str(value)
        for key in ("no_use_residual", "use_random_interp", "random_downsample", "average_downsample",
                    "mid_downsample"):
            out[key] = bool(dget(key))
    return out


def resolution_from_args(args: Any) -> int | None:
    """The outermost input size: ``sample_image_size`` (sampling CLIs) or ``reader_config.image_size``."""
    for value in (_field(args, "sample_image_size"), _field(_field(args, "reader_config"), "image_size")):
        if value is not _ABSENT and value is not None and int(value) > 0:
            return int(value)
    return None


def decode_args(args: Any, *, resolution: int | None = None, source: str | None = None) -> DecodedConfig:
    """Our (model, diffusion) configs from ml-mdm's ``args`` (a pickled Namespace stand-in or a dict from JSON).

    ``resolution`` overrides the image size read from ``args`` (needed when the args carry none).
    """
    notes: list[str] = []
    rd = _Reader(notes)
    unet = _field(args, "unet_config")
    if unet is _ABSENT or unet is None:
        raise ConfigDecodeError("args.unet_config: missing; this does not look like ml-mdm's args")
    res = resolution or resolution_from_args(args)
    if not res:
        raise ConfigDecodeError("cannot tell the model's input resolution: the args have no positive "
                                "sample_image_size or reader_config.image_size; pass --resolution N")
    model = _decode_unet(unet, int(res), rd, "unet_config.")
    model_name = _field(args, "model")
    model_name = None if model_name is _ABSENT else str(model_name)
    if model_name is not None:
        m = re.fullmatch(r"nested(\d*)_unet", model_name)
        want = 0 if model_name == "unet" else (int(m.group(1) or 1) if m else None)
        if want is not None and want != _depth(model):
            notes.append(f"args.model is {model_name!r} (nesting depth {want}) but unet_config nests "
                         f"{_depth(model)} levels deep; the unet_config structure is used")
    dc = _field(args, "diffusion_config")
    if dc is _ABSENT or dc is None:
        notes.append("args.diffusion_config: missing; using ml-mdm's defaults")
        dc = {}
    diffusion = _decode_diffusion(dc, level_scales(model), rd)
    diffusion.update(video_diffusion_fields(model))
    return DecodedConfig(model, diffusion, notes, model_name, source)


def reconcile_with_state_dict(model: ml_collections.ConfigDict, shapes: Mapping[str, tuple[int, ...]]) -> list[str]:
    """Fix ``conditioning_feature_dim`` from ``lm_proj.weight`` when ml-mdm's args hold the overwritten value.

    ml-mdm's UNet constructor overwrites ``config.conditioning_feature_dim`` with ``conditioning_feature_proj_dim``
    (when both are > 0) on the very object that is later pickled as ``args``, so for a single UNet with a
    projection the stored value is the projected width, not the text encoder's. The innermost ``lm_proj.weight``
    (out, in) says the real input width.
    """
    depth = _depth(model)
    key = "inner_unet." * depth + "lm_proj.weight"  # the innermost level owns lm_proj
    if key not in shapes or len(shapes[key]) != 2:
        return []
    actual = int(shapes[key][1])
    top_proj = int(model.get("conditioning_feature_proj_dim", -1))
    if depth and top_proj > 0:
        return []  # the inner level's input is the outer projection width; nothing to recover at the top
    if int(model.conditioning_feature_dim) == actual:
        return []
    old = int(model.conditioning_feature_dim)
    cfg = model
    while True:  # ml-mdm hands the top value down to every inner level
        cfg.conditioning_feature_dim = actual
        if _inner(cfg) is None:
            break
        cfg = _inner(cfg)
    return [f"conditioning_feature_dim: args say {old} (ml-mdm overwrites it with conditioning_feature_proj_dim "
            f"when it builds the model), {key} has input width {actual}; using {actual}"]


# ---------------------------------------------------------------------------------------------------------------
# --config files
# ---------------------------------------------------------------------------------------------------------------


def decode_config(cfg: Any, source: str, resolution: int | None = None) -> DecodedConfig:
    """Configs from whatever a checkpoint or file carries: ml-mdm's args (pickled or as JSON), our converted
    layout (``model`` [+ ``diffusion``]) or a bare model config."""

    def has(key: str) -> bool:
        return _field(cfg, key) is not _ABSENT

    if has("unet_config"):  # ml-mdm's args layout (e.g. a JSON dump of args)
        return decode_args(cfg, resolution=resolution, source=source)
    if has("model"):
        model, diffusion = _field(cfg, "model"), _field(cfg, "diffusion")
    elif has("resolution_channels"):
        model, diffusion = cfg, _ABSENT
    else:
        raise ConfigDecodeError(f"{source}: expected our converted layout ('model' [+ 'diffusion']), a model config "
                                f"('resolution_channels', ...) or ml-mdm's args ('unet_config', ...)")
    model = ml_collections.ConfigDict(_plain(model))
    if resolution:
        model.resolution = int(resolution)
    notes = []
    if diffusion is _ABSENT or diffusion is None:
        diffusion = ml_collections.ConfigDict({"scales": level_scales(model)})
        notes.append(f"{source}: no diffusion config; only the level scales are set (DiffusionSpec defaults apply)")
    else:
        diffusion = ml_collections.ConfigDict(_plain(diffusion))
    return DecodedConfig(model, diffusion, notes, None, source)


def _plain(cfg: Any) -> Any:
    return cfg.to_dict() if hasattr(cfg, "to_dict") else cfg


def from_training_config(cfg: Any, source: str, phase: int = -1, resolution: int | None = None) -> DecodedConfig:
    """Model and diffusion config of one phase of a training config (``configs/*.py``; default the last)."""
    import dataclasses

    from mdm_jax.training import phases as phases_lib

    phases = phases_lib.build_phases(cfg)
    if not -len(phases) <= phase < len(phases):
        raise ConfigDecodeError(f"{source}: --phase {phase} out of range; the config has {len(phases)} phases "
                                f"{[p.name for p in phases]}")
    ph = phases[phase]
    diffusion = {f.name: getattr(ph.diffusion, f.name) for f in dataclasses.fields(ph.diffusion)}
    decoded = decode_config({"model": ph.model_config, "diffusion": diffusion}, source, resolution)
    decoded.notes.insert(0, f"{source}: training config, phase {ph.index} '{ph.name}' ({ph.describe()})")
    return decoded


def load_config_file(spec: str, *, resolution: int | None = None, phase: int = -1) -> DecodedConfig:
    """Configs from ``--config``: a JSON file, one of our ``get_config(arg)`` Python files (``path.py[:arg]``; a
    training config gives phase ``phase``'s model, default its last), or an architecture name of
    ``mdm_jax.models.architectures`` (e.g. ``S64S256``)."""
    from mdm_jax.models import architectures

    if spec in architectures.ARCHITECTURES or spec in architectures.VIDEO_ARCHITECTURES:
        return decode_config(architectures.get_architecture(spec), f"architecture {spec}", resolution)
    path_str, _, arg = spec.partition(":") if spec.count(":") == 1 and not Path(spec).exists() else (spec, "", "")
    path = Path(path_str)
    if not path.is_file():
        raise ConfigDecodeError(f"--config {spec}: no such file (expected a .json file, a config .py[:arg] or one of "
                                f"{sorted(architectures.ARCHITECTURES)})")
    if path.suffix == ".json":
        with open(path) as f:
            return decode_config(json.load(f), str(path), resolution)
    if path.suffix == ".py":
        from mdm_jax.training.config_lib import load

        try:
            cfg = load(f"{path}:{arg}" if arg else str(path))
        except ValueError as e:
            raise ConfigDecodeError(f"--config {spec}: {e}") from e
        if "phases" in cfg and cfg.get("phases"):
            return from_training_config(cfg, spec, phase, resolution)
        return decode_config(cfg, spec, resolution)
    raise ConfigDecodeError(f"--config {spec}: expected a .json or .py file")


# ---------------------------------------------------------------------------------------------------------------
# JSON
# ---------------------------------------------------------------------------------------------------------------


def to_jsonable(obj: Any) -> Any:
    """ml-mdm args (ConfigObjects, enums, numpy scalars) as plain JSON values; classes kept under ``_class``."""
    if isinstance(obj, ConfigObject):
        return {"_class": obj._mlmdm_class, **{k: to_jsonable(v) for k, v in obj.to_dict().items()}}
    if isinstance(obj, EnumMember):
        return f"{obj.enum}.{obj}"
    if isinstance(obj, ml_collections.ConfigDict):
        return to_jsonable(obj.to_dict())
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist() if obj.size <= 64 else f"<array {obj.dtype} {list(obj.shape)}>"
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return repr(obj)
