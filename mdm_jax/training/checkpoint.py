"""One Orbax CheckpointManager per run: train state, EMA, config (JSON), run metadata (JSON), data iterator.

Saves are asynchronous (training continues while arrays are written) and atomic (Orbax writes into a temporary
directory and renames it when complete, so a run killed mid-save leaves no half checkpoint behind). The newest
``keep`` checkpoints survive, plus the last one of every phase. A checkpoint that exists but cannot be read is
moved aside to ``<dir>_corrupt/`` with a warning naming it, and the previous one is used.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

T = TypeVar("T")
ITEMS = ("state", "ema", "config", "meta", "data")


def _handlers() -> dict[str, Any]:
    # Every item names its handler: Orbax raises (and may hang) on an item without one (stack.md pitfall 7).
    return {
        "state": ocp.StandardCheckpointHandler(),
        "ema": ocp.StandardCheckpointHandler(),
        "config": ocp.JsonCheckpointHandler(),
        "meta": ocp.JsonCheckpointHandler(),
        "data": grain.checkpoint.CheckpointHandler(),
    }


class Checkpointer:
    """Thin policy layer over ``ocp.CheckpointManager`` (save cadence, keep policy, corrupt fallback)."""

    def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True,
                 keep_steps: Iterable[int] = (), read_only: bool = False):
        self.directory = os.path.abspath(directory)
        policies = [ocp.checkpoint_managers.LatestN(max(1, int(keep)))]
        keep_steps = sorted(int(s) for s in keep_steps)
        if keep_steps:
            policies.append(ocp.checkpoint_managers.CustomSteps(keep_steps))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=not read_only,
            create=not read_only,
            read_only=read_only,
        )
        self.manager = ocp.CheckpointManager(self.directory, item_names=ITEMS, item_handlers=_handlers(),
                                             options=options)

    # ---- saving ----------------------------------------------------------------------------------------------
    def save(self, step: int, *, state: Any, ema: Any, config: Mapping[str, Any], meta: Mapping[str, Any],
             data_iterator: Any | None = None) -> bool:
        """Start an (async) save of everything at ``step``; returns False if that step already exists."""
        if step in self.manager.all_steps():
            return False
        items = dict(state=ocp.args.StandardSave(state), ema=ocp.args.StandardSave(ema),
                     config=ocp.args.JsonSave(dict(config)), meta=ocp.args.JsonSave(dict(meta)))
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        return bool(self.manager.save(step, args=ocp.args.Composite(**items), force=True))

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    def reached_preemption(self, step: int) -> bool:
        return bool(self.manager.reached_preemption(step))

    # ---- restoring -------------------------------------------------------------------------------------------
    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def restore_meta(self, step: int) -> dict[str, Any]:
        return dict(self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta)

    def restore(self, step: int, *, abstract_state: Any = None, abstract_ema: Any = None,
                data_iterator: Any | None = None) -> dict[str, Any]:
        """Restore the requested items of ``step`` (state/ema onto the shardings of their abstract targets)."""
        items: dict[str, Any] = {"meta": ocp.args.JsonRestore()}
        if abstract_state is not None:
            items["state"] = ocp.args.StandardRestore(abstract_state)
        if abstract_ema is not None:
            items["ema"] = ocp.args.StandardRestore(abstract_ema)
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        return {k: restored[k] for k in items}

    def restore_latest(self, restore_fn: Callable[[int], T]) -> tuple[int, T] | None:
        """``(step, restore_fn(step))`` for the newest readable checkpoint, or None if there is none.

        A checkpoint that fails to restore is logged, moved aside and skipped for the one before it.
        """
        for step in reversed(self.steps()):
            try:
                return step, restore_fn(step)
            except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is skipped the same way
                path = self.step_dir(step)
                logging.warning("Checkpoint %s (step %d) is unreadable (%s: %s); falling back to the previous "
                                "checkpoint.", path, step, type(e).__name__, str(e).splitlines()[0][:300])
                self._quarantine(step)
        return None

    def _quarantine(self, step: int) -> None:
        if jax.process_index() == 0:
            src = self.step_dir(step)
            dst_root = self.directory.rstrip("/") + "_corrupt"
            os.makedirs(dst_root, exist_ok=True)
            dst = os.path.join(dst_root, f"{step}-{int(time.time())}")
            if os.path.exists(src):
                shutil.move(src, dst)
                logging.warning("Moved unreadable checkpoint %s to %s", src, dst)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"quarantine_checkpoint_{step}")
        self.manager.reload()


def is_run_checkpoint_dir(path: str) -> bool:
    """Whether ``path`` is a CheckpointManager root of ours (holds numbered step dirs with a meta item)."""
    p = epath.Path(path)
    if not p.is_dir():
        return False
    return any(c.name.isdigit() and (c / "meta").exists() for c in p.iterdir())


def read_json_item(step_dir: str, item: str) -> dict[str, Any]:
    """Read a JSON item of a step directory without a manager (for tooling)."""
    files = [f for f in epath.Path(step_dir, item).glob("*") if f.is_file() and not f.name.startswith("_")]
    if not files:
        raise FileNotFoundError(f"no JSON item {item!r} under {step_dir}")
    return json.loads(files[0].read_text())
