"""Weights a phase can start from: a checkpoint of one of our runs, or an ml-mdm checkpoint converted to Orbax.

Either way the result is host (numpy) trees ``params`` and ``ema`` shaped like our train state's, i.e. with
the UNet under ``unet`` (+ ``text``), so a phase's ``init_from`` rules apply unchanged.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from mdm_jax.training import checkpoint as ckpt_lib


@dataclasses.dataclass
class Source:
    params: Any
    ema: Any
    description: str


def _restore_numpy(item_dir: str, subtree: str | None = None) -> Any:
    """Restore (a top-level subtree of) a PyTree item as numpy arrays, whatever devices wrote it."""
    ckptr = ocp.PyTreeCheckpointer()
    meta = ckptr.metadata(item_dir)
    tree = getattr(meta, "item_metadata", meta)
    tree = getattr(tree, "tree", tree)
    if subtree is not None:
        tree = {subtree: tree[subtree]}
    target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), tree)
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
    out = ckptr.restore(item_dir, args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args,
                                                               partial_restore=subtree is not None))
    return out[subtree] if subtree is not None else out


def _step_dir(path: str, step: int) -> str:
    """Resolve a run dir / checkpoints dir / step dir to one step directory."""
    if os.path.isdir(os.path.join(path, "meta")) and os.path.isdir(os.path.join(path, "ema")):
        return path
    root = os.path.join(path, "checkpoints") if ckpt_lib.is_run_checkpoint_dir(os.path.join(path, "checkpoints")) \
        else path
    steps = sorted(int(c) for c in os.listdir(root) if c.isdigit() and os.path.isdir(os.path.join(root, c, "meta")))
    if not steps:
        raise FileNotFoundError(f"no checkpoints under {root}")
    if step >= 0:
        if step not in steps:
            raise FileNotFoundError(f"no checkpoint for step {step} under {root} (have {steps})")
        return os.path.join(root, str(step))
    return os.path.join(root, str(steps[-1]))


def is_run_checkpoint(path: str) -> bool:
    return (ckpt_lib.is_run_checkpoint_dir(path) or ckpt_lib.is_run_checkpoint_dir(os.path.join(path, "checkpoints"))
            or os.path.isdir(os.path.join(path, "meta")))


def load(path: str, step: int = -1) -> Source:
    """Load ``params``/``ema`` from our checkpoint (newest or ``step``) or a converted ml-mdm directory."""
    if is_run_checkpoint(path):
        d = _step_dir(path, step)
        ema = _restore_numpy(os.path.join(d, "ema"))
        params = _restore_numpy(os.path.join(d, "state"), subtree="params")
        return Source(params, ema, f"checkpoint {d}")
    from mdm_jax import convert

    model_config, _, params = convert.load_converted(path)
    logging.info("Loaded converted ml-mdm checkpoint %s (resolution %s)", path, model_config.get("resolution"))
    tree = {"unet": params}
    # ml-mdm releases only EMA weights (vis_model.pth): they seed both the trained and the EMA parameters.
    return Source(tree, tree, f"converted ml-mdm checkpoint {path}")
