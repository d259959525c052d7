"""Precomputed text embeddings: stored once per split, read back index-aligned with the image source.

Layout of ``precomputed_dir`` (written by ``python -m mdm_jax.text.precompute``)::

    meta.json                # {"dim", "max_length", "encoder", "null_caption", "num_examples": {split: n}, ...}
    null.npy                 # (L, D) float16: embedding of the null caption (used by conditioning dropout)
    <split>.array_record     # record i = np.save bytes of (L_i, D) float16, the L_i real tokens of example i

Only real tokens are stored (pad rows are exactly zero in ml-mdm's ``lm_outputs``), so the pipeline re-pads to
``max_length`` and rebuilds the mask.  Index i must be example i of the same source and split, unshuffled.
"""

from __future__ import annotations

import io
import json

import numpy as np

from mdm_jax import io_paths
from mdm_jax.data.file_sources import MissingDataError

META_FILE = "meta.json"
NULL_FILE = "null.npy"


def record_path(directory: str, split: str) -> str:
    return io_paths.join(directory, f"{split}.array_record")


def serialize(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(array, np.float16), allow_pickle=False)
    return buf.getvalue()


def deserialize(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def load_meta(directory: str) -> dict:
    path = io_paths.join(directory, META_FILE)
    if not io_paths.isfile(path):
        raise MissingDataError(
            f"no precomputed text embeddings in {directory!r}: run `python -m mdm_jax.text.precompute "
            f"--out {directory} ...` with the same data config first."
        )
    return json.loads(io_paths.read_text(path))


def load_null_embedding(directory: str) -> np.ndarray:
    return np.load(io.BytesIO(io_paths.read_bytes(io_paths.join(directory, NULL_FILE)))).astype(np.float32)


class WithPrecomputedText:
    """Adds ``lm_outputs`` (L, D) from ``<split>.array_record`` to each example of ``base`` (same index)."""

    def __init__(self, base, directory: str, split: str):
        import grain

        meta = load_meta(directory)
        path = record_path(directory, split)
        if not io_paths.isfile(path):
            raise MissingDataError(f"{path} missing: precompute embeddings for split {split!r} first.")
        self._base = base
        self._records = grain.sources.ArrayRecordDataSource([path])
        if len(self._records) != len(base):
            raise ValueError(
                f"{path} holds {len(self._records)} embeddings but the source has {len(base)} examples: "
                "recompute them for this data config."
            )
        self.dim = int(meta["dim"])
        for attr in ("class_names", "num_classes"):
            if hasattr(base, attr):
                setattr(self, attr, getattr(base, attr))

    def __len__(self) -> int:
        return len(self._base)

    def __getitem__(self, i: int) -> dict:
        element = self._base[i]
        if "_corrupt" not in element:
            element = dict(element)
            element["lm_outputs"] = deserialize(self._records[i])
        return element
