"""Weights a phase can start from: a checkpoint of one of our runs, or an ml-mdm checkpoint converted to Orbax.

Either way the result is host (numpy) trees ``params`` and ``ema`` shaped like our train state's, i.e. with
the UNet under ``unet`` (+ ``text``), so a phase's ``init_from`` rules apply unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from absl import logging

from mdm_jax import io_paths
from mdm_jax.training import checkpoint as ckpt_lib


@dataclasses.dataclass
class Source:
    params: Any
    ema: Any
    description: str


read_numpy = ckpt_lib.read_numpy  # (a subtree of) a PyTree item as numpy arrays


def _step_dir(path: str, step: int) -> str:
    """Resolve a run dir / checkpoints dir / step dir (local or a URL) to one step directory."""
    path = io_paths.resolve(path)
    if io_paths.isdir(io_paths.join(path, "meta")) and io_paths.isdir(io_paths.join(path, "ema")):
        return path
    root = io_paths.join(path, "checkpoints")
    if not ckpt_lib.is_run_checkpoint_dir(root):
        root = path
    if not io_paths.isdir(root):
        raise FileNotFoundError(f"no checkpoints under {root}: the directory does not exist")
    steps = sorted(int(c) for c in io_paths.listdir(root)
                   if c.isdigit() and io_paths.isdir(io_paths.join(root, c, "meta")))
    if not steps:
        raise FileNotFoundError(f"no checkpoints under {root}")
    if step >= 0:
        if step not in steps:
            raise FileNotFoundError(f"no checkpoint for step {step} under {root} (have {steps})")
        return io_paths.join(root, str(step))
    return io_paths.join(root, str(steps[-1]))


def is_run_checkpoint(path: str) -> bool:
    path = io_paths.resolve(path)
    return (ckpt_lib.is_run_checkpoint_dir(path) or ckpt_lib.is_run_checkpoint_dir(io_paths.join(path, "checkpoints"))
            or io_paths.isdir(io_paths.join(path, "meta")))


def load(path: str, step: int = -1) -> Source:
    """Load ``params``/``ema`` from our checkpoint (newest or ``step``) or a converted ml-mdm directory."""
    if is_run_checkpoint(path):
        d = _step_dir(path, step)
        ema = read_numpy(io_paths.join(d, "ema"))
        params = read_numpy(io_paths.join(d, "state"), subtree="params")
        return Source(params, ema, f"checkpoint {d}")
    from mdm_jax import convert

    model_config, _, params = convert.load_converted(path)
    logging.info("Loaded converted ml-mdm checkpoint %s (resolution %s)", path, model_config.get("resolution"))
    tree = {"unet": params}
    # ml-mdm releases only EMA weights (vis_model.pth): they seed both the trained and the EMA parameters.
    return Source(tree, tree, f"converted ml-mdm checkpoint {path}")
