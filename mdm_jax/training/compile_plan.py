"""Compile-only plans: the real sharded train step (and a sampler step) of every phase, compiled for a TPU topology
on a machine without TPUs, with per-chip memory, FLOPs, estimated step time and days per phase.

``python -m mdm_jax.main --mode=compile --config=configs/X.py --config.compile.topology=v5p:2x2x1``

libtpu's compile-only client (``jax.experimental.topologies.get_topology_desc``) gives compile-only devices for
the topology; the phase's model, optimizer, state shardings and ``train_step.jit_step`` are built exactly as the
trainer builds them, but fed ``jax.ShapeDtypeStruct``s carrying shardings, so nothing is allocated. The data
pipeline is not opened (its shapes come from the config), and a frozen T5 encoder contributes its shapes only
(read from ``text_encoder.path``/config.json when present, else FLAN-T5-XL's, the paper's encoder).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding

from mdm_jax.training import config_lib, model_fn, partitioning
from mdm_jax.training import phases as phases_lib
from mdm_jax.training import state as state_lib
from mdm_jax.training.optimizer import make_optimizer, param_labels
from mdm_jax.training.train_step import jit_step, make_step_fn

GB, GiB = 1e9, 2.0**30


@dataclasses.dataclass(frozen=True)
class Chip:
    """Public per-chip figures (Cloud TPU system-architecture pages): HBM and peak dense bf16 FLOP/s."""

    name: str
    hbm_bytes: float
    peak_bf16_flops: float


# device_kind (as libtpu reports it) -> chip. v5e/v6e: the pages' GB; v4: its GiB; v5p: the "95 GB" page figure is
# what XLA:TPU itself allows, 95.74 GiB ("available HBM" in its out-of-memory compile error).
CHIPS = {
    "TPU v4": Chip("v4", 32 * GiB, 275e12),
    "TPU v5 lite": Chip("v5e", 16 * GB, 197e12),
    "TPU v5": Chip("v5p", 95.74 * GiB, 459e12),
    "TPU v6 lite": Chip("v6e", 32 * GB, 918e12),
}

# FLAN-T5-XL's encoder (google/flan-t5-xl config.json), used when the config's T5 folder is not on this machine.
FLAN_T5_XL = dict(vocab_size=32128, d_model=2048, d_kv=64, d_ff=5120, num_layers=24, num_heads=32,
                  feed_forward_proj="gated-gelu")


@dataclasses.dataclass
class PhasePlan:
    """What one phase's compiled step needs per chip, and what it costs."""

    phase: str
    resolutions: str
    batch: int
    steps: int
    topology: str
    chip: str
    devices: int
    hosts: int
    mesh: dict[str, int]
    params: int = 0  # bytes per device, by state part
    opt_state: int = 0
    ema: int = 0
    frozen: int = 0  # frozen text encoder
    batch_bytes: int = 0
    arguments: int = 0  # memory_analysis(): all inputs
    outputs: int = 0
    aliased: int = 0
    temporaries: int = 0
    code: int = 0
    hbm: float = 0.0
    flops: float = float("nan")  # per device per step (cost_analysis)
    xla_seconds: float = float("nan")  # cost_analysis()['optimal_seconds']: XLA's roofline estimate
    mfu: float = 0.4
    peak_flops: float = 0.0
    sampler_flops: float = float("nan")
    sampler_xla_seconds: float = float("nan")
    sampler_rows: int = 0
    sampler_total: int = 0
    num_parameters: int = 0
    compile_error: str = ""  # XLA's out-of-HBM message when it refused to compile the step
    advice: list[str] = dataclasses.field(default_factory=list)

    @property
    def total(self) -> int:
        """Peak bytes per device: inputs + outputs not aliased to (donated) inputs + temporaries + code."""
        return self.arguments + self.outputs - self.aliased + self.temporaries + self.code

    @property
    def fits(self) -> bool:
        return not self.compile_error and self.total <= self.hbm

    @property
    def mfu_seconds(self) -> float:
        return self.flops / (self.peak_flops * self.mfu)

    @property
    def step_seconds(self) -> float:
        """The step time used for images/s and days: XLA's estimate when it gave one, else the MFU one."""
        return self.xla_seconds if math.isfinite(self.xla_seconds) and self.xla_seconds > 0 else self.mfu_seconds

    def days(self, seconds: float) -> float:
        return self.steps * seconds / 86400.0

    def images_per_second(self, seconds: float) -> float:
        return self.batch / seconds


