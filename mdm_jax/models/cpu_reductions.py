"""Low-precision sums on XLA:CPU accumulate in float32, as TPUs, cuDNN and PyTorch do.

Why: XLA:CPU (jaxlib 0.10) runs a bf16/f16 ``reduce`` in the reduced type. ``jnp.sum`` upcasts first, but
autodiff does not: the transpose of every broadcast is ``lax.reduce_sum`` in the compute dtype. In bf16 training
that is the gradient of each bias (a sum over batch x H x W), of FiLM's scale and shift (over H x W) and of every
other broadcast, and a bf16 running sum stops growing at 256 times its terms: summed over (4, 64, 64), terms
near 0.75 gave 1024 per channel instead of ~12,300, and a small model's bias gradients were 6-40% off
(``tests/test_cpu_reductions.py``).

So on the CPU backend only, ``reduce_sum`` of a bf16/f16 operand is lowered as convert to f32, sum, round once
to the operand's type. Other dtypes and other backends keep JAX's own lowering; the rule is registered when
``mdm_jax.models`` is imported, before anything is traced.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from jax import lax
from jax.interpreters import mlir

LOW_PRECISION = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def _upcast_sum(x: Any, *, axes: tuple[int, ...], **params: Any) -> Any:
    return lax.reduce_sum_p.bind(x.astype(jnp.float32), axes=axes, **params).astype(x.dtype)


def _lowering(default: Any) -> Any:
    upcast = mlir.lower_fun(_upcast_sum, multiple_results=False)

    def rule(ctx: Any, x: Any, **params: Any) -> Any:
        if ctx.avals_in[0].dtype in LOW_PRECISION:
            return upcast(ctx, x, **params)  # its f32 reduce_sum comes back here and takes the default
        return default(ctx, x, **params)

    return rule


def _register() -> bool:
    from jax._src.interpreters import mlir as mlir_internal

    # JAX's own (platform-independent) rule for reduce_sum; private, so import fails loudly if it moves.
    default = mlir_internal._lowerings[lax.reduce_sum_p].rule
    mlir.register_lowering(lax.reduce_sum_p, _lowering(default), platform="cpu")
    return True


REGISTERED = _register()
