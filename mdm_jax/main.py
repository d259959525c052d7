r"""Command line: ``python -m mdm_jax.main --config=configs/<name>.py[:arg] --workdir=DIR [--mode=train|sample]``.

Thin on purpose: flags, logging and multi-process setup here; the work is in ``mdm_jax.training``
(``train_and_evaluate`` and ``sample_from_checkpoint``), which tests call directly. Override any config field
with ``--config.a.b=value`` (lists: ``--config.phases[1].batch_size=64``).
"""

from __future__ import annotations

import os

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config file (configs/*.py[:arg]).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, TensorBoard logs and samples.")
flags.DEFINE_enum("mode", "train", ["train", "sample", "eval"],
                  "train: (resume) training; sample: grids from a checkpoint; eval: metrics of a checkpoint.")
flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"],
                  "jax.distributed.initialize(): 'auto' when a cluster environment or --coordinator_address is set.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs without a scheduler).")
flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")
flags.mark_flags_as_required(["config", "workdir"])

_CLUSTER_ENV = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS",
                "JAX_COORDINATOR_ADDRESS")


def _wants_distributed() -> bool:
    if FLAGS.distributed != "auto":
        return FLAGS.distributed == "on"
    if FLAGS.coordinator_address:
        return True
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 or int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return True
    return any(k in os.environ for k in _CLUSTER_ENV[2:])


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
    jax.distributed.initialize(**kwargs)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
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
        training.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    elif FLAGS.mode == "eval":
        from mdm_jax.evaluation import run as eval_run

        eval_run.evaluate_checkpoint(FLAGS.config, FLAGS.workdir)
    else:
        training.sample_from_checkpoint(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
