"""Gradient accumulation: k micro-batches give the loss, metrics and gradients of the whole batch."""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np
import pytest

from mdm_jax.training import accumulation, config_lib, partitioning, phases, trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def nested_run():
    config = config_lib.load(os.path.join(REPO, "configs", "demo.py:tiny"))
    phase = phases.build_phases(config)[1]  # 2-level nested model with a trainable text encoder
    mesh = partitioning.make_mesh({"data": 1, "fsdp": 1}, devices=jax.devices()[:1])
    run = trainer.setup_phase(config, phase, mesh)
    state = trainer.fresh_state(config, run, mesh)
    batch = {k: np.asarray(v) for k, v in trainer._host_batch(run.data).items()}
    return config, run, state, batch, mesh


def _grad_fn(run, k, cfg):
    """jitted ``(params, batch, seed) -> ((loss, metrics), grads)`` with ``k`` micro-batches."""
    return jax.jit(lambda p, b, seed: accumulation.value_and_grad(
        p, b, jax.random.key(seed), apply_for_key=lambda key: run.model.apply, cfg=cfg, k=k,
        dropout_rng=jax.random.key(4)))


def _assert_trees_close(a, b, rtol, atol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


# The VDM-weighted variant repeats the same equality with other loss weights (69 s on CI): slow run only.
@pytest.mark.parametrize("vdm", [False, pytest.param(True, marks=pytest.mark.slow)],
                         ids=["unit_weights", "vdm_weights"])
def test_micro_batches_equal_the_whole_batch(nested_run, vdm):
    _, run, state, batch, _ = nested_run
    cfg = dataclasses.replace(run.phase.diffusion, use_vdm_loss_weights=vdm)
    whole = _grad_fn(run, 1, cfg)
    (loss1, m1), g1 = jax.device_get(whole(state.params, batch, 3))
    (loss4, m4), g4 = jax.device_get(_grad_fn(run, 4, cfg)(state.params, batch, 3))
    np.testing.assert_allclose(loss4, loss1, rtol=1e-5)
    for name in m1:
        np.testing.assert_allclose(m4[name], m1[name], rtol=1e-5, err_msg=name)
    scale = max(float(np.max(np.abs(x))) for x in jax.tree.leaves(g1))
    _assert_trees_close(g4, g1, rtol=1e-4, atol=1e-6 * scale)
    # Not vacuous: a different draw gives a different loss.
    (loss_other, _), _ = jax.device_get(whole(state.params, batch, 99))
    assert abs(float(loss_other) - float(loss1)) > 1e-4


@pytest.mark.slow  # default run: see README "Test" (kept under ~15 min)
def test_train_step_with_accumulation_matches(nested_run):
    config, run, state, batch, mesh = nested_run
    phase2 = dataclasses.replace(run.phase, grad_accum_steps=2)
    run2 = trainer.setup_phase(config, phase2, mesh)
    host = jax.device_get(state)
    s1, m1 = run.step_fn(jax.device_put(host, run.shardings), partitioning.global_batch(batch, mesh), run.frozen)
    s2, m2 = run2.step_fn(jax.device_put(host, run2.shardings), partitioning.global_batch(batch, mesh), run2.frozen)
    np.testing.assert_allclose(float(m2["loss"]), float(m1["loss"]), rtol=1e-5)
    np.testing.assert_allclose(float(m2["grad_norm"]), float(m1["grad_norm"]), rtol=1e-4)
    _assert_trees_close(jax.device_get(s2.params), jax.device_get(s1.params), rtol=0, atol=2e-6)


def test_micro_batches_are_strided_rows():
    x = np.arange(12).reshape(12, 1)
    mb = np.asarray(accumulation.micro_batches(x, 3))
    assert mb.shape == (3, 4, 1)
    np.testing.assert_array_equal(mb[1, :, 0], [1, 4, 7, 10])


def test_bad_accumulation_is_named():
    cfg = config_lib.load(os.path.join(REPO, "configs", "demo.py:tiny"))
    cfg.phases[1].grad_accum_steps = 3
    with pytest.raises(ValueError, match="phase 1 'nested': batch_size 8 is not divisible by grad_accum_steps 3"):
        phases.build_phases(cfg)
