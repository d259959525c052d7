"""Progressive training as data: the phases of a run, and growing one phase's parameters out of another's.

A phase is a model (architecture), a batch size, a number of steps and rules saying which subtree of the new
parameters is initialised from which subtree of the previous phase (big_vision's ``model_load`` habit). Steps
are global and run on: phase k covers global steps ``[start, start + steps)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np
from flax import traverse_util

from mdm_jax.diffusion.spec import DiffusionSpec
from mdm_jax.models import UNetSpec, spec_from_config
from mdm_jax.models.architectures import get_architecture
from mdm_jax.training.accumulation import check_divisible
from mdm_jax.training.optimizer import under


@dataclasses.dataclass(frozen=True)
class Phase:
    """One resolved phase of the progressive schedule."""

    index: int
    name: str
    model_config: ml_collections.ConfigDict
    spec: UNetSpec
    diffusion: DiffusionSpec
    batch_size: int
    steps: int
    start_step: int
    init_from: dict[str, str] | None
    freeze: tuple[str, ...]
    lr_multipliers: dict[str, float] | None
    data_config: ml_collections.ConfigDict
    grad_accum_steps: int = 1

    @property
    def end_step(self) -> int:
        return self.start_step + self.steps

    @property
    def resolution(self) -> int:
        return self.spec.resolution

    def __hash__(self) -> int:  # ConfigDicts are not hashable; a phase is identified by its place in the run
        return hash((self.index, self.name, self.start_step))

    def describe(self) -> str:
        res = "/".join(str(r) for r in self.spec.resolutions)
        return (f"phase {self.index} '{self.name}': resolutions {res}, batch {self.batch_size}, steps "
                f"{self.start_step}..{self.end_step}")


def model_config_for(phase_cfg: ml_collections.ConfigDict, config: ml_collections.ConfigDict
                     ) -> ml_collections.ConfigDict:
    """The phase's UNet config: a named paper architecture or an explicit ``phase.model``."""
    m = config.model
    if phase_cfg.get("model") is not None:
        cfg = ml_collections.ConfigDict(phase_cfg.model.to_dict())
        if m.get("num_classes", 0) and not cfg.get("num_classes", 0):
            cfg.num_classes = int(m.num_classes)
        return cfg
    if not phase_cfg.get("architecture"):
        raise ValueError(f"phase {phase_cfg.get('name')!r}: give either 'architecture' or 'model'")
    return get_architecture(phase_cfg.architecture, cond_dim=int(m.get("cond_dim", -1)),
                            num_classes=int(m.get("num_classes", 0)),
                            paper_text_head=bool(m.get("paper_text_head", False)))


def diffusion_spec_for(config: ml_collections.ConfigDict, phase_cfg: ml_collections.ConfigDict,
                       spec: UNetSpec) -> DiffusionSpec:
    d = config.diffusion.to_dict()
    if phase_cfg.get("diffusion"):
        d.update(phase_cfg.diffusion.to_dict())
    d.update(spec.diffusion_fields())  # scales (+ temporal levels and frame tiles for video)
    d["multi_res_weights"] = phase_cfg.get("multi_res_weights")
    d["mixed_ratio"] = phase_cfg.get("mixed_ratio")
    return DiffusionSpec.from_config(d)


def build_phases(config: ml_collections.ConfigDict) -> list[Phase]:
    """Resolve ``config.phases`` into ``Phase`` objects with global step ranges; validates everything up front."""
    if not config.phases:
        raise ValueError("config.phases is empty: a run needs at least one phase")
    phases, start = [], 0
    for i, pc in enumerate(config.phases):
        model_cfg = model_config_for(pc, config)
        spec = spec_from_config(model_cfg)
        if int(pc.steps) < 0 or int(pc.batch_size) <= 0:
            raise ValueError(f"phase {i} '{pc.name}': steps must be >= 0 and batch_size > 0")
        data_cfg = ml_collections.ConfigDict(config.data.to_dict())
        if pc.get("data"):
            data_cfg.update(pc.data.to_dict())
        data_cfg.resolution = spec.resolution
        init_from = dict(pc.init_from) if pc.get("init_from") else None
        accum = int(pc.get("grad_accum_steps") or 1)
        check_divisible(int(pc.batch_size), accum, where=f"phase {i} '{pc.name}'")
        phases.append(Phase(
            index=i, name=str(pc.name), model_config=model_cfg, spec=spec,
            diffusion=diffusion_spec_for(config, pc, spec), batch_size=int(pc.batch_size), steps=int(pc.steps),
            start_step=start, init_from=init_from, freeze=tuple(pc.get("freeze") or ()),
            lr_multipliers=dict(pc.lr_multipliers) if pc.get("lr_multipliers") else None, data_config=data_cfg,
            grad_accum_steps=accum))
        start += int(pc.steps)
    return phases


