"""ml-mdm checkpoint conversion: safe .pth reading, args decoding, strict key mapping, Orbax round trip, parity.

The .pth files are built here with torch (when importable) from the parity fixtures' weights, with ``args`` made
of stand-in dataclasses and enums registered under ml-mdm's module names (new ``ml_mdm.*`` and the old top-level
ones), mutated the way ml-mdm's model constructors mutate the real ``args`` before it is saved.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import enum
import json
import os
import pickle
import sys
import types
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import PARITY, needs_parity
from flax import traverse_util

from mdm_jax.convert import cli
from mdm_jax.convert.keys import to_flax_layout, torch_key
from mdm_jax.convert.mlmdm_config import decode_args
from mdm_jax.convert.torch_pickle import CheckpointFormatError, UnsafePickleError, load_pth, restricted_loads

needs_fixtures = needs_parity
try:
    import torch
except ImportError:  # the converter itself never needs torch; only building real .pth files does
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch not installed (pip install torch==2.13.0, CPU wheel)")


# ---------------------------------------------------------------------------------------------------------------
# Stand-ins for ml-mdm's config classes (field names and defaults as in ml-mdm), registered under its module names
# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ResNetConfig:
    num_channels: int = -1
    output_channels: int = -1
    num_groups_norm: int = 32
    dropout: float = 0.0
    use_attention_ffn: bool = False


@dataclasses.dataclass
class UNetConfig:
    num_resnets_per_resolution: Any = "2"
    temporal_dim: Any = None
    attention_levels: Any = "2,3"
    num_attention_layers: Any = "1"
    num_temporal_attention_layers: Any = None
    conditioning_feature_dim: int = -1
    conditioning_feature_proj_dim: int = -1
    num_lm_head_layers: int = 0
    masked_cross_attention: int = 1
    resolution_channels: Any = "128,256,256,512,1024"
    skip_mid_blocks: bool = False
    skip_cond_emb: bool = False
    nesting: bool = False
    micro_conditioning: Any = None
    temporal_mode: bool = False
    temporal_spatial_ds: bool = False
    temporal_positional_encoding: bool = False
    resnet_config: ResNetConfig = dataclasses.field(default_factory=ResNetConfig)


@dataclasses.dataclass
class NestedUNetConfig(UNetConfig):
    inner_config: Any = None
    skip_mid_blocks: bool = True
    skip_cond_emb: bool = True
    skip_inner_unet_input: bool = False
    skip_normalization: bool = False
    initialize_inner_with_pretrained: Any = None
    freeze_inner_unet: bool = False
    interp_conditioning: bool = False


@dataclasses.dataclass
class Nested2UNetConfig(NestedUNetConfig):
    pass


class ScheduleType(enum.Enum):
    COSINE = 0
    DDPM = 2
    DEEPFLOYD = 3
    SIGMOID = 4


class PredictionType(enum.Enum):
    DDPM = 3
    DDIM = 4
    V_PREDICTION = 5


class ThresholdType(enum.Enum):
    NONE = 0
    CLIP = 1
    DYNAMIC = 2
    DYNAMIC_IF = 3


@dataclasses.dataclass
class SamplerConfig:
    num_diffusion_steps: int = 32
    reproject_signal: bool = False
    schedule_type: Any = ScheduleType.DDPM
    prediction_type: Any = PredictionType.DDPM
    loss_target_type: Any = None
    beta_start: float = 0.0001
    beta_end: float = 0.02
    threshold_function: Any = ThresholdType.CLIP
    rescale_schedule: float = 1.0
    rescale_signal: Any = None
    schedule_shifted: bool = False
    schedule_shifted_power: float = 1


@dataclasses.dataclass
class DiffusionConfig:
    sampler_config: SamplerConfig = dataclasses.field(default_factory=SamplerConfig)
    model_output_scale: float = 0
    use_vdm_loss_weights: bool = True


@dataclasses.dataclass
class NestedDiffusionConfig(DiffusionConfig):
    use_double_loss: bool = False
    multi_res_weights: Any = None
    no_use_residual: bool = False
    use_random_interp: bool = False
    mixed_ratio: Any = None
    random_downsample: bool = False
    average_downsample: bool = False
    mid_downsample: bool = False


@dataclasses.dataclass
class ReaderConfig:
    smaller_side_size: int = -1
    max_caption_length: int = -1
    max_token_length: int = -1
    image_size: int = -1


_HOMES = {  # class -> (new module, old top-level module)
    ResNetConfig: ("ml_mdm.models.unet", "models.unet"),
    UNetConfig: ("ml_mdm.models.unet", "models.unet"),
    NestedUNetConfig: ("ml_mdm.models.nested_unet", "models.nested_unet"),
    Nested2UNetConfig: ("ml_mdm.models.nested_unet", "models.nested_unet"),
    ScheduleType: ("ml_mdm.samplers", "samplers"),
    PredictionType: ("ml_mdm.samplers", "samplers"),
    ThresholdType: ("ml_mdm.samplers", "samplers"),
    SamplerConfig: ("ml_mdm.samplers", "samplers"),
    DiffusionConfig: ("ml_mdm.diffusion", "diffusion"),
    NestedDiffusionConfig: ("ml_mdm.diffusion", "diffusion"),
    ReaderConfig: ("ml_mdm.reader", "reader"),
}


@pytest.fixture
def mlmdm_modules(request, monkeypatch):
    """Register the stand-ins under ml-mdm's new (``ml_mdm.*``, default) or old (``models.unet``, ...) module
    names (parametrize indirectly with "new"/"old")."""
    naming = getattr(request, "param", "new")
    which = 0 if naming == "new" else 1
    mods: dict[str, types.ModuleType] = {}
    for cls, homes in _HOMES.items():
        name = homes[which]
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            mods.setdefault(".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
        setattr(mods[name], cls.__name__, cls)
        monkeypatch.setattr(cls, "__module__", name)
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    return naming


def _unet(d: dict) -> UNetConfig:
    d = dict(d)
    inner, resnet = d.pop("inner_config", None), ResNetConfig(**d.pop("resnet_config", {}))
    if inner is None:
        return UNetConfig(**d, resnet_config=resnet)
    cls = Nested2UNetConfig if "inner_config" in inner else NestedUNetConfig
    return cls(**d, resnet_config=resnet, inner_config=_unet(inner))


def _as_built_by_mlmdm(cfg: UNetConfig) -> UNetConfig:
    """ml-mdm's constructors mutate the config that is later pickled as ``args``: UNet replaces
    conditioning_feature_dim by the projection width, NestedUNet hands its value to the inner config."""
    if cfg.conditioning_feature_dim > 0 and cfg.conditioning_feature_proj_dim > 0:
        cfg.conditioning_feature_dim = cfg.conditioning_feature_proj_dim
    if getattr(cfg, "inner_config", None) is not None:
        cfg.inner_config.conditioning_feature_dim = cfg.conditioning_feature_dim
        _as_built_by_mlmdm(cfg.inner_config)
    return cfg


def _diffusion(d: dict) -> DiffusionConfig:
    d = dict(d)
    s = dict(d.pop("sampler_config"))
    for key, enum_cls in (("schedule_type", ScheduleType), ("prediction_type", PredictionType),
                          ("loss_target_type", PredictionType), ("threshold_function", ThresholdType)):
        s[key] = enum_cls[s[key]]
    cls = NestedDiffusionConfig if "use_double_loss" in d else DiffusionConfig
    return cls(sampler_config=SamplerConfig(**s), **d)


def fixture_args(entry: dict) -> argparse.Namespace:
    """ml-mdm's ``args`` for a parity fixture model, as its trainer would have pickled it."""
    return argparse.Namespace(
        model=entry["model"], fp16=0, seed=-1, batch_size=2, pretrained_vision_file=None, config_path="x.yaml",
        reader_config=ReaderConfig(max_token_length=128, image_size=entry["derived"]["resolutions"][0]),
        unet_config=_as_built_by_mlmdm(_unet(entry["unet_config"])),
        diffusion_config=_diffusion(entry["diffusion_config"]))


