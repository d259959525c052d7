"""``create_dataset(config.data, ...)``: one entry point from a config to a per-host, checkpointable iterator."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import grain
import ml_collections

from mdm_jax import io_paths
from mdm_jax.data import file_sources, packaged_sources, precomputed, procedural
from mdm_jax.data.file_sources import MissingDataError
from mdm_jax.data.pipeline import DataDecodeError, DataInfo, FailureBound, Preprocess, build_pipeline
from mdm_jax.text import tokenizers as tok_lib

log = logging.getLogger(__name__)

SOURCES = ("procedural_shapes", "imagenet", "image_text_tsv", "webdataset", "image_folder", "fashion_mnist", "emoji",
           "moving_shapes", "video_folder")


def default_data_config() -> ml_collections.ConfigDict:
    """Every ``config.data`` field with its default.  Unknown keys in a user config are an error (typos)."""
    return ml_collections.ConfigDict(
        {
            "name": "procedural_shapes",  # one of SOURCES
            "data_dir": "",  # source files ('' -> source default); '{split}' is replaced by the split name
            "resolution": 32,  # top resolution; lower ones are derived by the diffusion core
            "conditioning": "",  # 'class' | 'text' | 'none'; '' -> the source's natural one
            "flip": False,  # random horizontal flip (ml-mdm: off)
            "cond_drop_prob": 0.1,  # classifier-free guidance dropout (labels -> null label, captions -> null)
            "num_workers": 0,  # grain worker processes (0 = in-process; tests)
            "read_threads": 4,  # threads reading/decoding per worker
            "prefetch_buffer_size": 64,  # elements prefetched by those threads
            "worker_buffer_size": 2,  # batches buffered per worker process
            "shuffle": True,  # global shuffle of the train split (other splits are never shuffled)
            "num_epochs": -1,  # -1: train repeats forever, other splits 1 epoch; 0: forever; n: n epochs
            "drop_remainder": True,  # static batch shapes
            "max_consecutive_failures": 1000,  # that many undecodable examples in a row: DataDecodeError (0: off)
            "max_failure_fraction": 0.5,  # ... or more than this fraction of those read (after the number above)
            "keep_captions": False,  # also return batch['captions'] (list of str; pop before device transfer)
            "process_index": -1,  # -1: jax.process_index()
            "process_count": -1,  # -1: jax.process_count()
            # source specific
            "num_examples": 100_000,  # procedural_shapes epoch length
            "procedural_seed": 0,  # procedural_shapes content seed (independent of the shuffle seed)
            "procedural_label": "shape_colour",  # procedural_shapes class label: 'shape_colour' (24) | 'colour' (6)
            "file_list": "",  # image_text_tsv: ml-mdm file-list TSV ('filename' column); else data_dir/*.tsv
            "file_pattern": "",  # image_text_tsv / webdataset glob override (e.g. '/data/cc12m/*.tar')
            "captions_file": "",  # image_folder: 'path<TAB>caption' file (default data_dir/captions.tsv|.txt)
            "tfds_name": "imagenet2012",  # imagenet: tfds builder name (any image/label tfds set works)
            "caption_template": "",  # class sets used with text conditioning: 'a photo of a {}'
            "fmnist_mode": "pad",  # fashion_mnist 28->32: 'pad' or 'resize'
            "label_field": "category",  # emoji: 'category' (10) or 'subcategory' (99)
            # video (moving_shapes, video_folder): clips are mosaics of `frames` frames, resolution = mosaic side
            "frames": 1,  # frames per clip (a square: 4, 16, 64); 1 = images
            "frame_stride": 4,  # video_folder: take every n-th frame (paper: 4)
            "frame_start": -1,  # video_folder: first frame; -1 = drawn per video (one clip per video)
            "still_frame": "first",  # moving_shapes with frames=1: the path's 'first', 'last' or a 'random' point
            "text": {
                "tokenizer": "byte",  # 'byte' (built-in) | 't5' (local spiece.model / folder) | 'mlmdm' (t5.vocab)
                "tokenizer_path": "",
                "max_length": 128,  # ml-mdm max_token_length
                "null_caption": "",  # dropped captions become this (ml-mdm's default negative prompt is "")
                "precomputed_dir": "",  # read lm_outputs from here instead of emitting tokens
            },
        }
    )


def resolve_config(config: ml_collections.ConfigDict | dict) -> ml_collections.ConfigDict:
    """Fills defaults and rejects unknown fields."""
    user = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
    out = default_data_config()
    for key, value in user.items():
        if key not in out:
            raise ValueError(f"unknown data config field {key!r}; known: {sorted(out.keys())}")
        if key == "text":
            for tkey, tvalue in dict(value).items():
                if tkey not in out.text:
                    raise ValueError(f"unknown data.text field {tkey!r}; known: {sorted(out.text.keys())}")
                out.text[tkey] = tvalue
        else:
            out[key] = value
    if out.name not in SOURCES:
        raise ValueError(f"unknown data source {out.name!r}; expected one of {SOURCES}")
    return out


@dataclasses.dataclass
class SourceSpec:
    """What a source offers: its natural conditioning and class metadata."""

    conditioning: str
    has_labels: bool
    has_captions: bool
    num_classes: int | None = None
    class_names: tuple[str, ...] | None = None


def _require_dir(path: str, what: str) -> str:
    if not path or not io_paths.isdir(path):
        raise MissingDataError(f"{what}: data_dir {path!r} does not exist; create it and put the files there.")
    return path


def create_source(config: ml_collections.ConfigDict, split: str = "train") -> tuple[Any, SourceSpec]:
    """Builds the random-access source named by ``config.name`` (config must be resolved).

    File-based sources take their split from a ``{split}`` placeholder in ``data_dir``, ``file_list`` or
    ``file_pattern`` (e.g. ``/data/imagenet/{split}``); without one every split reads the same files.
    """
    name = config.name
    config = ml_collections.ConfigDict(config.to_dict())
    for key in ("data_dir", "file_list", "file_pattern", "captions_file"):
        config[key] = config[key].replace("{split}", split)
    if name == "procedural_shapes":
        src = procedural.ProceduralShapesSource(
            config.resolution, config.num_examples if split == "train" else max(1, config.num_examples // 10),
            split=split, seed=config.procedural_seed, label_by=config.procedural_label,
        )
        names = procedural.class_names(config.procedural_label)
        return src, SourceSpec("text", True, True, len(names), names)
    if name in ("moving_shapes", "video_folder"):
        from mdm_jax.data import video

        frames = int(config.frames)  # 1: single frames (the image phase of progressive video training)
        if name == "moving_shapes":
            src = video.MovingShapesSource(config.resolution, frames, config.num_examples if split == "train"
                                           else max(1, config.num_examples // 10), split, config.procedural_seed,
                                           still_frame=config.still_frame)
            names = video.MovingShapesSource.class_names()
            return src, SourceSpec("text", True, True, len(names), names)
        src = video.VideoFolderSource(config.data_dir, config.resolution, frames, int(config.frame_stride),
                                      int(config.frame_start), config.captions_file, config.procedural_seed)
        return src, SourceSpec("text", False, True)
    if name == "fashion_mnist":
        data_dir = config.data_dir or packaged_sources.FASHION_MNIST_DIR
        src = packaged_sources.FashionMNISTSource(data_dir, split, config.fmnist_mode, config.caption_template)
        names = packaged_sources.FASHION_MNIST_CLASSES
        return src, SourceSpec("class", True, True, len(names), names)
    if name == "emoji":
        src = packaged_sources.EmojiSource(_require_dir(config.data_dir, "emoji"), split, config.label_field)
        return src, SourceSpec("text", True, True, len(src.class_names), src.class_names)
    if name == "imagenet":
        from mdm_jax.data.tfds_source import TfdsImageSource

        src = TfdsImageSource(config.tfds_name, config.data_dir, split, config.caption_template)
        return src, SourceSpec("class", True, True, src.num_classes, src.class_names)
    if name == "image_text_tsv":
        if config.file_list:
            if not io_paths.isfile(config.file_list):
                raise MissingDataError(f"image_text_tsv: file list {config.file_list!r} not found.")
            tsvs = file_sources.read_file_list(config.file_list)
        else:
            pattern = config.file_pattern or io_paths.join(_require_dir(config.data_dir, "image_text_tsv"), "*.tsv")
            tsvs = io_paths.glob(pattern)
        if not tsvs:
            raise MissingDataError(
                f"image_text_tsv: no shard TSVs (columns tar, file, caption) found via "
                f"{config.file_list or config.file_pattern or config.data_dir!r}; put shards and tars there."
            )
        src = file_sources.TarTsvSource(tsvs, base_dir=config.data_dir)
        return src, SourceSpec("text", False, True)
    if name == "webdataset":
        pattern = config.file_pattern or io_paths.join(_require_dir(config.data_dir, "webdataset"), "*.tar")
        tars = io_paths.glob(pattern)
        if not tars:
            raise MissingDataError(f"webdataset: no .tar shards match {pattern!r}; put the shards there.")
        src = file_sources.WebDatasetSource(tars)
        n = src.num_classes if src.has_labels else None
        return src, SourceSpec("text", src.has_labels, True, n)
    if name == "image_folder":
        src = file_sources.ImageFolderSource(_require_dir(config.data_dir, "image_folder"), config.captions_file)
        if len(src) == 0:
            raise MissingDataError(f"image_folder: no images under {config.data_dir!r}.")
        if src.class_names:
            return src, SourceSpec("class", True, False, len(src.class_names), src.class_names)
        return src, SourceSpec("text" if src.has_captions else "none", False, src.has_captions)
    raise ValueError(name)


def _describe_source(config: ml_collections.ConfigDict, split: str) -> str:
    """'image_folder (/data/x, split train)': how error messages name a source."""
    where = [str(config[k]).replace("{split}", split) for k in ("data_dir", "file_list", "file_pattern") if config[k]]
    if config.name == "imagenet":
        where.insert(0, config.tfds_name)
    return f"'{config.name}' ({', '.join(where + [f'split {split}'])})"


def _process_info(config: ml_collections.ConfigDict) -> tuple[int, int]:
    if config.process_index >= 0 and config.process_count > 0:
        return int(config.process_index), int(config.process_count)
    import jax

    return jax.process_index(), jax.process_count()


def _ensure_absl_flags_parsed() -> None:
    """grain worker processes crash under jax 0.10 unless absl flags are parsed (stack.md pitfall 3)."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def build_dataset(
    config: ml_collections.ConfigDict | dict, *, global_batch_size: int, seed: int, split: str = "train"
) -> tuple[grain.IterDataset, DataInfo]:
    """Like ``create_dataset`` but returns the grain ``IterDataset`` (``iter()`` it for a fresh iterator)."""
    config = resolve_config(config)
    process_index, process_count = _process_info(config)
    if global_batch_size % process_count:
        raise ValueError(f"global batch {global_batch_size} is not divisible by {process_count} processes")
    per_host = global_batch_size // process_count
    source, spec = create_source(config, split)
    conditioning = config.conditioning or spec.conditioning
    if conditioning not in ("none", "class", "text"):
        raise ValueError(f"data.conditioning must be 'class', 'text' or 'none', got {conditioning!r}")
    if conditioning == "class" and not spec.has_labels:
        raise ValueError(f"{config.name} has no class labels; use conditioning 'text' or 'none'")
    if conditioning == "text" and not spec.has_captions:
        raise ValueError(f"{config.name} has no captions; use conditioning 'class' or 'none'")

    tokenizer, null_embedding, lm_dim = None, None, None
    text = config.text
    if conditioning == "text":
        if text.precomputed_dir:
            source = precomputed.WithPrecomputedText(source, text.precomputed_dir, split)
            null_embedding = precomputed.load_null_embedding(text.precomputed_dir)
            lm_dim = source.dim
        else:
            tokenizer = tok_lib.create_tokenizer(text.tokenizer, text.tokenizer_path)
    drop = float(config.cond_drop_prob) if split == "train" and conditioning != "none" else 0.0
    preprocess = Preprocess(
        resolution=int(config.resolution),
        flip=bool(config.flip) and split == "train",
        conditioning=conditioning,
        cond_drop_prob=drop,
        num_classes=spec.num_classes,
        tokenizer=tokenizer,
        max_length=int(text.max_length),
        null_caption=str(text.null_caption),
        null_embedding=null_embedding,
        keep_captions=bool(config.keep_captions),
        frames=int(config.frames),
    )
    is_train = split == "train"
    num_epochs = config.num_epochs
    if num_epochs is not None and num_epochs < 0:
        num_epochs = None if is_train else 1
    elif not num_epochs:
        num_epochs = None  # 0 or None: repeat forever
    if config.num_workers > 0:
        _ensure_absl_flags_parsed()
    ds = build_pipeline(
        source,
        preprocess,
        per_host_batch_size=per_host,
        seed=int(seed),
        shuffle=bool(config.shuffle) and is_train,
        num_epochs=num_epochs,
        process_index=process_index,
        process_count=process_count,
        num_workers=int(config.num_workers),
        read_threads=int(config.read_threads),
        prefetch_buffer_size=int(config.prefetch_buffer_size),
        worker_buffer_size=int(config.worker_buffer_size),
        drop_remainder=bool(config.drop_remainder),
        failure_bound=FailureBound(_describe_source(config, split), int(config.max_consecutive_failures),
                                   float(config.max_failure_fraction)),
    )
    info = DataInfo(
        name=config.name,
        split=split,
        resolution=int(config.resolution),
        conditioning=conditioning,
        num_examples=len(source),
        global_batch_size=global_batch_size,
        per_host_batch_size=per_host,
        num_classes=spec.num_classes if conditioning == "class" else None,
        class_names=spec.class_names,
        null_label=spec.num_classes if conditioning == "class" else None,
        tokenizer=tokenizer,
        vocab_size=tokenizer.vocab_size if tokenizer is not None else None,
        max_length=int(text.max_length) if conditioning == "text" else None,
        null_caption=str(text.null_caption),
        lm_dim=lm_dim,
        cond_drop_prob=drop,
    )
    log.info("data: %s", info)
    return ds, info


