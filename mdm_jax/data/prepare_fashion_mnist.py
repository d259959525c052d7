"""Copies Fashion-MNIST from its Debian location into ``fashion_mnist_{train,t10k}.npz`` under ``--out``.

Optional: the ``fashion_mnist`` source also reads the idx files in place (the default ``data_dir`` is
``/usr/share/datasets/fashion-mnist``).  Get them with ``apt-get install -y dataset-fashion-mnist``, then::

    python -m mdm_jax.data.prepare_fashion_mnist --src /usr/share/datasets/fashion-mnist --out ~/data/fmnist
"""

from __future__ import annotations

import argparse
import io

import numpy as np

from mdm_jax import io_paths
from mdm_jax.data.packaged_sources import FASHION_MNIST_DIR, load_fashion_mnist


def prepare(src: str, out: str) -> dict[str, int]:
    """Writes one npz (images uint8 (N,28,28), labels int32) per split; returns sizes."""
    io_paths.makedirs(out)
    sizes = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images, labels = load_fashion_mnist(src, split)
        buf = io.BytesIO()
        np.savez(buf, images=images, labels=labels)
        io_paths.write_bytes(io_paths.join(out, f"fashion_mnist_{prefix}.npz"), buf.getvalue())
        sizes[split] = len(labels)
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--src", default=FASHION_MNIST_DIR)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    print(prepare(args.src, args.out))


if __name__ == "__main__":
    main()
