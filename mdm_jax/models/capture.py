"""Capture inputs/outputs of named submodules during ``apply``, without touching the model code.

Used by the parity command to compare intermediate tensors with ml-mdm's (named by ml-mdm module, e.g.
``inner_unet.down_blocks.0.resnets.0``) and handy for debugging any layer.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

import flax.linen as nn

_NUMBERED = re.compile(r"^(.*)_(\d+)$")


def module_name(path: tuple[str, ...]) -> str:
    """Flax module path -> ml-mdm module name (``down_blocks_0/resnets_1`` -> ``down_blocks.0.resnets.1``)."""
    parts = []
    for name in path:
        m = _NUMBERED.match(name)
        parts.extend([m.group(1), m.group(2)] if m else [name])
    return ".".join(parts)


@contextlib.contextmanager
def capture_calls(names: set[str] | None = None) -> Iterator[dict[str, dict[str, Any]]]:
    """Record ``{"args": ..., "output": ...}`` of every ``__call__`` of the modules named (ml-mdm style).

    ``names=None`` records every module. Only the first call of a module is kept.
    """
    records: dict[str, dict[str, Any]] = {}

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__":
            name = module_name(tuple(context.module.path))
            if (names is None or name in names) and name not in records:
                records[name] = {"args": args, "output": out}
        return out

    with nn.intercept_methods(interceptor):
        yield records
