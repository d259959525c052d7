"""Training system: progressive phases, sharded state, Orbax checkpoints, metrics and sample grids.

``train_and_evaluate(config, workdir)`` runs (or resumes) a run; ``sample_from_checkpoint(config, workdir)``
writes sample grids from a checkpoint's EMA weights.
"""

from mdm_jax.training.sample_mode import sample_from_checkpoint
from mdm_jax.training.trainer import Trainer, train_and_evaluate

__all__ = ["Trainer", "sample_from_checkpoint", "train_and_evaluate"]
