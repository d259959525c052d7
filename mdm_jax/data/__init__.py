"""Data pipelines (grain): per-host sharded, globally shuffled, checkpointable batches for MDM training.

Entry point: ``create_dataset(config.data, global_batch_size=..., seed=..., split='train') -> (iterator, info)``.
See ``factory.default_data_config`` for every field and ``pipeline`` for the layout of the pipeline.
"""

from mdm_jax.data.factory import (
    SOURCES,
    build_dataset,
    create_dataset,
    create_source,
    default_data_config,
    resolve_config,
)
from mdm_jax.data.file_sources import MissingDataError
from mdm_jax.data.image_ops import from_model_scale, to_model_scale
from mdm_jax.data.pipeline import DataInfo

__all__ = [
    "SOURCES",
    "DataInfo",
    "MissingDataError",
    "build_dataset",
    "create_dataset",
    "create_source",
    "default_data_config",
    "from_model_scale",
    "resolve_config",
    "to_model_scale",
]
