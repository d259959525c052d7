"""Fast checks of the training building blocks: configs, growth rules, optimizer masks, mesh rules, NaN guard."""

from __future__ import annotations

import glob
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdm_jax.training import config_lib, optimizer, partitioning, phases, reporting

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "*.py")))


# ---- configs ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
@pytest.mark.parametrize("arg", ["", "runlocal"])
def test_config_files_resolve(path, arg):
    cfg = config_lib.load(f"{path}:{arg}" if arg else path)
    resolved = phases.build_phases(cfg)
    for prev, p in zip(resolved, resolved[1:], strict=False):
        assert p.start_step == prev.end_step
        if p.init_from:
            for dst in p.init_from:  # growth rules point into the new model
                assert dst.startswith(("unet", "text"))
    assert cfg.optimizer.grad_clip_norm > 0
    json.loads(cfg.to_json_best_effort())


@pytest.mark.parametrize("name, batches, steps", [
    ("imagenet64", [512], [300_000]),
    ("imagenet256", [512, 256], [300_000, 500_000]),
    ("cc12m_64", [2048], [500_000]),
    ("cc12m_256", [2048, 1024], [500_000, 500_000]),
    ("cc12m_1024", [2048, 1024, 768], [500_000, 500_000, 100_000]),
])
def test_paper_schedules(name, batches, steps):
    """Appendix B: batch sizes and steps per phase, and the shared optimizer settings."""
    cfg = config_lib.load(os.path.join(REPO, "configs", f"{name}.py"))
    assert [p.batch_size for p in cfg.phases] == batches
    assert [p.steps for p in cfg.phases] == steps
    o = cfg.optimizer
    assert (o.b1, o.b2, o.eps, o.learning_rate, o.warmup_steps, o.grad_clip_norm, o.ema_decay) == (
        0.9, 0.99, 1e-8, 1e-4, 30_000, 2.0, 0.9999)
    last = phases.build_phases(cfg)[-1]
    assert last.spec.resolutions[0] == int(name.split("_")[-1].replace("imagenet", "") or 0) or name.startswith(
        "imagenet")


# ---- growing a model -------------------------------------------------------------------------------------------


def test_transplant_fills_subtree_and_reports():
    target = {"unet": {"conv": jnp.zeros((2, 3)), "inner_unet": {"a": jnp.zeros((4,)), "b": jnp.zeros((1,))}}}
    source = {"unet": {"a": np.ones((4,)), "b": np.full((1,), 2.0)}}
    out, report = phases.transplant(target, source, {"unet/inner_unet": "unet"})
    np.testing.assert_array_equal(out["unet"]["inner_unet"]["a"], np.ones(4))
    assert report.loaded == {"unet/inner_unet/a": "unet/a", "unet/inner_unet/b": "unet/b"}
    assert report.new == ["unet/conv"] and report.num_new == 6


def test_transplant_is_strict():
    target = {"unet": {"inner_unet": {"a": jnp.zeros((4,)), "b": jnp.zeros((1,))}}}
    with pytest.raises(ValueError, match=r"unet/a \(3,\) -> unet/inner_unet/a \(4,\): shape mismatch"):
        phases.transplant(target, {"unet": {"a": np.ones(3), "b": np.ones(1)}}, {"unet/inner_unet": "unet"})
    with pytest.raises(ValueError, match="unet/inner_unet/b: not in the source"):
        phases.transplant(target, {"unet": {"a": np.ones(4)}}, {"unet/inner_unet": "unet"})
    with pytest.raises(ValueError, match="no parameters under 'vision'"):
        phases.transplant(target, {"unet": {"a": np.ones(4)}}, {"unet/inner_unet": "vision"})


# ---- optimizer ---------------------------------------------------------------------------------------------------


def _opt_cfg(**kw):
    return config_lib.optimizer(warmup_steps=0, **kw)


