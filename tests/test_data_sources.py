"""Each source on small real files written to tmp dirs (JPEG/PNG, tar, TSV, idx.gz, npm-style emoji package)."""

from __future__ import annotations

import gzip
import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from mdm_jax.data import create_dataset, from_model_scale

HOST = {"process_index": 0, "process_count": 1}


def _encode(arr: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt)
    return buf.getvalue()


def _solid(color, h=24, w=32) -> np.ndarray:
    return np.full((h, w, 3), color, np.uint8)


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def _all(cfg, batch=2):
    it, info = create_dataset({**cfg, **HOST, "num_epochs": 1, "shuffle": False}, global_batch_size=batch, seed=0)
    return list(it), info, it


COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 30)]


def test_image_text_tsv_ml_mdm_format(tmp_path):
    shard_dir = tmp_path / "shards"
    shard_dir.mkdir()
    with tarfile.open(shard_dir / "images_00000.tar", "w") as tf:
        for i, c in enumerate(COLORS):
            _add(tf, f"{i:010d}.jpg", _encode(_solid(c, 24 + 8 * i, 32), "JPEG"))
    rows = ["tar\tfile\tcaption"] + [f"images_00000.tar\t{i:010d}.jpg\tcolour number {i}" for i in range(4)]
    rows.insert(2, "images_00000.tar\tmissing.jpg\tnot in the tar")  # skipped and counted, not fatal
    (shard_dir / "images_00000.tsv").write_text("\n".join(rows) + "\n")
    (tmp_path / "train.tsv").write_text("filename\nshards/images_00000.tsv\n")
    cfg = {"name": "image_text_tsv", "file_list": str(tmp_path / "train.tsv"), "resolution": 16,
           "keep_captions": True, "cond_drop_prob": 0.0, "drop_remainder": False}
    batches, info, it = _all(cfg)
    assert info.num_examples == 5 and info.conditioning == "text"
    images = np.concatenate([b["images"] for b in batches])
    captions = sum((b["captions"] for b in batches), [])
    assert images.shape == (4, 16, 16, 3) and it.num_skipped == 1
    assert captions == [f"colour number {i}" for i in range(4)]
    for img, c in zip(from_model_scale(images), COLORS, strict=True):
        np.testing.assert_allclose(img.reshape(-1, 3).mean(0), c, atol=6)
    decoded = info.tokenizer.decode(batches[0]["tokens"][0])
    assert decoded == " colour number 0"
    # data_dir/*.tsv discovery gives the same source
    _, info2, _ = _all({**cfg, "file_list": "", "data_dir": str(shard_dir)})
    assert info2.num_examples == 5


def test_webdataset_tars(tmp_path):
    with tarfile.open(tmp_path / "shard-000.tar", "w") as tf:
        _add(tf, "a/0001.jpg", _encode(_solid(COLORS[0]), "JPEG"))
        _add(tf, "a/0001.txt", b"a red thing")
        _add(tf, "a/0001.cls", b"1")
        _add(tf, "a/0002.png", _encode(_solid(COLORS[1]), "PNG"))
        _add(tf, "a/0002.txt", "a green thing \u2713".encode())
        _add(tf, "a/0002.cls", b"0")
        _add(tf, "a/0003.txt", b"caption without image")  # ignored
    with tarfile.open(tmp_path / "shard-001.tar", "w") as tf:
        _add(tf, "0004.jpeg", _encode(_solid(COLORS[2]), "JPEG"))
        _add(tf, "0004.txt", b"a blue thing")
        _add(tf, "0004.cls", b"2")
    cfg = {"name": "webdataset", "data_dir": str(tmp_path), "resolution": 8, "keep_captions": True,
           "cond_drop_prob": 0.0, "drop_remainder": False}
    batches, info, _ = _all(cfg)
    assert info.num_examples == 3
    assert sum((b["captions"] for b in batches), []) == ["a red thing", "a green thing \u2713", "a blue thing"]
    batches, info, _ = _all({**cfg, "conditioning": "class"})
    assert info.num_classes == 3 and np.concatenate([b["labels"] for b in batches]).tolist() == [1, 0, 2]


