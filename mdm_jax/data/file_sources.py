"""Sources over image files: ml-mdm's TSV+tar shards, webdataset tars, and plain image folders.

All are random-access (grain ``RandomAccessDataSource``): tar members are located once by their header offsets and
read with ``os.pread``, which is thread-safe and needs no extraction, so grain can shuffle globally and resume
exactly.  Sources return encoded bytes; decoding happens in the pipeline's ``Preprocess`` so that unreadable
images are skipped and counted there.  File handles are opened lazily per process and never pickled.

Scale note: captions and member lists live in Python lists that are pickled into each grain worker; that is fine
up to a few million examples.  For CC12M-scale corpora convert the TSVs to an array_record index first (not done
here).
"""

from __future__ import annotations

import csv
import os
import tarfile
import threading
from collections.abc import Sequence

import numpy as np

from mdm_jax import io_paths
from mdm_jax.data.pipeline import CORRUPT_KEY

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".ppm", ".tif", ".tiff")
csv.field_size_limit(1 << 24)


class MissingDataError(FileNotFoundError):
    """Raised (with one line saying what to get and where to put it) when a data set is not on disk."""


def index_tar(path: str) -> dict[str, tuple[int, int]]:
    """Maps member name -> (data offset, size) by walking the tar headers (data is skipped, not read)."""
    members = {}
    with io_paths.open_file(path, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tf:
        for m in tf:
            if m.isfile():
                members[m.name] = (m.offset_data, m.size)
    return members


class _FileReader:
    """Per-process cache of read-only file descriptors; ``pread`` lets threads share them safely.

    At most ``max_open`` descriptors are cached (never closed while cached, so no thread can lose one mid-read);
    reads from further files open, read and close their own descriptor.
    """

    def __init__(self, max_open: int = 512):
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()
        self._max_open = max_open

    def read(self, path: str, offset: int = 0, size: int | None = None) -> bytes:
        if size is None:
            with io_paths.open_file(path, "rb") as f:
                return f.read()
        if io_paths.is_url(path):  # object stores: one ranged read per call (no descriptors to share)
            data = io_paths.read_range(path, offset, size)
            if len(data) != size:
                raise OSError(f"short read from {path} at {offset}: {len(data)} of {size} bytes")
            return data
        fd = self._fds.get(path)
        own = False
        if fd is None:
            with self._lock:
                fd = self._fds.get(path)
                if fd is None:
                    fd = os.open(path, os.O_RDONLY)
                    if len(self._fds) < self._max_open:
                        self._fds[path] = fd
                    else:
                        own = True
        try:
            data = os.pread(fd, size, offset)
        finally:
            if own:
                os.close(fd)
        if len(data) != size:
            raise OSError(f"short read from {path} at {offset}: {len(data)} of {size} bytes")
        return data


class _LazyReaderMixin:
    """Drops process-local handles when pickled into grain worker processes."""

    _reader: _FileReader | None = None

    @property
    def reader(self) -> _FileReader:
        if self._reader is None:
            self._reader = _FileReader()
        return self._reader

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_reader"] = None
        return state


def _resolve(path: str, *bases: str) -> str:
    if os.path.isabs(path) or io_paths.is_url(path):
        return path
    for base in bases:
        if not base:
            continue
        candidate = io_paths.join(base, path)
        if io_paths.exists(candidate):
            return candidate
    return path


class TarTsvSource(_LazyReaderMixin):
    """ml-mdm's image-caption format: shard TSVs with columns ``tar``, ``file``, ``caption`` plus the tars.

    ``tsv_files`` are the shard TSVs (the ``filename`` column of ml-mdm's file-list TSV).  A relative ``tar`` path
    is looked up next to its TSV, then under ``base_dir``, then the working directory (ml-mdm used the latter).
    Tar indices are built lazily, once per tar and process, on first access.
    """

    def __init__(self, tsv_files: Sequence[str], base_dir: str = ""):
        self._tars: list[str] = []
        tar_ids: dict[str, int] = {}
        rows_tar, self._files, self._captions = [], [], []
        for tsv in tsv_files:
            with io_paths.open_file(tsv, "r", newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
                missing = {"tar", "file", "caption"} - set(reader.fieldnames or ())
                if missing:
                    raise ValueError(f"{tsv}: needs columns tar, file, caption (missing {sorted(missing)})")
                for row in reader:
                    tar = _resolve(row["tar"], os.path.dirname(tsv), base_dir)
                    if tar not in tar_ids:
                        tar_ids[tar] = len(self._tars)
                        self._tars.append(tar)
                    rows_tar.append(tar_ids[tar])
                    self._files.append(row["file"])
                    self._captions.append(row["caption"] or "")
        self._row_tar = np.asarray(rows_tar, np.int32)
        self._index_cache: dict[int, dict[str, tuple[int, int]]] = {}
        self._index_lock = threading.Lock()

    def __getstate__(self):
        state = super().__getstate__()
        state["_index_cache"], state["_index_lock"] = {}, None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._index_lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._files)

    def _tar_index(self, tar_id: int) -> dict[str, tuple[int, int]]:
        index = self._index_cache.get(tar_id)
        if index is None:
            with self._index_lock:
                index = self._index_cache.get(tar_id)
                if index is None:
                    index = self._index_cache[tar_id] = index_tar(self._tars[tar_id])
        return index

    def caption(self, i: int) -> str:
        """Caption without reading the image (used by text-embedding precomputation)."""
        return self._captions[i]

    def __getitem__(self, i: int) -> dict:
        tar_id, name = int(self._row_tar[i]), self._files[i]
        key = f"{self._tars[tar_id]}:{name}"
        try:
            offset, size = self._tar_index(tar_id)[name]
            data = self.reader.read(self._tars[tar_id], offset, size)
        except Exception as e:  # missing tar / member: skip like a corrupt image
            return {CORRUPT_KEY: f"{key}: {type(e).__name__}: {e}"}
        return {"image": data, "caption": self._captions[i], "key": key}


def read_file_list(path: str) -> list[str]:
    """ml-mdm's training file list: a TSV whose ``filename`` column names per-shard TSVs."""
    with io_paths.open_file(path, "r", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    base = os.path.dirname(path)
    return [_resolve(r["filename"], base) for r in rows]


def _wds_key(name: str) -> tuple[str, str]:
    """webdataset convention: key = path up to the first '.' of the basename; extension = the rest, lowercased."""
    dirname, base = os.path.split(name)
    stem, _, ext = base.partition(".")
    return (os.path.join(dirname, stem), ext.lower())


class WebDatasetSource(_LazyReaderMixin):
    """webdataset tars: members grouped by key, image in jpg/jpeg/png/webp, caption in ``.txt``, label in ``.cls``.

    All tars are indexed at construction (header walk only), so the source length is known and indices are
    global; examples without an image are ignored.
    """

    def __init__(self, tar_files: Sequence[str]):
        self._tars = list(tar_files)
        self._records: list[tuple[int, int, int, str]] = []  # tar id, offset, size, key
        self._captions: list[str] = []
        self._labels: list[int] = []
        for tar_id, path in enumerate(self._tars):
            groups: dict[str, dict[str, tuple[int, int]]] = {}
            for name, loc in index_tar(path).items():
                key, ext = _wds_key(name)
                groups.setdefault(key, {})[ext] = loc
            for key in sorted(groups):
                members = groups[key]
                image_ext = next((e for e in ("jpg", "jpeg", "png", "webp") if e in members), None)
                if image_ext is None:
                    continue
                caption = ""
                if "txt" in members:
                    caption = self._read_small(path, *members["txt"])
                label = -1
                if "cls" in members:
                    label = int(self._read_small(path, *members["cls"]).strip() or -1)
                self._records.append((tar_id, *members[image_ext], f"{path}:{key}.{image_ext}"))
                self._captions.append(caption)
                self._labels.append(label)

    @staticmethod
    def _read_small(path: str, offset: int, size: int) -> str:
        with io_paths.open_file(path, "rb") as f:
            f.seek(offset)
            return f.read(size).decode("utf-8", errors="replace").strip()

    def __len__(self) -> int:
        return len(self._records)

    @property
    def has_labels(self) -> bool:
        return bool(self._labels) and min(self._labels) >= 0

    @property
    def num_classes(self) -> int:
        return max(self._labels) + 1 if self.has_labels else 0

    def caption(self, i: int) -> str:
        """Caption without reading the image (used by text-embedding precomputation)."""
        return self._captions[i]

    def __getitem__(self, i: int) -> dict:
        tar_id, offset, size, key = self._records[i]
        try:
            data = self.reader.read(self._tars[tar_id], offset, size)
        except Exception as e:
            return {CORRUPT_KEY: f"{key}: {type(e).__name__}: {e}"}
        return {"image": data, "caption": self._captions[i], "label": np.int32(self._labels[i]), "key": key}


class ImageFolderSource(_LazyReaderMixin):
    """A folder of images, in one of three layouts (checked in this order):

    1. a captions file (``captions.tsv``/``captions.txt`` or ``captions_file``): ``relative/path<TAB>caption``;
    2. class sub-folders ``root/<class>/*.jpg`` (labels = sorted folder names);
    3. images anywhere below ``root``, with an optional ``<image stem>.txt`` caption next to each.
    """

    def __init__(self, root: str, captions_file: str = ""):
        self.root = root
        self.class_names: tuple[str, ...] | None = None
        self._paths: list[str] = []
        self._captions: list[str] = []
        self._labels: list[int] = []
        if not captions_file:
            for name in ("captions.tsv", "captions.txt"):
                if io_paths.isfile(io_paths.join(root, name)):
                    captions_file = io_paths.join(root, name)
                    break
        if captions_file:
            with io_paths.open_file(captions_file, "r", encoding="utf-8") as f:
                for line in f:
                    line = line.rstrip("\n")
                    if not line.strip():
                        continue
                    rel, _, caption = line.partition("\t")
                    if rel in ("file", "filename") and caption.strip() == "caption":
                        continue  # header
                    self._paths.append(_resolve(rel, root))
                    self._captions.append(caption)
            return
        entries = io_paths.listdir(root)
        subdirs = sorted(d for d in entries if io_paths.isdir(io_paths.join(root, d)))
        top_images = [f for f in entries if f.lower().endswith(IMAGE_EXTENSIONS)]
        if subdirs and not top_images:
            self.class_names = tuple(subdirs)
            for label, d in enumerate(subdirs):
                for path in sorted(_walk_images(io_paths.join(root, d))):
                    self._paths.append(path)
                    self._labels.append(label)
                    self._captions.append("")
            return
        for path in sorted(_walk_images(root)):
            self._paths.append(path)
            sidecar = os.path.splitext(path)[0] + ".txt"
            caption = ""
            if io_paths.isfile(sidecar):
                with io_paths.open_file(sidecar, "r", encoding="utf-8", errors="replace") as f:
                    caption = f.read().strip()
            self._captions.append(caption)

    def __len__(self) -> int:
        return len(self._paths)

    @property
    def has_captions(self) -> bool:
        return any(self._captions)

    def caption(self, i: int) -> str:
        """Caption without reading the image (used by text-embedding precomputation)."""
        return self._captions[i]

    def __getitem__(self, i: int) -> dict:
        path = self._paths[i]
        try:
            data = self.reader.read(path)
        except Exception as e:
            return {CORRUPT_KEY: f"{path}: {type(e).__name__}: {e}"}
        out = {"image": data, "caption": self._captions[i], "key": path}
        if self._labels:
            out["label"] = np.int32(self._labels[i])
        return out


def _walk_images(root: str) -> list[str]:
    return [p for p in io_paths.walk_files(root) if p.lower().endswith(IMAGE_EXTENSIONS)]


def glob_sorted(pattern: str) -> list[str]:
    return io_paths.glob(pattern)