def test_frozen_subtree_gets_no_update_and_no_moments():
    params = {"unet": {"inner_unet": {"w": jnp.ones((3,))}, "w": jnp.ones((3,))}}
    labels = optimizer.param_labels(params, freeze=("unet/inner_unet",))
    tx, _ = optimizer.make_optimizer(_opt_cfg(), labels)
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, state, params)
    np.testing.assert_array_equal(updates["unet"]["inner_unet"]["w"], 0.0)
    assert np.all(np.asarray(updates["unet"]["w"]) < 0)
    n_moment_leaves = sum(x.size for x in jax.tree.leaves(state) if getattr(x, "ndim", 0) == 1)
    assert n_moment_leaves == 6  # mu and nu of the 3-vector that trains only


def test_lr_multiplier_scales_updates_and_clip_applies():
    params = {"unet": {"inner_unet": {"w": jnp.ones((2,))}, "w": jnp.ones((2,))}}
    labels = optimizer.param_labels(params, lr_multipliers={"unet/inner_unet": 0.1})
    tx, _ = optimizer.make_optimizer(_opt_cfg(), labels)
    grads = {"unet": {"inner_unet": {"w": jnp.full((2,), 1e3)}, "w": jnp.full((2,), 1e3)}}
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["unet"]["inner_unet"]["w"], 0.1 * updates["unet"]["w"], rtol=1e-6)
    with pytest.raises(ValueError, match="no parameter under 'unet/nope'"):
        optimizer.param_labels(params, freeze=("unet/nope",))


def test_warmup_schedule_and_ema():
    sched = optimizer.learning_rate_schedule({"learning_rate": 1e-4, "warmup_steps": 30_000})
    np.testing.assert_allclose([float(sched(s)) for s in (0, 15_000, 30_000, 10**6)], [0, 5e-5, 1e-4, 1e-4],
                               rtol=1e-6)
    cosine = optimizer.learning_rate_schedule({"learning_rate": 1e-3, "warmup_steps": 100, "lr_decay": "cosine",
                                               "final_lr_fraction": 0.1}, total_steps=1_100)
    np.testing.assert_allclose([float(cosine(s)) for s in (50, 100, 600, 1_100, 5_000)],
                               [5e-4, 1e-3, 1e-4 + 9e-4 * 0.5, 1e-4, 1e-4], rtol=1e-5)
    with pytest.raises(ValueError, match="lr_decay"):
        optimizer.learning_rate_schedule({"learning_rate": 1e-3, "lr_decay": "linear"})
    with pytest.raises(ValueError, match="exceed"):
        optimizer.learning_rate_schedule({"learning_rate": 1e-3, "warmup_steps": 10, "lr_decay": "cosine"}, 10)
    ema = optimizer.ema_update({"w": jnp.zeros(2)}, {"w": jnp.ones(2)}, 0.9999)
    np.testing.assert_allclose(ema["w"], 1e-4, rtol=1e-3)


# ---- partitioning --------------------------------------------------------------------------------------------


def test_mesh_shape_auto_axis():
    assert partitioning.mesh_shape({"data": -1, "fsdp": 4}, 8) == (2, 4)
    assert partitioning.mesh_shape({"data": 2, "fsdp": -1}, 8) == (2, 4)
    with pytest.raises(ValueError, match="does not divide"):
        partitioning.mesh_shape({"data": -1, "fsdp": 3}, 8)
    with pytest.raises(ValueError, match="at most one"):
        partitioning.mesh_shape({"data": -1, "fsdp": -1}, 8)


def test_fsdp_rule_shards_largest_divisible_dim():
    P = jax.sharding.PartitionSpec
    assert partitioning.fsdp_spec((3, 3, 256, 512), 4, 1024) == P(None, None, None, "fsdp")
    assert partitioning.fsdp_spec((3, 3, 256, 6), 4, 1024) == P(None, None, "fsdp", None)
    assert partitioning.fsdp_spec((512,), 4, 1024) == P()  # small: replicated
    assert partitioning.fsdp_spec((3, 3, 5, 7), 4, 1) == P()  # nothing divides
    assert partitioning.fsdp_spec((4096, 4096), 1, 1) == P()


