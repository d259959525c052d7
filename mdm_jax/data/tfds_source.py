"""ImageNet (or any image classification set) through tensorflow-datasets' random-access ``data_source``.

Reading needs no TensorFlow: the data must have been prepared in the ``array_record`` file format.  Images are
read as encoded bytes (``SkipDecoding``) and decoded by the pipeline, which is faster (JPEG draft decoding) and
lets corrupt records be skipped and counted.  Nothing is ever downloaded: an unprepared data set raises
``MissingDataError`` with the preparation command.

Preparing ImageNet (once; tfds' imagenet2012 builder itself needs ``tensorflow-cpu`` for a few CMYK/PNG files)::

    # put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in $DATA/downloads/manual
    tfds build imagenet2012 --data_dir=$DATA --file_format=array_record

Alternative without TensorFlow: extract the train tar into class folders and use ``data.name='image_folder'``.
"""

from __future__ import annotations

import os

import numpy as np

from mdm_jax.data.file_sources import MissingDataError
from mdm_jax.data.pipeline import CORRUPT_KEY

_SPLITS = {"train": "train", "validation": "validation", "test": "validation"}


def _missing(name: str, data_dir: str, why: str) -> MissingDataError:
    return MissingDataError(
        f"{name} is not available in {data_dir!r} ({why}): place ILSVRC2012_img_{{train,val}}.tar in "
        f"{os.path.join(data_dir or '$DATA', 'downloads', 'manual')} and run `tfds build {name} "
        f"--data_dir={data_dir or '$DATA'} --file_format=array_record` (needs tensorflow-cpu once), or use "
        "data.name='image_folder' on extracted class folders."
    )


class TfdsImageSource:
    """Wraps ``tfds.data_source``: yields encoded image bytes, int32 label and a templated caption."""

    def __init__(self, name: str, data_dir: str, split: str = "train", caption_template: str = ""):
        try:
            import tensorflow_datasets as tfds
        except ImportError as e:
            raise ImportError(
                "data.name='imagenet' needs tensorflow-datasets (no TensorFlow): pip install 'mdm-jax[data]'"
            ) from e
        if not data_dir or not os.path.isdir(data_dir):
            raise _missing(name, data_dir, "folder does not exist")
        builder = tfds.builder(name, data_dir=data_dir)
        if not builder.is_prepared():
            raise _missing(name, data_dir, "not prepared")
        file_format = str(builder.info.file_format or "")
        if "array_record" not in file_format.lower():
            raise _missing(name, data_dir, f"prepared as {file_format}, which needs TensorFlow to read")
        tfds_split = _SPLITS.get(split, split)
        self._ds = tfds.data_source(
            name,
            split=tfds_split,
            data_dir=data_dir,
            download=False,
            decoders={"image": tfds.decode.SkipDecoding()},
        )
        label = builder.info.features["label"]
        self.class_names: tuple[str, ...] = tuple(label.names)
        self.num_classes = int(label.num_classes)
        self.caption_template = caption_template or "a photo of a {}"
        self.name, self.split = name, tfds_split

    def __len__(self) -> int:
        return len(self._ds)

    def __getitem__(self, i: int) -> dict:
        try:
            record = self._ds[i]
        except Exception as e:  # unreadable record: skip like a corrupt image
            return {CORRUPT_KEY: f"{self.name}/{self.split}/{i}: {type(e).__name__}: {e}"}
        label = int(record["label"])
        key = record.get("file_name", f"{self.name}/{self.split}/{i}")
        if isinstance(key, bytes):
            key = key.decode("utf-8", errors="replace")
        return {
            "image": record["image"],
            "label": np.int32(label),
            "caption": self.caption_template.format(self.class_names[label]),
            "key": str(key),
        }
