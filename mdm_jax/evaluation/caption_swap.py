r"""Which words of its captions does a trained model use? Its denoising loss on real samples with the true caption
against the same samples, times and noise with one word swapped ("moving left" -> "moving right"), or no caption.

A word the model reads lowers the loss of the samples it describes, so swapping it raises the loss (gap > 0, and
the true caption wins on most samples); a word it ignores leaves the loss unchanged to float precision (gap ~ 0,
the true caption wins about half the time). Unlike scoring samples, this needs no detector and no sampling, is
exact for a given draw, and tells a word that is not read at all from one that is read but not yet followed.

    python -m mdm_jax.evaluation.caption_swap --config=configs/video_demo.py --workdir=/tmp/mdm_video_demo

Word groups default to the procedural sources' vocabulary (colour, shape, direction); ``--groups`` sets others
("direction=left,right,up,down;colour=red,blue"). Times are fractions of the diffusion steps.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mdm_jax.data import procedural, video

# loss(captions, time (B,), noises per level) -> per level (B,) mse
LossFn = Callable[[Sequence[str], jax.Array, Sequence[jax.Array]], Sequence[np.ndarray]]
DEFAULT_GROUPS = {"colour": tuple(procedural.COLOURS), "shape": tuple(procedural.SHAPES),
                  "direction": tuple(video.DIRECTIONS)}


def swap_word(caption: str, group: Sequence[str], k: int) -> str | None:
    """``caption`` with its word from ``group`` replaced by the group's k-th next member; None if it has none."""
    words = caption.split(" ")
    for i, w in enumerate(words):
        if w in group:
            words[i] = group[(list(group).index(w) + k) % len(group)]
            return " ".join(words)
    return None


@dataclasses.dataclass(frozen=True)
class Gap:
    """Mean per-sample loss increase when the word group is swapped (or the caption dropped), one level, one time."""

    time: int
    level: int
    true_loss: float
    gap: float  # mean over samples and swaps of loss(swapped) - loss(true)
    true_wins: float  # fraction of (sample, swap) pairs where the true caption has the lower loss
    samples: int


def caption_gaps(loss: LossFn, captions: Sequence[str], groups: Mapping[str, Sequence[str]],
                 times: Sequence[int], noise_fn: Callable[[int], Sequence[jax.Array]]) -> dict[str, list[Gap]]:
    """Loss gaps per word group (and ``"no caption"``), per time and level. ``noise_fn(i)`` gives the i-th time's
    noise; every caption variant at that time sees the same noise."""
    out: dict[str, list[Gap]] = {name: [] for name in [*groups, "no caption"]}
    n = len(captions)
    for i, t in enumerate(times):
        time = jnp.full((n,), int(t), jnp.int32)
        noises = noise_fn(i)

        def losses(caps, time=time, noises=noises):
            return [np.asarray(m) for m in loss(caps, time, noises)]

        true = losses(captions)
        # per variant: (which samples it changed, its per-level losses)
        variants: dict[str, list[tuple[np.ndarray, list[np.ndarray]]]] = {
            "no caption": [(np.ones(n, bool), losses([""] * n))]}
        for name, group in groups.items():
            variants[name] = []
            for k in range(1, len(group)):
                swapped = [swap_word(c, group, k) for c in captions]
                has = np.array([s is not None for s in swapped])
                if not has.any():
                    continue
                alt = [s if s is not None else c for s, c in zip(swapped, captions, strict=True)]
                variants[name].append((has, losses(alt)))
        for name, runs in variants.items():
            for level, base in enumerate(true):
                diffs = [(m[level] - base)[has] for has, m in runs]
                d = np.concatenate(diffs) if diffs else np.zeros(0)
                out[name].append(Gap(int(t), level, float(base.mean()), float(d.mean()) if d.size else float("nan"),
                                     float((d > 0).mean()) if d.size else float("nan"), int(d.size)))
    return out


