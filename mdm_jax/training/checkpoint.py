"""One Orbax CheckpointManager per run: train state, EMA, config (JSON), run metadata (JSON), data iterator.

Saves are asynchronous (training continues while arrays are written) and atomic (Orbax writes into a temporary
directory and renames it when complete, or marks it complete on object stores, so a run killed mid-save leaves no
half checkpoint behind). The newest ``keep`` checkpoints survive, plus the last one of every phase. The directory
may be local or a URL (``gs://bucket/run/checkpoints``): every file goes through epath/tensorstore.

Resuming never discards work by accident: a checkpoint is moved aside to ``<dir>_corrupt/`` only when its own
files cannot be read (a missing item, truncated or garbled arrays or JSON), judged by reading those files without
the config. Any other failure (a wrong data_dir, a missing text encoder, renamed phases, out of memory, a changed
model) stops the run with ``ResumeError`` and leaves every checkpoint in place; transient I/O errors are retried
a few times first. Process 0 makes the file checks and broadcasts the verdict, so all hosts act alike.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from mdm_jax import io_paths

T = TypeVar("T")
ITEMS = ("state", "ema", "config", "meta", "data")
REQUIRED_ITEMS = ("meta", "config", "state", "ema")  # "data" may be absent (phase-final checkpoints of older runs)
READ_ATTEMPTS = 3  # tries of each read that fails with a transient I/O error
RETRY_BACKOFF_S = 1.0  # seconds before the first retry; doubles after each


class ResumeError(RuntimeError):
    """Resuming failed for a reason other than the checkpoint's own files; no checkpoint was moved."""


# Status codes of tensorstore/gRPC/HTTP errors that a retry may cure.
_TRANSIENT_MARKERS = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED:", "Connection reset", "Connection refused",
                      "Temporary failure", "Service Unavailable", "Too Many Requests")


def is_transient(e: BaseException) -> bool:
    """Whether ``e`` looks like a passing I/O failure (network, server, EIO) rather than a missing/bad file."""
    if isinstance(e, (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)):
        return False
    if isinstance(e, (OSError, TimeoutError, ConnectionError)):
        return True
    return any(m in str(e) for m in _TRANSIENT_MARKERS)


def retrying(fn: Callable[[], T], what: str) -> T:
    """``fn()``, retried up to ``READ_ATTEMPTS`` times (exponential backoff) while it fails transiently."""
    for attempt in range(1, READ_ATTEMPTS + 1):
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - re-raised unless transient
            if attempt == READ_ATTEMPTS or not is_transient(e):
                raise
            delay = RETRY_BACKOFF_S * 2 ** (attempt - 1)
            logging.warning("Transient error reading %s (%s: %s); retry %d/%d in %.1fs", what, type(e).__name__,
                            _first_line(e), attempt, READ_ATTEMPTS - 1, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else "")[:300]


def read_numpy(item_dir: str, subtree: str | None = None) -> Any:
    """Read (a top-level subtree of) a PyTree item as numpy arrays, whatever devices or topology wrote it."""
    handler = ocp.PyTreeCheckpointHandler()
    try:
        tree = _tree_metadata(handler, item_dir)
        if subtree is not None:
            tree = {subtree: tree[subtree]}
        target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), tree)
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
        out = handler.restore(epath.Path(item_dir), args=ocp.args.PyTreeRestore(
            item=target, restore_args=restore_args, partial_restore=subtree is not None))
    finally:
        handler.close()
    return out[subtree] if subtree is not None else out


def _tree_metadata(handler: Any, item_dir: str) -> Any:
    meta = handler.metadata(epath.Path(item_dir))
    tree = getattr(meta, "item_metadata", meta)
    return getattr(tree, "tree", tree)