def args_as_json(entry: dict) -> dict:
    """The same args as a JSON sidecar (what someone exporting to npz/safetensors would write)."""
    return {"model": entry["model"], "unet_config": entry["unet_config"], "diffusion_config": entry["diffusion_config"],
            "reader_config": {"image_size": entry["derived"]["resolutions"][0]}}


# ---------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def entries() -> dict:
    if not (PARITY / "configs.json").exists():
        pytest.skip(f"no fixtures at {PARITY}")
    with open(PARITY / "configs.json") as f:
        return json.load(f)["models"]


def fixture_weights(name: str) -> dict[str, np.ndarray]:
    with np.load(PARITY / f"unet_{name}.npz") as data:
        return {k[len("param/"):]: data[k] for k in data.files if k.startswith("param/")}


def save_pth(path: Path, state_dict: dict[str, np.ndarray], args: Any, **extras: Any) -> None:
    sd = OrderedDict((k, torch.from_numpy(np.ascontiguousarray(v))) for k, v in state_dict.items())
    torch.save({"state_dict": sd, "batch_num": 1234, "loss": 0.25, "exp_avg_loss": np.float64(0.5),
                "args": args, **extras}, path)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_params_equal_fixture(params: dict, weights: dict[str, np.ndarray]) -> None:
    flat = traverse_util.flatten_dict(params)
    assert {torch_key(p) for p in flat} == set(weights)
    for path, value in flat.items():
        key = torch_key(path)
        want = to_flax_layout(weights[key], value.shape, key)
        assert value.dtype == np.float32, key
        np.testing.assert_array_equal(np.asarray(value), want, err_msg=key)


