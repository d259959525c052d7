"""Converts the unpacked npm package ``emoji-datasource-google`` into ``emoji_64.npy`` + ``emoji_meta.json``.

Get the package (once, with npm; nothing is fetched at training time)::

    npm pack emoji-datasource-google@16.0.0 && tar -xzf emoji-datasource-google-16.0.0.tgz   # -> ./package
    python -m mdm_jax.data.prepare_emoji --src package --out ~/data/emoji

Each base emoji and each skin-tone variant with a Google image becomes one example (3,786 in v16.0.0): the RGBA
64x64 PNG composited on white, caption = lower-cased Unicode name (skin tones appended: "waving hand, medium skin
tone"), labels = category (10) and subcategory (99).
"""

from __future__ import annotations

import argparse
import io
import json
import os

import numpy as np
from PIL import Image

from mdm_jax import io_paths
from mdm_jax.data.image_ops import _to_rgb
from mdm_jax.data.packaged_sources import EMOJI_FILE, EMOJI_META

SKIN_TONES = {
    "1F3FB": "light skin tone",
    "1F3FC": "medium-light skin tone",
    "1F3FD": "medium skin tone",
    "1F3FE": "medium-dark skin tone",
    "1F3FF": "dark skin tone",
}


def _caption(entry: dict) -> str:
    name = entry.get("name") or entry["short_names"][0].replace("_", " ")
    return name.lower()


def prepare(src: str, out: str, size: int = 64) -> int:
    """Writes the arrays and metadata; returns the number of images."""
    with open(os.path.join(src, "emoji.json"), encoding="utf-8") as f:
        entries = sorted(json.load(f), key=lambda e: e["sort_order"])
    img_dir = os.path.join(src, "img", "google", str(size))
    items = []  # (png, caption, category, subcategory)
    for e in entries:
        if e.get("has_img_google"):
            items.append((e["image"], _caption(e), e["category"], e["subcategory"]))
        for tones, var in sorted((e.get("skin_variations") or {}).items()):
            if var.get("has_img_google"):
                names = ", ".join(SKIN_TONES.get(t, t) for t in tones.split("-"))
                items.append((var["image"], f"{_caption(e)}, {names}", e["category"], e["subcategory"]))
    categories = sorted({c for _, _, c, _ in items})
    subcategories = sorted({s for _, _, _, s in items})
    images = np.zeros((len(items), size, size, 3), np.uint8)
    kept = []
    for png, caption, cat, sub in items:
        path = os.path.join(img_dir, png)
        try:
            with Image.open(path) as im:
                im.load()
                rgb = _to_rgb(im)
        except (OSError, ValueError) as err:
            print(f"skipping {path}: {err}")
            continue
        if rgb.size != (size, size):
            rgb = rgb.resize((size, size), Image.Resampling.BICUBIC)
        images[len(kept)] = np.asarray(rgb)
        kept.append((png, caption, categories.index(cat), subcategories.index(sub)))
    io_paths.makedirs(out)  # local or gs://; each file is written whole
    buf = io.BytesIO()
    np.save(buf, images[: len(kept)])
    io_paths.write_bytes(io_paths.join(out, EMOJI_FILE), buf.getvalue())
    meta = {
        "source": "npm emoji-datasource-google (images Apache-2.0 Google Noto; data MIT)",
        "files": [k[0] for k in kept],
        "captions": [k[1] for k in kept],
        "category": [k[2] for k in kept],
        "subcategory": [k[3] for k in kept],
        "category_names": categories,
        "subcategory_names": subcategories,
    }
    io_paths.write_text(io_paths.join(out, EMOJI_META), json.dumps(meta))
    return len(kept)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--src", required=True, help="unpacked npm package folder (contains emoji.json, img/)")
    parser.add_argument("--out", required=True, help="output folder (use as data.data_dir)")
    args = parser.parse_args()
    n = prepare(args.src, args.out)
    print(f"wrote {n} emoji to {args.out}")


if __name__ == "__main__":
    main()
