"""Images/s of each data pipeline available on this machine (prints one line per pipeline).

Real data where it is installed (Fashion-MNIST from Debian, emoji prepared with ``prepare_emoji``); synthetic
photo-sized JPEGs (default 500x375, ImageNet's typical size) written to a temp dir for the file, tar, TSV and
tfds pipelines.  Throughput excludes the first batches (worker start-up, caches)::

    python benchmarks/bench_data.py --batch 64 --steps 20 --num_workers 0 2 --emoji_dir /data/emoji
"""

from __future__ import annotations

import argparse
import io
import os
import tarfile
import tempfile
import time

import numpy as np
from absl import flags
from PIL import Image


def _photo(rng: np.random.Generator, w: int, h: int) -> bytes:
    """A smooth random colour field with noise: decodes at JPEG-photo cost, unlike a flat image."""
    small = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR)
    arr = np.asarray(img).astype(np.int16) + rng.integers(-20, 20, (h, w, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def make_synthetic(root: str, n: int, size: tuple[int, int]) -> dict[str, dict]:
    """Writes the same n JPEGs as a folder, ml-mdm TSV+tar shards, webdataset tars and a tfds array_record set."""
    rng = np.random.default_rng(0)
    jpegs = [_photo(rng, *size) for _ in range(n)]
    folder = os.path.join(root, "folder")
    os.makedirs(folder)
    with open(os.path.join(folder, "captions.tsv"), "w") as f:
        for i, data in enumerate(jpegs):
            with open(os.path.join(folder, f"{i:06d}.jpg"), "wb") as g:
                g.write(data)
            f.write(f"{i:06d}.jpg\tsynthetic photo number {i}\n")
    shards = os.path.join(root, "shards")
    os.makedirs(shards)
    per_shard = max(1, n // 4)
    for s in range(0, n, per_shard):
        tar_name = f"images_{s // per_shard:05d}.tar"
        rows = ["tar\tfile\tcaption"]
        with tarfile.open(os.path.join(shards, tar_name), "w") as tf:
            for i in range(s, min(n, s + per_shard)):
                for name, data in ((f"{i:010d}.jpg", jpegs[i]), (f"{i:010d}.txt", f"photo {i}".encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
                rows.append(f"{tar_name}\t{i:010d}.jpg\tsynthetic photo number {i}")
        with open(os.path.join(shards, f"images_{s // per_shard:05d}.tsv"), "w") as f:
            f.write("\n".join(rows) + "\n")
    configs = {
        "image_folder": {"name": "image_folder", "data_dir": folder},
        "image_text_tsv": {"name": "image_text_tsv", "data_dir": shards},
        "webdataset": {"name": "webdataset", "data_dir": shards},
    }
    try:
        import tensorflow_datasets as tfds

        class BenchImages(tfds.core.GeneratorBasedBuilder):
            VERSION = tfds.core.Version("1.0.0")

            def _info(self):
                return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                    "image": tfds.features.Image(encoding_format="jpeg"),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }))

            def _split_generators(self, dl_manager):
                return {"train": self._generate_examples()}

            def _generate_examples(self):
                for i, data in enumerate(jpegs):
                    yield i, {"image": data, "label": i % 10}

        BenchImages(data_dir=os.path.join(root, "tfds"), file_format="array_record").download_and_prepare()
        configs["imagenet (tfds array_record)"] = {
            "name": "imagenet", "tfds_name": "bench_images", "data_dir": os.path.join(root, "tfds")}
    except ImportError:
        print("tensorflow-datasets not installed: skipping the tfds pipeline")
    return configs


def measure(cfg: dict, batch: int, steps: int, warmup: int) -> float:
    from mdm_jax.data import create_dataset

    cfg = {**cfg, "process_index": 0, "process_count": 1}
    it, _ = create_dataset(cfg, global_batch_size=batch, seed=0)
    try:
        for _ in range(warmup):
            next(it)
        t = time.perf_counter()
        for _ in range(steps):
            next(it)
        return batch * steps / (time.perf_counter() - t)
    finally:
        if hasattr(it, "close"):
            it.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--num_workers", type=int, nargs="+", default=[0])
    parser.add_argument("--read_threads", type=int, default=4)
    parser.add_argument("--synthetic_n", type=int, default=256)
    parser.add_argument("--photo_size", type=int, nargs=2, default=[500, 375])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--emoji_dir", default="")
    parser.add_argument("--fmnist_dir", default="/usr/share/datasets/fashion-mnist")
    args = parser.parse_args()
    flags.FLAGS.mark_as_parsed()  # grain workers need parsed absl flags (stack.md pitfall 3)

    with tempfile.TemporaryDirectory() as root:
        t = time.perf_counter()
        synthetic = make_synthetic(root, args.synthetic_n, tuple(args.photo_size))
        print(f"# synthetic data ({args.synthetic_n} JPEGs {args.photo_size[0]}x{args.photo_size[1]}) "
              f"written in {time.perf_counter() - t:.1f}s; batch {args.batch}, {args.steps} timed steps, "
              f"{os.cpu_count()} CPUs")
        runs = [(f"procedural_shapes@{r}", {"name": "procedural_shapes"}, r) for r in (32, 64)]
        if os.path.isdir(args.fmnist_dir):
            runs.append(("fashion_mnist@32", {"name": "fashion_mnist", "data_dir": args.fmnist_dir}, 32))
        if args.emoji_dir:
            runs.append(("emoji@64", {"name": "emoji", "data_dir": args.emoji_dir}, 64))
        for res in args.resolutions:
            for name, cfg in synthetic.items():
                runs.append((f"{name}@{res}", cfg, res))
        for workers in args.num_workers:
            for label, cfg, res in runs:
                cfg = {**cfg, "resolution": res, "num_workers": workers, "read_threads": args.read_threads}
                try:
                    rate = measure(cfg, args.batch, args.steps, args.warmup)
                    print(f"{label:40s} workers={workers:<2d} {rate:9.1f} images/s")
                except Exception as e:  # keep going: report what fails
                    print(f"{label:40s} workers={workers:<2d} FAILED {type(e).__name__}: {e}")


if __name__ == "__main__":
    main()
