r"""Command line: ``python -m mdm_jax.main --config=configs/<name>.py[:arg] --workdir=DIR [--mode=train|sample]``,
or ``--mode=compile --config.compile.topology=v5p:2x2x1`` (no workdir) for a compiled per-chip plan.

Thin on purpose: flags, logging and multi-process setup here; the work is in ``mdm_jax.training``
(``train_and_evaluate`` and ``sample_from_checkpoint``), which tests call directly. Override any config field
with ``--config.a.b=value`` (lists: ``--config.phases[1].batch_size=64``).
"""

from __future__ import annotations

import os

from absl import app, flags, logging
from ml_collections import config_flags

from mdm_jax import cluster_env

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config file (configs/*.py[:arg]).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, TensorBoard logs and samples.")
flags.DEFINE_enum("mode", "train", ["train", "sample", "eval", "compile"],
                  "train: (resume) training; sample: grids from a checkpoint; eval: metrics of a checkpoint; compile: "
                  "per-chip memory/FLOP plan of every phase for --config.compile.topology (compile-only, needs "
                  "libtpu, no TPU).")
flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"],
                  "jax.distributed.initialize(): 'auto' when a cluster environment or --coordinator_address is set.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs without a scheduler).")
flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")
flags.DEFINE_string("local_device_ids", "",
                    "GPUs this process drives: '' = JAX's choice (under SLURM: the one with the task's local id), "
                    "'visible' = all in CUDA_VISIBLE_DEVICES, or '0,1,...' (launch/gpu_slurm.sh sets it).")
flags.mark_flags_as_required(["config"])


def _wants_distributed() -> bool:
    if FLAGS.distributed != "auto":
        return FLAGS.distributed == "on"
    return cluster_env.wants_distributed(coordinator_address=FLAGS.coordinator_address)


def init_distributed() -> None:
    """Multi-process setup (TPU pods, SLURM/MPI GPU clusters, or explicit flags; gloo collectives on CPU)."""
    import jax

    if not _wants_distributed():
        return
    if os.environ.get("JAX_PLATFORMS", "").startswith("cpu") or FLAGS.coordinator_address:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = {}
    if FLAGS.coordinator_address:
        kwargs = dict(coordinator_address=FLAGS.coordinator_address, num_processes=FLAGS.num_processes,
                      process_id=FLAGS.process_id)
    ids = cluster_env.local_device_ids(FLAGS.local_device_ids)
    if ids is not None:
        kwargs["local_device_ids"] = ids
    jax.distributed.initialize(**kwargs)


def set_cpu_devices(n: int) -> None:
    """``config.cpu_devices``: N CPU devices instead of one, before JAX creates its backends. Data parallelism
    over them uses the cores better than one device's intra-op threads for the small convolutions of CPU runs."""
    import jax

    if n > 0 and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        jax.config.update("jax_num_cpu_devices", int(n))


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if FLAGS.mode == "compile":
        from mdm_jax.training import compile_plan

        raise SystemExit(compile_plan.main(FLAGS.config))
    if not FLAGS.workdir:
        raise app.UsageError("--workdir is required (train and sample modes)")
    set_cpu_devices(int(FLAGS.config.get("cpu_devices", 0) or 0))
    init_distributed()
    import jax

    from mdm_jax import training

    # Persistent XLA compilation cache shared by runs (a restart or a second run skips most compile time).
    cache = os.environ.get("MDM_COMPILATION_CACHE", os.path.expanduser("~/.cache/mdm_jax/jax_cache"))
    if cache:
        jax.config.update("jax_compilation_cache_dir", cache)
    from mdm_jax.training import reporting

    reporting.quiet_library_logs()
    logging.info("JAX %s: process %d/%d, %d local / %d global devices (%s)", jax.__version__, jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count(), jax.devices()[0].platform)
    if FLAGS.mode == "train":
        from mdm_jax.training.checkpoint import ResumeError

        try:
            training.train_and_evaluate(FLAGS.config, FLAGS.workdir)
        except ResumeError as e:  # one clear message, every checkpoint left in place
            logging.error("%s", e)
            raise SystemExit(1) from None
    elif FLAGS.mode == "eval":
        from mdm_jax.evaluation import run as eval_run

        eval_run.evaluate_checkpoint(FLAGS.config, FLAGS.workdir)
    else:
        training.sample_from_checkpoint(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