# ---- topology --------------------------------------------------------------------------------------------------


def topology_devices(topology: str) -> list[Any]:
    """Compile-only devices of a TPU topology such as 'v5p:2x2x1' (libtpu must be installed: pip install libtpu)."""
    if not re.fullmatch(r"v\d+[a-z]*:\d+(x\d+)*", topology or ""):
        raise ValueError(f"compile.topology={topology!r}: expected '<chip>:<shape>', e.g. 'v5p:2x2x1' or 'v6e:2x2'")
    # libtpu takes a machine-wide lock file; a compile-only client needs no exclusive access to a TPU.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    describe_host_to_libtpu(topology)
    try:
        import libtpu  # noqa: F401
    except ImportError as e:
        raise RuntimeError("compile mode needs libtpu's compile-only client: pip install 'libtpu==0.0.42.*' "
                           "(or pip install -e '.[tpu]')") from e
    from jax.experimental import topologies

    return list(topologies.get_topology_desc(topology, "tpu").devices)


def describe_host_to_libtpu(topology: str) -> None:
    """Off a TPU VM, give libtpu the host facts it otherwise looks up from the VM metadata. Its lookup fails
    there, stores the failure's warning text as the worker hostname and logs an INVALID_ARGUMENT with a
    "Source Location Trace" on every compile. Values already set, and real TPU VMs, are left alone."""
    try:
        from jax._src import hardware_utils

        if hardware_utils.num_available_tpu_chips_and_device_id()[0]:
            return
    except Exception:  # noqa: BLE001 - a private helper; without it, say nothing rather than guess
        return
    chip, shape = topology.split(":")
    chips = int(np.prod([int(s) for s in shape.split("x")]))
    # Accelerator-type names count TensorCores on v4/v5p (two per chip) and chips on the lite generations.
    name = {"v4": f"v4-{2 * chips}", "v5p": f"v5p-{2 * chips}", "v5e": f"v5litepod-{chips}"}.get(
        chip, f"{chip}-{chips}")
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", name)
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TPU_WORKER_ID", "0")


