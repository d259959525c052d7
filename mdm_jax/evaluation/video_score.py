"""Prompt-following score for ``moving_shapes`` clips ("a red square moving left"), read off the pixels.

Reuses the shapes detector's per-pixel colour model (``shapes_score._foreground``) frame by frame:

* colour: the majority foreground colour over the whole clip, right when it is the prompt's with purity >= 60%;
* motion: the alpha-weighted centroid per frame; the clip's direction is the sign of the larger of the x / y
  displacements from the first to the last frame (renders move ``video.TRAVEL`` = 0.35 of the frame), right when
  it is the prompt's and the displacement is at least 0.15 of the frame; ``monotone`` when every frame step moves
  the same way;
* nesting: a sample's first-frame level (the image level) against frame 0 of its clip: same colour, and the
  distance between centroids (fraction of the frame).

The renders' drifting sine background is not flat, so colour and direction are checked on real clips first
(``python -m mdm_jax.evaluation.video_score --check``). Usage on a demo's samples:

  python -m mdm_jax.evaluation.video_score /tmp/mdm_video_demo/samples/video --step=400 --weights=ema
"""

from __future__ import annotations

import argparse
import glob
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from mdm_jax import io_paths
from mdm_jax.data import procedural, video
from mdm_jax.evaluation import shapes_score
from mdm_jax.training import reporting

_PROMPT = re.compile(r"^an? (\w+) (\w+) moving (left|right|up|down)$")
_MIN_MOVE = 0.15
_COLOURS = tuple(procedural.COLOURS)


@dataclass(frozen=True)
class FrameDetection:
    colour: str | None  # majority foreground colour of the frame (None: no foreground)
    purity: float
    centroid: tuple[float, float] | None  # (x, y) in [0, 1]
    area: float


def detect_frame(img: np.ndarray) -> FrameDetection:
    """Colour and centroid of the one shape in a uint8 HxWx3 frame."""
    alpha, idx = shapes_score._foreground(np.asarray(img))
    fg = idx >= 0
    if not fg.any():
        return FrameDetection(None, 0.0, None, 0.0)
    counts = np.bincount(idx[fg], minlength=len(_COLOURS))
    k = int(counts.argmax())
    w = alpha * (idx == k)
    n = img.shape[0]
    coords = (np.arange(n, dtype=np.float32) + 0.5) / n
    c = (float((w * coords[None, :]).sum() / w.sum()), float((w * coords[:, None]).sum() / w.sum()))
    return FrameDetection(_COLOURS[k], float(counts.max() / counts.sum()), c, float(fg.mean()))


def parse_prompt(prompt: str) -> tuple[str, str, str]:
    """``"a red square moving left"`` -> ("red", "square", "left")."""
    m = _PROMPT.match(prompt.strip())
    if not m or m.group(1) not in procedural.COLOURS:
        raise ValueError(f"not a moving_shapes prompt: {prompt!r} (expected e.g. 'a red square moving left')")
    return m.group(1), m.group(2), m.group(3)


@dataclass(frozen=True)
class ClipResult:
    colour_ok: bool
    direction: str | None
    displacement: float  # along the detected direction, fraction of the frame
    monotone: bool
    frames_detected: int


