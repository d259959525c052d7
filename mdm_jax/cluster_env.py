"""Whether this process is one of several (and so must call ``jax.distributed.initialize()``), decided from the
environment alone, before JAX touches a device.

A Cloud TPU VM created with ``gcloud compute tpus tpu-vm create`` (or queued resources) has no cluster variables in
its environment: JAX finds the other workers through the GCE metadata server, and knows it is on a TPU VM because
Google TPU chips sit on its PCI bus (vendor 0x1ae0). We test the same thing, so a multi-host slice initialises even
though ``TPU_WORKER_HOSTNAMES``/``SLURM_*`` are absent (on a single-host TPU VM the call is harmless: one process).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Mapping, Sequence

GOOGLE_PCI_VENDOR = "0x1ae0"
# PCI device ids of TPU chips (v3, v4, v5p, v5e, v6e, 7x), as JAX's hardware_utils lists them.
TPU_PCI_DEVICES = frozenset({"0x0027", "0x0056", "0x005e", "0x0062", "0x0063", "0x006f", "0x0076"})
CLUSTER_VARS = ("TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES", "MEGASCALE_COORDINATOR_ADDRESS",
                "JAX_COORDINATOR_ADDRESS")


def tpu_chips(sys_root: str = "/sys") -> int:
    """Number of TPU chips on this machine's PCI bus (0 off Cloud TPU VMs)."""
    n = 0
    for vendor in glob.glob(os.path.join(sys_root, "bus/pci/devices/*/vendor")):
        try:
            with open(vendor) as f:
                if f.read().strip() != GOOGLE_PCI_VENDOR:
                    continue
            with open(os.path.join(os.path.dirname(vendor), "device")) as f:
                n += f.read().strip() in TPU_PCI_DEVICES
        except OSError:
            continue
    return n


def wants_distributed(environ: Mapping[str, str] | None = None, *, coordinator_address: str | None = None,
                      sys_root: str = "/sys") -> bool:
    """True on a multi-process SLURM/MPI job, a Cloud TPU VM, a GKE/multislice TPU job or with explicit flags."""
    env = os.environ if environ is None else environ
    if coordinator_address:
        return True
    if int(env.get("SLURM_NTASKS", "1")) > 1 or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return True
    if any(k in env for k in CLUSTER_VARS):
        return True
    return "TPU_SKIP_MDS_QUERY" not in env and tpu_chips(sys_root) > 0


def local_device_ids(spec: str | None, environ: Mapping[str, str] | None = None) -> list[int] | None:
    """``--local_device_ids``: '' -> None (JAX decides: under SLURM, the GPU with this task's local id);
    'visible' -> every GPU this process can see (one per task when SLURM binds GPUs to tasks, all of a node's
    when it does not); '0,1,...' -> those."""
    env = os.environ if environ is None else environ
    if not spec:
        return None
    if spec == "visible":
        visible = env.get("CUDA_VISIBLE_DEVICES", "")
        ids: Sequence[str] = [v for v in visible.split(",") if v.strip()]
        return list(range(len(ids))) if ids else None
    try:
        return [int(x) for x in spec.split(",")]
    except ValueError as e:
        raise ValueError(f"--local_device_ids={spec!r}: expected '', 'visible' or comma-separated integers") from e
