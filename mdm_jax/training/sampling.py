"""Sample grids from a phase's model (EMA weights by default), one PNG per resolution level.

Used at an interval during training and by ``--mode=sample``. Conditioning comes from the config (prompts or
labels) or, failing that, from a validation batch (its captions / labels / precomputed text features), and
classifier-free guidance stacks the unconditional rows first, as the sampler expects.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

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
        if use_cfg:
            labels = np.concatenate([np.full((num,), info.null_label, np.int32), labels])
        return {"labels": labels}, names
    if kind == "text":
        prompts = list(cfg.get("prompts") or [])
        if info.tokenizer is not None:
            if not prompts and batch is not None and "captions" in batch:
                prompts = [str(c) for c in batch["captions"]][:num]
            if not prompts:
                raise ValueError("sample.prompts is empty and no validation captions are available")
            prompts = [prompts[i % len(prompts)] for i in range(num)]
            negative = str(cfg.get("negative_prompt") or info.null_caption)
            texts = ([negative] * num if use_cfg else []) + prompts
            tokens, mask = tok_lib.tokenize_batch(info.tokenizer, texts, info.max_length)
            return {"tokens": tokens, "lm_mask": mask}, prompts
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
            feats, mask = np.concatenate([uf, feats]), np.concatenate([um, mask])
        return {"lm_outputs": feats, "lm_mask": mask}, caps
    return {}, [""] * num


def generate(model: Model, phase: Phase, params: Any, info: Any, cfg: ml_collections.ConfigDict, rng: jax.Array,
             batch: Mapping[str, Any] | None = None, frozen: Any = None) -> tuple[list[np.ndarray], list[str]]:
    """Sample ``cfg.num_images`` images; returns (uint8 NHWC per level high -> low, captions)."""
    num = int(cfg.num_images)
    gw = cfg.get("guidance_weight")
    use_cfg = gw is not None and float(gw) > 0 and getattr(info, "conditioning", "none") != "none"
    cond, captions = conditioning(info, cfg, num, batch, use_cfg)
    q, m = float(cfg.get("threshold_quantile", -1)), float(cfg.get("threshold_max", -1))
    top = phase.spec.levels[0]
    out = sampler.sample(
        jax.tree_util.Partial(model.apply, params, frozen=frozen or None), phase.diffusion, cond,
        shape=(num, top.resolution, top.resolution, top.output_channels), rng=rng,
        num_steps=int(cfg.num_steps), method=str(cfg.method), eta=float(cfg.eta),
        guidance_weight=float(gw) if use_cfg else None, threshold_kind=str(cfg.threshold),
        threshold_quantile=q if q >= 0 else None, threshold_max=m if m >= 0 else None, debug=bool(cfg.debug))
    levels = [reporting.to_uint8(np.clip(np.asarray(jax.device_get(x)), -1.0, 1.0)) for x in out["levels"]]
    return levels, captions


def write_grids(levels: list[np.ndarray], captions: list[str], resolutions: tuple[int, ...], out_dir: str,
                step: int, writer: reporting.MetricWriter | None = None, weights: str = "ema") -> list[str]:
    """One PNG grid per resolution (+ the captions), named ``step_<n>_<weights>_<res>px.png`` with ``weights``
    'ema' or 'raw'; returns the paths written (process 0 only)."""
    if jax.process_index() != 0:
        return []
    paths = []
    for img, res in zip(levels, resolutions, strict=True):
        grid = reporting.image_grid(img)
        path = os.path.join(out_dir, f"step_{step:08d}_{weights}_{res}px.png")
        reporting.save_png(path, grid)
        paths.append(path)
        if writer is not None:
            writer.image(step, f"samples/{weights}/{res}px", grid)
    with open(os.path.join(out_dir, f"step_{step:08d}_{weights}_captions.txt"), "w") as f:
        f.write(f"# {weights} weights, step {step}\n" + "\n".join(captions) + "\n")
    logging.info("Wrote sample grids from the %s weights: %s", weights, ", ".join(paths))
    return paths


def _data_info(config: ml_collections.ConfigDict, phase: Phase, num: int) -> tuple[Any, Any]:
    """(DataInfo, a validation batch or None); the batch supplies captions/labels/features when none are given."""
    from mdm_jax import data as data_lib

    cfg = ml_collections.ConfigDict(phase.data_config.to_dict())
    cfg.keep_captions, cfg.num_workers, cfg.cond_drop_prob = True, 0, 0.0
    err = None
    for split in ("validation", "test", "train"):
        try:
            it, info = data_lib.create_dataset(cfg, global_batch_size=num * jax.process_count(),
                                               seed=int(config.seed), split=split)
            try:
                return info, next(it)
            except Exception:  # noqa: BLE001 - info is enough when prompts/labels are given
                return info, None
        except Exception as e:  # noqa: BLE001 - sources differ in which splits exist
            err = e
    raise RuntimeError(f"sample: cannot build the data info of phase '{phase.name}' (needed for its "
                       f"tokenizer / labels): {err}")


def load_for_sampling(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """The model, phase, weights (EMA or raw, per ``config.sample.use_ema``), data info and step of a checkpoint."""
    from mdm_jax.training import checkpoint as ckpt_lib
    from mdm_jax.training import model_fn, partitioning, sources
    from mdm_jax.training import phases as phases_lib

    cfg = config.sample
    path = cfg.get("checkpoint") or workdir
    step_dir = sources._step_dir(path, int(cfg.get("step", -1)))
    meta = ckpt_lib.read_json_item(step_dir, "meta")
    phases = phases_lib.build_phases(config)
    idx = int(meta["phase"])
    if idx >= len(phases) or phases[idx].name != meta.get("phase_name"):
        raise ValueError(f"{step_dir} was written by phase {idx} '{meta.get('phase_name')}', which this config "
                         f"does not have ({[p.name for p in phases]}); pass the run's config")
    phase = phases[idx]
    info, batch = _data_info(config, phase, int(cfg.num_images))
    from mdm_jax.training.trainer import example_batch, text_setup

    mesh = partitioning.make_mesh(config.mesh)
    text, frozen, _ = text_setup(config, info, mesh)
    model = model_fn.build(phase.model_config, dtype=config.model.dtype, text=text)
    example = example_batch(info, 1)
    abstract = jax.eval_shape(lambda k: model.init(k, example), jax.random.key(0))
    shardings = partitioning.tree_shardings(abstract, mesh, int(config.sharding.min_size))
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    import orbax.checkpoint as ocp

    weights = weights_name(bool(cfg.get("use_ema", True)))
    if weights == "ema":
        params = ocp.StandardCheckpointer().restore(os.path.join(step_dir, "ema"), target)
    else:
        params = sources._restore_numpy(os.path.join(step_dir, "state"), subtree="params")
        params = jax.tree.map(lambda x, s: jax.device_put(x, s), params, shardings)
    return dict(model=model, phase=phase, params=params, info=info, batch=batch, frozen=frozen,
                step=int(meta["step"]), step_dir=step_dir, weights=weights)


def weights_name(use_ema: bool) -> str:
    """'ema' or 'raw': named in the log, the grid file names and the captions file, so a grid says its weights."""
    return "ema" if use_ema else "raw"


def sample_from_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
    """``--mode=sample``: grids from the EMA (or raw) weights of a run's checkpoint; returns the PNG paths."""
    cfg = config.sample
    ck = load_for_sampling(config, workdir)
    logging.info("Sampling %d images from the %s weights of %s (%s)", int(cfg.num_images), ck["weights"],
                 ck["step_dir"], ck["phase"].describe())
    levels, captions = generate(ck["model"], ck["phase"], ck["params"], ck["info"], cfg,
                                jax.random.key(int(cfg.get("seed", 0))), ck["batch"], frozen=ck["frozen"])
    out_dir = cfg.get("output_dir") or os.path.join(workdir, "samples", "sample_mode")
    return write_grids(levels, captions, ck["phase"].spec.resolutions, out_dir, ck["step"], weights=ck["weights"])
