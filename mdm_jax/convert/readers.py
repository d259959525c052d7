"""One entry point for every checkpoint format: flat ml-mdm state dict + the config that came with it.

ml-mdm writes ``torch.save({"state_dict": ..., "args": Namespace, "batch_num": ...})``; people also pass around
``.npz`` and ``.safetensors`` exports of the same flat keys, whose config (if any) sits in a JSON sidecar.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mdm_jax.convert.torch_pickle import CheckpointFormatError, load_pth

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
SIDECARS = ("{stem}.args.json", "{stem}.json", "args.json", "config.json")
# Where to get the released ml-mdm models (README of apple/ml-mdm); never downloaded here.
RELEASED = {
    64: "https://docs-assets.developer.apple.com/ml-research/models/mdm/flickr64/vis_model.pth",
    256: "https://docs-assets.developer.apple.com/ml-research/models/mdm/flickr256/vis_model.pth",
    1024: "https://docs-assets.developer.apple.com/ml-research/models/mdm/flickr1024/vis_model.pth",
}


@dataclasses.dataclass
class SourceCheckpoint:
    """What a checkpoint file holds: ``state_dict`` (flat key -> array), ``args`` (ml-mdm's pickled
    ``argparse.Namespace`` as a ``ConfigObject``, a dict from a JSON sidecar, or None), other top-level items, and
    notes about what was done to read it."""

    path: Path
    format: str
    state_dict: dict[str, np.ndarray]
    args: Any = None
    args_source: str | None = None
    extras: dict[str, Any] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)


def missing_file_message(path: Path) -> str:
    """One line saying what the missing file is and where ml-mdm's released checkpoints come from."""
    urls = ", ".join(f"{r}px: {u}" for r, u in RELEASED.items())
    return (f"{path}: no such file. ml-mdm's released checkpoints (vis_model.pth, EMA weights) are at {urls}; "
            f"download one yourself and pass its path (nothing is downloaded here)")


def _is_array(v: Any) -> bool:
    return isinstance(v, np.ndarray)


def _state_dict_from(obj: Any, path: Path, notes: list[str]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Find the flat state dict inside a loaded torch checkpoint object; return it and the other items."""
    if not isinstance(obj, Mapping):
        raise CheckpointFormatError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
    if "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        sd, extras = obj["state_dict"], {k: v for k, v in obj.items() if k != "state_dict"}
    elif obj and all(_is_array(v) for v in obj.values()):
        sd, extras = obj, {}
        notes.append("the file is a bare state dict (no 'state_dict' entry, no args)")
    else:
        raise CheckpointFormatError(f"{path}: no 'state_dict' entry; top-level keys are {sorted(map(str, obj))}")
    bad = sorted(k for k, v in sd.items() if not _is_array(v))
    if bad:
        raise CheckpointFormatError(f"{path}: state_dict entries that are not tensors: {bad}")
    return strip_module_prefix(dict(sd), notes), extras


def strip_module_prefix(sd: dict[str, np.ndarray], notes: list[str]) -> dict[str, np.ndarray]:
    """Drop a ``module.`` prefix every key carries (a DistributedDataParallel-wrapped save)."""
    if sd and all(k.startswith("module.") for k in sd):
        notes.append("stripped the 'module.' prefix of every key (a DistributedDataParallel-wrapped save)")
        return {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _sidecar(path: Path) -> tuple[Any, str | None]:
    for pattern in SIDECARS:
        candidate = path.parent / pattern.format(stem=path.stem)
        if candidate.is_file() and candidate != path:
            with open(candidate) as f:
                return json.load(f), str(candidate)
    return None, None


def read_checkpoint(path: str | Path, *, stub_classes: Iterable[str] = ()) -> SourceCheckpoint:
    """Read ``.pth``/``.pt`` (torch zip), ``.npz`` or ``.safetensors`` into a ``SourceCheckpoint``.

    ``.npz`` keys may carry the parity fixtures' ``param/`` prefix (other arrays are then ignored). For npz and
    safetensors a JSON sidecar (``<stem>.args.json``, ``<stem>.json``, ``args.json`` or ``config.json`` next to
    the file) supplies the config.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(missing_file_message(path))
    suffix = path.suffix.lower()
    notes: list[str] = []
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            keys = list(data.files)
            if any(k.startswith("param/") for k in keys):
                skipped = sum(not k.startswith("param/") for k in keys)
                sd = {k[len("param/"):]: data[k] for k in keys if k.startswith("param/")}
                if skipped:
                    notes.append(f"read the {len(sd)} 'param/<key>' arrays; ignored {skipped} other arrays")
            else:
                sd = {k: data[k] for k in keys}
        args, src = _sidecar(path)
        return SourceCheckpoint(path, "npz", strip_module_prefix(sd, notes), args, src, {}, notes)
    if suffix == ".safetensors":
        from safetensors.numpy import load_file

        sd = load_file(str(path))
        args, src = _sidecar(path)
        return SourceCheckpoint(path, "safetensors", strip_module_prefix(dict(sd), notes), args, src, {}, notes)
    if suffix in TORCH_SUFFIXES or suffix == "":
        obj = load_pth(path, stub_classes=stub_classes)
        sd, extras = _state_dict_from(obj, path, notes)
        args = extras.pop("args", None)
        src = f"{path.name}:args" if args is not None else None
        if args is None:
            args, src = _sidecar(path)
        return SourceCheckpoint(path, "torch-zip", sd, args, src, extras, notes)
    raise CheckpointFormatError(f"{path}: unknown checkpoint type '{suffix}'; expected one of "
                                f"{', '.join(TORCH_SUFFIXES)}, .npz, .safetensors")