def assert_reproduces_outputs(model_cfg: Any, params: dict, name: str) -> None:
    from mdm_jax.models import build_model

    model = build_model(model_cfg)
    with np.load(PARITY / f"unet_{name}.npz") as data:
        n = sum(k.startswith("out/") for k in data.files)
        xs = [jnp.asarray(data[f"in/x_{i}"].transpose(0, 2, 3, 1)) for i in range(n)]
        text = jnp.asarray(data["in/lm_outputs"]), jnp.asarray(data["in/lm_mask"])
        with jax.default_matmul_precision("highest"):
            outs = jax.jit(model.apply)({"params": params}, xs, jnp.asarray(data["in/t"]), *text)
        for i, o in enumerate(outs):
            np.testing.assert_allclose(np.asarray(o), data[f"out/{i}"].transpose(0, 2, 3, 1), atol=1e-4, rtol=0,
                                       err_msg=f"{name} out/{i}")


# ---------------------------------------------------------------------------------------------------------------
# (a), (b): .pth -> CLI -> load_converted; weights and outputs
# ---------------------------------------------------------------------------------------------------------------


@needs_torch
@needs_fixtures
@pytest.mark.parametrize("name, mlmdm_modules", [("p1", "new"), ("p2", "old")], indirect=["mlmdm_modules"])
def test_pth_round_trip_reproduces_fixture(name, entries, mlmdm_modules, tmp_path, capsys):
    weights = fixture_weights(name)
    save_pth(tmp_path / "vis_model.pth", weights, fixture_args(entries[name]))

    rc, out, err = run_cli(capsys, "--from-mlmdm", tmp_path / "vis_model.pth", "--out", tmp_path / "conv")
    assert rc == 0, err
    assert f"parameters: {entries[name]['derived']['num_params']:,}" in out

    model_cfg, diffusion_cfg, params = cli.load_converted(tmp_path / "conv")
    assert_params_equal_fixture(params, weights)  # (a)
    assert_reproduces_outputs(model_cfg, params, name)  # (b)

    derived = entries[name]["derived"]
    assert model_cfg.resolution == derived["resolutions"][0]
    assert model_cfg.conditioning_feature_dim == derived["lm_outputs_dim"]  # recovered from lm_proj.weight
    assert diffusion_cfg.schedule_type == "deepfloyd" and diffusion_cfg.prediction_type == "v"
    assert diffusion_cfg.loss_target_type == "eps" and diffusion_cfg.threshold_function == "clip"
    assert list(diffusion_cfg.scales) == derived["scales"]
    from mdm_jax.diffusion import DiffusionSpec

    spec = DiffusionSpec.from_config(diffusion_cfg)
    assert spec.scales == tuple(derived["scales"])
    assert spec.schedule_shifted == entries[name]["diffusion_config"]["sampler_config"]["schedule_shifted"]

    prov = json.loads((tmp_path / "conv" / "config.json").read_text())["provenance"]
    assert prov["sha256"] == cli.sha256_file(tmp_path / "vis_model.pth")
    assert prov["report"]["ok"] and prov["report"]["loaded"] == len(weights)
    assert prov["checkpoint_items"]["batch_num"] == 1234 and prov["checkpoint_items"]["exp_avg_loss"] == 0.5
    klass = prov["mlmdm_args"]["unet_config"]["_class"]
    assert klass.startswith("ml_mdm.models" if mlmdm_modules == "new" else "models.")


