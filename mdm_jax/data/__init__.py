"""Data pipelines (grain): per-host sharded, globally shuffled, checkpointable batches for MDM training.

Entry point: ``create_dataset(config.data, global_batch_size=..., seed=..., split='train') -> (iterator, info)``.
Every field and its default: ``default_data_config()``; pipeline layout: ``pipeline``.  Sources and how to get
their data (nothing is ever downloaded at run time; a missing data set raises ``MissingDataError`` saying so):

* ``procedural_shapes``: built in, any resolution ("a red circle in the top left"; 24 shape-colour classes).
* ``fashion_mnist``: ``apt-get install -y dataset-fashion-mnist``; read in place from
  ``/usr/share/datasets/fashion-mnist`` (optional copy: ``python -m mdm_jax.data.prepare_fashion_mnist``).
* ``emoji``: ``npm pack emoji-datasource-google@16.0.0 && tar -xzf emoji-datasource-google-16.0.0.tgz`` then
  ``python -m mdm_jax.data.prepare_emoji --src package --out DATA/emoji`` (``scripts/prepare_offline_data.sh``).
* ``imagenet``: tfds ``imagenet2012`` prepared with ``--file_format=array_record`` (see ``tfds_source``).
* ``image_text_tsv``: ml-mdm's shard TSVs (``tar``, ``file``, ``caption``) + tars, via ``file_list`` or ``data_dir``.
* ``webdataset``: ``*.tar`` with ``<key>.jpg|png`` + ``<key>.txt`` (+ ``<key>.cls``).
* ``image_folder``: images with a ``captions.tsv``, class sub-folders, or ``.txt`` side-cars.
* Unreadable examples are skipped and counted; a source where most fail raises ``DataDecodeError``.
* precomputed text embeddings for any captioned source: ``python -m mdm_jax.text.precompute``.
"""

from mdm_jax.data.factory import (
    SOURCES,
    build_dataset,
    conditioning_batch,
    create_dataset,
    create_source,
    default_data_config,
    resolve_config,
)
from mdm_jax.data.file_sources import MissingDataError
from mdm_jax.data.image_ops import from_model_scale, to_model_scale
from mdm_jax.data.pipeline import DataDecodeError, DataInfo

__all__ = [
    "SOURCES",
    "DataDecodeError",
    "DataInfo",
    "MissingDataError",
    "build_dataset",
    "conditioning_batch",
    "create_dataset",
    "create_source",
    "default_data_config",
    "from_model_scale",
    "resolve_config",
    "to_model_scale",
]
