"""``--mode=compile``: the real sharded train step and a sampler step of a tiny config, compiled for a TPU topology
by libtpu's compile-only client on this (TPU-less) machine, with sane per-chip numbers.

CI needs libtpu for this test: ``pip install 'libtpu==0.0.42.*'`` (what ``jax[tpu]==0.10.2`` pins; or
``pip install -e '.[tpu]'``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mdm_jax.training import compile_plan

ROOT = Path(__file__).resolve().parents[1]
NO_LIBTPU = "libtpu is not installed; CI must run: pip install 'libtpu==0.0.42.*' (or pip install -e '.[tpu]')"


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason=NO_LIBTPU)
def test_compile_tiny_config_for_v5p(tmp_path):
    out = tmp_path / "plan.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT), MDM_COMPILATION_CACHE="")
    env.pop("JAX_PLATFORMS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "mdm_jax.main", "--mode=compile", "--config=configs/imagenet64.py:runlocal",
         "--config.compile.topology=v5p:2x2x1", f"--config.compile.output={out}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "fits" in proc.stdout and "FLOPs per step" in proc.stdout
    # libtpu's failed VM-metadata lookup (an INVALID_ARGUMENT with a source trace) no longer reaches the user.
    assert "Source Location Trace" not in proc.stderr and "could not determine TPU" not in proc.stderr
    (plan,) = json.loads(out.read_text())
    assert plan["chip"] == "v5p" and plan["devices"] == 4 and plan["mesh"] == {"data": 4, "fsdp": 1}
    assert plan["num_parameters"] > 100_000
    # Replicated float32 state: params, EMA = 4 bytes per parameter each on every device; Adam = two moments.
    assert plan["params"] == plan["ema"] == 4 * plan["num_parameters"]
    assert 2 * plan["params"] <= plan["opt_state"] <= 2 * plan["params"] + 4096
    assert plan["temporaries"] > 0 and plan["arguments"] >= plan["params"] + plan["opt_state"] + plan["ema"]
    assert plan["fits"] and 0 < plan["total"] < plan["hbm"]
    assert plan["flops"] > 0 and plan["sampler_flops"] > 0 and plan["step_seconds"] > 0
    assert plan["days_mfu"] > 0 and plan["images_per_second_xla"] > 0

    # The same plan against a device too small for it: exit status 1 and what to change.
    small = dataclasses.replace(compile_plan.from_dict(plan), hbm=plan["total"] / 2)
    small.advice = compile_plan.advice(small, _config(), _phase())
    assert compile_plan.exit_code([small]) == 1
    text = compile_plan.format_plan(small)
    assert "DOES NOT FIT" in text and "--config.mesh.fsdp=" in text and "--config.model.remat=True" in text
    assert "--config.phases[0].batch_size=4" in text


def _config():
    from mdm_jax.training import config_lib

    return config_lib.load(str(ROOT / "configs/imagenet64.py") + ":runlocal")


def _phase():
    from mdm_jax.training import phases

    return phases.build_phases(_config())[0]


def test_topology_names_are_checked():
    with pytest.raises(ValueError, match="compile.topology"):
        compile_plan.topology_devices("v5p-8")


def test_out_of_hbm_compile_error_is_parsed():
    msg = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries (99.52G) "
           "exceeds available HBM (95.74G).")
    temps, hbm = compile_plan.parse_hbm_error(msg)
    assert temps == int(99.52 * 2**30) and hbm == 95.74 * 2**30
    assert compile_plan.parse_hbm_error("INTERNAL: something else") is None


def test_refused_compile_reports_numbers_and_advice():
    """A step XLA:TPU refuses to compile (out of HBM) is a plan that does not fit, with what to change."""
    temps, hbm = compile_plan.parse_hbm_error("temporaries (99.52G) exceeds available HBM (95.74G)")
    plan = compile_plan.PhasePlan(phase="64", resolutions="64", batch=2048, steps=500_000, topology="v5p:2x2x1",
                                  chip="v5p", devices=4, hosts=1, mesh={"data": 4, "fsdp": 1}, params=2**30,
                                  opt_state=2**31, ema=2**30, arguments=2**32, temporaries=temps, hbm=hbm,
                                  peak_flops=459e12, compile_error="RESOURCE_EXHAUSTED: Ran out of memory on HBM")
    plan.advice = compile_plan.advice(plan, _config(), _phase())
    assert not plan.fits and compile_plan.exit_code([plan]) == 1
    text = compile_plan.format_plan(plan)
    assert "XLA refused to compile" in text and "99.52 GiB" in text and "--config.mesh.fsdp=2" in text
    assert "--config.phases[0].batch_size=1024" in text
    assert compile_plan.from_dict(compile_plan.to_dict(plan)).compile_error == plan.compile_error