def score_clip(frames: np.ndarray, prompt: str) -> ClipResult:
    """(F, h, w, 3) uint8 frames of one clip against its prompt."""
    colour, _, direction = parse_prompt(prompt)
    dets = [detect_frame(f) for f in frames]
    found = [d for d in dets if d.colour is not None]
    colours = [d.colour for d in found]
    major = max(set(colours), key=colours.count) if colours else None
    colour_ok = major == colour and colours.count(major) / len(frames) >= 0.6 and \
        np.mean([d.purity for d in found if d.colour == major]) >= 0.6
    cents = [d.centroid for d in dets if d.colour == major] if major else []
    if len(cents) < 2 or dets[0].colour != major or dets[-1].colour != major:
        return ClipResult(bool(colour_ok), None, 0.0, False, len(found))
    steps = np.diff(np.asarray([d.centroid for d in dets if d.colour == major]), axis=0)
    dx, dy = np.asarray(dets[-1].centroid) - np.asarray(dets[0].centroid)
    axis, sign = (0, np.sign(dx)) if abs(dx) >= abs(dy) else (1, np.sign(dy))
    move = abs(dx) if axis == 0 else abs(dy)
    name = {(0, 1.0): "right", (0, -1.0): "left", (1, 1.0): "down", (1, -1.0): "up"}.get((axis, float(sign)))
    monotone = bool(np.all(np.sign(steps[:, axis]) == sign))
    return ClipResult(bool(colour_ok), name if move >= _MIN_MOVE else None, float(move), monotone, len(found))


@dataclass(frozen=True)
class VideoScore:
    n: int
    colour: float
    direction: float
    colour_and_direction: float
    monotone: float
    mean_displacement: float
    nest_colour_agree: float | None = None
    nest_centroid_dist: float | None = None

    def summary(self) -> str:
        s = (f"video prompt-following on {self.n} clips: colour+direction {100 * self.colour_and_direction:.1f}% "
             f"(colour {100 * self.colour:.1f}%, direction {100 * self.direction:.1f}%, monotone motion "
             f"{100 * self.monotone:.1f}%, mean displacement {self.mean_displacement:.2f} of the frame)")
        if self.nest_colour_agree is not None:
            s += (f"; first-frame level vs clip frame 0: colour agrees {100 * self.nest_colour_agree:.1f}%, "
                  f"centroid distance {self.nest_centroid_dist:.3f} of the frame")
        return s


def score(clips: Sequence[np.ndarray], prompts: Sequence[str], first_frames: Sequence[np.ndarray] | None = None
          ) -> VideoScore:
    """``clips``: (F, h, w, 3) uint8 each; ``first_frames``: the image level's samples (h', w', 3), optional."""
    if len(clips) != len(prompts):
        raise ValueError(f"score: {len(clips)} clips but {len(prompts)} prompts")
    rs = [score_clip(c, p) for c, p in zip(clips, prompts, strict=True)]
    want = [parse_prompt(p)[2] for p in prompts]
    col = np.asarray([r.colour_ok for r in rs])
    dirs = np.asarray([r.direction == w for r, w in zip(rs, want, strict=True)])
    nest_c = nest_d = None
    if first_frames is not None:
        agree, dist = [], []
        for img, clip in zip(first_frames, clips, strict=True):
            a, b = detect_frame(img), detect_frame(clip[0])
            agree.append(a.colour is not None and a.colour == b.colour)
            if a.centroid is not None and b.centroid is not None:
                dist.append(float(np.linalg.norm(np.subtract(a.centroid, b.centroid))))
        nest_c, nest_d = float(np.mean(agree)), float(np.mean(dist)) if dist else float("nan")
    return VideoScore(len(rs), float(col.mean()), float(dirs.mean()), float((col & dirs).mean()),
                      float(np.mean([r.monotone for r in rs])), float(np.mean([r.displacement for r in rs])),
                      nest_c, nest_d)


def score_levels(levels: Sequence[np.ndarray], captions: Sequence[str], tiles: Sequence[int]) -> VideoScore | None:
    """Score a sampler's output directly (uint8 levels high -> low, ``tiles``: mosaic tiles per side of each
    level): the clip level against its captions, the single-frame level (if any) against frame 0. ``None`` when
    the samples are not clips or a caption is not a ``moving_shapes`` prompt (a user's own prompts)."""
    if not tiles or tiles[0] <= 1 or not captions:
        return None
    try:
        for c in captions:
            parse_prompt(c)
    except ValueError:
        return None
    clips = video.unmosaic(np.asarray(levels[0]), tiles[0] * tiles[0])
    first = np.asarray(levels[-1]) if len(levels) > 1 and tiles[-1] == 1 else None
    return score(list(clips[:len(captions)]), list(captions), None if first is None else list(first[:len(captions)]))


