"""The grain pipeline shared by every source: shard, shuffle, decode, crop, flip, drop conditioning, batch.

Layout (all random-access, so resuming is exact and shuffling is global without a shuffle buffer)::

    MapDataset.source(src) .shuffle(seed) .repeat(epochs) [process_index::process_count]
      .random_map(Preprocess)            # decode + resize/crop + flip + conditioning dropout + tokenize
      .to_iter_dataset(ReadOptions)      # threaded reads
      -> _SkipCorrupt                    # drops unreadable images, counts them, errors on too many
      .batch(per_host_batch)
      .mp_prefetch(num_workers)          # worker processes (0 = in-process)
      -> _Finalize                       # main process: uint8 -> (x-127)/128, key names, skip counter

Randomness (shuffle order, flips, dropout) is a function of (seed, epoch, element index), so the same
``(seed, process_index, process_count, num_workers)`` gives the same batches, and ``get_state``/``set_state``
resume mid-epoch exactly.  Hosts take disjoint strided slices of one global shuffled stream.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import grain
import numpy as np

from mdm_jax.data import image_ops
from mdm_jax.text import tokenizers as tok_lib

log = logging.getLogger(__name__)

CORRUPT_KEY = "_corrupt"
_SKIPPED_KEY = "_skipped"


@dataclasses.dataclass(frozen=True)
class DataInfo:
    """What a training/sampling loop needs to know about the data it gets.

    ``num_classes`` excludes the null label; dropped labels equal ``null_label == num_classes``.  For text,
    ``tokenizer`` tokenizes prompts at sampling time exactly as the pipeline did (``tokenize_batch``), and
    ``null_caption`` is what dropped captions were replaced with (use it as the default negative prompt).
    """

    name: str
    split: str
    resolution: int
    conditioning: str  # 'none' | 'class' | 'text'
    num_examples: int  # per epoch, all hosts together
    global_batch_size: int
    per_host_batch_size: int
    num_classes: int | None = None
    class_names: tuple[str, ...] | None = None
    null_label: int | None = None
    tokenizer: Any = None
    vocab_size: int | None = None
    max_length: int | None = None
    pad_id: int = tok_lib.PAD_ID
    null_caption: str = ""
    lm_dim: int | None = None  # set when batches carry precomputed ``lm_outputs``
    cond_drop_prob: float = 0.0


@dataclasses.dataclass
class Preprocess(grain.transforms.RandomMap):
    """Per-example work, run in grain workers.  Never raises on bad images: returns a ``_corrupt`` marker."""

    resolution: int
    flip: bool = False
    conditioning: str = "none"
    cond_drop_prob: float = 0.0
    num_classes: int | None = None
    tokenizer: Any = None
    max_length: int = 128
    null_caption: str = ""
    null_embedding: np.ndarray | None = None  # (L, D) for precomputed text embeddings
    keep_captions: bool = False
    frames: int = 1  # > 1: images are mosaics of video frames (flip each frame, not the mosaic)

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        if CORRUPT_KEY in element:
            return element
        try:
            image = element["image"]
            if isinstance(image, (bytes, bytearray, memoryview)):
                image = image_ops.decode_image(bytes(image), min_size=self.resolution)
            image = image_ops.resize_smallest_side_center_crop(image, self.resolution)
        except Exception as e:  # corrupt bytes, truncated files, odd modes: skip, never crash training
            return {CORRUPT_KEY: f"{element.get('key', '?')}: {type(e).__name__}: {e}"}
        out = {}
        if self.flip and rng.random() < 0.5:
            if self.frames > 1:
                from mdm_jax.data.video import flip_frames

                image = flip_frames(image, self.frames)
            else:
                image = image[:, ::-1]
        out["image"] = np.ascontiguousarray(image, dtype=np.uint8)
        drop = self.cond_drop_prob > 0 and rng.random() < self.cond_drop_prob
        if self.conditioning == "class":
            out["label"] = np.int32(self.num_classes if drop else element["label"])
        elif self.conditioning == "text":
            if "lm_outputs" in element:
                emb = self.null_embedding if drop else element["lm_outputs"]
                emb = np.asarray(emb, np.float32)[: self.max_length]
                padded = np.zeros((self.max_length, emb.shape[-1]), np.float32)
                padded[: len(emb)] = emb
                mask = np.zeros((self.max_length,), np.float32)
                mask[: len(emb)] = 1.0
                out["lm_outputs"], out["lm_mask"] = padded, mask
            else:
                caption = self.null_caption if drop else str(element["caption"])
                tokens = tok_lib.encode_padded(self.tokenizer, caption, self.max_length)
                out["tokens"] = tokens
                out["lm_mask"] = (tokens != self.tokenizer.pad_id).astype(np.float32)
            if self.keep_captions:
                out["caption"] = self.null_caption if drop else str(element.get("caption", ""))
        return out


class DataDecodeError(RuntimeError):
    """Too many examples of a source fail to decode: the source is broken, not a few of its files."""


@dataclasses.dataclass(frozen=True)
class FailureBound:
    """When skipping unreadable examples turns into an error (per iterator, i.e. per host and worker).

    ``max_consecutive``: that many failures in a row; ``max_fraction``: more than this fraction of the examples
    read so far failed, judged once ``max_consecutive`` examples were read. Without a bound a source whose every
    example fails would loop forever without producing a batch.
    """

    source: str = "data"
    max_consecutive: int = 1000
    max_fraction: float = 0.5


class _SkipCorruptIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator, bound: FailureBound):
        super().__init__(parent)
        self._bound = bound
        self._seen = 0
        self._failed = 0

    def _check(self, consecutive: int, error: str) -> None:
        b = self._bound
        hint = (f"check the files of data source {b.source} (data_dir / file_pattern), or raise "
                "data.max_consecutive_failures / data.max_failure_fraction if this is expected")
        if b.max_consecutive > 0 and consecutive >= b.max_consecutive:
            raise DataDecodeError(f"data source {b.source}: {consecutive} consecutive examples failed to decode "
                                  f"(last: {error}); {hint}")
        if b.max_consecutive > 0 and self._seen >= b.max_consecutive and self._failed > b.max_fraction * self._seen:
            raise DataDecodeError(f"data source {b.source}: {self._failed} of {self._seen} examples "
                                  f"({100 * self._failed / self._seen:.0f}%) failed to decode, more than "
                                  f"max_failure_fraction={b.max_fraction} (last: {error}); {hint}")

    def __next__(self) -> dict:
        skipped = 0
        while True:
            element = next(self._parent)
            self._seen += 1
            if CORRUPT_KEY not in element:
                element[_SKIPPED_KEY] = np.int32(skipped)
                return element
            skipped += 1
            self._failed += 1
            log.warning("skipping unreadable image %s", element[CORRUPT_KEY])
            self._check(skipped, element[CORRUPT_KEY])

    def get_state(self) -> dict:
        return self._parent.get_state()

    def set_state(self, state: dict) -> None:
        self._parent.set_state(state)


class _SkipCorrupt(grain.IterDataset):
    """Drops corrupt-image markers and records, on the next good example, how many were dropped before it.

    The count travels in-band so it survives worker processes; skips after the last good example of a finite
    epoch, or inside a dropped remainder batch, are logged but not counted. Too many failures (``FailureBound``)
    raise ``DataDecodeError`` naming the source.
    """

    def __init__(self, parent: grain.IterDataset, bound: FailureBound):
        super().__init__(parent)
        self._bound = bound

    def __iter__(self) -> grain.DatasetIterator:
        return _SkipCorruptIterator(self._parent.__iter__(), self._bound)


class _FinalizeIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator):
        super().__init__(parent)
        self.num_skipped = 0

    def __next__(self) -> dict:
        batch = next(self._parent)
        skipped = int(np.sum(batch.pop(_SKIPPED_KEY)))
        if skipped:
            self.num_skipped += skipped
            log.warning("data: %d unreadable images skipped so far", self.num_skipped)
        out = {"images": image_ops.to_model_scale(batch.pop("image"))}
        if "label" in batch:
            out["labels"] = batch.pop("label").astype(np.int32)
        if "caption" in batch:
            out["captions"] = [str(c) for c in batch.pop("caption")]
        out.update(batch)
        return out

    def get_state(self) -> dict:
        return {"pipeline": self._parent.get_state(), "num_skipped": self.num_skipped}

    def set_state(self, state: dict) -> None:
        self._parent.set_state(state["pipeline"])
        self.num_skipped = int(state.get("num_skipped", 0))


class _Finalize(grain.IterDataset):
    """Main-process tail: model-scale float32 images (kept uint8 across worker IPC), batch key names."""

    def __iter__(self) -> grain.DatasetIterator:
        return _FinalizeIterator(self._parent.__iter__())


def build_pipeline(
    source: Any,
    preprocess: Preprocess,
    *,
    per_host_batch_size: int,
    seed: int,
    shuffle: bool,
    num_epochs: int | None,
    process_index: int,
    process_count: int,
    num_workers: int = 0,
    read_threads: int = 4,
    prefetch_buffer_size: int = 64,
    worker_buffer_size: int = 2,
    drop_remainder: bool = True,
    failure_bound: FailureBound | None = None,
) -> grain.IterDataset:
    """Returns the grain ``IterDataset`` for one host; ``iter()`` it for a checkpointable iterator."""
    ds = grain.MapDataset.source(source)
    if shuffle:
        ds = ds.shuffle(seed=seed)
    ds = ds.repeat(num_epochs)
    if process_count > 1:
        ds = ds[process_index::process_count]
    ds = ds.random_map(preprocess, seed=seed + 1)
    it = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch_buffer_size)
    )
    it = _SkipCorrupt(it, failure_bound or FailureBound())
    it = it.batch(per_host_batch_size, drop_remainder=drop_remainder)
    if num_workers > 0:
        it = it.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=worker_buffer_size)
        )
    return _Finalize(it)
