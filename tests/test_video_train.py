"""The offline video demo through the real training loop: image phase, then the temporal level nesting it, with
video samples (GIF + MP4 per level) at the end of each phase. Slow: two phase compiles of a video model."""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import pytest

from mdm_jax.training import config_lib, train_and_evaluate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytest.importorskip("av")


@pytest.mark.slow
def test_video_demo_tiny_trains_and_writes_clips(tmp_path):
    config = config_lib.load(os.path.join(REPO, "configs", "video_demo.py:tiny"))
    trainer = train_and_evaluate(config, str(tmp_path))
    assert [s for s, _ in trainer.history][-1] == 8
    assert all(np.isfinite(m["loss"]) for _, m in trainer.history)
    video = os.path.join(str(tmp_path), "samples", "video")
    for res in (16, 8):  # the 2x2-frame mosaic level and its first-frame level
        assert glob.glob(os.path.join(video, f"step_*_{res}px.gif")), os.listdir(video)
        assert glob.glob(os.path.join(video, f"step_*_{res}px.mp4")), os.listdir(video)
    # The trainer scores the clips it sampled against their prompts (the shared score reporter writes the JSON).
    scores = glob.glob(os.path.join(video, "video_score_step_*_ema.json"))
    assert scores, os.listdir(video)
    score = json.loads(open(scores[-1]).read())
    assert score["step"] == 8 and score["weights"] == "ema" and 0.0 <= score["colour"] <= 1.0
    # Which caption words the trained model reads (loss with true vs swapped captions, same draws per time).
    from mdm_jax.evaluation.caption_swap import run_gaps

    gaps, step, _ = run_gaps(config, str(tmp_path), num=4, times=(0.5, 0.9))
    assert step == 8 and set(gaps) == {"colour", "shape", "direction", "no caption"}
    for rows in gaps.values():
        assert len(rows) == 2 * 2 and all(np.isfinite(g.gap) for g in rows)  # 2 times x 2 levels
        assert [g.true_loss for g in rows] == [g.true_loss for g in gaps["no caption"]]  # the same true draws
