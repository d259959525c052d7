"""Gradient clipping as ml-mdm clips (torch ``clip_grad_norm_``) and what it costs in memory at the step's peak;
rematerialisation under XLA:CPU's memory-optimised scheduler."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mdm_jax.training import optimizer

CFG = dict(learning_rate=1e-3, warmup_steps=0, b1=0.9, b2=0.99, eps=1e-8, grad_clip_norm=2.0)


def test_clip_is_torch_clip_grad_norm():
    rng = np.random.default_rng(0)
    grads = {"a": rng.normal(size=(5, 3)).astype(np.float32), "b": rng.normal(size=(7,)).astype(np.float32)}
    norm = np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in grads.values()))
    tx = optimizer.clip_by_global_norm(2.0)
    out, _ = tx.update(grads, tx.init(grads))
    coef = min(1.0, 2.0 / (norm + 1e-6))  # torch.nn.utils.clip_grad_norm_
    assert norm > 2.0
    for k in grads:
        np.testing.assert_allclose(out[k], grads[k] * coef, rtol=1e-6)
    small = {k: (g / norm).astype(np.float32) for k, g in grads.items()}  # norm 1 < 2: unchanged, bit for bit
    out, _ = tx.update(small, tx.init(small))
    for k in grads:
        np.testing.assert_array_equal(out[k], small[k])


def _step_temp_over_params(tx: optax.GradientTransformation) -> float:
    """XLA's temporaries of a donated grad -> clip -> Adam -> EMA step of an 8-layer MLP whose parameters dwarf
    its activations, in units of the parameters' size."""
    d, layers = 512, 8
    params = {f"l{i}": jax.ShapeDtypeStruct((d, d), jnp.float32) for i in range(layers)}

    def loss(p, x):
        for i in range(layers):
            x = jnp.tanh(x @ p[f"l{i}"])
        return jnp.mean(x ** 2)

    def step(state, x):
        p, o, e = state
        u, o = tx.update(jax.grad(loss)(p, x), o, p)
        p = optax.apply_updates(p, u)
        return p, o, optimizer.ema_update(e, p, 0.999)

    state = (params, jax.eval_shape(tx.init, params), params)
    x = jax.ShapeDtypeStruct((4, d), jnp.float32)
    mem = jax.jit(step, donate_argnums=(0,)).lower(state, x).compile().memory_analysis()
    return mem.temp_size_in_bytes / (layers * d * d * 4)


def test_clipped_adam_step_keeps_one_gradient_copy():
    """The gradients must all exist before the norm is known (1x the parameters); a divide-based clip made XLA keep
    a clipped copy beside them (2.5x measured with ``optax.clip_by_global_norm``)."""
    labels = {f"l{i}": optimizer.DEFAULT for i in range(8)}
    tx, _ = optimizer.make_optimizer(CFG, labels)
    assert _step_temp_over_params(tx) < 1.3
    reference = optax.chain(optax.clip_by_global_norm(2.0), optax.adam(1e-3, b2=0.99))
    assert _step_temp_over_params(reference) > 1.8  # what this guards against, on this XLA


def _unet_step_temp_mib(remat: bool, memory_scheduler: bool) -> float:
    """XLA's temporaries of a real accumulated train step (2 micro-batches) of a small attention UNet."""
    from mdm_jax.training import config_lib, model_fn, phases, train_step
    from mdm_jax.training import state as state_lib

    cfg = config_lib.base_config()
    unet = config_lib.tiny_unet(32, [32, 64, 64], attention_levels=[1, 2], cond_dim=-1)
    cfg.phases = [config_lib.phase("p", model=unet, batch_size=4, steps=1, grad_accum_steps=2)]
    phase = phases.build_phases(cfg)[0]
    model = model_fn.build(phase.model_config, dtype="float32", remat=remat)
    batch = {"images": jax.ShapeDtypeStruct((4, 32, 32, 3), jnp.float32)}
    abstract_params = jax.eval_shape(lambda k: model.init(k, {}), jax.random.key(0))
    labels = optimizer.param_labels(abstract_params)
    tx, sched = optimizer.make_optimizer(cfg.optimizer, labels)
    step = jax.jit(train_step.make_step_fn(model, phase, tx, sched, labels, ema_decay=0.99, seed=0),
                   donate_argnums=(0,), compiler_options=train_step.step_compiler_options(memory_scheduler))
    compiled = step.lower(state_lib.abstract_state(abstract_params, tx), batch, {}).compile()
    return compiled.memory_analysis().temp_size_in_bytes / 2**20