def chip_of(devices: Sequence[Any], topology: str) -> tuple[Chip, float]:
    """(chip, HBM bytes per device): a device is a chip except where libtpu exposes one per TensorCore (v4)."""
    kind = devices[0].device_kind
    if kind not in CHIPS:
        raise ValueError(f"no HBM/FLOP figures for device kind {kind!r} (known: {sorted(CHIPS)})")
    chip = CHIPS[kind]
    chips = int(np.prod([int(s) for s in topology.split(":")[1].split("x")]))
    per_chip = max(1, len(devices) // chips)
    return chip, chip.hbm_bytes / per_chip


def topology_mesh(cfg: Mapping[str, int], devices: Sequence[Any]) -> Mesh:
    """The trainer's ("data", "fsdp") mesh over the topology's devices, laid out along the physical torus."""
    shape = partitioning.mesh_shape(cfg, len(devices))
    try:
        from jax.experimental import mesh_utils

        arr = mesh_utils.create_device_mesh(shape, list(devices))
    except (ValueError, NotImplementedError, AssertionError):
        arr = np.asarray(devices).reshape(shape)
    return Mesh(arr, partitioning.MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 2)


# ---- abstract inputs --------------------------------------------------------------------------------------------


def data_info(config: ml_collections.ConfigDict, phase: phases_lib.Phase, hosts: int) -> Any:
    """The ``DataInfo`` the phase's pipeline would report, from the config alone (no files are opened)."""
    from mdm_jax.data.pipeline import DataInfo

    d = phase.data_config
    cond = str(d.get("conditioning", "none"))
    kw: dict[str, Any] = {}
    if cond == "class":
        kw["num_classes"] = int(config.model.num_classes)
    elif cond == "text":
        text = d.get("text") or {}
        kw["max_length"] = int(text.get("max_length", 128))
        if config.get("text_encoder"):
            kind = str(text.get("tokenizer", "t5"))
            if kind in ("byte", "word"):
                from mdm_jax.text.tokenizers import create_tokenizer

                kw["tokenizer"] = create_tokenizer(kind)
                kw["vocab_size"] = kw["tokenizer"].vocab_size
            else:  # the T5 vocabulary (only its size matters for a trainable encoder's embedding)
                kw["tokenizer"] = kind
                kw["vocab_size"] = FLAN_T5_XL["vocab_size"]
        else:
            kw["lm_dim"] = int(config.model.cond_dim)  # precomputed features
    return DataInfo(name=str(d.get("name", "")), split="train", resolution=phase.resolution, conditioning=cond,
                    num_examples=0, global_batch_size=phase.batch_size,
                    per_host_batch_size=phase.batch_size // hosts, **kw)


def text_setup(config: ml_collections.ConfigDict, info: Any, mesh: Mesh) -> tuple[model_fn.TextSetup, Any, Any]:
    """The trainer's text setup with a frozen T5's weights as sharded ShapeDtypeStructs (nothing is read)."""
    cfg = config.get("text_encoder")
    if not cfg or cfg.get("kind", "small") != "t5":
        return model_fn.build_text_encoder(cfg, info, config.model.dtype), {}, {}
    from mdm_jax.text import t5

    cfg_path = os.path.join(str(cfg.get("path", "")), "config.json")
    t5_config = t5.T5Config.from_json(cfg_path) if os.path.isfile(cfg_path) else t5.T5Config(**FLAN_T5_XL)
    module = t5.T5Encoder(t5_config, dtype=jnp.dtype(cfg.get("dtype", config.model.dtype)))
    shapes = jax.eval_shape(lambda: t5.T5Encoder(t5_config).init(jax.random.PRNGKey(0),
                                                                  jnp.zeros((1, 2), jnp.int32))["params"])
    specs = t5.partition_specs(shapes)
    shardings = jax.tree.map(lambda spec: NamedSharding(mesh, spec), specs)
    frozen = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, jnp.float32, sharding=sh), shapes, shardings)
    return model_fn.TextSetup(frozen=module, frozen_dim=int(t5_config.d_model), frozen_specs=specs), frozen, shardings


_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_hbm_error(message: str) -> tuple[int, float] | None:
    """(bytes of temporaries needed, HBM available) from XLA:TPU's 'Ran out of memory on HBM' compile error."""
    m = re.search(r"temporaries \(([\d.]+)([KMGT]?)\) exceeds available HBM \(([\d.]+)([KMGT]?)\)", message)
    if not m:
        return None
    return int(float(m.group(1)) * _UNITS[m.group(2)]), float(m.group(3)) * _UNITS[m.group(4)]


def _per_device_bytes(tree: Any) -> int:
    total = 0
    for x in jax.tree.leaves(tree):
        shard = x.sharding.shard_shape(x.shape) if getattr(x, "sharding", None) is not None else x.shape
        total += int(np.prod(shard)) * jnp.dtype(x.dtype).itemsize
    return total


def _cost(compiled: Any) -> tuple[float, float]:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0]
    cost = cost or {}
    return float(cost.get("flops", float("nan"))), float(cost.get("optimal_seconds", float("nan")))


def _global_batch(example: Mapping[str, np.ndarray], rows: int, mesh: Mesh) -> dict[str, jax.ShapeDtypeStruct]:
    return {k: jax.ShapeDtypeStruct((rows, *v.shape[1:]), v.dtype, sharding=partitioning.batch_sharding(mesh, v.ndim))
            for k, v in example.items()}


# ---- one phase --------------------------------------------------------------------------------------------------