def format_gaps(gaps: Mapping[str, Sequence[Gap]], num_steps: int) -> str:
    lines = [f"{'word':<11} {'t':>5} {'level':>5} {'loss':>9} {'gap':>10} {'rel gap':>8} {'true wins':>9}"]
    for name, rows in gaps.items():
        for g in rows:
            lines.append(f"{name:<11} {g.time / max(num_steps - 1, 1):5.2f} {g.level:5d} {g.true_loss:9.5f} "
                         f"{g.gap:+10.6f} {g.gap / g.true_loss:+8.2%} {g.true_wins:9.0%}")
    return "\n".join(lines)


def parse_groups(spec: str) -> dict[str, tuple[str, ...]]:
    """``"direction=left,right;colour=red,blue"`` -> groups; '' -> the procedural sources' groups."""
    if not spec:
        return dict(DEFAULT_GROUPS)
    groups = {}
    for part in spec.split(";"):
        name, _, words = part.partition("=")
        members = tuple(w for w in words.split(",") if w)
        if not name or len(members) < 2:
            raise ValueError(f"--groups: {part!r} is not NAME=word,word[,...] (two words at least)")
        groups[name.strip()] = members
    return groups


def run_gaps(config, workdir: str, num: int = 32, times: Sequence[float] = (0.3, 0.5, 0.7, 0.9), step: int = -1,
             groups: Mapping[str, Sequence[str]] | None = None, seed: int = 0, split: str = "validation"
             ) -> tuple[dict[str, list[Gap]], int, int]:
    """Gaps of a run's checkpoint (EMA weights) on ``num`` items of its phase's data; (gaps, step, T)."""
    from mdm_jax.data import factory
    from mdm_jax.data.image_ops import to_model_scale
    from mdm_jax.diffusion import loss as loss_lib
    from mdm_jax.text.tokenizers import tokenize_batch
    from mdm_jax.training import sample_mode

    run = sample_mode.load_run(config, workdir, step)
    if run.info.conditioning != "text" or run.info.tokenizer is None:
        raise ValueError(f"{workdir}: caption_swap needs a text-conditioned run with tokens (got conditioning "
                         f"{run.info.conditioning!r})")
    src, _ = factory.create_source(factory.resolve_config(run.phase.data_config), split)
    items = [src[i] for i in range(min(num, len(src)))]
    images = jnp.asarray(to_model_scale(np.stack([it["image"] for it in items]).astype(np.float32)))
    captions = [str(it["caption"]) for it in items]
    dspec = run.phase.diffusion
    apply = jax.jit(lambda p, xs, t, c: run.model.apply(p, xs, t, c, frozen=run.frozen or None))

    def loss(caps, time, noises):
        tokens, mask = tokenize_batch(run.info.tokenizer, list(caps), run.info.max_length)
        cond = {"tokens": jnp.asarray(tokens), "lm_mask": jnp.asarray(mask)}
        terms = loss_lib.loss_terms(lambda xs, t, c: apply(run.params, xs, t, c), dspec, images, time, noises, cond)
        return terms["mse"]

    keys = jax.random.split(jax.random.key(seed), len(times))
    steps = [int(round(f * (dspec.num_diffusion_steps - 1))) for f in times]
    gaps = caption_gaps(loss, captions, groups or DEFAULT_GROUPS, steps,
                        lambda i: loss_lib.draw_for_batch(keys[i], dspec, images.shape)[1])
    return gaps, run.step, dspec.num_diffusion_steps


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="the run's config file (path[:arg])")
    p.add_argument("--workdir", required=True)
    p.add_argument("--step", type=int, default=-1)
    p.add_argument("--num", type=int, default=32, help="data items")
    p.add_argument("--times", default="0.3,0.5,0.7,0.9")
    p.add_argument("--groups", default="")
    p.add_argument("--split", default="validation")
    a = p.parse_args(argv)
    from mdm_jax.training import config_lib

    gaps, step, num_steps = run_gaps(config_lib.load(a.config), a.workdir, a.num,
                                     [float(x) for x in a.times.split(",")], a.step, parse_groups(a.groups),
                                     split=a.split)
    print(f"step {step}: loss with the true caption vs one word swapped (same samples, times, noise); "
          f"level 0 is the highest resolution")
    print(format_gaps(gaps, num_steps))


if __name__ == "__main__":
    main()