def create_dataset(
    config: ml_collections.ConfigDict | dict, *, global_batch_size: int, seed: int, split: str = "train"
) -> tuple[grain.DatasetIterator, DataInfo]:
    """Per-host iterator of batches plus ``DataInfo``.

    Batches: ``images`` float32 (B,R,R,3) in ``(x-127)/128``; ``labels`` int32 (B,) for class conditioning
    (dropped -> ``info.null_label``); for text ``tokens`` int32 (B,S) + ``lm_mask`` float32 (B,S), or
    ``lm_outputs`` float32 (B,S,D) + ``lm_mask`` when ``text.precomputed_dir`` is set.  B = global / processes.
    The iterator is a grain ``DatasetIterator`` (``get_state``/``set_state``; save it with
    ``grain.checkpoint.CheckpointSave``/``CheckpointRestore`` in an Orbax CheckpointManager); ``iterator.num_skipped``
    counts unreadable images.  Use the same ``seed`` on every host: hosts slice one global shuffled stream.
    """
    ds, info = build_dataset(config, global_batch_size=global_batch_size, seed=seed, split=split)
    return iter(ds), info


__all__ = [
    "DataDecodeError", "DataInfo", "MissingDataError", "build_dataset", "create_dataset", "create_source",
    "default_data_config", "resolve_config",
]


SAMPLE_SPLITS = ("validation", "test", "train")


def conditioning_batch(
    config: ml_collections.ConfigDict | dict, *, global_batch_size: int, seed: int,
    splits: tuple[str, ...] = SAMPLE_SPLITS,
) -> tuple[DataInfo, dict[str, Any] | None]:
    """(DataInfo, first batch) of the first of ``splits`` the source has (held-out splits first), with captions,
    for conditioning sample grids; the batch is None when that split is empty.

    A split a source lacks raises ``ValueError`` (unknown split) or ``FileNotFoundError`` (no files for it):
    those move on to the next split; any other error propagates.
    """
    cfg = ml_collections.ConfigDict(resolve_config(config).to_dict())
    cfg.keep_captions, cfg.num_workers, cfg.cond_drop_prob = True, 0, 0.0
    errors = []
    for split in splits:
        try:
            it, info = create_dataset(cfg, global_batch_size=global_batch_size, seed=seed, split=split)
        except (ValueError, FileNotFoundError) as e:
            errors.append(f"{split}: {e}")
            continue
        try:
            return info, next(it)
        except StopIteration:
            return info, None
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()
    raise MissingDataError(f"data '{cfg.name}': none of the splits {splits} can be read ({'; '.join(errors)})")
