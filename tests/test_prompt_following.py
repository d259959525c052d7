"""The demo's prompts must steer its samples, colour AND position, scored by the exact detector.

Two causes kept the demo at chance (README, "Conditioning"): byte tokens for a text encoder trained from scratch
(colour learned only after ~1,500 steps) and an epsilon-target loss, which weights the image error by alpha^2 ~ 0
at the high-noise steps where the prompt decides the layout (position stayed at 20%, chance, after 2,100 steps
with colour at 97%). The fast tests pin the recipe and the loss weighting that fixed it; the slow one trains the
demo's own 16 px phase and scores it.
"""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
import pytest

from mdm_jax.diffusion import process
from mdm_jax.evaluation import prompt_following
from mdm_jax.text import tokenizers
from mdm_jax.training import config_lib, phases, sample_mode, train_and_evaluate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _demo() -> config_lib.ConfigDict:
    return config_lib.load(os.path.join(REPO, "configs", "demo.py"))


def test_demo_recipe_keeps_what_makes_prompts_steer():
    c = _demo()
    assert isinstance(tokenizers.create_tokenizer(c.data.text.tokenizer), tokenizers.WordTokenizer)
    assert c.diffusion.loss_target_type == "v"
    assert c.data.cond_drop_prob > 0 and c.sample.guidance_weight > 1  # CFG: trained unconditional rows, used
    assert c.sample.prompt_score_images == 120  # every caption once, scored at the end of the run
    p = phases.build_phases(c)
    assert p[0].steps > p[1].steps, "most of the budget belongs to the cheap 16 px phase"


@pytest.mark.parametrize("target", ["v", "eps"])
def test_loss_weight_on_the_image_at_high_noise(target):
    """Weight of an x0 error in the loss over the noisiest 10% of the demo's steps: >= 1 for a v target, <= 0.03
    (alpha^2/sigma^2) for an epsilon target: the weight the layout a prompt asks for gets during training."""
    g = jnp.asarray(phases.build_phases(_demo())[0].diffusion.level_gammas()[0][900:])
    x0, eps = jnp.zeros((len(g), 1, 1, 1)), jnp.ones((len(g), 1, 1, 1))
    x_t = process.q_sample(x0, eps, g)
    err = 0.1  # an x0 estimate off by 0.1, in the target's units
    wrong = process.pred_from_x0(x_t, x0 + err, g, target)
    weight = np.asarray(((wrong - process.target_from_x0_eps(x0, eps, g, target)) ** 2).reshape(-1)) / err**2
    if target == "v":
        assert weight.min() >= 0.999
    else:
        assert weight.max() <= 0.03


@pytest.mark.slow  # ~6 min on 2 CPU cores: the demo's 16 px phase to 600 steps and 120 scored samples
def test_demo_16px_phase_follows_prompts(tmp_path):
    """The demo's 16 px recipe learns colour and position by 600 steps on its own. The demo itself nests after 520
    (65.8% colour+position at 16 px there, position 70.8%) and the nested phase takes both levels to 97.5% / 99.2%
    (README); this test keeps the cheaper 16 px half of that guarantee."""
    c = _demo()
    c.phases = c.phases[:1]
    c.phases[0].steps = 600
    c.checkpoint.every_steps, c.checkpoint.async_save = c.phases[0].steps, False
    c.sample.num_images = 0
    train_and_evaluate(c, str(tmp_path))
    c.sample.num_images = 60
    run = sample_mode.load_run(c, str(tmp_path), use_ema=True)
    s = prompt_following.sample_and_score(run.model, run.phase, run.params, run.info, c.sample)[16]
    print(s.summary())  # measured: colour+position 87.5% (colour 95.0%, position 92.5%)
    assert s.colour_and_position >= 0.8, s.summary()
