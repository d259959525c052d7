"""What a run tells its user: metric writers, the progress line, the NaN guard, images on disk.

clu's ``metric_writers`` and ``periodic_actions`` import TensorFlow, so the writers here are tensorboardX plus
absl logging (stack.md pitfall 4); ``clu.parameter_overview`` is TF-free and used as is. Only process 0 writes.
"""

from __future__ import annotations

import io
import json
import logging as pylogging
import math
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from absl import logging
from PIL import Image

from mdm_jax import io_paths


class MetricWriter:
    """Scalars to TensorBoard (tensorboardX) and the log; images to TensorBoard. No-op off process 0.

    A URL logdir (``gs://...``) is written locally and its event files copied to the store every
    ``sync_secs`` and on flush/close (one whole-object upload each): tensorboardX's own gs:// writer re-uploads
    on garbage collection too and blocks for minutes when the store is gone.
    """

    def __init__(self, logdir: str, enabled: bool | None = None, sync_secs: float = 60.0):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._tb = None
        self._remote = logdir if io_paths.is_url(logdir) else None
        self._local = None
        self._sync_secs, self._synced = sync_secs, time.monotonic()
        if self.enabled:
            from tensorboardX import SummaryWriter

            if self._remote:
                self._local = tempfile.TemporaryDirectory(prefix="mdm_tensorboard_")
                logdir = self._local.name
            os.makedirs(logdir, exist_ok=True)
            self._tb = SummaryWriter(logdir, flush_secs=30)

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        if self._tb is None:
            return
        for k, v in values.items():
            self._tb.add_scalar(k, float(v), int(step))
        if self._remote and time.monotonic() - self._synced > self._sync_secs:
            self.flush()

    def image(self, step: int, tag: str, image: np.ndarray) -> None:
        if self._tb is not None:
            self._tb.add_image(tag, np.asarray(image), int(step), dataformats="HWC")

    def text(self, step: int, tag: str, text: str) -> None:
        if self._tb is not None:
            self._tb.add_text(tag, text, int(step))

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()
            self._sync()

    def _sync(self) -> None:
        if not self._remote or self._local is None:
            return
        self._synced = time.monotonic()
        for root, _, files in os.walk(self._local.name):
            for name in files:
                local = os.path.join(root, name)
                rel = os.path.relpath(local, self._local.name)
                try:
                    with open(local, "rb") as f:
                        io_paths.write_bytes(io_paths.join(self._remote, rel), f.read())
                except Exception as e:  # noqa: BLE001 - logs are a by-product; the next sync retries
                    logging.warning("Could not copy TensorBoard file %s to %s: %s", rel, self._remote, e)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._sync()
            self._tb = None
        if self._local is not None:
            self._local.cleanup()
            self._local = None


class Progress:
    """Steps/s (of the current phase) and ETA over training time only: compile, checkpoint and sampling time are
    excluded; the ETA assumes the remaining steps run at the current phase's speed.

    Call ``start_step()`` / ``end_step()`` around each step; the first step after ``reset_rate()`` (which
    includes compilation) is not counted.
    """

    def __init__(self, total_steps: int, start_step: int):
        self.total_steps = total_steps
        self._t0 = None
        self._steps = 0
        self._seconds = 0.0
        self._skip_next = True
        self.start_step = start_step

    def reset_rate(self) -> None:
        """A new phase: its steps cost differently, and its first step (compilation) is again not timed."""
        self._skip_next = True
        self._t0 = None
        self._steps = 0
        self._seconds = 0.0

    def pause(self) -> None:
        """Stop the clock (before sampling, checkpointing, ...)."""
        if self._t0 is not None:
            self._seconds += time.perf_counter() - self._t0
            self._t0 = None

    def resume(self) -> None:
        if self._t0 is None:
            self._t0 = time.perf_counter()

    def step_done(self) -> None:
        """Count one finished step (its metrics have been fetched, so it really ran)."""
        now = time.perf_counter()
        if self._skip_next:
            self._skip_next = False
            self._t0 = now
            return
        if self._t0 is not None:
            self._seconds += now - self._t0
        self._t0 = now
        self._steps += 1

    @property
    def steps_per_sec(self) -> float:
        return self._steps / self._seconds if self._seconds > 0 else float("nan")

    def eta_seconds(self, step: int) -> float:
        rate = self.steps_per_sec
        return (self.total_steps - step) / rate if rate and rate == rate else float("nan")


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def progress_line(step: int, total: int, phase_name: str, metrics: Mapping[str, float], progress: Progress,
                  resolutions: Sequence[int]) -> str:
    levels = " ".join(f"{r}px={metrics[f'mse/level{i}']:.4f}" for i, r in enumerate(resolutions)
                      if f"mse/level{i}" in metrics)
    return (f"[{phase_name}] step {step}/{total} loss={metrics['loss']:.4f} ({levels}) "
            f"grad_norm={metrics.get('grad_norm', float('nan')):.3f} lr={metrics.get('learning_rate', 0.0):.2e} | "
            f"{progress.steps_per_sec:.2f} steps/s, ETA {format_duration(progress.eta_seconds(step))}")


