"""Sampling pipeline: converted checkpoint in, uint8 images per level out."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from mdm_jax import parity
from mdm_jax.convert import convert_checkpoint
from mdm_jax.pipeline import Pipeline

PARITY = Path(os.environ.get("MDM_PARITY_DIR", Path(__file__).resolve().parents[2] / "shared" / "parity"))
pytestmark = pytest.mark.skipif(not (PARITY / "configs.json").exists(), reason=f"no fixtures at {PARITY}")


class WordEncoder:
    """A deterministic stand-in for T5: one 48-d vector per word, EOS row, padded to the longest caption."""

    def __init__(self):
        self.calls = []

    def encode(self, captions):
        self.calls.append(list(captions))
        lengths = [len(c.split()) + 1 for c in captions]
        s = max(lengths)
        feats = np.zeros((len(captions), s, 48), np.float32)
        mask = np.zeros((len(captions), s), np.float32)
        for i, c in enumerate(captions):
            for j, w in enumerate(c.split() + ["</s>"]):
                feats[i, j] = np.random.default_rng(abs(hash(w)) % 2**32).normal(size=48)
                mask[i, j] = 1
        return jnp.asarray(feats), jnp.asarray(mask)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    entry = json.loads((PARITY / "configs.json").read_text())["models"]["p2"]
    cfg = tmp_path_factory.mktemp("cfg") / "p2.json"
    cfg.write_text(json.dumps(parity.model_config(entry)))
    out = tmp_path_factory.mktemp("conv") / "p2"
    convert_checkpoint(PARITY / "unet_p2.npz", out, config=str(cfg), log=lambda s: None)
    from mdm_jax.convert import load_converted
    from mdm_jax.diffusion import DiffusionSpec
    from mdm_jax.models import build_model

    model_cfg, diff_cfg, params = load_converted(out)
    return Pipeline(build_model(model_cfg), params, DiffusionSpec.from_config(diff_cfg), WordEncoder())


def test_pipeline_returns_every_level_as_uint8(pipe):
    levels = pipe(["a red circle", "a blue square at the top"], num_steps=4, seed=1)
    assert [lv.shape for lv in levels] == [(2, 32, 32, 3), (2, 16, 16, 3)]
    assert all(lv.dtype == np.uint8 for lv in levels)
    # Guided: negative prompts first, then the prompts, encoded together (so padded to the same length).
    assert pipe.text_encoder.calls[-1] == ["", "", "a red circle", "a blue square at the top"]
    again = pipe(["a red circle", "a blue square at the top"], num_steps=4, seed=1)
    for a, b in zip(levels, again, strict=True):
        np.testing.assert_array_equal(a, b)


def test_guidance_and_seed_change_the_images(pipe):
    base = pipe(["a red circle"], num_steps=3, seed=0, return_float=True)[0]
    other_seed = pipe(["a red circle"], num_steps=3, seed=1, return_float=True)[0]
    unguided = pipe(["a red circle"], num_steps=3, seed=0, guidance_weight=None, return_float=True)[0]
    assert np.abs(base - other_seed).max() > 1e-2
    assert np.abs(base - unguided).max() > 1e-3


def test_missing_prompts_is_a_clear_error(pipe):
    with pytest.raises(ValueError, match="prompts: expected 1 captions"):
        pipe(None, labels=[1], num_steps=2)
