"""Training system: progressive phases, sharded state, Orbax checkpoints, metrics and sample grids.

``train_and_evaluate(config, workdir)`` runs (or resumes) a run; ``sample_from_checkpoint(config, workdir)``
writes sample grids from a checkpoint's EMA weights.
"""

# Imported lazily (PEP 562) so that the step-building modules (config_lib, train_step, ...) can be used without
# the data pipeline and checkpointing stack that the trainer pulls in (benchmarks/compare_mlmdm.py relies on it).
_LAZY = {"Trainer": "trainer", "train_and_evaluate": "trainer", "sample_from_checkpoint": "sample_mode"}

__all__ = ["Trainer", "sample_from_checkpoint", "train_and_evaluate"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"mdm_jax.training.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'mdm_jax.training' has no attribute {name!r}")
