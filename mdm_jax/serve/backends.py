"""What the web page samples from: one interface over our training runs and converted ml-mdm checkpoints.

``load_backend(path)`` looks at the folder: a converted checkpoint (``config.json`` + ``params/``, from
``python -m mdm_jax.convert``) becomes a ``Pipeline``; anything else is read as one of our run directories (its
newest checkpoint, EMA weights, the run's own ``config.json`` unless a config file is given).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from mdm_jax import io_paths
from mdm_jax.diffusion import DiffusionSpec
from mdm_jax.diffusion.progressive import sample_progressively
from mdm_jax.diffusion.sampler import uses_guidance


@dataclasses.dataclass
class Backend:
    """A model ready to sample: ``conditioning`` is 'text', 'class' or 'none'."""

    description: str
    conditioning: str
    resolutions: tuple[int, ...]
    channels: int
    diffusion: DiffusionSpec
    model_fn: Any
    make_cond: Callable[[Sequence[Any], bool], dict[str, Any]]  # (prompts or labels, guided) -> cond rows
    class_names: tuple[str, ...] = ()

    def previews(self, conditions: Sequence[Any], *, guidance_weight: float, num_steps: int, method: str,
                 eta: float, threshold: str, seed: int, preview_every: int) -> Iterator[dict[str, Any]]:
        """``sample_progressively`` for one image per entry of ``conditions`` (prompts or class ids)."""
        guided = uses_guidance(guidance_weight) and self.conditioning != "none"
        cond = self.make_cond(list(conditions), guided)
        top = self.resolutions[0]
        return sample_progressively(
            self.model_fn, self.diffusion, cond, shape=(len(conditions), top, top, self.channels),
            rng=jax.random.key(int(seed)), num_steps=int(num_steps), method=method, eta=float(eta),
            guidance_weight=float(guidance_weight) if guided else None, threshold_kind=threshold,
            preview_every=preview_every)


def is_converted(path: str) -> bool:
    cfg = io_paths.join(path, "config.json")
    if not (io_paths.isfile(cfg) and io_paths.isdir(io_paths.join(path, "params"))):
        return False
    return "format" in json.loads(io_paths.read_text(cfg))


def converted_backend(path: str, t5_dir: str | None = None, tokenizer_path: str = "") -> Backend:
    from mdm_jax.pipeline import Pipeline

    pipe = Pipeline.from_converted(path, t5_dir=t5_dir, tokenizer_path=tokenizer_path)
    spec = pipe.spec
    num_classes = spec.innermost.num_classes
    kind = "text" if spec.uses_text else ("class" if num_classes else "none")

    def make_cond(conditions: Sequence[Any], guided: bool) -> dict[str, Any]:
        n = len(conditions)
        return pipe.conditioning(n, conditions if kind == "text" else None,
                                 conditions if kind == "class" else None, "", guided)

    return Backend(f"converted checkpoint {path}", kind, tuple(spec.resolutions), spec.input_channels,
                   pipe.diffusion, jax.tree_util.Partial(pipe._apply_fn, pipe.params), make_cond,
                   tuple(str(i) for i in range(num_classes)))


def run_config(path: str, config: str | None = None) -> ml_collections.ConfigDict:
    """A run's config: the given config file (``configs/x.py[:arg]``) or the run's own ``config.json``."""
    from mdm_jax.training import config_lib

    if config:
        return config_lib.load(config)
    saved = io_paths.join(path, "config.json")
    if not io_paths.isfile(saved):
        raise FileNotFoundError(f"{path}: no config.json (not a run directory of ours nor a converted checkpoint); "
                                f"pass --config=configs/<the run's config>.py")
    raw = json.loads(io_paths.read_text(saved))
    phases = raw.pop("phases", [])
    cfg = ml_collections.ConfigDict(raw)
    cfg.phases = [ml_collections.ConfigDict(p, type_safe=False) for p in phases]  # JSON lists hold plain dicts
    return cfg


def run_backend(path: str, config: str | None = None) -> Backend:
    from mdm_jax.training import sampling
    from mdm_jax.training.sample_mode import load_run

    run = load_run(run_config(path, config), path)
    info = run.info
    kind = info.conditioning

    def make_cond(conditions: Sequence[Any], guided: bool) -> dict[str, Any]:
        key = "prompts" if kind == "text" else "labels"
        cond, _ = sampling.conditioning(info, {key: tuple(conditions)}, len(conditions), run.batch, guided)
        return cond

    spec = run.phase.spec
    return Backend(f"run {path}, step {run.step} ({run.phase.describe()})", kind, tuple(spec.resolutions),
                   spec.levels[0].output_channels, run.phase.diffusion, run.model_fn(), make_cond,
                   tuple(info.class_names or ()))


def load_backend(path: str, config: str | None = None, t5_dir: str | None = None,
                 tokenizer_path: str = "") -> Backend:
    if not io_paths.isdir(path):
        raise FileNotFoundError(f"--workdir {path!r} does not exist")
    if is_converted(path):
        return converted_backend(path, t5_dir, tokenizer_path)
    return run_backend(path, config)


def to_uint8(x: np.ndarray) -> np.ndarray:
    """[-1, 1] float -> uint8 (ml-mdm's demo conversion)."""
    return (np.clip(np.asarray(x) * 0.5 + 0.5, 0.0, 1.0) * 255).astype(np.uint8)
