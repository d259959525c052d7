"""The train state (step, params, optimizer state, EMA) and how it is born: sharded, never whole on one device.

``jax.eval_shape`` gives the state's shapes without computing anything, the sharding rule turns shapes into
NamedShardings, and ``jax.jit(init, out_shardings=...)`` materialises each shard where it lives.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from mdm_jax.training import partitioning


@flax.struct.dataclass
class TrainState:
    """``step`` is the global step (across phases); ``ema`` is a float32 copy of ``params``."""

    step: jax.Array
    params: Any
    opt_state: Any
    ema: Any

    def checkpoint_items(self) -> tuple[dict[str, Any], Any]:
        """(the 'state' item, the 'ema' item) as saved by the checkpoint manager."""
        return {"step": self.step, "params": self.params, "opt_state": self.opt_state}, self.ema

    @classmethod
    def from_items(cls, state: Mapping[str, Any], ema: Any) -> TrainState:
        return cls(step=state["step"], params=state["params"], opt_state=state["opt_state"], ema=ema)


def init_state(params: Any, tx: optax.GradientTransformation, step: int | jax.Array = 0) -> TrainState:
    params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params)
    return TrainState(step=jnp.asarray(step, jnp.int32), params=params, opt_state=tx.init(params),
                      ema=jax.tree.map(jnp.copy, params))


def state_shardings(abstract_state: TrainState, mesh: Mesh, min_size: int) -> TrainState:
    return partitioning.tree_shardings(abstract_state, mesh, min_size)


def abstract_state(abstract_params: Any, tx: optax.GradientTransformation,
                   shardings: TrainState | None = None) -> TrainState:
    """ShapeDtypeStructs of the whole state from the params' (cheap: no model trace), with shardings if given."""
    abstract = jax.eval_shape(lambda p: init_state(p, tx), abstract_params)
    if shardings is None:
        return abstract
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def create_sharded(init_params: Callable[[jax.Array], Any], tx: optax.GradientTransformation, rng: jax.Array,
                   shardings: TrainState, step: int = 0) -> TrainState:
    """A fresh state whose params, optimizer state and EMA are created directly in their shards."""

    def init(key: jax.Array) -> TrainState:
        return init_state(init_params(key), tx, step)

    lowered = jax.jit(init, out_shardings=shardings).lower(rng)
    # XLA:CPU spends tens of seconds optimising the random-number code of an init that runs once; don't.
    options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
    return lowered.compile(compiler_options=options)(rng)


def place(tree: Any, shardings: Any) -> Any:
    """Put host/device arrays onto the given shardings (every process passes the same full values)."""
    def put(x: Any, s: Any) -> jax.Array:
        if isinstance(x, jax.Array):
            return jax.device_put(x.astype(jnp.float32), s)
        return jax.device_put(np.asarray(x, np.float32), s)

    return jax.tree.map(put, tree, shardings)
