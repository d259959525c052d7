"""NestedUNet model: spec (validated config), layers, one UNet level, the nested wrapper."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from mdm_jax.models import cpu_reductions  # noqa: F401  (bf16 sums accumulate in f32 on CPU; see module)
from mdm_jax.models.nested_unet import NestedUNet
from mdm_jax.models.spec import ConfigError, UNetSpec, spec_from_config
from mdm_jax.models.unet import UNet

__all__ = ["ConfigError", "NestedUNet", "UNet", "UNetSpec", "build_model", "spec_from_config"]

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def build_model(config: Mapping[str, Any] | UNetSpec, *, dtype: str | Any = "float32",
                remat: bool = False) -> UNet:
    """A ``UNet`` or ``NestedUNet`` from a model config (ml-mdm field names, ``inner_config`` for nesting).

    ``dtype`` is the computation dtype (parameters stay float32); ``remat`` rematerialises every ResNet and
    attention layer in the backward pass to trade compute for memory.
    """
    spec = config if isinstance(config, UNetSpec) else spec_from_config(config)
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ConfigError(f"dtype: expected one of {sorted(_DTYPES)}, got {dtype!r}")
        dtype = _DTYPES[dtype]
    cls = NestedUNet if spec.is_nested else UNet
    return cls(spec, dtype=dtype, remat=remat)