def test_image_folder_layouts(tmp_path):
    # 1. captions file
    cap = tmp_path / "cap"
    cap.mkdir()
    for i, c in enumerate(COLORS[:2]):
        (cap / f"im{i}.png").write_bytes(_encode(_solid(c), "PNG"))
    (cap / "captions.tsv").write_text("file\tcaption\nim0.png\tfirst\nim1.png\tsecond\n")
    batches, info, _ = _all({"name": "image_folder", "data_dir": str(cap), "resolution": 8, "keep_captions": True,
                             "cond_drop_prob": 0.0})
    assert info.conditioning == "text" and batches[0]["captions"] == ["first", "second"]
    # 2. class sub-folders
    cls = tmp_path / "cls"
    for name, c in (("cat", COLORS[0]), ("dog", COLORS[1])):
        (cls / name).mkdir(parents=True)
        for j in range(2):
            (cls / name / f"{j}.jpg").write_bytes(_encode(_solid(c), "JPEG"))
    batches, info, _ = _all({"name": "image_folder", "data_dir": str(cls), "resolution": 8, "cond_drop_prob": 0.0},
                            batch=4)
    assert info.conditioning == "class" and info.class_names == ("cat", "dog")
    assert batches[0]["labels"].tolist() == [0, 0, 1, 1]
    # 3. side-car captions
    side = tmp_path / "side"
    side.mkdir()
    (side / "x.jpg").write_bytes(_encode(_solid(COLORS[2]), "JPEG"))
    (side / "x.txt").write_text("a blue square\n")
    (side / "y.jpg").write_bytes(_encode(_solid(COLORS[3]), "JPEG"))
    batches, info, _ = _all({"name": "image_folder", "data_dir": str(side), "resolution": 8, "keep_captions": True,
                             "cond_drop_prob": 0.0})
    assert batches[0]["captions"] == ["a blue square", ""]


def _write_idx(path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_fashion_mnist_from_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 6), ("t10k", 4)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    from mdm_jax.data.packaged_sources import FashionMNISTSource, read_idx

    raw = read_idx(str(tmp_path / "train-images-idx3-ubyte.gz"))
    src = FashionMNISTSource(str(tmp_path), "train")
    e = src[1]
    assert e["image"].shape == (32, 32, 3) and e["label"] == 1 and e["caption"] == "a photo of a trouser"
    np.testing.assert_array_equal(e["image"][2:30, 2:30, 0], raw[1])
    assert e["image"][:2].max() == 0
    batches, info, _ = _all({"name": "fashion_mnist", "data_dir": str(tmp_path), "resolution": 32,
                             "cond_drop_prob": 0.0}, batch=2)
    assert info.num_examples == 6 and info.num_classes == 10 and info.null_label == 10
    assert batches[0]["images"].shape == (2, 32, 32, 3)
    _, test_info, _ = _all({"name": "fashion_mnist", "data_dir": str(tmp_path)}, batch=2)
    assert test_info.num_examples == 6
    _, info16, _ = _all({"name": "fashion_mnist", "data_dir": str(tmp_path), "resolution": 16}, batch=2)
    assert info16.resolution == 16


def test_emoji_prepare_and_source(tmp_path):
    pkg = tmp_path / "package"
    img_dir = pkg / "img" / "google" / "64"
    img_dir.mkdir(parents=True)
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[16:48, 16:48] = (255, 0, 0, 255)  # opaque red square on a transparent background
    for name in ("1f600.png", "1f44b.png", "1f44b-1f3fd.png"):
        (img_dir / name).write_bytes(_encode(rgba, "PNG"))
    entries = [
        {"name": "GRINNING FACE", "short_names": ["grinning"], "image": "1f600.png", "has_img_google": True,
         "category": "Smileys & Emotion", "subcategory": "face-smiling", "sort_order": 1},
        {"name": "WAVING HAND SIGN", "short_names": ["wave"], "image": "1f44b.png", "has_img_google": True,
         "category": "People & Body", "subcategory": "hand-fingers-open", "sort_order": 2,
         "skin_variations": {"1F3FD": {"image": "1f44b-1f3fd.png", "has_img_google": True}}},
    ]
    (pkg / "emoji.json").write_text(json.dumps(entries))
    from mdm_jax.data.packaged_sources import EmojiSource
    from mdm_jax.data.prepare_emoji import prepare

    out = tmp_path / "emoji"
    assert prepare(str(pkg), str(out)) == 3
    src = EmojiSource(str(out), split="all")
    assert [src[i]["caption"] for i in range(3)] == [
        "grinning face", "waving hand sign", "waving hand sign, medium skin tone"]
    assert src.class_names == ("People & Body", "Smileys & Emotion")
    img = src[0]["image"]
    assert tuple(img[0, 0]) == (255, 255, 255) and tuple(img[32, 32]) == (255, 0, 0)
    batches, info, _ = _all({"name": "emoji", "data_dir": str(out), "resolution": 32, "conditioning": "class",
                             "label_field": "subcategory"}, batch=1)
    assert info.num_classes == 2 and len(batches) == len(EmojiSource(str(out), "train"))
    assert batches[0]["images"].shape == (1, 32, 32, 3)