def plan_phase(config: ml_collections.ConfigDict, phase: phases_lib.Phase, devices: Sequence[Any],
               topology: str) -> PhasePlan:
    """Compile the phase's train step (and a sampler step) for ``devices``; nothing is allocated."""
    from mdm_jax.training.trainer import check_compatible, example_batch

    mesh = topology_mesh(config.mesh, devices)
    hosts = len({d.process_index for d in devices})
    chip, hbm = chip_of(devices, topology)
    comp = config.get("compile") or config_lib.compile_options()
    if float(comp.get("hbm_gib", 0) or 0) > 0:  # e.g. to keep room for other buffers
        hbm = float(comp.hbm_gib) * GiB
    plan = PhasePlan(phase=phase.name, resolutions="/".join(str(r) for r in phase.spec.resolutions),
                     batch=phase.batch_size, steps=phase.steps, topology=topology, chip=chip.name,
                     devices=len(devices), hosts=hosts, mesh=dict(mesh.shape), hbm=hbm,
                     mfu=float(comp.get("mfu", 0.4)), peak_flops=chip.peak_bf16_flops)
    partitioning.check_batch_size(phase.batch_size, mesh)
    if phase.batch_size % hosts:
        raise ValueError(f"phase '{phase.name}': batch_size {phase.batch_size} is not divisible by the {hosts} hosts "
                         f"of {topology}")
    info = data_info(config, phase, hosts)
    text, frozen, frozen_shardings = text_setup(config, info, mesh)
    model = model_fn.build(phase.model_config, dtype=config.model.dtype, remat=bool(config.model.remat), text=text)
    check_compatible(phase, info, model)
    example = example_batch(info, 1)
    abstract_params = jax.eval_shape(lambda k: model.init(k, example), jax.random.key(0))
    labels = param_labels(abstract_params, phase.freeze, phase.lr_multipliers)
    tx, schedule = make_optimizer(config.optimizer, labels, phase.steps)
    shardings = state_lib.state_shardings(state_lib.abstract_state(abstract_params, tx), mesh,
                                          int(config.sharding.min_size))
    abstract = state_lib.abstract_state(abstract_params, tx, shardings)
    step_fn = make_step_fn(model, phase, tx, schedule, labels, ema_decay=float(config.optimizer.ema_decay),
                           seed=int(config.seed), ema_warmup=bool(config.optimizer.get("ema_warmup", False)))
    batch = _global_batch(example, phase.batch_size, mesh)
    plan.num_parameters = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract.params))
    plan.params, plan.opt_state = _per_device_bytes(abstract.params), _per_device_bytes(abstract.opt_state)
    plan.ema, plan.frozen, plan.batch_bytes = (_per_device_bytes(abstract.ema), _per_device_bytes(frozen),
                                               _per_device_bytes(batch))
    lowered = jit_step(step_fn, shardings, example, mesh, frozen_shardings).lower(abstract, batch, frozen)
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:
        # XLA:TPU refuses to compile a program whose buffers exceed the chip's HBM, and says by how much.
        oom = parse_hbm_error(str(e))
        if oom is None:
            raise
        plan.temporaries, plan.hbm = oom
        plan.arguments = plan.params + plan.opt_state + plan.ema + plan.frozen + plan.batch_bytes
        plan.compile_error = str(e).splitlines()[0][:300]
        plan.advice = advice(plan, config, phase)
        return plan
    mem = compiled.memory_analysis()
    plan.arguments, plan.outputs = int(mem.argument_size_in_bytes), int(mem.output_size_in_bytes)
    plan.aliased, plan.temporaries = int(mem.alias_size_in_bytes), int(mem.temp_size_in_bytes)
    plan.code = int(mem.generated_code_size_in_bytes)
    plan.flops, plan.xla_seconds = _cost(compiled)
    if comp.get("sampler", True):
        _plan_sampler(plan, config, model, abstract, example, frozen, mesh)
    plan.advice = advice(plan, config, phase)
    return plan