# ---------------------------------------------------------------------------------------------------------------
# (c) refusing code in pickles
# ---------------------------------------------------------------------------------------------------------------


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _zip_checkpoint(path: Path, payload: bytes) -> None:
    """A torch-style zip checkpoint written without torch (archive/data.pkl)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", payload)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")


def test_malicious_pickle_is_refused_naming_the_class(tmp_path, capsys):
    marker = tmp_path / "pwned"
    _zip_checkpoint(tmp_path / "evil.pth", pickle.dumps({"state_dict": {}, "args": _Evil(marker)}, protocol=2))
    with pytest.raises(UnsafePickleError, match=r"posix\.system|nt\.system"):
        load_pth(tmp_path / "evil.pth")
    rc, _, err = run_cli(capsys, "--from-mlmdm", tmp_path / "evil.pth", "--out", tmp_path / "out")
    assert rc == 2 and "system" in err and "refusing" in err
    assert not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("module, name", [("builtins", "eval"), ("subprocess", "Popen"), ("builtins", "getattr"),
                                          ("torch", "load"), ("ml_mdm.models.unet", "UNet")])
def test_other_globals_are_refused(module, name):
    payload = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b")R."
    with pytest.raises(UnsafePickleError, match=f"{module}.{name}"):
        restricted_loads(payload)


def test_state_cannot_be_set_on_classes():
    # GLOBAL argparse.Namespace; BUILD with (None, {'to_dict': 1}) slot state -> would set a class attribute.
    payload = b"\x80\x02cargparse\nNamespace\nN}X\x07\x00\x00\x00to_dictK\x01s\x86b."
    with pytest.raises(UnsafePickleError, match="state"):
        restricted_loads(payload)


def test_unreadable_inputs_fail_with_one_clear_line(tmp_path, capsys):
    rc, _, err = run_cli(capsys, "--from-mlmdm", tmp_path / "vis_model.pth", "--out", tmp_path / "o")
    assert rc == 2 and "docs-assets.developer.apple.com" in err and "nothing is downloaded" in err
    legacy = tmp_path / "legacy.pth"
    legacy.write_bytes(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2))  # legacy torch files start with a pickle
    with pytest.raises(CheckpointFormatError, match="re-save"):
        load_pth(legacy)


# ---------------------------------------------------------------------------------------------------------------
# (d) strict / non-strict, (e) npz and safetensors
# ---------------------------------------------------------------------------------------------------------------


@needs_fixtures
def test_strict_reports_each_bad_key_and_no_strict_lists_them(entries, tmp_path, capsys):
    weights = fixture_weights("p1")
    missing, extra, bad = "down_blocks.1.attn.0.kv_cond.weight", "down_blocks.0.extra.weight", "conv_in.weight"
    (tmp_path / "args.json").write_text(json.dumps(args_as_json(entries["p1"])))
    cases = {
        "missing": ({k: v for k, v in weights.items() if k != missing}, missing),
        "extra": ({**weights, extra: np.zeros((2, 2), np.float32)}, extra),
        "shape": ({**weights, bad: np.zeros((32, 3, 5, 5), np.float32)}, bad),
    }
    for case, (sd, key) in cases.items():
        np.savez(tmp_path / f"{case}.npz", **sd)
        rc, _, err = run_cli(capsys, "--from-mlmdm", tmp_path / f"{case}.npz", "--out", tmp_path / case)
        assert rc == 1 and key in err, (case, err)
        assert not (tmp_path / case).exists()

    everything = {k: v for k, v in weights.items() if k != missing}
    everything.update({extra: np.zeros((2, 2), np.float32), bad: np.zeros((32, 3, 5, 5), np.float32)})
    np.savez(tmp_path / "all.npz", **everything)
    rc, out, err = run_cli(capsys, "--from-mlmdm", tmp_path / "all.npz", "--out", tmp_path / "ns", "--no-strict")
    assert rc == 0, err
    for key in (missing, extra, bad):
        assert key in out
    assert f"fresh init (seed 0): {missing}" in out and f"fresh init (seed 0): {bad}" in out
    report = json.loads((tmp_path / "ns" / "config.json").read_text())["provenance"]["report"]
    assert report["missing"] == [missing] and report["unexpected"] == [extra]
    assert [m.split(":")[0] for m in report["mismatched"]] == [bad]
    assert sorted(report["fresh_init"]) == sorted([missing, bad])
    _, _, params = cli.load_converted(tmp_path / "ns")
    assert params["conv_in"]["kernel"].shape == (3, 3, 3, 32)
    assert params["down_blocks_1"]["attn_0"]["kv_cond"]["kernel"].shape == (64, 128)
    np.testing.assert_array_equal(params["conv_out"]["kernel"],
                                  to_flax_layout(weights["conv_out.weight"], (3, 3, 32, 3), "conv_out.weight"))


@needs_fixtures
def test_npz_with_config_and_safetensors_with_sidecar(entries, tmp_path, capsys):
    # The fixture file itself (param/ prefixed keys, other arrays ignored), config from --config.
    (tmp_path / "p2.json").write_text(json.dumps(args_as_json(entries["p2"])))
    rc, out, err = run_cli(capsys, "--from-mlmdm", PARITY / "unet_p2.npz", "--out", tmp_path / "from_npz",
                           "--config", tmp_path / "p2.json")
    assert rc == 0, err
    _, _, params = cli.load_converted(tmp_path / "from_npz")
    assert_params_equal_fixture(params, fixture_weights("p2"))

    # safetensors with a <stem>.args.json sidecar
    from safetensors.numpy import save_file

    save_file(fixture_weights("p2"), str(tmp_path / "p2.safetensors"))
    (tmp_path / "p2.args.json").write_text(json.dumps(args_as_json(entries["p2"])))
    rc, _, err = run_cli(capsys, "--from-mlmdm", tmp_path / "p2.safetensors", "--out", tmp_path / "from_st",
                         "--dtype", "bfloat16")
    assert rc == 0, err
    model_cfg, diffusion_cfg, params_bf16 = cli.load_converted(tmp_path / "from_st")
    assert model_cfg.inner_config.resolution == 16 and diffusion_cfg.use_double_loss
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params_bf16), strict=True):
        assert b.dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(a, jnp.bfloat16), b)  # fixture weights are bf16-exact

    # no config anywhere: one line saying what to pass
    (tmp_path / "bare").mkdir()
    np.savez(tmp_path / "bare" / "w.npz", **fixture_weights("p1"))
    rc, _, err = run_cli(capsys, "--from-mlmdm", tmp_path / "bare" / "w.npz", "--out", tmp_path / "o")
    assert rc == 2 and "--config" in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------------------------
# (f) decoded configs of the shipped models
# ---------------------------------------------------------------------------------------------------------------


def _shipped_64(nesting: bool = False) -> UNetConfig:
    return UNetConfig(
        num_resnets_per_resolution=[2, 2, 2], temporal_dim=1024, attention_levels=[1, 2],
        num_attention_layers=[0, 1, 5], conditioning_feature_dim=2048, conditioning_feature_proj_dim=2048,
        masked_cross_attention=0, resolution_channels=[256, 512, 768], skip_mid_blocks=False, skip_cond_emb=False,
        nesting=nesting, micro_conditioning="scale:64",
        resnet_config=ResNetConfig(num_groups_norm=32, dropout=0.0, use_attention_ffn=True))


def _shipped_outer(cls: type, channels: list[int], res: int, inner: UNetConfig, proj: int, skip_norm: bool,
                   nesting: bool = False) -> NestedUNetConfig:
    return cls(num_resnets_per_resolution=[2, 2, 1], temporal_dim=1024, attention_levels=[],
               num_attention_layers=[0, 0, 0], conditioning_feature_dim=2048, conditioning_feature_proj_dim=proj,
               masked_cross_attention=1, resolution_channels=channels, skip_mid_blocks=True, skip_cond_emb=True,
               nesting=nesting, micro_conditioning=f"scale:{res}", resnet_config=ResNetConfig(use_attention_ffn=False),
               inner_config=inner, skip_normalization=skip_norm, skip_inner_unet_input=False)


def _shipped_args(which: int) -> argparse.Namespace:
    """args of ml-mdm's cc12m_{64x64,256x256,1024x1024} models (spec section 1.5), as their trainer pickles them."""
    sampler = SamplerConfig(num_diffusion_steps=1000, schedule_type=ScheduleType.DEEPFLOYD,
                            prediction_type=PredictionType.V_PREDICTION, loss_target_type=PredictionType.DDPM,
                            threshold_function=ThresholdType.CLIP, schedule_shifted=which > 64,
                            schedule_shifted_power=2 if which == 1024 else 1,
                            rescale_signal=1 if which > 64 else None)
    if which == 64:
        unet, diffusion = _shipped_64(), DiffusionConfig(sampler_config=sampler, use_vdm_loss_weights=False)
    else:
        unet = _shipped_outer(NestedUNetConfig, [64, 128, 256], 256, _shipped_64(nesting=True), -1, True)
        if which == 1024:
            unet = _shipped_outer(NestedUNetConfig, [64, 128, 256], 256, _shipped_64(nesting=True), 2048, False,
                                  nesting=True)
            unet = _shipped_outer(Nested2UNetConfig, [32, 32, 64], 1024, unet, 2048, True)
        diffusion = NestedDiffusionConfig(sampler_config=sampler, use_vdm_loss_weights=False, use_double_loss=True,
                                          no_use_residual=True)
    return argparse.Namespace(model={64: "unet", 256: "nested_unet", 1024: "nested2_unet"}[which],
                              unet_config=_as_built_by_mlmdm(unet), diffusion_config=diffusion,
                              reader_config=ReaderConfig(max_token_length=128, image_size=which))


