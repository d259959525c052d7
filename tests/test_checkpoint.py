"""Checkpoints: Orbax round trip (state, EMA, config, meta, data iterator), keep policy, corrupt fallback, and
starting a phase from weights of another run or from an ml-mdm checkpoint converted to Orbax."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from mdm_jax import data as data_lib
from mdm_jax.training import checkpoint as ckpt_lib
from mdm_jax.training import config_lib, sources

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _state(value: float):
    return ({"step": jnp.int32(value), "params": {"unet": {"w": jnp.full((4, 3), value)}},
             "opt_state": ({"mu": jnp.zeros(3)},)}, {"unet": {"w": jnp.full((4, 3), value / 2)}})


def _iterator():
    cfg = {"name": "procedural_shapes", "resolution": 8, "conditioning": "class", "num_examples": 64}
    return data_lib.create_dataset(cfg, global_batch_size=2, seed=0)[0]


def test_round_trip_keep_policy_and_data_iterator(tmp_path):
    ck = ckpt_lib.Checkpointer(str(tmp_path / "ckpt"), keep=2, keep_steps=[1])
    it = _iterator()
    for step in range(1, 6):
        next(it)
        state, ema = _state(float(step))
        ck.save(step, state=state, ema=ema, config={"a": 1}, meta={"phase": 0, "phase_name": "p", "step": step},
                data_iterator=it)
    expected_next = next(it)
    ck.wait()
    assert ck.steps() == [1, 4, 5]  # newest 2 + the kept phase end
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _state(0.0))
    fresh = _iterator()
    out = ck.restore(5, abstract_state=abstract[0], abstract_ema=abstract[1], data_iterator=fresh)
    assert int(out["state"]["step"]) == 5 and out["meta"]["phase_name"] == "p"
    np.testing.assert_array_equal(out["ema"]["unet"]["w"], 2.5)
    np.testing.assert_array_equal(next(fresh)["images"], expected_next["images"])  # data resumes exactly
    assert ckpt_lib.read_json_item(ck.step_dir(5), "config") == {"a": 1}
    ck.close()


def test_unreadable_latest_falls_back_with_warning(tmp_path, caplog):
    ck = ckpt_lib.Checkpointer(str(tmp_path / "ckpt"), keep=3, async_save=False)
    for step in (1, 2):
        state, ema = _state(float(step))
        ck.save(step, state=state, ema=ema, config={}, meta={"phase": 0, "phase_name": "p", "step": step})
    os.remove(os.path.join(ck.step_dir(2), "ema", "_METADATA"))
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _state(0.0))
    with caplog.at_level("WARNING"):
        step, out = ck.restore_latest(lambda s: ck.restore(s, abstract_state=abstract[0], abstract_ema=abstract[1]))
    assert step == 1 and int(out["state"]["step"]) == 1
    assert any(os.path.join("ckpt", "2") in r.getMessage() and "unreadable" in r.getMessage()
               for r in caplog.records)
    assert ck.steps() == [1] and os.listdir(str(tmp_path / "ckpt_corrupt"))
    # The next save of step 2 works again (the broken one was moved aside).
    state, ema = _state(2.0)
    assert ck.save(2, state=state, ema=ema, config={}, meta={"phase": 0, "phase_name": "p", "step": 2})
    ck.close()


def test_sources_load_from_run_checkpoint(tmp_path):
    ck = ckpt_lib.Checkpointer(str(tmp_path / "run" / "checkpoints"), async_save=False)
    state, ema = _state(3.0)
    ck.save(3, state=state, ema=ema, config={}, meta={"phase": 0, "phase_name": "p", "step": 3})
    ck.close()
    src = sources.load(str(tmp_path / "run"))
    np.testing.assert_array_equal(src.params["unet"]["w"], 3.0)
    np.testing.assert_array_equal(src.ema["unet"]["w"], 1.5)
    assert "opt_state" not in src.params


def _to_mlmdm_state_dict(unet_params) -> dict[str, np.ndarray]:
    """Our Flax UNet params -> ml-mdm key names and PyTorch layouts (the inverse of the converter)."""
    from mdm_jax.convert.keys import torch_key

    out = {}
    for path, value in traverse_util.flatten_dict(unet_params).items():
        v = np.asarray(value)
        if v.ndim == 4:
            v = v.transpose(3, 2, 0, 1)  # HWIO -> OIHW
        elif v.ndim == 2 and path[-1] == "kernel":
            v = v.T  # (in, out) -> (out, in)
        out[torch_key(path)] = v
    return out


@pytest.mark.slow  # default run: see README "Test" (kept under ~15 min)
def test_phase_starts_from_converted_mlmdm_checkpoint(tmp_path):
    """A converted ml-mdm 'inner' model seeds the nested phase: inner_unet <- converted, outer level new."""
    from mdm_jax.convert import convert_checkpoint
    from mdm_jax.training import phases as phases_lib
    from mdm_jax.training.trainer import Trainer

    config = config_lib.load(os.path.join(REPO, "configs", "demo.py:tiny"))
    inner_phase = phases_lib.build_phases(config)[0]
    from mdm_jax.models import build_model

    unet = build_model(inner_phase.model_config)
    xs = [jnp.zeros((1, 8, 8, 3))]
    params = unet.init(jax.random.key(7), xs, jnp.zeros((1,), jnp.int32), lm_outputs=jnp.zeros((1, 4, 32)),
                       lm_mask=jnp.ones((1, 4)))["params"]
    params = jax.tree.map(lambda x: x + 0.01, params)  # nothing at its default init, so a copy is visible
    np.savez(tmp_path / "vis_model.npz", **_to_mlmdm_state_dict(params))
    (tmp_path / "model.json").write_text(json.dumps(inner_phase.model_config.to_dict()))
    convert_checkpoint(tmp_path / "vis_model.npz", tmp_path / "converted", config=str(tmp_path / "model.json"),
                       log=lambda _: None)

    config.init.phase = 1
    config.init.checkpoint = str(tmp_path / "converted")
    config.phases[1].init_from = {"unet/inner_unet": "unet"}  # ml-mdm has no trainable text encoder
    trainer = Trainer(config, str(tmp_path / "run"))
    try:
        run, state = trainer.starting_point()
    finally:
        trainer.close()
    assert run.phase.name == "nested" and int(state.step) == 6
    got = jax.device_get(state.params["unet"]["inner_unet"])
    ema = jax.device_get(state.ema["unet"]["inner_unet"])
    for a, b, c in zip(jax.tree.leaves(got), jax.tree.leaves(params), jax.tree.leaves(ema), strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(c, b)
    assert np.all(np.asarray(state.params["unet"]["in_adapter"]["kernel"]) == 0)  # new, zero-initialised


def test_garbled_array_data_is_quarantined_other_failures_are_not(tmp_path, caplog):
    """Garbled array files (JSON items intact) are found by reading the item and quarantined. A restore that fails
    for any other reason (here a wrong target shape: every array read fine) moves nothing, raises ResumeError."""
    import glob

    import pytest

    ck = ckpt_lib.Checkpointer(str(tmp_path / "ckpt"), keep=3, async_save=False)
    for step in (1, 2):
        state, ema = _state(float(step))
        ck.save(step, state=state, ema=ema, config={}, meta={"phase": 0, "phase_name": "p", "step": step})
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _state(0.0))
    wrong = jax.tree.map(lambda x: jax.ShapeDtypeStruct((7,) + x.shape, x.dtype), abstract)
    with pytest.raises(ckpt_lib.ResumeError, match="left in place"):
        ck.restore_latest(lambda s: ck.restore(s, abstract_state=wrong[0], abstract_ema=wrong[1]))
    assert ck.steps() == [1, 2] and not os.path.exists(str(tmp_path / "ckpt_corrupt"))
    assert ck.check_files(2, deep=True) is None
    for f in glob.glob(os.path.join(ck.step_dir(2), "ema", "**", "d", "*"), recursive=True):
        with open(f, "r+b") as fh:
            fh.truncate(8)
    assert "item 'ema'" in ck.check_files(2, deep=True)
    with caplog.at_level("WARNING"):
        step, out = ck.restore_latest(lambda s: ck.restore(s, abstract_state=abstract[0], abstract_ema=abstract[1]))
    assert step == 1 and int(out["state"]["step"]) == 1 and ck.steps() == [1]
    assert any("unreadable" in r.getMessage() and "item 'ema'" in r.getMessage() for r in caplog.records)
    ck.close()
