"""Video sources: clips of ``frames`` frames returned as one mosaic image (the model's video layout).

* ``MovingShapesSource``: procedural clips, no download: a coloured shape moving across a textured background,
  captioned "a red square moving left". Deterministic per (seed, split, index).
* ``VideoFolderSource``: WebVid-style video files (a folder tree or shard folders) + a CSV/TSV of captions,
  decoded with PyAV. A clip takes every ``stride``-th frame from ``start`` (-1: a start drawn per video from its
  index, as the paper samples one clip per video); short videos are sampled evenly over what they have. Frames are
  resized on the short side and centre-cropped. Unreadable files become the pipeline's corrupt-example marker, so
  they are skipped and counted like unreadable images.

Frame f of a clip sits at mosaic tile (f // n, f % n), n = sqrt(frames); ``mosaic``/``unmosaic`` convert.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mdm_jax import io_paths, video_io
from mdm_jax.data import image_ops, procedural
from mdm_jax.data.file_sources import MissingDataError

VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".gif", ".mpg", ".mpeg", ".ogv")
TRAVEL = 0.35  # of the frame, first to last frame (the path stays inside: centre +-0.1 +-0.35)
STILL_FRAMES = {"first": lambda rng: 0.0, "last": lambda rng: 1.0, "random": lambda rng: float(rng.uniform())}
DIRECTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
_SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}
CORRUPT_KEY = "_corrupt"


def tiles_for(frames: int) -> int:
    n = math.isqrt(int(frames))
    if n * n != int(frames):
        raise ValueError(f"data.frames: {frames} frames do not form a square mosaic; use 4, 16, 64 ...")
    return n


def mosaic(frames: np.ndarray) -> np.ndarray:
    """(F, h, w, C) -> (n*h, n*w, C), frame f at tile row f // n, column f % n."""
    f, h, w, c = frames.shape
    n = tiles_for(f)
    return frames.reshape(n, n, h, w, c).transpose(0, 2, 1, 3, 4).reshape(n * h, n * w, c)


def unmosaic(image: np.ndarray, frames: int) -> np.ndarray:
    """(..., n*h, n*w, C) -> (..., F, h, w, C)."""
    n = tiles_for(frames)
    *lead, hh, ww, c = image.shape
    h, w = hh // n, ww // n
    x = image.reshape(*lead, n, h, n, w, c)
    x = np.moveaxis(x, len(lead) + 2, len(lead) + 1)
    return x.reshape(*lead, n * n, h, w, c)


def flip_frames(image: np.ndarray, frames: int) -> np.ndarray:
    """Horizontal flip of every frame of a mosaic (flipping the mosaic itself would also swap frames)."""
    return mosaic(unmosaic(image, frames)[:, :, ::-1])


