"""The moving-shapes clip scorer: right on real renders, wrong when the prompt's colour or direction is."""

import numpy as np
import pytest

from mdm_jax.data import video
from mdm_jax.evaluation import video_score


def _clips(n: int = 16):
    src = video.MovingShapesSource(32, frames=4, split="validation")
    items = [src[i] for i in range(n)]
    return [video.unmosaic(it["image"], 4) for it in items], [it["caption"] for it in items]


def test_real_renders_score_full():
    clips, prompts = _clips()
    s = video_score.score(clips, prompts, [c[0] for c in clips])
    assert (s.colour, s.direction, s.monotone, s.nest_colour_agree) == (1.0, 1.0, 1.0, 1.0)
    assert s.mean_displacement == pytest.approx(video.TRAVEL, abs=0.05)


def test_wrong_direction_colour_and_frozen_clips_fail():
    clips, prompts = _clips()
    flip = {"left": "right", "right": "left", "up": "down", "down": "up"}
    wrong_dir = [p.rsplit(" ", 1)[0] + " " + flip[p.rsplit(" ", 1)[1]] for p in prompts]
    assert video_score.score(clips, wrong_dir).direction == 0.0
    assert video_score.score([c[::-1] for c in clips], prompts).direction == 0.0  # played backwards
    assert video_score.score([np.repeat(c[:1], 4, 0) for c in clips], prompts).direction == 0.0  # no motion
    other = [p.replace(p.split()[1], "green" if p.split()[1] != "green" else "red", 1) for p in prompts]
    assert video_score.score(clips, other).colour == 0.0
    with pytest.raises(ValueError, match="moving_shapes prompt"):
        video_score.score(clips[:1], ["a red circle in the top left"])


def test_score_levels_reads_sampler_output():
    """What the trainer scores after sampling: clip mosaics (high level) + first frames (low level)."""
    src = video.MovingShapesSource(32, frames=4, split="validation")
    items = [src[i] for i in range(8)]
    mosaics = np.stack([it["image"] for it in items])
    prompts = [it["caption"] for it in items]
    firsts = video.unmosaic(mosaics, 4)[:, 0, ::2, ::2]  # 16 px first frames
    s = video_score.score_levels([mosaics, firsts], prompts, (2, 1))
    assert (s.n, s.colour_and_direction, s.nest_colour_agree) == (8, 1.0, 1.0)
    assert video_score.score_levels([mosaics[:, ::-1], firsts], prompts, (2, 1)).direction < 1.0  # tiles permuted
    assert video_score.score_levels([mosaics], ["a cat"] * 8, (2,)) is None  # not moving-shapes prompts
    assert video_score.score_levels([firsts], prompts, (1,)) is None  # an image phase
