"""Sample grids from a phase's model (EMA weights by default), one PNG per resolution level.

Used at an interval during training and by ``--mode=sample`` (``sample_mode.py``). Conditioning comes from the
config (prompts or labels) or, failing that, from a validation batch (its captions / labels / precomputed text
features), and classifier-free guidance stacks the unconditional rows first, as the sampler expects.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from mdm_jax import io_paths
from mdm_jax.diffusion import sampler
from mdm_jax.text import tokenizers as tok_lib
from mdm_jax.training import reporting
from mdm_jax.training.model_fn import Model
from mdm_jax.training.phases import Phase


def conditioning(info: Any, cfg: ml_collections.ConfigDict, num: int, batch: Mapping[str, Any] | None,
                 use_cfg: bool) -> tuple[dict[str, np.ndarray], list[str]]:
    """(cond arrays with [uncond; cond] rows when ``use_cfg``, one caption per image for the log)."""
    kind = getattr(info, "conditioning", "none")
    if kind == "class":
        labels = list(cfg.get("labels") or [])
        if not labels and batch is not None and "labels" in batch:
            labels = [int(v) for v in np.asarray(batch["labels"])[:num]]
        if len(labels) < num:
            labels = (labels + list(range(num)))[:num] if labels else [i % info.num_classes for i in range(num)]
        labels = np.asarray(labels[:num], np.int32)
        names = [info.class_names[i] if info.class_names and i < len(info.class_names) else str(i) for i in labels]
        cond = {"labels": labels}
        if use_cfg:
            cond = sampler.stack_guidance_rows(cond, {"labels": np.full((num,), info.null_label, np.int32)})
        return cond, names
    if kind == "text":
        prompts = list(cfg.get("prompts") or [])
        if info.tokenizer is not None:
            if not prompts and batch is not None and "captions" in batch:
                prompts = [str(c) for c in batch["captions"]][:num]
            if not prompts:
                raise ValueError("sample.prompts is empty and no validation captions are available")
            prompts = [prompts[i % len(prompts)] for i in range(num)]
            negative = str(cfg.get("negative_prompt") or info.null_caption)
            tokens, mask = tok_lib.tokenize_batch(info.tokenizer, prompts, info.max_length)
            cond = {"tokens": tokens, "lm_mask": mask}
            if use_cfg:
                tokens, mask = tok_lib.tokenize_batch(info.tokenizer, [negative] * num, info.max_length)
                cond = sampler.stack_guidance_rows(cond, {"tokens": tokens, "lm_mask": mask})
            return cond, prompts
        if batch is None or "lm_outputs" not in batch:
            raise ValueError("precomputed text features: sampling needs a validation batch with lm_outputs")
        feats, mask = np.asarray(batch["lm_outputs"])[:num], np.asarray(batch["lm_mask"])[:num]
        caps = [str(c) for c in batch.get("captions", [""] * num)][:num]
        if use_cfg:  # the null caption's features are what dropped captions were trained with
            null = getattr(info, "null_embedding", None)
            uf = np.zeros_like(feats)
            um = np.zeros_like(mask)
            if null is not None:
                n = min(len(null), feats.shape[1])
                uf[:, :n] = np.asarray(null)[:n]
                um[:, :n] = 1.0
            return sampler.stack_guidance_rows({"lm_outputs": feats, "lm_mask": mask},
                                               {"lm_outputs": uf, "lm_mask": um}), caps
        return {"lm_outputs": feats, "lm_mask": mask}, caps
    return {}, [""] * num


def generate(model: Model, phase: Phase, params: Any, info: Any, cfg: ml_collections.ConfigDict, rng: jax.Array,
             batch: Mapping[str, Any] | None = None, frozen: Any = None) -> tuple[list[np.ndarray], list[str]]:
    """Sample ``cfg.num_images`` images; returns (uint8 NHWC per level high -> low, captions)."""
    num = int(cfg.num_images)
    gw = cfg.get("guidance_weight")
    use_cfg = sampler.uses_guidance(gw) and getattr(info, "conditioning", "none") != "none"
    cond, captions = conditioning(info, cfg, num, batch, use_cfg)
    q, m = float(cfg.get("threshold_quantile", -1)), float(cfg.get("threshold_max", -1))
    top = phase.spec.levels[0]
    out = sampler.sample(
        jax.tree_util.Partial(model.apply, model.sampling_params(params), frozen=frozen or None), phase.diffusion, cond,
        shape=(num, top.resolution, top.resolution, top.output_channels), rng=rng,
        num_steps=int(cfg.num_steps), method=str(cfg.method), eta=float(cfg.eta),
        guidance_weight=float(gw) if use_cfg else None, threshold_kind=str(cfg.threshold),
        threshold_quantile=q if q >= 0 else None, threshold_max=m if m >= 0 else None, debug=bool(cfg.debug))
    levels = [reporting.to_uint8(np.clip(np.asarray(jax.device_get(x)), -1.0, 1.0)) for x in out["levels"]]
    return levels, captions


def write_grids(levels: list[np.ndarray], captions: list[str], resolutions: tuple[int, ...], out_dir: str,
                step: int, writer: reporting.MetricWriter | None = None,
                tiles: tuple[int, ...] | None = None, weights: str = "ema") -> list[str]:
    """One PNG grid per resolution (+ the captions), named ``step_<n>_<weights>_<res>px.png`` with ``weights``
    'ema' or 'raw'; returns the paths written (process 0 only).

    Video models (``tiles``: mosaic tiles per side of each level, ``UNetSpec.level_tiles``) also get an animated
    GIF and an MP4 per level: a grid of all clips playing together; single-frame levels (the first frame) are
    shown as stills of the same length.
    """
    if jax.process_index() != 0:
        return []
    paths = []
    num_frames = max(t * t for t in tiles) if tiles else 1
    for i, (img, res) in enumerate(zip(levels, resolutions, strict=True)):
        grid = reporting.image_grid(img)
        path = io_paths.join(out_dir, f"step_{step:08d}_{weights}_{res}px.png")
        reporting.save_png(path, grid)
        paths.append(path)
        if num_frames > 1:
            stem = io_paths.join(out_dir, f"step_{step:08d}_{weights}_{res}px")
            paths += _write_video_grid(img, tiles[i], num_frames, stem)
        if writer is not None:
            writer.image(step, f"samples/{weights}/{res}px", grid)
    io_paths.write_text(io_paths.join(out_dir, f"step_{step:08d}_{weights}_captions.txt"),
                        f"# {weights} weights, step {step}\n" + "\n".join(captions) + "\n")
    logging.info("Wrote sample grids from the %s weights: %s", weights, ", ".join(paths))
    return paths


def _write_video_grid(clips: np.ndarray, tiles: int, num_frames: int, stem: str) -> list[str]:
    """(N, n*h, n*w, 3) mosaics -> GIF + MP4 of the grid of clips over time (stills repeated)."""
    from mdm_jax import video_io

    frames = np.stack([video_io.mosaic_frames(c, tiles) for c in clips], axis=1)  # (F, N, h, w, 3)
    if frames.shape[0] < num_frames:
        frames = np.repeat(frames, num_frames // frames.shape[0], axis=0)
    grids = np.stack([reporting.image_grid(f) for f in frames])
    scale = max(1, 128 // grids.shape[1])
    out = [str(video_io.write_gif(grids, stem + ".gif", fps=4, scale=scale))]
    try:
        out.append(str(video_io.write_mp4(grids, stem + ".mp4", fps=4, scale=scale)))
    except ImportError:
        logging.warning("PyAV (pip install av) is not installed: wrote %s.gif only", stem)
    return out


def weights_name(use_ema: bool) -> str:
    """'ema' or 'raw': named in the log, the grid file names and the captions file, so a grid says its weights."""
    return "ema" if use_ema else "raw"