class MovingShapesSource:
    """Procedural clips: one shape of one colour moving left/right/up/down over a drifting background."""

    def __init__(self, resolution: int, frames: int = 16, num_examples: int = 100_000, split: str = "train",
                 seed: int = 0, still_frame: str = "first"):
        if split not in _SPLIT_IDS:
            raise ValueError(f"moving_shapes has splits {sorted(_SPLIT_IDS)}, got {split!r}")
        if still_frame not in STILL_FRAMES:
            raise ValueError(f"data.still_frame: expected one of {sorted(STILL_FRAMES)}, got {still_frame!r}")
        self.frames = int(frames)
        self.still_frame = still_frame
        n = tiles_for(self.frames)
        if resolution % n:
            raise ValueError(f"data.resolution: {resolution} is not divisible into {n}x{n} frames")
        self.frame_size = int(resolution) // n
        self.num_examples = int(num_examples)
        self._stream = (int(seed), _SPLIT_IDS[split])

    @staticmethod
    def class_names() -> tuple[str, ...]:
        return tuple(f"{c} {s} moving {d}" for s in procedural.SHAPES for c in procedural.COLOURS for d in DIRECTIONS)

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng((*self._stream, int(index)))
        s, c, d = (int(rng.integers(k)) for k in (len(procedural.SHAPES), len(procedural.COLOURS), len(DIRECTIONS)))
        shape, colour, direction = procedural.SHAPES[s], tuple(procedural.COLOURS)[c], tuple(DIRECTIONS)[d]
        return {"image": mosaic(self.render(shape, colour, direction, rng)),
                "label": np.int32((s * len(procedural.COLOURS) + c) * len(DIRECTIONS) + d),
                "caption": f"a {colour} {shape} moving {direction}"}

    def render(self, shape: str, colour: str, direction: str, rng: np.random.Generator) -> np.ndarray:
        size, f = self.frame_size, self.frames
        ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size
        base = rng.uniform(40, 90, size=3).astype(np.float32)
        wave = rng.uniform(2, 5)
        r = rng.uniform(0.14, 0.2)
        dx, dy = DIRECTIONS[direction]
        # The start is drawn the same way for every direction (near the centre), so frame 0 says nothing about the
        # motion: a model has to read the direction word, not continue away from the side the shape starts on.
        start = 0.5 + rng.uniform(-0.1, 0.1, size=2)
        # A still (f == 1) shows the path's start, its end or a random point along it (still_frame); the last two tie
        # the direction word to where the shape is already in an image phase (drawn last: other draws unchanged).
        along = None if f > 1 else STILL_FRAMES[self.still_frame](rng)
        out = np.empty((f, size, size, 3), np.uint8)
        rgb = np.asarray(procedural.COLOURS[colour], np.float32)
        for k in range(f):
            p = k / max(f - 1, 1) if along is None else along
            bg = base + 20 * np.sin(2 * np.pi * (wave * xs + 0.5 * p))[..., None]
            cx, cy = start[0] + TRAVEL * dx * p, start[1] + TRAVEL * dy * p
            m = procedural._shape_mask(shape, xs, ys, cx, cy, r)[..., None]
            out[k] = np.clip(np.where(m, rgb, bg), 0, 255).astype(np.uint8)
        return out

    def __repr__(self) -> str:
        return f"MovingShapesSource(frames={self.frames}, frame_size={self.frame_size}, n={self.num_examples})"


def read_captions(path: str | os.PathLike) -> dict[str, str]:
    """CSV/TSV with a header: a file column (path/file/filename/videoid/video_id/name of file) and a caption column
    (caption/text/name/title). Keys are file stems and relative paths, so WebVid's ``videoid`` matches
    ``<videoid>.mp4`` anywhere under the data folder."""
    path = os.fspath(path)
    if not io_paths.isfile(path):
        raise MissingDataError(f"captions file {path!r} not found; give a CSV/TSV with file and caption columns")
    with io.StringIO(io_paths.read_text(path), newline="") as fh:
        sample = fh.read(4096)
        fh.seek(0)
        suffix = os.path.splitext(path)[1].lower()
        delim = "\t" if suffix in (".tsv", ".txt") or sample.count("\t") > sample.count(",") else ","
        reader = csv.DictReader(fh, delimiter=delim)
        fields = {name.lower(): name for name in reader.fieldnames or ()}
        file_keys = ("path", "file", "filename", "videoid", "video_id", "video")
        file_col = next((fields[k] for k in file_keys if k in fields), None)
        cap_keys = ("caption", "text", "name", "title")
        cap_col = next((fields[k] for k in cap_keys if k in fields and fields[k] != file_col), None)
        if file_col is None or cap_col is None:
            raise ValueError(f"{path}: expected a header with a file column (path/file/filename/videoid) and a "
                             f"caption column (caption/text/name); got {reader.fieldnames}")
        out = {}
        for row in reader:
            key, cap = str(row.get(file_col) or "").strip(), str(row.get(cap_col) or "").strip()
            if key:
                out[key] = cap
                out[Path(key).stem] = cap
    return out