def phase_at(phases: list[Phase], step: int) -> Phase:
    """The phase that trains global step ``step`` (the last phase once the run is over)."""
    for p in phases:
        if step < p.end_step:
            return p
    return phases[-1]


# ---- growing parameters --------------------------------------------------------------------------------------


@dataclasses.dataclass
class TransplantReport:
    """Which parameters came from the source and which keep their fresh initialisation."""

    loaded: dict[str, str]  # destination path -> source path
    new: list[str]
    num_loaded: int = 0
    num_new: int = 0

    def summary(self, max_paths: int = 40) -> str:
        lines = [f"initialised from checkpoint: {len(self.loaded)} arrays ({self.num_loaded:,} parameters); "
                 f"new: {len(self.new)} arrays ({self.num_new:,} parameters)"]
        lines += [f"  from checkpoint: {g}" for g in _group(list(self.loaded), max_paths)]
        lines += [f"  new: {g}" for g in _group(self.new, max_paths)]
        return "\n".join(lines)


def _group(paths: list[str], max_lines: int) -> list[str]:
    """Collapse paths into module prefixes (depth-limited) so the log stays readable."""
    for depth in range(6, 0, -1):
        groups: dict[str, int] = {}
        for p in paths:
            key = "/".join(p.split("/")[:depth])
            groups[key] = groups.get(key, 0) + 1
        if len(groups) <= max_lines or depth == 1:
            return [k if n == 1 and k in paths else f"{k}/... ({n} arrays)" for k, n in groups.items()]
    return []


def transplant(target: Mapping[str, Any], source: Mapping[str, Any], rules: Mapping[str, str]
               ) -> tuple[dict[str, Any], TransplantReport]:
    """Copy ``source`` subtrees into ``target`` by ``rules`` {dst prefix: src prefix}; strict about shapes.

    Every destination array under a rule must be found in the source with the same shape, and every source
    array under a rule must have a place: a mismatch raises naming the paths, so a wrong architecture never
    silently keeps random weights.
    """
    tflat = traverse_util.flatten_dict(dict(target), sep="/")
    sflat = traverse_util.flatten_dict(dict(source), sep="/")
    out, loaded = dict(tflat), {}
    for dst, src in rules.items():
        dst, src = dst.strip("/"), src.strip("/")
        src_keys = [k for k in sflat if under(k, src)]
        if not src_keys:
            tops = sorted({k.split("/")[0] for k in sflat})
            raise ValueError(f"init_from: source has no parameters under {src!r} (top-level subtrees: {tops})")
        dst_keys = {k for k in tflat if under(k, dst)}
        if not dst_keys:
            tops = sorted({k.split("/")[0] for k in tflat})
            raise ValueError(f"init_from: model has no parameters under {dst!r} (top-level subtrees: {tops})")
        problems = []
        for sk in src_keys:
            rel = sk[len(src):].lstrip("/") if src else sk
            dk = f"{dst}/{rel}" if dst and rel else (dst or rel)
            if dk not in tflat:
                problems.append(f"{sk}: no parameter {dk} in the model")
                continue
            if tuple(np.shape(sflat[sk])) != tuple(tflat[dk].shape):
                problems.append(f"{sk} {tuple(np.shape(sflat[sk]))} -> {dk} {tuple(tflat[dk].shape)}: shape mismatch")
                continue
            out[dk] = sflat[sk]
            loaded[dk] = sk
        missing = sorted(dst_keys - set(loaded))
        problems += [f"{k}: not in the source under {src!r}" for k in missing]
        if problems:
            raise ValueError(f"init_from {dst!r} <- {src!r} does not fit ({len(problems)} problems):\n  "
                             + "\n  ".join(problems[:30]))
    new = [k for k in tflat if k not in loaded]
    report = TransplantReport(loaded, new, sum(int(np.prod(tflat[k].shape)) for k in loaded),
                              sum(int(np.prod(tflat[k].shape)) for k in new))
    return traverse_util.unflatten_dict(out, sep="/"), report
