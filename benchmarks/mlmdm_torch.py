"""Build apple/ml-mdm's PyTorch models, diffusion and training step from a local ml-mdm checkout.

Used by ``compare_mlmdm.py`` (speed comparison) and ``check_mlmdm_checkout.py`` (is the checkout the real model?).
Nothing here is ml-mdm code: the checkout is put on ``sys.path`` and its own classes are used. Configs are dicts
with ml-mdm's field names (as in the parity fixtures' ``configs.json`` and ``mdm_jax.models.architectures``).
Imports only numpy and torch at module level, so it runs where JAX is absent.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
from collections.abc import Mapping
from typing import Any

# Fields of our model configs that ml-mdm's UNetConfig does not have.
OUR_ONLY_FIELDS = {"resolution", "num_heads", "num_classes", "input_channels", "temporal_frames"}


def import_mlmdm(path: str) -> list[str]:
    """Put an ml-mdm checkout on sys.path and import its models; returns the stubbed modules (if a shim is used).

    ``path`` is the checkout root: either the current layout (``ml-mdm-matryoshka/ml_mdm``) or the pre-2025 one
    (``ml_mdm/`` at the root). If the folder has ``mlmdm_shim.py`` (stand-ins for imports the model code never
    calls), it is installed first.
    """
    path = os.path.abspath(path)
    root = os.path.join(path, "ml-mdm-matryoshka") if os.path.isdir(os.path.join(path, "ml-mdm-matryoshka")) else path
    if not os.path.isdir(os.path.join(root, "ml_mdm")):
        raise FileNotFoundError(f"--mlmdm={path}: no ml_mdm/ package there (nor under ml-mdm-matryoshka/); "
                                "give the root of an apple/ml-mdm checkout")
    for p in (path, root):
        if p not in sys.path:
            sys.path.insert(0, p)
    stubbed: list[str] = []
    if os.path.exists(os.path.join(path, "mlmdm_shim.py")):
        stubbed = importlib.import_module("mlmdm_shim").install()
    importlib.import_module("ml_mdm.models.unet")
    importlib.import_module("ml_mdm.models.nested_unet")
    importlib.import_module("ml_mdm.diffusion")
    return stubbed


def unet_config(d: Mapping[str, Any], nesting: bool = False) -> Any:
    """ml-mdm UNetConfig / NestedUNetConfig (recursively) from a dict of ml-mdm field names."""
    from ml_mdm.models.nested_unet import NestedUNetConfig
    from ml_mdm.models.unet import ResNetConfig, UNetConfig

    d = dict(d)
    inner = d.pop("inner_config", None)
    cls = NestedUNetConfig if inner is not None else UNetConfig
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names - OUR_ONLY_FIELDS - {"resnet_config"}
    if unknown:
        raise ValueError(f"model config: fields unknown to ml-mdm's {cls.__name__}: {sorted(unknown)}")
    rnames = {f.name for f in dataclasses.fields(ResNetConfig)}
    kw = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in d.items() if k in names}
    kw["resnet_config"] = ResNetConfig(**{k: v for k, v in dict(d.get("resnet_config", {})).items() if k in rnames})
    kw["nesting"] = nesting
    if inner is not None:
        kw["inner_config"] = unet_config(inner, nesting=True)
    return cls(**kw)


def build_vision_model(d: Mapping[str, Any]) -> Any:
    """ml-mdm's UNet or NestedUNet (3 input / output channels) for a model config dict."""
    from ml_mdm.models.nested_unet import NestedUNet
    from ml_mdm.models.unet import UNet

    cfg = unet_config(d)
    return (NestedUNet if "inner_config" in d else UNet)(3, 3, cfg)


def diffusion_config(d: Mapping[str, Any] | None, nested: bool) -> Any:
    """ml-mdm (Nested)DiffusionConfig from a dict (enum values by name); None = the shipped YAML values."""
    from ml_mdm import diffusion, samplers

    d = dict(d or shipped_diffusion(nested))
    s = dict(d.pop("sampler_config", {}))
    enums = {"schedule_type": samplers.ScheduleType, "prediction_type": samplers.PredictionType,
             "loss_target_type": samplers.PredictionType, "threshold_function": samplers.ThresholdType}
    for k, e in enums.items():
        if isinstance(s.get(k), str):
            s[k] = e[s[k].upper()]
    snames = {f.name for f in dataclasses.fields(samplers.SamplerConfig)}
    cls = diffusion.NestedDiffusionConfig if nested else diffusion.DiffusionConfig
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(sampler_config=samplers.SamplerConfig(**{k: v for k, v in s.items() if k in snames}),
               **{k: v for k, v in d.items() if k in names})


def shipped_diffusion(nested: bool) -> dict[str, Any]:
    """diffusion_config of ml-mdm's cc12m_64x64.yaml (single level) / cc12m_256x256.yaml (nested), as parsed."""
    sampler = {"num_diffusion_steps": 1000, "schedule_type": "DEEPFLOYD", "prediction_type": "V_PREDICTION",
               "loss_target_type": "DDPM", "threshold_function": "CLIP", "rescale_schedule": 1.0}
    if not nested:
        return {"sampler_config": sampler, "model_output_scale": 0, "use_vdm_loss_weights": False}
    sampler.update(rescale_signal=1, schedule_shifted=True, schedule_shifted_power=1)
    return {"sampler_config": sampler, "model_output_scale": 0, "use_vdm_loss_weights": False,
            "use_double_loss": True, "no_use_residual": True}


def build_diffusion(vision_model: Any, dcfg: Any) -> Any:
    from ml_mdm import diffusion

    nested = vision_model.model_type == "nested_unet"
    return (diffusion.NestedDiffusion if nested else diffusion.Diffusion)(vision_model, dcfg)


def mlmdm_model_config(our_config: Mapping[str, Any]) -> dict[str, Any]:
    """Our model config (ml-mdm field names plus our own) -> the dict ml-mdm's config classes take."""
    out = {k: v for k, v in dict(our_config).items() if k not in OUR_ONLY_FIELDS}
    if out.get("inner_config") is not None:
        out["inner_config"] = mlmdm_model_config(out["inner_config"])
    return out