REFERENCE = PARITY.parent / "reference"


@pytest.mark.parametrize("which, count, mlmdm_modules",
                         [(64, 461_359_107, "new"), (256, 476_613_958, "old"), (1024, 480_970_057, "new")],
                         indirect=["mlmdm_modules"])
def test_decoded_shipped_configs_build_released_models(which, count, mlmdm_modules):
    args = restricted_loads(pickle.dumps(_shipped_args(which), protocol=2))  # through the safe unpickler
    decoded = decode_args(args)
    assert not decoded.notes, decoded.notes
    from mdm_jax.models import spec_from_config

    spec = spec_from_config(decoded.model)
    assert spec.resolutions == {64: (64,), 256: (256, 64), 1024: (1024, 256, 64)}[which]
    assert spec.innermost.input_cond_dim == 2048
    assert [lvl.skip_normalization for lvl in spec.levels[:-1]] == {64: [], 256: [True], 1024: [True, False]}[which]
    shapes = cli._shapes_for(spec)
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes)) == count
    d = decoded.diffusion
    assert (d.schedule_type, d.prediction_type, d.loss_target_type) == ("deepfloyd", "v", "eps")
    assert list(d.scales) == {64: [1], 256: [4, 1], 1024: [16, 4, 1]}[which]
    assert d.schedule_shifted_power == (2.0 if which == 1024 else 1.0)
    if which > 64:
        assert d.schedule_shifted and d.rescale_signal == 1.0 and d.use_double_loss and d.no_use_residual

    # ml-mdm's own state-dict listing for this model converts strictly (zero-stride arrays: nothing allocated)
    tsv = REFERENCE / f"mlmdm_state_dict_{which}.tsv"
    if tsv.exists():
        rows = [line.rstrip("\n").split("\t") for line in tsv.read_text().splitlines() if not line.startswith("#")]
        state_dict = {k: np.broadcast_to(np.float32(0), ast.literal_eval(v)) for k, v in rows}
        from mdm_jax.convert.keys import convert_state_dict

        _, report = convert_state_dict(state_dict, shapes, spec, strict=True)
        assert len(report.loaded) == len(rows)


