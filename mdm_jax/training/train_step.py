"""One optimisation step: joint multi-resolution loss, gradients (optionally accumulated over micro-batches),
clipped Adam, EMA; jitted with shardings.

Randomness (time, noise, dropout) is ``fold_in(seed, global step)``: a resumed run draws exactly what an
uninterrupted one would, with no RNG in the state.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from mdm_jax.training import accumulation, partitioning
from mdm_jax.training.model_fn import Model
from mdm_jax.training.optimizer import ema_update, frozen_mask
from mdm_jax.training.phases import Phase
from mdm_jax.training.state import TrainState

Array = jax.Array
StepFn = Callable[[TrainState, Mapping[str, Array], Any], tuple[TrainState, dict[str, Array]]]


def make_step_fn(model: Model, phase: Phase, tx: optax.GradientTransformation, schedule: optax.Schedule,
                 labels: Any, *, ema_decay: float, seed: int, ema_warmup: bool = False) -> StepFn:
    """The pure step function (not jitted): ``(state, batch, frozen) -> (state, metrics)``; ``frozen`` holds the
    frozen text encoder's weights (``{}`` without one)."""
    frozen_leaves = frozen_mask(labels)
    base_key = jax.random.key(seed)

    def step_fn(state: TrainState, batch: Mapping[str, Array], frozen: Any) -> tuple[TrainState, dict[str, Array]]:
        k_loss, k_drop = jax.random.split(jax.random.fold_in(base_key, state.step))
        def apply_for_key(key: Array) -> Callable[..., Any]:
            return functools.partial(model.apply, dropout_rng=key, frozen=frozen if frozen else None)

        def prepare(params: Any) -> Any:
            return jax.tree.map(lambda p, f: jax.lax.stop_gradient(p) if f else p, params, frozen_leaves)

        (_, metrics), grads = accumulation.value_and_grad(
            state.params, batch, k_loss, apply_for_key=apply_for_key, cfg=phase.diffusion,
            k=phase.grad_accum_steps, dropout_rng=k_drop, prepare=prepare)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        decay = jnp.float32(ema_decay)
        if ema_warmup:  # (1 + n) / (10 + n) early in a phase: fresh (grown) weights are not averaged with init
            n = (state.step - phase.start_step).astype(jnp.float32)
            decay = jnp.minimum(decay, (1.0 + n) / (10.0 + n))
        ema = ema_update(state.ema, params, decay)
        metrics = dict(metrics, grad_norm=optax.tree.norm(grads),
                       learning_rate=schedule(state.step - phase.start_step))
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state, ema=ema), metrics

    return step_fn


def jit_step(step_fn: StepFn, state_shardings: TrainState, batch_example: Mapping[str, Any],
             mesh: Mesh, frozen_shardings: Any = None, compiler_options: dict[str, Any] | None = None) -> Callable:
    """jit with explicit in/out shardings; the old state's buffers are donated to the new one."""
    batch_shardings = {k: partitioning.batch_sharding(mesh, v.ndim) for k, v in batch_example.items()}
    return jax.jit(step_fn, in_shardings=(state_shardings, batch_shardings, frozen_shardings or {}),
                   out_shardings=(state_shardings, partitioning.replicated(mesh)), donate_argnums=(0,),
                   compiler_options=compiler_options or None)


CPU_MEMORY_SCHEDULER = {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}


def step_compiler_options(memory_scheduler: bool) -> dict[str, Any] | None:
    """XLA options for the train step. ``memory_scheduler`` (config ``cpu_memory_scheduler``) picks XLA:CPU's
    memory-optimised instruction order on a CPU backend: its default order starts every rematerialised
    recomputation (and every flipped conv kernel of the backward pass) as early as it can, so they are all live
    at once and ``remat`` saves nothing. The option is read by the CPU compiler only; accelerators ignore it."""
    return dict(CPU_MEMORY_SCHEDULER) if memory_scheduler and jax.default_backend() == "cpu" else None
