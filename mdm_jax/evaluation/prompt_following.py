r"""Prompt-following of a text model trained on the procedural shapes, scored by the exact detector.

At the end of every phase, or of the last one only with ``sample.prompt_score_phases='last'`` (when
``config.sample.prompt_score_images > 0`` and the data are procedural shapes
with text conditioning) the trainer samples that many images over all 120 captions, scores every resolution
level with ``shapes_score``, prints the result, logs it to TensorBoard (``prompt_following/<res>px/...``) and
writes ``prompt_score_step_<n>_<weights>.json`` next to the sample grids. On a checkpoint:

  python -m mdm_jax.evaluation.prompt_following --config=configs/demo.py --workdir=/tmp/mdm_demo \
      [--config.sample.guidance_weight=4] [--config.sample.use_ema=False]
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np

from mdm_jax import io_paths
from mdm_jax.evaluation import shapes_score
from mdm_jax.training import reporting


def applies(config: ml_collections.ConfigDict, info: Any, phase_index: int = -1, num_phases: int = 0) -> bool:
    """Whether this run can be scored: procedural shapes, text conditioning, ``prompt_score_images`` > 0, and
    (``sample.prompt_score_phases='last'``) the phase is the last one; 'all' (default) scores every phase."""
    which = str(config.sample.get("prompt_score_phases", "all") or "all")
    if which not in ("all", "last"):
        raise ValueError(f"sample.prompt_score_phases: expected 'all' or 'last', got {which!r}")
    if which == "last" and 0 <= phase_index < num_phases - 1:
        return False
    return (int(config.sample.get("prompt_score_images", 0) or 0) > 0
            and config.data.get("name") == "procedural_shapes" and getattr(info, "conditioning", "") == "text")


def sample_and_score(model: Any, phase: Any, params: Any, info: Any, cfg: ml_collections.ConfigDict,
                     frozen: Any = None) -> dict[int, shapes_score.Score]:
    """``cfg.prompt_score_images`` samples over every caption, in chunks of ``cfg.num_images`` (the grids'
    compiled sampler shape); returns a score per resolution level."""
    from mdm_jax.training import sampling

    total, chunk = int(cfg.prompt_score_images), max(1, int(cfg.num_images))
    prompts = shapes_score.all_prompts()
    prompts = [prompts[i % len(prompts)] for i in range(total)]
    per_level: list[list[np.ndarray]] = []
    seed = int(cfg.get("seed", 0))
    for start in range(0, total, chunk):
        sub = ml_collections.ConfigDict(cfg.to_dict())
        sub.prompts = tuple(prompts[start:start + chunk] + prompts[:max(0, start + chunk - total)])
        levels, _ = sampling.generate(model, phase, params, info, sub,
                                      jax.random.fold_in(jax.random.key(seed), 1 + start), None, frozen=frozen)
        for i, img in enumerate(levels):
            if len(per_level) <= i:
                per_level.append([])
            per_level[i].append(img[:min(chunk, total - start)])
    return {res: shapes_score.score(np.concatenate(imgs), prompts)
            for res, imgs in zip(phase.spec.resolutions, per_level, strict=True)}


def score_and_report(model: Any, phase: Any, params: Any, info: Any, cfg: ml_collections.ConfigDict, step: int,
                     weights: str, writer: Any, out_dir: str, frozen: Any = None) -> dict[int, shapes_score.Score]:
    """Scores, prints, logs to TensorBoard and writes the JSON (process 0 writes)."""
    scores = sample_and_score(model, phase, params, info, cfg, frozen)
    head = (f"[{phase.name}] step {step}, {weights} weights, guidance {cfg.guidance_weight}, "
            f"{cfg.num_steps} {cfg.method} steps")
    reporting.report_score(
        [f"{head}, {res}px: {s.summary()}" for res, s in scores.items()], writer, step,
        {f"prompt_following/{res}px/{k}": v for res, s in scores.items() for k, v in vars(s).items() if k != "n"},
        io_paths.join(out_dir, f"prompt_score_step_{step:08d}_{weights}.json"),
        dict(step=step, weights=weights, guidance_weight=float(cfg.guidance_weight), num_steps=int(cfg.num_steps),
             method=str(cfg.method), levels={res: dict(vars(s)) for res, s in scores.items()}))
    return scores


def main(argv: list[str]) -> None:
    del argv
    from mdm_jax.training import sample_mode, sampling

    reporting.quiet_library_logs()
    config = _CONFIG.value
    if not int(config.sample.get("prompt_score_images", 0) or 0):
        config.unlock()
        config.sample.prompt_score_images = 128
    use_ema = bool(config.sample.get("use_ema", True))
    run = sample_mode.load_run(config, config.sample.get("checkpoint") or _WORKDIR.value,
                               int(config.sample.get("step", -1)), use_ema)
    out_dir = config.sample.get("output_dir") or io_paths.join(io_paths.resolve(_WORKDIR.value), "samples",
                                                                "prompt_score")
    score_and_report(run.model, run.phase, run.params, run.info, config.sample, run.step,
                     sampling.weights_name(use_ema), None, out_dir, frozen=run.frozen)


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    _CONFIG = config_flags.DEFINE_config_file("config", None, "The run's config file.", lock_config=False)
    _WORKDIR = flags.DEFINE_string("workdir", None, "The run's directory (its latest checkpoint is scored).")
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
