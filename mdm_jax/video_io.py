"""Write clips as animated GIF (Pillow) and MP4 (PyAV), and turn mosaics back into frames.

Everything takes uint8 frames (F, H, W, 3). MP4 uses H.264 (yuv420p, so odd sizes are padded by one pixel) and
falls back to MPEG-4 part 2 where the bundled FFmpeg lacks libx264. Files are encoded under a local temporary
name, then renamed into place (local) or uploaded as one object (``gs://``, through ``io_paths``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from mdm_jax import io_paths


def _tmp(path: str | os.PathLike) -> Path:
    return Path(io_paths.staging_path(path))


def _publish(tmp: Path, path: str | os.PathLike) -> None:
    io_paths.publish(str(tmp), path)


def import_av(what: str):
    """PyAV (an optional extra), or one ImportError line naming ``what`` needs it and how to install it."""
    try:
        import av
    except ImportError as e:
        raise ImportError(f"{what} needs PyAV, which is not installed: pip install av "
                          f"(or pip install -e '.[video]')") from e
    return av


def write_gif(frames: np.ndarray, path: str | os.PathLike, fps: float = 8.0, scale: int = 1) -> Path:
    """Looping animated GIF; ``scale`` enlarges small frames by pixel replication."""
    dest, path = os.fspath(path), Path(path)
    frames = np.asarray(frames, np.uint8)
    if scale > 1:
        frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    images = [Image.fromarray(f) for f in frames]
    tmp = _tmp(dest)
    images[0].save(tmp, save_all=True, append_images=images[1:], duration=int(round(1000 / fps)), loop=0,
                   optimize=False)
    _publish(tmp, dest)
    return io_paths.path(dest) if io_paths.is_url(dest) else path


def write_mp4(frames: np.ndarray, path: str | os.PathLike, fps: float = 8.0, scale: int = 1) -> Path:
    """MP4 with PyAV (pip ``av``)."""
    av = import_av("writing MP4")

    dest, path = os.fspath(path), Path(path)
    frames = np.asarray(frames, np.uint8)
    if scale > 1:
        frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    h, w = frames.shape[1:3]
    pad_h, pad_w = h % 2, w % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    tmp = _tmp(dest)
    with av.open(str(tmp), mode="w") as container:
        stream = container.add_stream(codec, rate=int(round(fps)))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "18"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    _publish(tmp, dest)
    return io_paths.path(dest) if io_paths.is_url(dest) else path


def mosaic_frames(image: np.ndarray, tiles: int) -> np.ndarray:
    """(n*h, n*w, C) mosaic -> (n*n, h, w, C) frames in order; ``tiles`` = n (1: a single-frame image)."""
    hh, ww, c = image.shape
    h, w = hh // tiles, ww // tiles
    return image.reshape(tiles, h, tiles, w, c).transpose(0, 2, 1, 3, 4).reshape(tiles * tiles, h, w, c)


def write_clip(image: np.ndarray, tiles: int, stem: str | os.PathLike, fps: float = 8.0, scale: int = 1,
               mp4: bool = True) -> list[Path]:
    """A mosaic as ``<stem>.gif`` (+ ``<stem>.mp4``); returns the written paths."""
    frames = mosaic_frames(np.asarray(image, np.uint8), tiles)
    stem = os.fspath(stem)
    out = [write_gif(frames, stem + ".gif", fps, scale)]
    if mp4:
        out.append(write_mp4(frames, stem + ".mp4", fps, scale))
    return out