class NonFiniteLossError(FloatingPointError):
    """Raised when a step's loss is NaN or inf; names the step and the level(s)."""


def check_finite(step: int | str, metrics: Mapping[str, Any], resolutions: Sequence[int]) -> None:
    """Stop the run at a non-finite loss, saying at which step (or window of steps, e.g. '5-8', when metrics
    are summed between host pulls) and which resolution level broke."""
    loss = float(metrics["loss"])
    if math.isfinite(loss):
        return
    bad = []
    for i, r in enumerate(resolutions):
        v = metrics.get(f"mse/level{i}")
        if v is not None and not math.isfinite(float(v)):
            bad.append(f"level {i} ({r}x{r}) mse={float(v)}")
    where = "; ".join(bad) if bad else "no single level is non-finite (the weighted sum overflowed)"
    gn = metrics.get("grad_norm")
    raise NonFiniteLossError(f"non-finite loss {loss} at step {step}: {where}"
                             + (f"; grad_norm={float(gn)}" if gn is not None else ""))


def report_score(lines: Sequence[str], writer: Any, step: int, scalars: Mapping[str, float], json_path: str,
                 payload: Mapping[str, Any]) -> None:
    """A score computed during a run: each line printed and logged, ``scalars`` to TensorBoard (when a writer is
    given), ``payload`` as JSON at ``json_path`` (process 0 only)."""
    for line in lines:
        logging.info("%s", line)
        print(line, flush=True)
    if writer is not None and scalars:
        writer.scalars(step, dict(scalars))
    if jax.process_index() == 0:
        io_paths.write_text(json_path, json.dumps(dict(payload), indent=1))


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Model scale (x - 127) / 128 (ml-mdm) -> uint8."""
    return np.clip(np.round(np.asarray(x, np.float32) * 128.0 + 127.0), 0, 255).astype(np.uint8)


def image_grid(images: np.ndarray, cols: int | None = None, pad: int = 2) -> np.ndarray:
    """(N, H, W, C) uint8 -> one (rows*H, cols*W, C) uint8 grid with white gutters."""
    n, h, w, c = images.shape
    cols = cols or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, np.uint8)
    for i, img in enumerate(images):
        r, q = divmod(i, cols)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = img
    return grid


def save_png(path: str, image: np.ndarray) -> None:
    """Write a PNG whole (atomically: a rename locally, one object upload on a store)."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image)).save(buf, format="PNG")
    io_paths.write_bytes(path, buf.getvalue())


def parameter_overview(params: Any) -> str:
    """clu's parameter table (names, shapes, sizes, mean/std) computed on the host."""
    from clu import parameter_overview as po

    return po.get_parameter_overview(params, include_stats=False)


class _DropLibraryInfo(pylogging.Filter):
    """Orbax and grain log every save/restore detail at INFO through absl; keep their warnings only."""

    def filter(self, record: pylogging.LogRecord) -> bool:
        path = record.pathname.replace("\\", "/")
        return record.levelno >= pylogging.WARNING or not any(p in path for p in ("/orbax/", "/grain/"))


_FILTER = _DropLibraryInfo()


def quiet_library_logs(quiet: bool = True) -> None:
    """Install (or remove) the filter on absl's logger; idempotent."""
    logger = logging.get_absl_logger()
    logger.removeFilter(_FILTER)
    if quiet:
        logger.addFilter(_FILTER)
