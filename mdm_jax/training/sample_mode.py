"""``--mode=sample``: sample grids from a run's checkpoint (EMA weights by default).

Needs only the run directory and its config: the data facts sampling depends on (tokenizer and vocabulary,
class names, null label) are read from what training saved next to the checkpoints (``run_info``). Runs
written before that was saved fall back to building the data source once.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import ml_collections
from absl import logging

from mdm_jax import data as data_lib
from mdm_jax import io_paths
from mdm_jax.training import checkpoint as ckpt_lib
from mdm_jax.training import model_fn, partitioning, run_info, sampling, sources
from mdm_jax.training import phases as phases_lib
from mdm_jax.training.phases import Phase
from mdm_jax.training.trainer import example_batch, text_setup


def run_dir_of(step_dir: str) -> str:
    """The run directory holding ``checkpoints/<step>`` (where ``run_info`` lives)."""
    parent = io_paths.path(io_paths.resolve(step_dir)).parent
    return os.fspath(parent.parent if parent.name == "checkpoints" else parent)


def data_info_from_dataset(config: ml_collections.ConfigDict, phase: Phase, num: int) -> tuple[Any, Any]:
    """(DataInfo, a validation batch or None) built from the data set itself (older runs, precomputed text)."""
    try:
        return data_lib.conditioning_batch(phase.data_config, global_batch_size=num * jax.process_count(),
                                           seed=int(config.seed))
    except data_lib.MissingDataError as e:
        raise data_lib.MissingDataError(f"sample: phase '{phase.name}' has no saved data info "
                                        f"(<run>/data_info/) and its data set is not readable: {e}") from e


@dataclasses.dataclass
class LoadedRun:
    """A run's phase model with restored weights and what sampling needs to condition it."""

    model: Any
    phase: Phase
    params: Any
    info: Any
    frozen: Any
    step: int
    step_dir: str
    batch: Any = None  # a validation batch, when the data set had to be read

    def model_fn(self) -> Any:
        return jax.tree_util.Partial(self.model.apply, self.params, frozen=self.frozen or None)


def load_run(config: ml_collections.ConfigDict, path: str, step: int = -1, use_ema: bool = True,
             num: int = 1) -> LoadedRun:
    """Restore the (EMA) weights of a run's checkpoint (newest, or ``step``) and its phase model."""
    step_dir = sources._step_dir(path, step)
    meta = ckpt_lib.read_json_item(step_dir, "meta")
    phases = phases_lib.build_phases(config)
    idx = int(meta["phase"])
    if idx >= len(phases) or phases[idx].name != meta.get("phase_name"):
        raise ValueError(f"{step_dir} was written by phase {idx} '{meta.get('phase_name')}', which this config "
                         f"does not have ({[p.name for p in phases]}); pass the run's config")
    phase = phases[idx]
    info, batch = run_info.load(run_dir_of(step_dir), idx), None
    if info is None or (info.conditioning == "text" and info.tokenizer is None):
        info, batch = data_info_from_dataset(config, phase, num)
    mesh = partitioning.make_mesh(config.mesh)
    text, frozen, _ = text_setup(config, info, mesh)
    model = model_fn.build(phase.model_config, dtype=config.model.dtype, text=text)
    example = example_batch(info, 1)
    abstract = jax.eval_shape(lambda k: model.init(k, example), jax.random.key(0))
    shardings = partitioning.tree_shardings(abstract, mesh, int(config.sharding.min_size))
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    import orbax.checkpoint as ocp

    if use_ema:
        params = ocp.StandardCheckpointer().restore(io_paths.path(io_paths.join(step_dir, "ema")), target)
    else:
        params = ckpt_lib.read_numpy(io_paths.join(step_dir, "state"), subtree="params")
        params = jax.tree.map(lambda x, s: jax.device_put(x, s), params, shardings)
    return LoadedRun(model, phase, params, info, frozen, int(meta["step"]), step_dir, batch)


def sample_from_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
    """Grids from the EMA (or raw) weights of a run's checkpoint; returns the PNG paths."""
    cfg = config.sample
    use_ema = bool(cfg.get("use_ema", True))
    run = load_run(config, cfg.get("checkpoint") or workdir, int(cfg.get("step", -1)), use_ema,
                   int(cfg.num_images))
    weights = sampling.weights_name(use_ema)
    logging.info("Sampling %d images from the %s weights of %s (%s)", int(cfg.num_images), weights, run.step_dir,
                 run.phase.describe())
    levels, captions = sampling.generate(run.model, run.phase, run.params, run.info, cfg,
                                         jax.random.key(int(cfg.get("seed", 0))), run.batch, frozen=run.frozen)
    out_dir = cfg.get("output_dir") or io_paths.join(io_paths.resolve(workdir), "samples", "sample_mode")
    return sampling.write_grids(levels, captions, run.phase.spec.resolutions, out_dir, run.step,
                               tiles=run.phase.spec.level_tiles, weights=weights)