def decode_clip(path: str, frames: int, stride: int, start: int, rng: np.random.Generator) -> np.ndarray:
    """(frames, H, W, 3) uint8 frames start, start+stride, ... decoded with PyAV (evenly spread if too short)."""
    av = video_io.import_av("decoding video files")
    # Object-store files are opened as seekable ranged readers (PyAV takes file objects).
    with av.open(io_paths.open_file(path, "rb") if io_paths.is_url(path) else path) as container:
        stream = container.streams.video[0]
        total = int(stream.frames or 0)
        span = stride * (frames - 1) + 1
        if start < 0:
            start = int(rng.integers(0, total - span + 1)) if total >= span else 0
        wanted = set(range(start, start + span, stride))
        last = start + span - 1
        got: list[np.ndarray] = []
        picked: dict[int, np.ndarray] = {}
        for i, frame in enumerate(container.decode(stream)):
            array = frame.to_ndarray(format="rgb24")
            if total < span:  # frame count unknown or too short: keep everything for even spreading
                got.append(array)
            if i in wanted:
                picked[i] = array
            if i >= last:
                break
    if len(picked) == frames:
        return np.stack([picked[i] for i in sorted(picked)])
    pool = got or list(picked.values())
    if not pool:
        raise ValueError("no decodable video frames")
    idx = np.linspace(0, len(pool) - 1, frames).round().astype(int)
    return np.stack([pool[i] for i in idx])


class VideoFolderSource:
    """Video files under ``data_dir`` (recursive; shard folders welcome) with captions from a CSV/TSV.

    Without a captions file the caption is the file's parent folder name (e.g. a game or class per folder).
    Files whose captions are missing from a given captions file are left out (and counted in ``missing``).
    """

    def __init__(self, data_dir: str, resolution: int, frames: int = 16, stride: int = 4, start: int = -1,
                 captions_file: str = "", seed: int = 0, files: Sequence[str] | None = None):
        if not data_dir or not io_paths.isdir(data_dir):
            raise MissingDataError(f"video_folder: data_dir {data_dir!r} does not exist; put video files there (or "
                                   f"run `python -m mdm_jax.data.prepare_video` for offline clips)")
        video_io.import_av("data.name='video_folder'")  # fail here, not as every clip skipped as unreadable
        self.frames, self.stride, self.start, self.seed = int(frames), int(stride), int(start), int(seed)
        n = tiles_for(self.frames)
        if resolution % n:
            raise ValueError(f"data.resolution: {resolution} is not divisible into {n}x{n} frames")
        self.frame_size = int(resolution) // n
        root = io_paths.resolve(data_dir).rstrip("/")  # local or gs://
        paths = sorted(p for p in io_paths.walk_files(root) if os.path.splitext(p)[1].lower() in VIDEO_EXTENSIONS) \
            if files is None else list(files)
        caps = read_captions(captions_file) if captions_file else None
        if caps is None:
            default = next((d for d in (io_paths.join(root, "captions.csv"), io_paths.join(root, "captions.tsv"))
                            if io_paths.isfile(d)), None)
            caps = read_captions(default) if default else None
        self.items: list[tuple[str, str]] = []
        self.missing = 0
        for p in paths:
            rel = p[len(root) + 1:] if p.startswith(root + "/") else os.path.basename(p)
            if caps is None:
                self.items.append((p, Path(p).parent.name.replace("_", " ")))
            elif rel in caps or Path(p).stem in caps:
                self.items.append((p, caps.get(rel, caps.get(Path(p).stem, ""))))
            else:
                self.missing += 1
        if not self.items:
            raise MissingDataError(f"video_folder: no captioned video files ({', '.join(VIDEO_EXTENSIONS)}) under "
                                   f"{data_dir!r}")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        path, caption = self.items[int(index)]
        try:
            rng = np.random.default_rng((self.seed, int(index)))
            clip = decode_clip(path, self.frames, self.stride, self.start, rng)
            clip = np.stack([image_ops.resize_smallest_side_center_crop(f, self.frame_size) for f in clip])
        except Exception as e:  # unreadable or truncated file: the pipeline skips and counts it
            return {CORRUPT_KEY: f"{path}: {type(e).__name__}: {e}", "key": path}
        return {"image": mosaic(clip), "caption": caption, "key": path}

    def __repr__(self) -> str:
        return f"VideoFolderSource({len(self.items)} videos, frames={self.frames}, stride={self.stride})"