# ---- NaN guard -------------------------------------------------------------------------------------------------


def test_nan_guard_names_step_and_level():
    reporting.check_finite(3, {"loss": 1.0, "mse/level0": 0.5}, (32, 16))
    with pytest.raises(reporting.NonFiniteLossError, match=r"at step 7: level 1 \(16x16\) mse=nan"):
        reporting.check_finite(7, {"loss": float("nan"), "mse/level0": 0.3, "mse/level1": float("nan"),
                                   "grad_norm": 1.0}, (32, 16))


def test_nan_loss_stops_the_real_loop(tmp_path, monkeypatch):
    from mdm_jax.training import trainer as trainer_lib

    cfg = config_lib.load(os.path.join(REPO, "configs", "demo.py:tiny"))
    cfg.phases = cfg.phases[:1]
    cfg.sample.num_images = 0
    real = trainer_lib._host_batch
    calls = {"n": 0}

    def poisoned(it):
        batch = real(it)
        calls["n"] += 1
        if calls["n"] == 3:
            batch["images"] = np.full_like(batch["images"], np.nan)
        return batch

    monkeypatch.setattr(trainer_lib, "_host_batch", poisoned)
    with pytest.raises(reporting.NonFiniteLossError, match=r"at step 3-4: level 0 \(8x8\) mse=nan"):
        trainer_lib.train_and_evaluate(cfg, str(tmp_path))
    # Nothing at or after the poisoned step was checkpointed.
    assert not os.path.exists(tmp_path / "checkpoints" / "4")


@pytest.mark.slow  # default run: see README "Test" (kept under ~15 min)
def test_frozen_t5_text_encoder_trains_only_the_unet():
    """cc12m configs: FLAN-T5 runs frozen inside the step; its weights live outside the train state."""
    from mdm_jax.text import t5
    from mdm_jax.training import model_fn, train_step
    from mdm_jax.training import state as state_lib

    t5_cfg = t5.T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
                         feed_forward_proj="gated-gelu")
    encoder = t5.T5Encoder(t5_cfg)
    tokens = np.array([[5, 6, 7, 1, 0, 0], [9, 1, 0, 0, 0, 0]], np.int32)
    batch = {"images": np.random.default_rng(0).uniform(-1, 1, (2, 8, 8, 3)).astype(np.float32),
             "tokens": tokens, "lm_mask": (tokens != 0).astype(np.float32)}
    frozen = encoder.init(jax.random.key(1), tokens, batch["lm_mask"])["params"]
    cfg = config_lib.base_config()
    cfg.optimizer.warmup_steps = 0
    cfg.phases = [config_lib.phase("p", model=config_lib.tiny_architecture([8], cond_dim=32, width=16),
                                   batch_size=2, steps=1)]
    phase = phases.build_phases(cfg)[0]
    model = model_fn.build(phase.model_config, text=model_fn.TextSetup(frozen=encoder, frozen_dim=32))
    key = jax.random.key(0)
    params = jax.jit(lambda k: model.init(k, batch)).lower(key).compile(
        compiler_options={"xla_backend_optimization_level": 0})(key)  # init runs once: skip LLVM optimisation
    assert set(params) == {"unet"}
    labels = optimizer.param_labels(params)
    tx, sched = optimizer.make_optimizer(cfg.optimizer, labels)
    step = jax.jit(train_step.make_step_fn(model, phase, tx, sched, labels, ema_decay=0.9, seed=0))
    new, metrics = step(state_lib.init_state(params, tx), batch, frozen)
    assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0
    # The text features really come from the frozen encoder: other weights change the second step's gradients
    # (zero-initialised output layers make the first step blind to everything but the last layer).
    _, second = step(new, batch, frozen)
    other = jax.tree.map(lambda x: x + 0.5 * jax.random.normal(jax.random.key(2), x.shape), frozen)
    _, second_other = step(new, batch, other)
    assert float(second_other["grad_norm"]) != float(second["grad_norm"])
