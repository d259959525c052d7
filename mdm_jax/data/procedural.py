"""``procedural_shapes``: a built-in, deterministic captioned dataset for CPU demos and tests.

Every example is a coloured shape at one of five positions on a light background, drawn on the fly at any
resolution (antialiased by 4x supersampling) from ``np.random.default_rng((seed, split, index))``, so it needs
no download and example ``i`` is always the same picture.  Captions read like ``"a red circle in the top left"``;
the class label is one per (shape, colour) pair.  Small enough to learn in minutes, rich enough to check that
text and class conditioning actually steer the samples.
"""

from __future__ import annotations

import numpy as np

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (235, 200, 20),
    "purple": (140, 40, 180),
    "orange": (245, 120, 15),
}
POSITIONS: dict[str, tuple[float, float]] = {  # (x, y) of the shape centre, in [0, 1]
    "top left": (0.28, 0.28),
    "top right": (0.72, 0.28),
    "bottom left": (0.28, 0.72),
    "bottom right": (0.72, 0.72),
    "center": (0.5, 0.5),
}
_COLOUR_NAMES = tuple(COLOURS)
_POSITION_NAMES = tuple(POSITIONS)
_SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}
_SUPERSAMPLE = 4


LABEL_KINDS = ("shape_colour", "colour")


def class_names(label_by: str = "shape_colour") -> tuple[str, ...]:
    """Class names. 'shape_colour': ``len(SHAPES) * len(COLOURS)`` classes, label = shape_index * len(COLOURS) +
    colour_index; 'colour': one class per colour (the class is trivially visible: conditioning tests)."""
    if label_by == "colour":
        return _COLOUR_NAMES
    return tuple(f"{c} {s}" for s in SHAPES for c in _COLOUR_NAMES)


def caption_for(shape: str, colour: str, position: str) -> str:
    """The caption template, e.g. ``"a red circle in the top left"`` / ``"a blue square in the center"``."""
    article = "an" if colour[0] in "aeiou" else "a"
    return f"{article} {colour} {shape} in the {position}"


def _shape_mask(shape: str, xs: np.ndarray, ys: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    dx, dy = xs - cx, ys - cy
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) <= 0.82 * r
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= 1.15 * r
    if shape == "triangle":  # apex up; base at cy + 0.8 r
        t = (dy + r) / (1.8 * r)
        return (t >= 0) & (t <= 1) & (np.abs(dx) <= t * 1.05 * r)
    raise ValueError(shape)


def render(shape: str, colour: str, position: str, resolution: int, rng: np.random.Generator) -> np.ndarray:
    """Draws one example (uint8 HxWx3) with small random jitter in size, position and background tone."""
    n = resolution * _SUPERSAMPLE
    coords = (np.arange(n, dtype=np.float32) + 0.5) / n
    xs, ys = coords[None, :], coords[:, None]
    px, py = POSITIONS[position]
    cx, cy = px + rng.uniform(-0.04, 0.04), py + rng.uniform(-0.04, 0.04)
    r = rng.uniform(0.15, 0.21)
    mask = _shape_mask(shape, xs, ys, cx, cy, r).astype(np.float32)
    alpha = mask.reshape(resolution, _SUPERSAMPLE, resolution, _SUPERSAMPLE).mean(axis=(1, 3))[..., None]
    background = np.full(3, rng.uniform(215, 250), np.float32) + rng.uniform(-8, 8, size=3)
    foreground = np.asarray(COLOURS[colour], np.float32) + rng.uniform(-12, 12, size=3)
    img = background * (1.0 - alpha) + foreground * alpha
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


class ProceduralShapesSource:
    """Random-access source (grain ``RandomAccessDataSource`` protocol) of procedural shapes.

    ``num_examples`` only sets the epoch length: any index can be drawn, and each split uses its own seed stream.
    """

    def __init__(self, resolution: int, num_examples: int = 100_000, split: str = "train", seed: int = 0,
                 label_by: str = "shape_colour"):
        if split not in _SPLIT_IDS:
            raise ValueError(f"procedural_shapes has splits {sorted(_SPLIT_IDS)}, got {split!r}")
        if label_by not in LABEL_KINDS:
            raise ValueError(f"procedural_label: expected one of {LABEL_KINDS}, got {label_by!r}")
        self.label_by = label_by
        self.resolution = int(resolution)
        self.num_examples = int(num_examples)
        self._stream = (int(seed), _SPLIT_IDS[split])

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng((*self._stream, int(index)))
        s, c, p = rng.integers(len(SHAPES)), rng.integers(len(COLOURS)), rng.integers(len(POSITIONS))
        shape, colour, position = SHAPES[s], _COLOUR_NAMES[c], _POSITION_NAMES[p]
        return {
            "image": render(shape, colour, position, self.resolution, rng),
            "label": np.int32(c if self.label_by == "colour" else s * len(COLOURS) + c),
            "caption": caption_for(shape, colour, position),
        }

    def __repr__(self) -> str:
        return f"ProceduralShapesSource(resolution={self.resolution}, num_examples={self.num_examples})"