def test_imagenet_via_tfds_array_record(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")

    class MdmTestImages(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(encoding_format="jpeg"),
                "label": tfds.features.ClassLabel(names=["n01", "n02", "n03"]),
                "file_name": tfds.features.Text(),
            }))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(6), "validation": self._generate_examples(3)}

        def _generate_examples(self, n):
            for i in range(n):
                data = b"broken jpeg" if i == 5 else _encode(_solid(COLORS[i % 4], 20 + i, 30), "JPEG")
                yield i, {"image": data, "label": i % 3, "file_name": f"img_{i}.JPEG"}

    MdmTestImages(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    cfg = {"name": "imagenet", "tfds_name": "mdm_test_images", "data_dir": str(tmp_path), "resolution": 16,
           "cond_drop_prob": 0.0, "num_epochs": 1, **HOST}
    it, info = create_dataset(cfg, global_batch_size=5, seed=0)
    batches = list(it)
    assert info.num_classes == 3 and info.num_examples == 6 and info.class_names == ("n01", "n02", "n03")
    assert len(batches) == 1 and it.num_skipped == 1
    assert sorted(batches[0]["labels"].tolist()) == [0, 0, 1, 1, 2]
    from mdm_jax.data import MissingDataError

    with pytest.raises(MissingDataError, match="tfds build imagenet2012"):
        create_dataset({**cfg, "tfds_name": "imagenet2012", "data_dir": str(tmp_path / "none")},
                       global_batch_size=2, seed=0)


def test_precomputed_text_embeddings(tmp_path):
    from mdm_jax.text.precompute import precompute
    from mdm_jax.text.tokenizers import ByteTokenizer

    dim = 3

    def encode(tokens, mask):  # deterministic stand-in for T5: each row encodes its token id
        return np.repeat(tokens[..., None].astype(np.float32), dim, -1) * mask[..., None]

    data = {"name": "procedural_shapes", "resolution": 8, "num_examples": 10, "text": {"null_caption": "nothing"}}
    meta = precompute(data, encode, ByteTokenizer(), str(tmp_path), ("train",), batch_size=4)
    assert meta["dim"] == dim and meta["num_examples"] == {"train": 10}
    cfg = {**data, **HOST, "text": {"null_caption": "nothing", "precomputed_dir": str(tmp_path)},
           "keep_captions": True, "cond_drop_prob": 0.3, "num_epochs": 1, "shuffle": False}
    it, info = create_dataset(cfg, global_batch_size=10, seed=0)
    batch = next(it)
    assert info.lm_dim == dim and set(batch) == {"images", "lm_outputs", "lm_mask", "captions"}
    assert batch["lm_outputs"].shape == (10, 128, dim) and batch["lm_outputs"].dtype == np.float32
    tok = ByteTokenizer()
    for emb, mask, caption in zip(batch["lm_outputs"], batch["lm_mask"], batch["captions"], strict=True):
        expected = np.asarray(tok.encode(caption) + [tok.eos_id], np.float32)
        assert mask.sum() == len(expected)
        np.testing.assert_array_equal(emb[: len(expected), 0], expected)
        assert not emb[len(expected):].any()
    assert "nothing" in batch["captions"]  # some captions dropped -> null embedding used


def test_split_placeholder_in_paths(tmp_path):
    for split, n in (("train", 3), ("test", 2)):
        (tmp_path / split).mkdir()
        for i in range(n):
            (tmp_path / split / f"{i}.jpg").write_bytes(_encode(_solid(COLORS[i]), "JPEG"))
    cfg = {"name": "image_folder", "data_dir": str(tmp_path / "{split}"), "resolution": 8, **HOST}
    assert create_dataset(cfg, global_batch_size=1, seed=0)[1].num_examples == 3
    assert create_dataset(cfg, global_batch_size=1, seed=0, split="test")[1].num_examples == 2


def test_file_reader_descriptor_cap(tmp_path):
    from mdm_jax.data.file_sources import _FileReader

    for i in range(3):
        (tmp_path / f"f{i}").write_bytes(bytes(range(10)) * (i + 1))
    reader = _FileReader(max_open=1)
    for _ in range(2):
        assert [reader.read(str(tmp_path / f"f{i}"), 2, 3) for i in range(3)] == [b"\x02\x03\x04"] * 3
    assert len(reader._fds) == 1
    with pytest.raises(OSError, match="short read"):
        reader.read(str(tmp_path / "f0"), 8, 5)
