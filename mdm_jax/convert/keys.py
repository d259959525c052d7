"""Map an ml-mdm (PyTorch) state dict onto our Flax parameter tree, strictly.

Our module names mirror ml-mdm's, with list indices joined by ``_`` (``down_blocks.0.resnets.1.conv1.weight`` <->
``down_blocks_0/resnets_1/conv1/kernel``), so the mapping is derived from the Flax tree itself: every Flax leaf
names the one PyTorch key it needs, and the layout change follows from the ranks (OIHW -> HWIO for convs,
(out, in) -> (in, out) for linears and 1x1 convs).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import traverse_util

from mdm_jax.models.spec import UNetSpec

_INDEX = re.compile(r"^(.*)_(\d+)$")
_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias", "embedding": "weight"}


class ConversionError(ValueError):
    """The checkpoint does not fit the model; the message lists every offending key."""


def torch_key(path: tuple[str, ...]) -> str:
    """Flax parameter path -> ml-mdm state-dict key."""
    parts = []
    for name in path[:-1]:
        m = _INDEX.match(name)
        parts.extend([m.group(1), m.group(2)] if m else [name])
    parts.append(_LEAF[path[-1]])
    return ".".join(parts)


def to_flax_layout(value: np.ndarray, target_shape: tuple[int, ...], key: str) -> np.ndarray:
    """Transpose a PyTorch tensor into the layout of the Flax leaf it fills."""
    value = np.asarray(value)
    torch_shape = tuple(value.shape)
    if value.ndim == 4 and len(target_shape) == 4:  # conv OIHW -> HWIO
        value = value.transpose(2, 3, 1, 0)
    elif value.ndim == 3 and len(target_shape) == 3:  # temporal Conv1d (out, in, k) -> (k, in, out)
        value = value.transpose(2, 1, 0)
    elif value.ndim == 4 and len(target_shape) == 2:  # 1x1 conv used as a Dense layer
        if value.shape[2:] != (1, 1):
            raise ConversionError(f"{key}: expected a 1x1 convolution, got shape {value.shape}")
        value = value[:, :, 0, 0].T
    elif value.ndim == 2 and len(target_shape) == 2 and not key.endswith("label_emb.weight"):
        value = value.T  # linear (out, in) -> (in, out)
    if tuple(value.shape) != tuple(target_shape):
        raise ConversionError(f"{key}: PyTorch shape {torch_shape} does not fit parameter of Flax shape "
                              f"{tuple(target_shape)}")
    return value


def unused_by_forward(spec: UNetSpec) -> list[str]:
    """Key prefixes ml-mdm builds but never runs: mid blocks and text heads of nested (non-innermost) levels.

    These are not errors (the original model has them too); they are reported and dropped.
    """
    names = ("mid_blocks", "cond_emb", "lm_proj", "lm_head", "interp_layer1", "interp_layer2")
    prefixes = []
    for depth in range(len(spec.levels) - 1):
        prefixes += [f"{'inner_unet.' * depth}{name}." for name in names]
    return prefixes


ROPE_SUFFIX = ".attn.pos_emb.freqs"


def rope_buffers(spec: UNetSpec) -> dict[str, np.ndarray]:
    """ml-mdm's RoPE frequency tensors (``...t_attn.N.attn.pos_emb.freqs``): fixed, not trained, so our model
    computes them; conversion checks the checkpoint holds the expected values instead of loading them."""
    from mdm_jax.models.temporal import HEAD_CHANNELS, rope_frequencies

    freqs = np.asarray(rope_frequencies(HEAD_CHANNELS), np.float32)
    out = {}
    for depth, level in enumerate(spec.levels):
        if not level.temporal_positional_encoding:
            continue
        prefix = "inner_unet." * depth
        n = level.num_resolutions
        for kind, resolutions in (("down", range(n)), ("up", reversed(range(n)))):
            for block, i in enumerate(resolutions):
                resnets = level.num_resnets_per_resolution[i] + (kind == "up")
                for k in range(resnets * level.temporal_attention_layers_at(i)):
                    out[f"{prefix}{kind}_blocks.{block}.t_attn.{k}{ROPE_SUFFIX}"] = freqs
    return out


@dataclasses.dataclass
class ConversionReport:
    loaded: list[str]
    missing: list[str]  # model parameters the checkpoint lacks
    unexpected: list[str]  # checkpoint keys the model has no place for
    mismatched: list[str]  # "key: reason"
    unused: list[str]  # keys ml-mdm itself never uses in the forward pass

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors; missing {len(self.missing)}, unexpected "
                 f"{len(self.unexpected)}, mis-shaped {len(self.mismatched)}, unused by ml-mdm's forward "
                 f"{len(self.unused)}"]
        for title, keys in (("missing", self.missing), ("unexpected", self.unexpected),
                            ("mis-shaped", self.mismatched), ("unused by forward (dropped)", self.unused)):
            lines += [f"  {title}: {k}" for k in keys]
        return "\n".join(lines)


def convert_state_dict(state_dict: Mapping[str, Any], param_shapes: Any, spec: UNetSpec, *,
                       strict: bool = True, fill: Any = None) -> tuple[dict, ConversionReport]:
    """Build Flax params (nested dict of float32 numpy arrays) from an ml-mdm state dict.

    ``param_shapes`` is the model's parameter tree (arrays or ShapeDtypeStructs, e.g. from ``jax.eval_shape``).
    With ``strict`` any missing, unexpected or mis-shaped key raises a ``ConversionError`` listing all of them.
    Non-strict conversion fills missing and mis-shaped leaves from ``fill`` (a params tree, e.g. a fresh init) and
    says so; it never leaves a leaf silently at a random value.
    """
    flat = traverse_util.flatten_dict(param_shapes)
    fill_flat = traverse_util.flatten_dict(fill) if fill is not None else {}
    drop = unused_by_forward(spec)
    remaining = dict(state_dict)
    out, loaded, missing, mismatched = {}, [], [], []
    for path, leaf in flat.items():
        key = torch_key(path)
        if key not in remaining:
            missing.append(key)
            if path in fill_flat:
                out[path] = np.asarray(fill_flat[path])
            continue
        try:
            out[path] = to_flax_layout(np.asarray(remaining.pop(key), np.float32), tuple(leaf.shape), key)
            loaded.append(key)
        except ConversionError as e:
            mismatched.append(str(e))
            if path in fill_flat:
                out[path] = np.asarray(fill_flat[path])
    for key, want in rope_buffers(spec).items():
        if key not in remaining:
            missing.append(key)
            continue
        got = np.asarray(remaining.pop(key), np.float32)
        if got.shape != want.shape or not np.allclose(got, want, rtol=1e-6, atol=0):
            mismatched.append(f"{key}: RoPE frequencies {got.ravel()[:4]}... differ from 10000^(-2i/32)")
        else:
            loaded.append(key)
    unused = sorted(k for k in remaining if any(k.startswith(p) for p in drop))
    unexpected = sorted(k for k in remaining if k not in unused)
    report = ConversionReport(loaded, missing, unexpected, mismatched, unused)
    if strict and not report.ok:
        raise ConversionError("checkpoint does not match the model config:\n" + report.summary())
    if not strict and len(out) != len(flat):
        lacking = [torch_key(p) for p in flat if p not in out]
        raise ConversionError("non-strict conversion needs values for every parameter; pass `fill` (e.g. a fresh "
                              "init) for: " + ", ".join(lacking))
    return traverse_util.unflatten_dict(out), report
