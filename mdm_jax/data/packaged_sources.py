"""Real data sets that install offline from package registries (see shared/reference/offline_data.md).

* ``fashion_mnist``: Debian ``dataset-fashion-mnist`` idx files (70k 28x28 grey, 10 classes), read in place from
  ``/usr/share/datasets/fashion-mnist`` (or ``.npz`` written by ``prepare_fashion_mnist``); padded to 32 (default)
  or resized, grey repeated to RGB.  Captions are templated from class names (say so when reporting).
* ``emoji``: Noto emoji from npm ``emoji-datasource-google@16.0.0``: 3,786 native 64x64 images with their Unicode
  names as captions and 10 categories / 99 subcategories as labels; converted once by ``prepare_emoji``.

Arrays are loaded lazily in each process (grain workers get a small pickle, not 50 MB of pixels).
"""

from __future__ import annotations

import gzip
import io
import json

import numpy as np

from mdm_jax import io_paths
from mdm_jax.data.file_sources import MissingDataError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot",
)
_FMNIST_FILES = {"train": "train", "test": "t10k", "validation": "t10k"}


def read_idx(path: str) -> np.ndarray:
    """Parses an idx file (optionally .gz): magic 0x0000 08 <ndim>, big-endian uint32 dims, then uint8 data."""
    data = io_paths.read_bytes(path)
    if path.endswith(".gz"):
        data = gzip.decompress(data)
    if data[0:2] != b"\x00\x00" or data[2] != 0x08:
        raise ValueError(f"{path}: not a uint8 idx file")
    ndim = data[3]
    dims = np.frombuffer(data, ">u4", count=ndim, offset=4).astype(np.int64)
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(tuple(dims))


def load_fashion_mnist(data_dir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N,28,28), labels int32 (N,)) from ``prepare_fashion_mnist`` npz or the raw idx files."""
    prefix = _FMNIST_FILES.get(split)
    if prefix is None:
        raise ValueError(f"fashion_mnist splits are train/test, got {split!r}")
    npz = io_paths.join(data_dir, f"fashion_mnist_{prefix}.npz")
    if io_paths.isfile(npz):
        with np.load(io.BytesIO(io_paths.read_bytes(npz))) as z:
            return z["images"], z["labels"].astype(np.int32)
    for ext in ("", ".gz"):
        images = io_paths.join(data_dir, f"{prefix}-images-idx3-ubyte{ext}")
        labels = io_paths.join(data_dir, f"{prefix}-labels-idx1-ubyte{ext}")
        if io_paths.isfile(images) and io_paths.isfile(labels):
            return read_idx(images), read_idx(labels).astype(np.int32)
    raise MissingDataError(
        f"Fashion-MNIST not found in {data_dir!r}: run `apt-get install -y dataset-fashion-mnist` (files land in "
        f"{FASHION_MNIST_DIR}) or point data.data_dir at a folder with {prefix}-images-idx3-ubyte.gz."
    )


class FashionMNISTSource:
    """Fashion-MNIST as 32x32 RGB uint8 ('pad': 2 black pixels per side, default; 'resize': bicubic to 32)."""

    def __init__(self, data_dir: str, split: str = "train", mode: str = "pad", caption_template: str = ""):
        if mode not in ("pad", "resize"):
            raise ValueError(f"fashion_mnist mode must be 'pad' or 'resize', got {mode!r}")
        self.data_dir, self.split, self.mode = data_dir, split, mode
        self.caption_template = caption_template or "a photo of a {}"
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None
        self._len = len(self._load()[1])  # validates presence up front; dropped again before pickling

    def _load(self) -> tuple[np.ndarray, np.ndarray]:
        if self._arrays is None:
            self._arrays = load_fashion_mnist(self.data_dir, self.split)
        return self._arrays

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_arrays"] = None
        return state

    def __len__(self) -> int:
        return self._len

    def caption(self, i: int) -> str:
        return self.caption_template.format(FASHION_MNIST_CLASSES[int(self._load()[1][i])])

    def __getitem__(self, i: int) -> dict:
        images, labels = self._load()
        img = images[i]
        if self.mode == "pad":
            img = np.pad(img, 2)
        else:
            from PIL import Image

            img = np.asarray(Image.fromarray(img).resize((32, 32), Image.Resampling.BICUBIC))
        label = int(labels[i])
        return {
            "image": np.repeat(img[..., None], 3, axis=-1),
            "label": np.int32(label),
            "caption": self.caption_template.format(FASHION_MNIST_CLASSES[label]),
            "key": f"fashion_mnist/{self.split}/{i}",
        }


EMOJI_FILE = "emoji_64.npy"  # (N, 64, 64, 3) uint8, memory-mapped by every worker
EMOJI_META = "emoji_meta.json"


def load_emoji_meta(data_dir: str) -> dict:
    path = io_paths.join(data_dir, EMOJI_META)
    if not io_paths.isfile(path) or not io_paths.isfile(io_paths.join(data_dir, EMOJI_FILE)):
        raise MissingDataError(
            f"emoji data not found in {data_dir!r}: `npm pack emoji-datasource-google@16.0.0 && tar -xzf "
            f"emoji-datasource-google-16.0.0.tgz`, then `python -m mdm_jax.data.prepare_emoji --src package "
            f"--out {data_dir}`."
        )
    return json.loads(io_paths.read_text(path))


class EmojiSource:
    """Noto emoji: 64x64 RGB (composited on white), caption = Unicode name, label = category or subcategory.

    Splits: every ``holdout_every``-th emoji (by a fixed permutation) is 'test'; 'all' keeps everything.
    """

    def __init__(self, data_dir: str, split: str = "train", label_field: str = "category", holdout_every: int = 20):
        if label_field not in ("category", "subcategory"):
            raise ValueError(f"emoji label_field must be 'category' or 'subcategory', got {label_field!r}")
        meta = load_emoji_meta(data_dir)
        self.data_dir, self.label_field = data_dir, label_field
        self.class_names = tuple(meta[f"{label_field}_names"])
        self.captions = list(meta["captions"])
        self._labels = np.asarray(meta[label_field], np.int32)
        n = len(self.captions)
        order = np.random.default_rng(0).permutation(n)
        is_test = np.zeros(n, bool)
        is_test[order[::holdout_every]] = True
        if split == "train":
            self._ids = np.nonzero(~is_test)[0]
        elif split in ("test", "validation"):
            self._ids = np.nonzero(is_test)[0]
        elif split == "all":
            self._ids = np.arange(n)
        else:
            raise ValueError(f"emoji splits are train/test/all, got {split!r}")
        self._images: np.ndarray | None = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_images"] = None
        return state

    def __len__(self) -> int:
        return len(self._ids)

    def caption(self, i: int) -> str:
        return self.captions[int(self._ids[i])]

    def __getitem__(self, i: int) -> dict:
        if self._images is None:
            path = io_paths.join(self.data_dir, EMOJI_FILE)
            self._images = (np.load(io.BytesIO(io_paths.read_bytes(path))) if io_paths.is_url(path)
                            else np.load(path, mmap_mode="r"))  # memory-mapped when local
        j = int(self._ids[i])
        return {
            "image": np.asarray(self._images[j]),
            "label": self._labels[j],
            "caption": self.captions[j],
            "key": f"emoji/{j}",
        }
