"""Modes that work from any config: command-line overrides of every data/model/sampler field on every shipped
config, ``convert --config`` with a training config (phase selectable), ``--mode=sample`` from the run alone,
and one meaning of ``guidance_weight``."""

from __future__ import annotations

import glob
import os
import subprocess
import sys

import numpy as np
import pytest
from absl import flags
from flax import traverse_util
from ml_collections import config_flags

from mdm_jax.convert import cli
from mdm_jax.convert.keys import torch_key
from mdm_jax.data import default_data_config
from mdm_jax.diffusion.sampler import uses_guidance
from mdm_jax.training import config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "*.py")))
ARGS = {"demo.py": ["", "tiny"]}


def _leaves(cfg, prefix=""):
    for k, v in cfg.items():
        if hasattr(v, "items"):
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


def _variants():
    for path in CONFIGS:
        for arg in ARGS.get(os.path.basename(path), ["", "runlocal"]):
            yield f"{path}:{arg}" if arg else path


def _parse(spec: str, *overrides: str):
    argv = ["prog", f"--config={spec}", *overrides]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True, sys_argv=argv)
    fv(argv)
    return fv.config


@pytest.mark.parametrize("spec", list(_variants()), ids=lambda s: os.path.basename(s))
def test_every_documented_field_is_overridable(spec):
    cfg = config_lib.load(spec)
    have = set(_leaves(cfg))
    want = {f"data.{k}" for k in _leaves(default_data_config())}
    want |= {f"sample.{k}" for k in _leaves(config_lib.sample())}
    want |= {f"model.{k}" for k in _leaves(config_lib.base_config().model)}
    want |= {f"diffusion.{k}" for k in _leaves(config_lib.base_config().diffusion)}
    assert not want - have, sorted(want - have)
    # The command line as a user types it (the AttributeError case), nested fields included.
    got = _parse(spec, "--config.data.data_dir=my/images", "--config.data.text.tokenizer_path=tok/spiece.model",
                 "--config.sample.guidance_weight=3.0", "--config.model.remat=True",
                 "--config.diffusion.schedule_type=cosine")
    assert got.data.data_dir == "my/images" and got.data.text.tokenizer_path == "tok/spiece.model"
    assert got.sample.guidance_weight == 3.0 and got.model.remat is True
    assert got.diffusion.schedule_type == "cosine"


def test_no_machine_paths_in_configs():
    for spec in _variants():
        flat = traverse_util.flatten_dict(config_lib.load(spec).to_dict(), sep=".")
        for key, value in flat.items():
            if isinstance(value, str) and value.startswith("/"):
                raise AssertionError(f"{spec}: {key} = {value!r} is an absolute path")


def test_unknown_data_field_is_named():
    with pytest.raises(ValueError, match="data_dri"):
        config_lib.data(data_dri="x")


def test_guidance_weight_has_mlmdm_meaning():
    assert uses_guidance(7.5) and uses_guidance(0.0) and uses_guidance(2)
    assert not uses_guidance(1.0) and not uses_guidance(None)


def _export_mlmdm_npz(params: dict, path: str) -> None:
    """Our parameter tree written back with ml-mdm's keys and PyTorch layouts (what the converter reads)."""
    out = {}
    for p, v in traverse_util.flatten_dict(params).items():
        v = np.asarray(v)
        key = torch_key(p)
        if v.ndim == 4:
            v = v.transpose(3, 2, 0, 1)
        elif v.ndim == 2 and not key.endswith("label_emb.weight"):
            v = v.T
        out[key] = v
    np.savez(path, **out)


def test_convert_accepts_training_config_with_phase(tmp_path, capsys):
    from mdm_jax.convert.mlmdm_config import load_config_file
    from mdm_jax.models import build_model, spec_from_config

    spec_str = os.path.join(REPO, "configs", "ablation_fmnist.py") + ":progressive,scale=0.01"  # 16 px, then 32/16
    decoded = load_config_file(spec_str, phase=0)
    spec = spec_from_config(decoded.model)
    shapes = cli.param_shapes(build_model(spec), spec)
    paths = list(traverse_util.flatten_dict(shapes))
    params = cli.fresh_init(build_model(spec), spec, paths, seed=3)
    _export_mlmdm_npz(params, str(tmp_path / "w.npz"))
    assert cli.main(["--from-mlmdm", str(tmp_path / "w.npz"), "--out", str(tmp_path / "out"),
                     "--config", spec_str, "--phase", "0"]) == 0
    model_cfg, diffusion_cfg, restored = cli.load_converted(tmp_path / "out")
    assert model_cfg.resolution == 16 and list(diffusion_cfg.scales) == [1]
    a, b = traverse_util.flatten_dict(params), traverse_util.flatten_dict(restored)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    # The default phase is the last one (32/16 nested): these 16 px weights do not fit it, and it says so.
    capsys.readouterr()
    assert cli.main(["--from-mlmdm", str(tmp_path / "w.npz"), "--out", str(tmp_path / "out2"),
                     "--config", spec_str]) == 1
    assert "inner_unet" in capsys.readouterr().err
    assert cli.main(["--from-mlmdm", str(tmp_path / "w.npz"), "--out", str(tmp_path / "o3"), "--config", spec_str,
                     "--phase", "5"]) == 2


def test_sample_mode_needs_only_the_run(demo_run, tmp_path):
    """``--mode=sample`` on a finished demo run with the data source pointed at nothing: it reads the saved
    tokenizer/data info, never the data set."""
    assert os.path.exists(os.path.join(demo_run, "data_info", "1.json"))
    out = tmp_path / "grids"
    env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-m", "mdm_jax.main", "--mode=sample", f"--config={REPO}/configs/demo.py:tiny",
         f"--workdir={demo_run}", "--config.data.name=image_folder", f"--config.data.data_dir={tmp_path}/absent",
         "--config.sample.prompts=('a red circle in the top left', 'a blue square in the center')",
         "--config.sample.num_images=2", "--config.sample.guidance_weight=1.0", f"--config.sample.output_dir={out}"],
        capture_output=True, text=True, timeout=300, env=env, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    pngs = sorted(os.path.basename(p) for p in glob.glob(str(out / "*.png")))
    assert pngs == ["step_00000012_ema_16px.png", "step_00000012_ema_8px.png"]  # grids name their weights
    captions = (out / "step_00000012_ema_captions.txt").read_text().splitlines()
    assert captions == ["# ema weights, step 12", "a red circle in the top left", "a blue square in the center"]


def test_cpu_devices_splits_the_host():
    """``config.cpu_devices=N`` gives N CPU devices (before backends exist); an explicit XLA_FLAGS count wins."""
    code = ("from mdm_jax.main import set_cpu_devices; set_cpu_devices(2); import jax; print(jax.device_count())")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run([sys.executable, "-c", code], env=dict(env, JAX_PLATFORMS="cpu"), capture_output=True,
                         text=True, cwd=REPO, check=True)
    assert out.stdout.strip().splitlines()[-1] == "2"
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=3"
    out = subprocess.run([sys.executable, "-c", code], env=dict(env, JAX_PLATFORMS="cpu"), capture_output=True,
                         text=True, cwd=REPO, check=True)
    assert out.stdout.strip().splitlines()[-1] == "3"
