"""Image decoding and preprocessing shared by every source.

ml-mdm resizes the smallest side to the target resolution and centre-crops (no random crop, no flip), then maps
uint8 to the model scale ``(x - 127) / 128``.  These helpers reproduce that with PIL so that workers need no
TensorFlow or OpenCV.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

Image.MAX_IMAGE_PIXELS = 256_000_000  # web corpora contain large images; still guards against decompression bombs


class CorruptImageError(ValueError):
    """Raised when bytes cannot be decoded into an RGB image."""


def _to_rgb(img: Image.Image) -> Image.Image:
    """Converts any PIL mode to RGB, compositing transparency on white (emoji/PNG icons)."""
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    return img.convert("RGB")


def decode_image(data: bytes, min_size: int | None = None) -> Image.Image:
    """Decodes image bytes to an RGB PIL image.

    With ``min_size`` JPEGs are decoded at a reduced DCT scale whose smallest side stays >= ``min_size``
    (``Image.draft``), several times faster for large photos; the later antialiased resize hides the difference.
    Raises ``CorruptImageError`` for anything PIL cannot fully decode.
    """
    try:
        img = Image.open(io.BytesIO(data))
        if min_size is not None and img.format == "JPEG":
            img.draft("RGB", (min_size, min_size))
        img.load()
        return _to_rgb(img)
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, DecompressionBombError...)
        raise CorruptImageError(f"{type(e).__name__}: {e}") from e


def resize_smallest_side_center_crop(img: Image.Image | np.ndarray, resolution: int) -> np.ndarray:
    """Resizes so the smallest side equals ``resolution`` and centre-crops a square (ml-mdm's preprocessing).

    Returns uint8 (resolution, resolution, 3).  Images already at the target size are returned unchanged.
    """
    if isinstance(img, np.ndarray):
        if img.shape[0] == resolution and img.shape[1] == resolution:
            return _ensure_rgb_array(img)
        img = Image.fromarray(_ensure_rgb_array(img))
    w, h = img.size
    scale = resolution / min(w, h)
    new_w, new_h = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - resolution) // 2, (new_h - resolution) // 2
    img = img.crop((left, top, left + resolution, top + resolution))
    return np.asarray(img, dtype=np.uint8)


def _ensure_rgb_array(x: np.ndarray) -> np.ndarray:
    """Grey (H,W) or (H,W,1) -> (H,W,3); RGBA -> RGB on white; keeps uint8."""
    x = np.asarray(x)
    if x.ndim == 2:
        x = x[..., None]
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    elif x.shape[-1] == 4:
        alpha = x[..., 3:4].astype(np.float32) / 255.0
        x = np.round(x[..., :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha))
    return x.astype(np.uint8)


def to_model_scale(images: np.ndarray) -> np.ndarray:
    """uint8 -> float32 in ml-mdm's scale ``(x - 127) / 128`` (range [-0.992, 1.0]; not ``x/127.5 - 1``)."""
    return (images.astype(np.float32) - 127.0) / 128.0


def from_model_scale(images: np.ndarray) -> np.ndarray:
    """Inverse of ``to_model_scale`` (``x * 128 + 127``, as ml-mdm's generate_batch), clipped to uint8."""
    return np.clip(np.round(np.asarray(images, np.float32) * 128.0 + 127.0), 0, 255).astype(np.uint8)
