"""The preview generator is the sampler: same noise from the seed, same final images, previews every k steps."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdm_jax.diffusion import DiffusionSpec, sample
from mdm_jax.diffusion.progressive import sample_progressively


def _toy(xs, t, cond):
    return [0.5 * x + 0.01 * t.astype(jnp.float32)[:, None, None, None] + cond["c"][:, None, None, None] for x in xs]


@pytest.mark.parametrize("method,w", [("ddpm", None), ("ddim", 3.0)])
def test_final_equals_sample_and_previews_every_k(method, w):
    spec = DiffusionSpec(scales=(2, 1))
    cond = {"c": jnp.asarray([0.0, 0.0, 0.1, -0.1] if w else [0.1, -0.1])}
    kw = dict(shape=(2, 8, 8, 3), rng=jax.random.key(3), num_steps=5, method=method, guidance_weight=w,
              threshold_kind="dynamic_if")
    ref = sample(_toy, spec, cond, **kw)
    out = list(sample_progressively(_toy, spec, cond, preview_every=2, **kw))
    assert [o["step"] for o in out] == [2, 4, 5] and [o["done"] for o in out] == [False, False, True]
    assert [x.shape for x in out[0]["levels"]] == [(2, 8, 8, 3), (2, 4, 4, 3)]
    for got, want in zip(out[-1]["levels"], ref["levels"], strict=True):
        np.testing.assert_allclose(got, np.clip(np.asarray(want), -1, 1), atol=1e-5)
    assert np.abs(out[0]["levels"][0] - out[-1]["levels"][0]).max() > 1e-3  # previews move