def score_and_report(levels: Sequence[np.ndarray], captions: Sequence[str], phase: Any, step: int, weights: str,
                     writer: Any, out_dir: str) -> VideoScore | None:
    """``score_levels`` on a training run's samples: printed, logged to TensorBoard (``video_following/*``) and
    written as ``video_score_step_<n>_<weights>.json`` beside the clips (process 0)."""
    s = score_levels(levels, captions, phase.spec.level_tiles)
    if s is None:
        return None
    reporting.report_score(
        [f"[{phase.name}] step {step}, {weights} weights: {s.summary()}"], writer, step,
        {f"video_following/{k}": v for k, v in vars(s).items() if k != "n" and v is not None},
        io_paths.join(out_dir, f"video_score_step_{step:08d}_{weights}.json"),
        dict(step=step, weights=weights, **vars(s)))
    return s


def split_grid(grid: np.ndarray, n: int, size: int, pad: int = 2) -> np.ndarray:
    """Inverse of ``reporting.image_grid`` for ``n`` images of ``size`` px: (n, size, size, 3)."""
    cols = int(np.ceil(np.sqrt(n)))
    out = []
    for i in range(n):
        r, q = divmod(i, cols)
        y, x = pad + r * (size + pad), pad + q * (size + pad)
        out.append(grid[y:y + size, x:x + size, :3])
    return np.stack(out)


def load_samples(sample_dir: str, step: int | None, weights: str
                 ) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """(clips (N, F, h, w, 3), first frames or None, prompts) from a training/sampling run's PNG grids."""
    caps = sorted(glob.glob(os.path.join(sample_dir, f"step_*_{weights}_captions.txt")))
    if step is not None:
        caps = [c for c in caps if f"step_{step:08d}_" in c]
    if not caps:
        raise FileNotFoundError(f"no step_*_{weights}_captions.txt in {sample_dir}: run the demo (or sampling) first")
    stem = caps[-1][: -len("_captions.txt")]
    prompts = [ln for ln in open(caps[-1]).read().splitlines() if ln and not ln.startswith("#")]
    pngs = sorted(glob.glob(stem + "_*px.png"), key=lambda p: int(re.search(r"_(\d+)px\.png$", p).group(1)))
    n = len(prompts)
    grids = [np.asarray(Image.open(p).convert("RGB")) for p in pngs]
    cols = int(np.ceil(np.sqrt(n)))
    sizes = [(g.shape[1] - 2) // cols - 2 for g in grids]
    big = split_grid(grids[-1], n, sizes[-1])
    tiles = sizes[-1] // sizes[0] if len(grids) > 1 else 1  # the demo: 32 px mosaics of 16 px frames
    clips = np.stack([video.unmosaic(c, tiles * tiles) for c in big])
    first = split_grid(grids[0], n, sizes[0]) if len(grids) > 1 else None
    return clips, first, prompts


def _check(n: int = 64) -> VideoScore:
    """The score on real renders (should be ~100%)."""
    src = video.MovingShapesSource(32, frames=4, split="validation")
    items = [src[i] for i in range(n)]
    clips = [video.unmosaic(it["image"], 4) for it in items]
    firsts = [video.MovingShapesSource(16, frames=1, split="validation")[i]["image"] for i in range(n)]
    return score(clips, [it["caption"] for it in items], firsts)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sample_dir", nargs="?")
    p.add_argument("--step", type=int, default=None)
    p.add_argument("--weights", default="ema", choices=("ema", "raw"))
    p.add_argument("--check", action="store_true", help="score real renders instead (sanity of the detector)")
    a = p.parse_args(argv)
    if a.check or not a.sample_dir:
        print("real renders:", _check().summary())
        return
    clips, first, prompts = load_samples(a.sample_dir, a.step, a.weights)
    print(score(list(clips), prompts, None if first is None else list(first)).summary())


if __name__ == "__main__":
    main()