@pytest.mark.slow  # two ~30 s compiles
def test_remat_saves_memory_on_cpu_only_with_the_memory_scheduler():
    """XLA:CPU's default order starts every rematerialised recomputation as early as it can, so remat alone saves
    nothing here; ``cpu_memory_scheduler`` (the memory-optimised order) makes it pay (measured 61 -> 30 MiB)."""
    if jax.default_backend() != "cpu":
        pytest.skip("an XLA:CPU scheduling option")
    from mdm_jax.training import train_step

    assert train_step.step_compiler_options(False) is None
    assert train_step.step_compiler_options(True) == {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}
    default, scheduled = _unet_step_temp_mib(True, False), _unet_step_temp_mib(True, True)
    assert scheduled < 0.7 * default, (default, scheduled)



def _tree(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {"a": jnp.asarray(rng.normal(size=(64, 48)), jnp.float32), "b": jnp.asarray(rng.normal(size=(48,)),
                                                                                       jnp.float32)}


def test_adam_bf16_mu_keeps_optax_state_and_uses_the_stored_moment():
    """Same state (structure, dtypes, values) as optax's bf16-mu Adam over 5 steps; the update divides the first
    moment as stored (rounded to bf16), so it stays within bf16's rounding of optax's update."""
    ours = optimizer.scale_by_adam(0.9, 0.99, 1e-8, jnp.bfloat16)
    ref = optax.scale_by_adam(b1=0.9, b2=0.99, eps=1e-8, mu_dtype=jnp.bfloat16)
    params = _tree(0)
    s_ours, s_ref = ours.init(params), ref.init(params)
    assert jax.tree.structure(s_ours) == jax.tree.structure(s_ref)
    for step in range(5):
        grads = _tree(step + 1)
        u_ours, s_ours = jax.jit(ours.update)(grads, s_ours)
        u_ref, s_ref = jax.jit(ref.update)(grads, s_ref)
        for x, y in zip(jax.tree.leaves(s_ours), jax.tree.leaves(s_ref), strict=True):
            assert x.dtype == y.dtype
            np.testing.assert_array_equal(np.asarray(x, np.float32), np.asarray(y, np.float32))
        c1, c2 = 1 - 0.9 ** (step + 1), 1 - 0.99 ** (step + 1)
        for k in params:
            m, v = np.asarray(s_ours.mu[k], np.float32), np.asarray(s_ours.nu[k])
            np.testing.assert_allclose(u_ours[k], (m / c1) / (np.sqrt(v / c2) + 1e-8), rtol=2e-6, atol=1e-7)
            np.testing.assert_allclose(u_ours[k], u_ref[k], rtol=1e-2, atol=1e-2)  # bf16 rounding of mu
    f32 = optimizer.scale_by_adam(0.9, 0.99, 1e-8, None)  # float32 moments: optax's own transform
    u32, _ = f32.update(_tree(1), f32.init(params))
    u_opt, _ = optax.scale_by_adam(b1=0.9, b2=0.99, eps=1e-8).update(_tree(1), f32.init(params))
    for k in params:
        np.testing.assert_array_equal(u32[k], u_opt[k])


def test_adam_bf16_mu_step_copies_no_moment():
    """optax's bf16-mu Adam reads each old moment twice (update, rounding) beside an in-place write, so XLA copies
    every moment (0.86 GiB for MDM-S64); ours reads the rounded moment back and copies none."""
    params = {f"l{i}": jax.ShapeDtypeStruct((256, 256), jnp.float32) for i in range(6)}

    def copies_and_temp(adam):
        tx = optax.chain(optimizer.clip_by_global_norm(1.0), adam)

        def step(state, grads):
            p, o = state
            u, o = tx.update(grads, o, p)
            return optax.apply_updates(p, u), o

        state = (params, jax.eval_shape(tx.init, params))
        compiled = jax.jit(step, donate_argnums=(0,)).lower(state, params).compile()
        text = compiled.as_text()
        return text.count(" copy(%"), compiled.memory_analysis().temp_size_in_bytes

    ref_copies, ref_temp = copies_and_temp(optax.scale_by_adam(b1=0.9, b2=0.99, mu_dtype=jnp.bfloat16))
    copies, temp = copies_and_temp(optimizer.scale_by_adam(0.9, 0.99, 1e-8, jnp.bfloat16))
    moments = 6 * 256 * 256 * 2
    assert copies == 0 and temp < 0.1 * moments, (copies, temp)
    assert ref_copies >= 6 and ref_temp >= moments  # what this guards against, on this XLA