def _plan_sampler(plan: PhasePlan, config: ml_collections.ConfigDict, model: model_fn.Model, abstract: Any,
                  example: Mapping[str, np.ndarray], frozen: Any, mesh: Mesh) -> None:
    """One network evaluation of the sampler on EMA weights: ``num_images`` rows, doubled for guidance."""
    gw = config.sample.get("guidance_weight")
    rows = int(config.sample.num_images) * (2 if gw is not None and float(gw) > 0 else 1)
    rows = -(-rows // mesh.size) * mesh.size  # rows are split over every device
    cond = _global_batch({k: v for k, v in example.items() if k != "images"}, rows, mesh)
    xs = [jax.ShapeDtypeStruct((rows, lvl.resolution, lvl.resolution, lvl.input_channels), jnp.float32,
                               sharding=partitioning.batch_sharding(mesh, 4)) for lvl in model.spec.levels]
    t = jax.ShapeDtypeStruct((rows,), jnp.int32, sharding=partitioning.batch_sharding(mesh, 1))

    def evaluate(params: Any, xs: list[jax.Array], t: jax.Array, cond: Any, frozen: Any) -> list[jax.Array]:
        return model.apply(params, xs, t, cond, frozen=frozen or None)

    compiled = jax.jit(evaluate).lower(abstract.ema, xs, t, cond, frozen).compile()
    plan.sampler_flops, plan.sampler_xla_seconds = _cost(compiled)
    plan.sampler_rows = rows
    mem = compiled.memory_analysis()
    plan.sampler_total = int(mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
                             + mem.temp_size_in_bytes + mem.generated_code_size_in_bytes)


def advice(plan: PhasePlan, config: ml_collections.ConfigDict, phase: phases_lib.Phase) -> list[str]:
    """What to change when the step does not fit, largest lever first."""
    if plan.fits:
        return []
    out = []
    state = plan.params + plan.opt_state + plan.ema
    fsdp = plan.mesh.get("fsdp", 1)
    if fsdp < plan.devices:
        bigger = min(plan.devices, fsdp * 2 if state < plan.temporaries else plan.devices)
        out.append(f"split the state (now {_b(state)}/device) over more devices: --config.mesh.fsdp={bigger} "
                   f"(state/device ~ {_b(state * fsdp / bigger)})")
    if not bool(config.model.remat):
        out.append(f"recompute activations in the backward pass: --config.model.remat=True (temporaries are "
                   f"{_b(plan.temporaries)}/device)")
    if not config.optimizer.get("mu_dtype"):
        out.append("keep Adam's first moment in bf16: --config.optimizer.mu_dtype=bfloat16")
    per_device = plan.batch // plan.devices
    k = 2 * int(phase.grad_accum_steps)
    if per_device % k == 0:
        out.append(f"keep the paper's batch and accumulate gradients over micro-batches: "
                   f"--config.phases[{phase.index}].grad_accum_steps={k} (activations of {per_device // k} "
                   "images/device at a time; same loss and gradient)")
    out.append(f"halve the per-device batch: --config.phases[{phase.index}].batch_size={plan.batch // 2} "
               f"(or a slice with twice the chips; now {per_device}/device)")
    return out


# ---- reporting --------------------------------------------------------------------------------------------------


def _b(n: float) -> str:
    return f"{n / GiB:.2f} GiB" if n >= 0.1 * GiB else f"{n / 2**20:.2f} MiB"


def format_plan(p: PhasePlan) -> str:
    lines = [
        f"phase '{p.phase}' (resolutions {p.resolutions}, {p.num_parameters:,} parameters): global batch {p.batch}, "
        f"{p.steps:,} steps on {p.topology} ({p.devices} {p.chip} devices, {p.hosts} hosts, mesh {p.mesh})",
        "  per device:",
        f"    parameters       {_b(p.params):>12}",
        f"    optimizer state  {_b(p.opt_state):>12}",
        f"    EMA              {_b(p.ema):>12}",
        f"    frozen encoder   {_b(p.frozen):>12}",
        f"    batch            {_b(p.batch_bytes):>12}",
        f"    temporaries      {_b(p.temporaries):>12}   "
        f"({'XLA compile error' if p.compile_error else 'compiled.memory_analysis()'})",
        f"    code + outputs   {_b(p.code + p.outputs - p.aliased):>12}",
        f"    total            {_b(p.total):>12}   of {_b(p.hbm)} HBM ({100 * p.total / p.hbm:.0f}%): "
        f"{'fits' if p.fits else 'DOES NOT FIT'}",
        f"  FLOPs per step: {p.flops:.3e} per device, {p.flops * p.devices:.3e} total (cost_analysis)",
        f"  step time: {p.xla_seconds:.3f} s XLA estimate (cost_analysis optimal_seconds, a roofline lower bound); "
        f"{p.mfu_seconds:.3f} s at {100 * p.mfu:.0f}% MFU of {p.peak_flops / 1e12:.0f} TFLOP/s bf16 peak",
        f"  images/s: {p.images_per_second(p.step_seconds):,.0f} (XLA estimate), "
        f"{p.images_per_second(p.mfu_seconds):,.0f} (at {100 * p.mfu:.0f}% MFU)",
        f"  days for {p.steps:,} steps: {p.days(p.step_seconds):.2f} (XLA estimate), {p.days(p.mfu_seconds):.2f} "
        f"(at {100 * p.mfu:.0f}% MFU)",
    ]
    if p.compile_error:
        lines[-4:] = [f"  XLA refused to compile the step: {p.compile_error}"]
    if math.isfinite(p.sampler_flops):
        lines.append(f"  sampler network evaluation ({p.sampler_rows} rows incl. guidance): {p.sampler_flops:.3e} "
                     f"FLOPs/device, {p.sampler_xla_seconds * 1e3:.2f} ms XLA estimate, {_b(p.sampler_total)}/device")
    if p.advice:
        lines.append("  does not fit; to change:")
        lines += [f"    - {a}" for a in p.advice]
    return "\n".join(lines)


def select_phases(config: ml_collections.ConfigDict) -> list[phases_lib.Phase]:
    phases = phases_lib.build_phases(config)
    want = str((config.get("compile") or {}).get("phases", "") or "")
    if not want:
        return phases
    out = []
    for w in (s.strip() for s in want.split(",") if s.strip()):
        match = [p for p in phases if p.name == w or str(p.index) == w]
        if not match:
            raise ValueError(f"compile.phases: no phase {w!r} (phases: {[p.name for p in phases]})")
        out += match
    return out


def run(config: ml_collections.ConfigDict) -> list[PhasePlan]:
    """Compile every selected phase for ``config.compile.topology``; print each plan as it is done."""
    comp = config.get("compile") or config_lib.compile_options()
    topology = str(comp.get("topology", ""))
    devices = topology_devices(topology)
    plans = []
    for phase in select_phases(config):
        plan = plan_phase(config, phase, devices, topology)
        print(format_plan(plan), flush=True)
        plans.append(plan)
    if comp.get("output"):
        write_json(plans, str(comp.output))
    return plans


def to_dict(plan: PhasePlan) -> dict[str, Any]:
    """The plan's fields plus the derived numbers (for scripts and the README table)."""
    d = dataclasses.asdict(plan)
    d.update(total=plan.total, fits=plan.fits, mfu_seconds=plan.mfu_seconds, step_seconds=plan.step_seconds,
             days_xla=plan.days(plan.step_seconds), days_mfu=plan.days(plan.mfu_seconds),
             images_per_second_xla=plan.images_per_second(plan.step_seconds),
             images_per_second_mfu=plan.images_per_second(plan.mfu_seconds))
    return d


def from_dict(d: Mapping[str, Any]) -> PhasePlan:
    names = {f.name for f in dataclasses.fields(PhasePlan)}
    return PhasePlan(**{k: v for k, v in d.items() if k in names})


def write_json(plans: Sequence[PhasePlan], path: str) -> None:
    import json

    from mdm_jax import io_paths

    io_paths.write_text(path, json.dumps([to_dict(p) for p in plans], indent=1))  # local or gs://, whole file


def exit_code(plans: Sequence[PhasePlan]) -> int:
    """0 when every phase fits; else 1, after saying which do not (their plans above say what to change)."""
    bad = [p for p in plans if not p.fits]
    for p in bad:
        print(f"phase '{p.phase}' does not fit on {p.topology}: {_b(p.total)} per device > {_b(p.hbm)} HBM",
              flush=True)
    return 1 if bad else 0


def main(config: ml_collections.ConfigDict) -> int:
    """``--mode=compile``: the exit status is 0 when every phase fits, 1 when one does not."""
    return exit_code(run(config))
