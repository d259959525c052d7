"""Parameters in the compute dtype, once, for loops that apply the same weights many times (sampling).

Flax's Dense/Conv cast their float32 ``kernel`` to the module's ``dtype`` on every call. In a 250-step sampler
that is 250 casts of every kernel (for MDM-S64 in bf16 on CPU, ~30% of a forward), and XLA does not hoist them
out of the loop. Casting the kernels first gives bit-identical outputs: the module's own cast becomes a no-op.
Only leaves named ``kernel`` are cast (what Dense/Conv promote); norms, biases and embeddings stay as they are.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def cast_kernels(params: Any, dtype: Any) -> Any:
    """``params`` with every float32 ``kernel`` leaf in ``dtype`` (unchanged for float32 / None)."""
    if dtype is None or jnp.dtype(dtype) == jnp.float32:
        return params

    def cast(path: tuple, leaf: Any) -> Any:
        name = getattr(path[-1], "key", None) if path else None
        if name == "kernel" and getattr(leaf, "dtype", None) == jnp.float32:
            return leaf.astype(dtype)
        return leaf

    return jax.tree_util.tree_map_with_path(cast, params)
