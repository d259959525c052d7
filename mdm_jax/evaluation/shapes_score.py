"""Exact prompt-following score for the procedural shapes (``mdm_jax.data.procedural``).

The shapes are drawn by known rules (a flat palette colour alpha-blended over a near-grey background, one shape
at one of five positions), so what a sample shows is computable from its pixels, with no learned classifier:

* background: the median of the border pixels;
* per pixel, for every palette colour c, the blend weight a = <p - bg, c - bg> / |c - bg|^2 and the residual
  |p - bg - a (c - bg)|; a pixel is foreground for the colour with the smallest residual when a >= 0.5 and the
  residual is small (antialiased edges resolve to their own colour, not to a mix);
* colour: the majority colour of the foreground, correct when it is the prompt's and covers >= 60% of the
  foreground (a shape painted in mixed colours fails);
* position: the alpha-weighted centroid, nearest of the five anchor points;
* shape: the best soft IoU of the four shape masks, each fitted over a small grid of centres and radii.

On real renders (``ProceduralShapesSource``) colour and position are 100% right at 16 and 32 px and shape 100%
at 32 px (tests/test_shapes_score.py checks this); generated samples are scored the same way.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mdm_jax.data import procedural

_PALETTE_NAMES = tuple(procedural.COLOURS)
_PALETTE = np.asarray([procedural.COLOURS[c] for c in _PALETTE_NAMES], np.float32)
_POS_NAMES = tuple(procedural.POSITIONS)
_POS = np.asarray([procedural.POSITIONS[p] for p in _POS_NAMES], np.float32)
_PROMPT = re.compile(r"^an? (\w+) (\w+) in the (.+)$")
_MAX_RESIDUAL = 60.0  # RGB units: noise and jitter (±12 colour, ±8 background) stay well below
_MIN_PURITY = 0.6
_MIN_AREA, _MAX_AREA = 0.015, 0.35  # fraction of the image a single shape covers (renders: 0.04-0.14)


@dataclass(frozen=True)
class Detection:
    """What one image shows (None where nothing shape-like is there)."""

    colour: str | None
    colour_purity: float  # fraction of foreground pixels of the majority colour
    position: str | None
    shape: str | None
    area: float  # foreground fraction of the image


def parse_prompt(prompt: str) -> tuple[str, str, str]:
    """``"a red circle in the top left"`` -> ("circle", "red", "top left"); other text raises ValueError."""
    m = _PROMPT.match(prompt.strip())
    if not m or m.group(1) not in procedural.COLOURS or m.group(2) not in procedural.SHAPES \
            or m.group(3) not in procedural.POSITIONS:
        raise ValueError(f"not a procedural-shapes prompt: {prompt!r} (expected e.g. 'a red circle in the top left')")
    return m.group(2), m.group(1), m.group(3)


def all_prompts() -> list[str]:
    """Every (shape, colour, position) caption: 4 x 6 x 5 = 120."""
    return [procedural.caption_for(s, c, p) for s in procedural.SHAPES for c in _PALETTE_NAMES
            for p in _POS_NAMES]


def _background(img: np.ndarray) -> np.ndarray:
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]], axis=0)
    return np.median(border, axis=0)


def _foreground(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(alpha map HxW in [0, 1], colour index map HxW with -1 for background)."""
    p = img.astype(np.float32) - _background(img)
    d = _PALETTE[None, None] - _background(img)[None, None, None]  # (1, 1, K, 3)
    d = np.broadcast_to(d, (1, 1, *d.shape[2:]))
    a = (p[:, :, None, :] * d).sum(-1) / (d * d).sum(-1)  # (H, W, K)
    res = np.linalg.norm(p[:, :, None, :] - a[..., None] * d, axis=-1)
    res = np.where(a > 0, res, np.inf)
    k = res.argmin(-1)
    best_a = np.take_along_axis(a, k[..., None], -1)[..., 0]
    best_r = np.take_along_axis(res, k[..., None], -1)[..., 0]
    fg = (best_a >= 0.5) & (best_r <= _MAX_RESIDUAL)
    alpha = np.where(best_r <= _MAX_RESIDUAL, np.clip(best_a, 0.0, 1.0), 0.0)
    return alpha, np.where(fg, k, -1)