def read_tree_metadata(item_dir: str) -> Any:
    """The shapes/dtypes tree of a PyTree item (reads only its metadata files)."""
    handler = ocp.PyTreeCheckpointHandler()
    try:
        return _tree_metadata(handler, item_dir)
    finally:
        handler.close()


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
        self.directory = io_paths.resolve(directory)
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
        return io_paths.join(self.directory, str(step))

    def has_data(self, step: int) -> bool:
        """Whether ``step`` saved the data iterator (phase-final checkpoints of older runs did not)."""
        return retrying(lambda: io_paths.isdir(io_paths.join(self.step_dir(step), "data")),
                        f"{self.step_dir(step)}/data")

    def restore_meta(self, step: int) -> dict[str, Any]:
        return retrying(lambda: dict(self.manager.restore(
            step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta), f"{self.step_dir(step)}/meta")

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
        restored = retrying(lambda: self.manager.restore(step, args=ocp.args.Composite(**items)),
                            self.step_dir(step))
        return {k: restored[k] for k in items}

    def restore_latest(self, restore_fn: Callable[[int], T]) -> tuple[int, T] | None:
        """``(step, restore_fn(step))`` for the newest readable checkpoint, or None if there is none.

        Before ``restore_fn`` runs, the checkpoint's items and metadata are checked; if ``restore_fn`` fails,
        every array is read as well. Only a checkpoint whose own files fail these checks is moved aside (with a
        warning) for the one before it; any other failure raises ``ResumeError`` and moves nothing.
        """
        for step in reversed(self.steps()):
            problem = self._verdict(step, deep=False)
            if problem is None:
                failure: BaseException | None = None
                try:
                    result = restore_fn(step)
                except Exception as e:  # noqa: BLE001 - judged below by the checkpoint's own files
                    failure = e
                failed_on = _hosts_with(failure is not None)
                if not failed_on:
                    return step, result
                problem = self._verdict(step, deep=True)
                if problem is None:
                    raise ResumeError(self._resume_message(step, failure, failed_on)) from failure
            logging.warning("Checkpoint %s (step %d) is unreadable (%s); moving it to %s_corrupt/ and falling back "
                            "to the previous checkpoint.", self.step_dir(step), step, problem, self.directory)
            self._quarantine(step)
        return None

    def _resume_message(self, step: int, failure: BaseException | None, failed_on: list[int]) -> str:
        if failure is not None:
            cause = f"{type(failure).__name__}: {_first_line(failure)}"
        else:
            cause = f"restoring failed on process(es) {failed_on} (see their logs)"
        return (f"Cannot resume from checkpoint {self.step_dir(step)} (step {step}): {cause}. The checkpoint's own "
                f"files are readable, so it and every other checkpoint were left in place; fix the cause "
                f"(config, data or model paths, memory, storage access) and restart.")

    def _verdict(self, step: int, *, deep: bool) -> str | None:
        """Process 0 checks the checkpoint's own files; every process gets the same verdict.

        Returns None (readable) or what is wrong with the files; raises ResumeError when they could not be read
        for a reason that says nothing about them (I/O errors after retries, permissions, memory).
        """
        code, problem, error = 0, None, None
        if jax.process_index() == 0:
            try:
                problem = self.check_files(step, deep=deep)
            except Exception as e:  # noqa: BLE001 - reported to every host below
                error = e
            code = 2 if error is not None else int(problem is not None)
        if jax.process_count() > 1:
            code = int(multihost_utils.broadcast_one_to_all(np.int32(code)))
        if code == 2:
            cause = f"{type(error).__name__}: {_first_line(error)}" if error is not None else "see process 0's log"
            raise ResumeError(f"Cannot read checkpoint {self.step_dir(step)} (step {step}): {cause}. This is not "
                              "a sign of a damaged checkpoint, so nothing was moved; check storage access and "
                              "restart.") from error
        if code == 1:
            return problem or "process 0 found its files unreadable (see its log)"
        return None

    def check_files(self, step: int, *, deep: bool = False) -> str | None:
        """What is wrong with step ``step``'s own files (None if nothing), independent of any config.

        Shallow: every required item is there, the JSON items parse, meta names this step, the array items'
        metadata reads. Deep: also every array of state and EMA reads. Transient I/O errors are retried, then
        raised (as are permission and memory errors): they are not the checkpoint's fault.
        """
        d = self.step_dir(step)
        for item in REQUIRED_ITEMS:
            if not retrying(lambda item=item: io_paths.isdir(io_paths.join(d, item)), f"{d}/{item}"):
                return f"item '{item}' is missing"
        checks: list[tuple[str, Callable[[], Any]]] = [
            ("meta", lambda: read_json_item(d, "meta")), ("config", lambda: read_json_item(d, "config"))]
        if retrying(lambda: io_paths.isdir(io_paths.join(d, "data")), f"{d}/data"):
            checks.append(("data", lambda: [json.loads(f.read_text())
                                            for f in epath.Path(d, "data").glob("process_*.json")]))
        for item in ("state", "ema"):
            checks.append((item, lambda item=item: read_tree_metadata(io_paths.join(d, item))))
            if deep:
                checks.append((item, lambda item=item: read_numpy(io_paths.join(d, item))))
        for item, check in checks:
            try:
                out = retrying(check, f"{d}/{item}")
            except (PermissionError, MemoryError):
                raise
            except Exception as e:  # noqa: BLE001 - transient errors were retried; the rest are the files' fault
                if is_transient(e):
                    raise
                return f"item '{item}': {type(e).__name__}: {_first_line(e)}"
            if item == "meta" and int(out.get("step", step)) != step:
                return f"its meta item says step {out.get('step')}"
        return None

    def _quarantine(self, step: int) -> None:
        if jax.process_index() == 0:
            src = self.step_dir(step)
            dst = io_paths.join(self.directory + "_corrupt", f"{step}-{int(time.time())}")
            if io_paths.exists(src):
                io_paths.move(src, dst)
                logging.warning("Moved unreadable checkpoint %s to %s", src, dst)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"quarantine_checkpoint_{step}")
        self.manager.reload()


def _hosts_with(flag: bool) -> list[int]:
    """The processes on which ``flag`` is true (every process gets the same list)."""
    if jax.process_count() == 1:
        return [0] if flag else []
    flags = np.asarray(multihost_utils.process_allgather(np.int32(flag))).reshape(-1)
    return [int(i) for i in np.flatnonzero(flags)]


def is_run_checkpoint_dir(path: str) -> bool:
    """Whether ``path`` is a CheckpointManager root of ours (holds numbered step dirs with a meta item)."""
    p = epath.Path(path)
    if not p.is_dir():
        return False
    return any(c.name.isdigit() and (c / "meta").exists() for c in p.iterdir())


def read_json_item(step_dir: str, item: str) -> dict[str, Any]:
    """Read a JSON item of a step directory without a manager (for tooling and file checks)."""
    d = epath.Path(step_dir, item)
    files = [d / "metadata"] if (d / "metadata").is_file() else [
        f for f in d.glob("*") if f.is_file() and not f.name.startswith("_") and f.name != "commit_success.txt"]
    if not files:
        raise FileNotFoundError(f"no JSON item {item!r} under {step_dir}")
    return json.loads(files[0].read_text())