def test_absent_fields_take_mlmdm_defaults_and_are_reported():
    args = {"unet_config": {"_class": "models.nested_unet.NestedUNetConfig", "resolution_channels": [32, 32],
                            "conditioning_feature_dim": 8,
                            "inner_config": {"resolution_channels": [32], "conditioning_feature_dim": 8}},
            "reader_config": {"image_size": 32}, "diffusion_config": {"sampler_config": {}}}
    decoded = decode_args(args)
    assert decoded.model.skip_normalization is False  # NestedUNetConfig's default, unlike our spec's
    assert decoded.model.skip_mid_blocks and not decoded.model.inner_config.skip_mid_blocks
    assert decoded.diffusion.schedule_type == "ddpm" and decoded.diffusion.num_diffusion_steps == 32
    assert any("unet_config.skip_normalization: absent" in n for n in decoded.notes)
    with pytest.raises(ValueError, match="resolution"):
        decode_args({**args, "reader_config": {"image_size": -1}})


@needs_fixtures
def test_config_files_python_json_and_converted(entries, tmp_path):
    from mdm_jax.convert.mlmdm_config import load_config_file

    model = {**entries["p2"]["unet_config"], "resolution": 32}
    (tmp_path / "cfg.py").write_text(
        "import ml_collections\n"
        f"MODEL = {model!r}\n"
        "def get_config(arg='a'):\n"
        "    return ml_collections.ConfigDict({'model': MODEL, 'diffusion': {'schedule_type': 'cosine',\n"
        "                                      'scales': [2, 1], 'note': arg}})\n")
    decoded = load_config_file(f"{tmp_path / 'cfg.py'}:b")
    assert decoded.model.inner_config.resolution_channels == [32, 64, 96]
    assert decoded.diffusion.note == "b" and decoded.diffusion.schedule_type == "cosine"
    # our own config.json layout, and a bare model config with --resolution
    (tmp_path / "converted.json").write_text(json.dumps({"model": model, "diffusion": {"scales": [2, 1]}}))
    assert load_config_file(str(tmp_path / "converted.json")).model.resolution == 32
    (tmp_path / "bare.json").write_text(json.dumps(entries["p2"]["unet_config"]))  # no per-level resolutions
    decoded = load_config_file(str(tmp_path / "bare.json"), resolution=32)
    assert decoded.model.resolution == 32 and list(decoded.diffusion.scales) == [2, 1]
    assert load_config_file("S64S256").model.inner_config.resolution == 64
