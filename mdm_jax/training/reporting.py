"""What a run tells its user: metric writers, the progress line, the NaN guard, images on disk.

clu's ``metric_writers`` and ``periodic_actions`` import TensorFlow, so the writers here are tensorboardX plus
absl logging (stack.md pitfall 4); ``clu.parameter_overview`` is TF-free and used as is. Only process 0 writes.
"""

from __future__ import annotations

import logging as pylogging
import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from absl import logging
from PIL import Image


class MetricWriter:
    """Scalars to TensorBoard (tensorboardX) and the log; images to TensorBoard. No-op off process 0."""

    def __init__(self, logdir: str, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._tb = None
        if self.enabled:
            from tensorboardX import SummaryWriter

            os.makedirs(logdir, exist_ok=True)
            self._tb = SummaryWriter(logdir, flush_secs=30)

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        if self._tb is None:
            return
        for k, v in values.items():
            self._tb.add_scalar(k, float(v), int(step))

    def image(self, step: int, tag: str, image: np.ndarray) -> None:
        if self._tb is not None:
            self._tb.add_image(tag, np.asarray(image), int(step), dataformats="HWC")

    def text(self, step: int, tag: str, text: str) -> None:
        if self._tb is not None:
            self._tb.add_text(tag, text, int(step))

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


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
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp.png"
    Image.fromarray(np.asarray(image)).save(tmp)
    os.replace(tmp, path)


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
