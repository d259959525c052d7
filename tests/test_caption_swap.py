"""caption_swap: the loss gap of a swapped word is positive for a word the model reads and zero for one it ignores,
with every caption variant of a time seeing the same noise."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from mdm_jax.evaluation.caption_swap import caption_gaps, format_gaps, parse_groups, swap_word

GROUPS = {"colour": ("red", "blue", "green"), "direction": ("left", "right", "up", "down")}
CAPTIONS = ["a red square moving left", "a blue circle moving up", "a green square moving down", "a square"]
TRUE_COLOUR = ["red", "blue", "green", None]


def _reads_colour_only(captions, time, noises):
    """Per-level (B,) loss: noise energy, +1 when the caption's colour is not the sample's, +0.5 with no caption."""
    base = np.asarray(jnp.mean(jnp.square(noises[0]), axis=(1, 2, 3)))
    extra = []
    for cap, colour in zip(captions, TRUE_COLOUR, strict=True):
        said = next((w for w in cap.split() if w in GROUPS["colour"]), None)
        extra.append(0.5 if not cap else float(said != colour))
    return [base + np.asarray(extra), base * 0.5]


def test_gap_is_positive_for_a_read_word_and_zero_for_an_ignored_one():
    draws = []

    def noise_fn(i):
        draws.append(i)
        return [jnp.asarray(np.random.default_rng(i).standard_normal((4, 2, 2, 3)), jnp.float32)]

    gaps = caption_gaps(_reads_colour_only, CAPTIONS, GROUPS, [100, 900], noise_fn)
    assert draws == [0, 1]  # one draw per time, shared by all variants
    colour0 = [g for g in gaps["colour"] if g.level == 0]
    assert [g.time for g in colour0] == [100, 900]
    for g in colour0:
        assert g.gap == pytest.approx(1.0) and g.true_wins == 1.0 and g.samples == 3 * 2  # 3 coloured, 2 swaps
    for g in gaps["direction"]:
        assert g.gap == 0.0 and g.true_wins == 0.0 and g.samples == 3 * 3
    assert all(g.gap == 0.0 for g in gaps["colour"] if g.level == 1)  # level 1 ignores the caption
    nocap = [g for g in gaps["no caption"] if g.level == 0]
    assert all(g.gap == pytest.approx(0.5) and g.samples == 4 for g in nocap)  # every sample, +0.5
    assert "colour" in format_gaps(gaps, 1000)


def test_swap_word_and_groups():
    assert swap_word("a red square moving left", GROUPS["direction"], 1) == "a red square moving right"
    assert swap_word("a red square moving down", GROUPS["direction"], 1) == "a red square moving left"
    assert swap_word("a red square", GROUPS["direction"], 2) is None
    assert parse_groups("d=left,right;c=red,blue") == {"d": ("left", "right"), "c": ("red", "blue")}
    assert set(parse_groups("")) == {"colour", "shape", "direction"}
    with pytest.raises(ValueError, match="--groups"):
        parse_groups("d=left")
