r"""Emoji ablation of the paper at CPU scale (issue 9 item 4 (c)): how many nesting levels, text-conditioned.

  python -m mdm_jax.main --config=configs/ablation_emoji.py:3 --workdir=runs/abl/emoji3
  python benchmarks/ablations.py --study c --seeds 0 1 --out runs/ablations

Variants (64 px, the Noto emoji set with their Unicode names as captions, a small trainable text encoder on word
tokens; all trained from scratch in one phase, equal images seen):
- ``3``: 64/32/16, ``tiny_architecture([64, 32, 16])``;
- ``2``: 64/16, ``tiny_architecture([64, 16])`` (a nest ratio of 4);
- ``1``: 64 alone, a standard single-resolution UNet with the same levels (64, 32, 16, 8 px with attention),
  channels/ResNets set so its parameter count is close to ``3``'s (the harness prints every count).

Data: ``data.data_dir`` (default ``data/emoji``), prepared once as ``configs/emoji.py`` says. Options after the
variant as in ``configs/ablation_fmnist.py`` (``3,scale=0.05``). Eval: FD etc. in the features of the in-project
classifier trained on the emoji's 10 categories (``eval.classifier_path``; the harness trains it), on 128
samples against 128 images of the 190-image test split as floor.
"""

from mdm_jax.training import config_lib

VARIANTS = ("3", "2", "1")
STEPS = 800  # at batch 16: 12,800 images
BATCH = 16
NUM_EVALS = 5
TEXT_DIM = 64


def single_unet(width: int, cond_dim: int) -> config_lib.ConfigDict:
    """A 64 px UNet with the levels of ``tiny_architecture([64, 32, 16])`` in one network (no nested outputs)."""
    half = max(8, width // 2)
    return config_lib.tiny_unet(64, [half, half, width, 2 * width], resnets=[1, 2, 3, 1], attention_levels=[3],
                                cond_dim=cond_dim, temporal_dim=2 * width)


def get_config(arg: str = "3") -> config_lib.ConfigDict:
    fm = config_lib.sibling(__file__, "ablation_fmnist")
    variant, opts = fm.parse_arg(arg, VARIANTS)
    scale, width = opts.get("scale", 1.0), int(opts.get("width", 16))
    num_evals = int(opts.get("evals", NUM_EVALS))
    c = config_lib.base_config()
    c.seed = 0
    c.text_encoder = config_lib.ConfigDict(dict(kind="small", dim=TEXT_DIM, num_layers=2, num_heads=4, mlp_ratio=2))
    c.model.cond_dim = TEXT_DIM
    c.data = config_lib.data(name="emoji", data_dir="data/emoji", conditioning="text", cond_drop_prob=0.1,
                             flip=False, num_workers=0, text=dict(tokenizer="word", max_length=16))
    c.diffusion.loss_target_type = "v"
    steps = fm.scaled(STEPS, scale, num_evals)
    every = steps // num_evals
    steps = every * num_evals
    if variant == "1":
        model = single_unet(width, TEXT_DIM)
    else:
        model = config_lib.tiny_architecture([64, 32, 16] if variant == "3" else [64, 16], cond_dim=TEXT_DIM,
                                             width=width)
    c.phases = [config_lib.phase("64", model=model, batch_size=BATCH, steps=steps)]
    fm.run_settings(c, every=every, scale=scale, guidance=3.0, eval_samples=128, eval_batch=64)
    return c