def _shape_fit(alpha: np.ndarray, cx: float, cy: float) -> str:
    """The shape whose mask (over a small grid of centres/radii around the centroid) best matches ``alpha``."""
    n = alpha.shape[0]
    ss = 2
    coords = (np.arange(n * ss, dtype=np.float32) + 0.5) / (n * ss)
    xs, ys = coords[None, :], coords[:, None]
    offsets = np.linspace(-0.04, 0.04, 3, dtype=np.float32)
    ox, oy, r = (a.reshape(-1, 1, 1) for a in np.meshgrid(offsets, offsets, np.linspace(0.13, 0.23, 5,
                                                                                         dtype=np.float32)))
    a = alpha[None]
    ious = []
    for shape in procedural.SHAPES:
        # the triangle's centroid sits below its reference point (apex at cy - r, base at cy + 0.8 r)
        dy0 = 0.2 * r if shape == "triangle" else 0.0
        m = procedural._shape_mask(shape, xs, ys, cx + ox, cy - dy0 + oy, r).astype(np.float32)
        m = m.reshape(-1, n, ss, n, ss).mean(axis=(2, 4))
        ious.append((np.minimum(m, a).sum((1, 2)) / np.maximum(np.maximum(m, a).sum((1, 2)), 1e-6)).max())
    return procedural.SHAPES[int(np.argmax(ious))]


def detect(img: np.ndarray, with_shape: bool = True) -> Detection:
    """Reads colour, position and shape off one uint8 HxWx3 image (square)."""
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[-1] != 3 or img.shape[0] != img.shape[1]:
        raise ValueError(f"detect: expected a square HxWx3 image, got shape {img.shape}")
    alpha, idx = _foreground(img)
    n = img.shape[0]
    fg = idx >= 0
    area = float(fg.mean())
    if fg.sum() == 0 or not _MIN_AREA <= area <= _MAX_AREA:
        return Detection(None, 0.0, None, None, area)
    counts = np.bincount(idx[fg], minlength=len(_PALETTE_NAMES))
    colour = _PALETTE_NAMES[int(counts.argmax())]
    purity = float(counts.max() / counts.sum())
    coords = (np.arange(n, dtype=np.float32) + 0.5) / n
    w = alpha * fg
    cx = float((w * coords[None, :]).sum() / w.sum())
    cy = float((w * coords[:, None]).sum() / w.sum())
    # The triangle's area centroid is 0.2 r below its anchor; the nearest-anchor rule has 0.11 of slack.
    position = _POS_NAMES[int(np.linalg.norm(_POS - np.asarray([cx, cy]), axis=-1).argmin())]
    shape = _shape_fit(alpha, cx, cy) if with_shape else None
    return Detection(colour, purity, position, shape, area)


@dataclass(frozen=True)
class Score:
    """Fractions of samples right on each attribute; ``colour_and_position`` is the demo's headline number."""

    n: int
    colour: float
    position: float
    shape: float
    colour_and_position: float
    all_three: float

    def summary(self) -> str:
        return (f"prompt-following on {self.n} samples: colour+position {100 * self.colour_and_position:.1f}% "
                f"(colour {100 * self.colour:.1f}%, position {100 * self.position:.1f}%, "
                f"shape {100 * self.shape:.1f}%, all three {100 * self.all_three:.1f}%)")


def score(images: Sequence[np.ndarray] | np.ndarray, prompts: Sequence[str], with_shape: bool = True) -> Score:
    """Scores uint8 NHWC samples against their prompts."""
    if len(images) != len(prompts):
        raise ValueError(f"score: {len(images)} images but {len(prompts)} prompts")
    rows = []
    for img, prompt in zip(images, prompts, strict=True):
        shape, colour, position = parse_prompt(prompt)
        d = detect(img, with_shape)
        c_ok = d.colour == colour and d.colour_purity >= _MIN_PURITY
        rows.append((c_ok, d.position == position, d.shape == shape))
    r = np.asarray(rows, bool).reshape(-1, 3)
    return Score(len(rows), *(float(v) for v in r.mean(0)), float((r[:, 0] & r[:, 1]).mean()),
                 float(r.all(1).mean()))


def colour_accuracy(images: Sequence[np.ndarray] | np.ndarray, colours: Sequence[str]) -> float:
    """Fraction of images whose (pure enough) shape colour is the requested one: label-following accuracy of a
    model conditioned on ``procedural_label='colour'`` classes."""
    if len(images) != len(colours):
        raise ValueError(f"colour_accuracy: {len(images)} images but {len(colours)} colours")
    ok = [(d := detect(img, with_shape=False)).colour == c and d.colour_purity >= _MIN_PURITY
          for img, c in zip(images, colours, strict=True)]
    return float(np.mean(ok))
