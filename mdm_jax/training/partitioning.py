"""Mesh, sharding rules and global batches: everything that decides where arrays live.

Mesh axes are ``("data", "fsdp")``: the batch is split over both (fsdp is data parallelism whose weights are
also split, ZeRO-3 style), and each large array of the train state (params, Adam moments, EMA) is split over
``fsdp`` along its largest dimension that divides evenly. XLA inserts the all-gathers/reduce-scatters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")


def mesh_shape(cfg: Mapping[str, int], num_devices: int) -> tuple[int, int]:
    """(data, fsdp) sizes from the config; one of them may be -1 (filled from the device count)."""
    data, fsdp = int(cfg.get("data", -1)), int(cfg.get("fsdp", 1))
    if data == -1 and fsdp == -1:
        raise ValueError("mesh: at most one of mesh.data / mesh.fsdp may be -1")
    if data == -1:
        if num_devices % fsdp:
            raise ValueError(f"mesh: fsdp={fsdp} does not divide the {num_devices} devices")
        data = num_devices // fsdp
    elif fsdp == -1:
        if num_devices % data:
            raise ValueError(f"mesh: data={data} does not divide the {num_devices} devices")
        fsdp = num_devices // data
    if data * fsdp != num_devices:
        raise ValueError(f"mesh: data={data} x fsdp={fsdp} = {data * fsdp} devices, but {num_devices} are available")
    return data, fsdp


def make_mesh(cfg: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ("data", "fsdp") mesh with Auto axis types (``with_sharding_constraint`` raises on Explicit ones)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(cfg, len(devices))
    if devices == list(jax.devices()):
        return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 2)
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def fsdp_spec(shape: Sequence[int], fsdp_size: int, min_size: int) -> P:
    """Shard the largest dimension divisible by ``fsdp_size`` over fsdp; small or indivisible arrays replicate."""
    if fsdp_size <= 1 or not shape or int(np.prod(shape)) < min_size:
        return P()
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % fsdp_size == 0:
            spec = [None] * len(shape)
            spec[dim] = "fsdp"
            return P(*spec)
    return P()


def tree_shardings(abstract_tree: Any, mesh: Mesh, min_size: int) -> Any:
    """NamedShardings for every leaf of a (ShapeDtypeStruct) tree, by ``fsdp_spec``."""
    fsdp = mesh.shape["fsdp"]
    return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(x.shape, fsdp, min_size)), abstract_tree)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
    """Leading (batch) dimension split over every mesh axis."""
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def check_batch_size(global_batch: int, mesh: Mesh, grad_accum_steps: int = 1) -> None:
    n = mesh.size
    if global_batch % n:
        raise ValueError(f"batch_size {global_batch} is not divisible by the {n} devices of the mesh "
                         f"{dict(mesh.shape)}; pick a multiple of {n}")
    if global_batch % jax.process_count():
        raise ValueError(f"batch_size {global_batch} is not divisible by the {jax.process_count()} processes")
    if grad_accum_steps > 1 and (global_batch // n) % grad_accum_steps:
        logging.warning("The per-device batch %d is not divisible by grad_accum_steps %d: micro-batches will be "
                        "resharded across devices every step (pick a multiple).", global_batch // n,
                        grad_accum_steps)


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Per-host numpy batch -> global jax arrays split over the batch axes (host rows stay on host devices)."""
    out = {}
    for k, v in local.items():
        v = np.asarray(v)
        out[k] = jax.make_array_from_process_local_data(batch_sharding(mesh, v.ndim), v)
    return out


def describe(tree: Any, max_lines: int = 8) -> str:
    """A few lines naming the largest arrays and how they are split (for the startup log)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    leaves = sorted(leaves, key=lambda kv: -int(np.prod(kv[1].shape)))[:max_lines]
    lines = []
    for path, x in leaves:
        name = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
        spec = getattr(getattr(x, "sharding", None), "spec", None)
        lines.append(f"  {name} {tuple(x.shape)} -> {spec}")
    return "\n".join(lines)
