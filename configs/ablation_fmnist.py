r"""Fashion-MNIST ablations of the paper at CPU scale (issue 9 item 4), one variant per config argument.

  python -m mdm_jax.main --config=configs/ablation_fmnist.py:nested --workdir=runs/abl/nested
  python benchmarks/ablations.py --study a b --seeds 0 1 --out runs/ablations     # all variants, plots, table

Variants (class-conditional, 32 px; equal images seen: every variant trains ``steps`` x ``batch`` images in all):
- ``nested``: MDM, 32 px level around a 16 px UNet (``tiny_architecture([32, 16])``), trained jointly from
  scratch in one phase (the paper's joint multi-resolution loss).
- ``single``: a standard single-resolution 32 px diffusion UNet of the same layout without the nested 16 px
  input/output (32 px level -> 16 px level -> 8 px level with attention), channels chosen so its parameter count
  is within a few % of ``nested`` (the harness prints both counts).
- ``progressive``: the 16 px UNet alone for ``progressive_frac`` of the steps, then nested 32/16 grown from it
  (``init_from={"unet/inner_unet": "unet"}``) for the rest; the 16 px phase's images count.

Optional ``key=value`` items after the variant, comma-separated: ``scale`` (multiplies the step counts and eval
interval, e.g. ``nested,scale=0.05`` for a smoke run), ``width`` (base channels), ``evals`` (eval points per
run, default 5). Periodic eval (``config.eval``) runs every ``steps // evals`` steps: the same images seen in
every variant.
"""

from mdm_jax.training import config_lib

VARIANTS = ("nested", "single", "progressive")
STEPS = 1_200  # every variant, at batch BATCH: 38,400 images
BATCH = 32
NUM_EVALS = 5
PROGRESSIVE_FRAC = 0.5  # share of the eval intervals spent in the 16 px phase, rounded half to even (2 of 5)


def parse_arg(arg: str, variants: tuple[str, ...]) -> tuple[str, dict[str, float]]:
    """``'nested,scale=0.1'`` -> ('nested', {'scale': 0.1}); unknown variants or items raise naming them.
    ``'runlocal'`` (every config's seconds-long version) is the first variant at scale 0.01."""
    if arg == "runlocal":
        arg = f"{variants[0]},scale=0.01"
    name, *items = [s.strip() for s in (arg or "").split(",") if s.strip()] or [""]
    if name not in variants:
        raise ValueError(f"ablation config: variant {name!r} is not one of {variants} (e.g. ':{variants[0]}')")
    opts: dict[str, float] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in ("scale", "width", "evals"):
            raise ValueError(f"ablation config: option {item!r} is not scale=<float>, width=<int> or evals=<int>")
        opts[key] = float(value)
    return name, opts


def scaled(n: int, scale: float, minimum: int = 1) -> int:
    return max(minimum, int(round(n * scale)))


def single_unet(resolution: int, width: int, *, num_classes: int = 0, cond_dim: int = -1) -> config_lib.ConfigDict:
    """The standard-diffusion counterpart of ``tiny_architecture([resolution, resolution // 2], width=width)``:
    the same levels in one UNet (32 px, 16 px with three ResNets where the nested model has an outer and an inner
    16 px level, 8 px with attention), without the nested 16 px input/output: parameters 0.99x at width 16-48."""
    half = max(8, width // 2)
    cfg = config_lib.tiny_unet(resolution, [half, width, 2 * width], resnets=[1, 3, 1], attention_levels=[2],
                               cond_dim=cond_dim, temporal_dim=2 * width)
    cfg.num_classes = num_classes
    return cfg


def get_config(arg: str = "nested") -> config_lib.ConfigDict:
    variant, opts = parse_arg(arg, VARIANTS)
    scale, width = opts.get("scale", 1.0), int(opts.get("width", 16))
    num_evals = int(opts.get("evals", NUM_EVALS))
    fm = config_lib.sibling(__file__, "fashion_mnist").get_config()
    c = config_lib.base_config()
    c.seed = 0
    c.model.num_classes = 10
    c.data = fm.data
    c.diffusion.loss_target_type = "v"  # as the demo: an eps target barely weights the high-noise steps
    steps = scaled(STEPS, scale, num_evals)
    every = steps // num_evals
    steps = every * num_evals  # eval points fall on the same images seen in every variant
    nested = config_lib.tiny_architecture([32, 16], num_classes=10, width=width)
    if variant == "nested":
        c.phases = [config_lib.phase("32", model=nested, batch_size=BATCH, steps=steps)]
    elif variant == "single":
        c.phases = [config_lib.phase("32", model=single_unet(32, width, num_classes=10), batch_size=BATCH,
                                     steps=steps)]
    else:
        first = every * max(1, round(num_evals * PROGRESSIVE_FRAC))
        c.phases = [
            config_lib.phase("16", model=config_lib.tiny_architecture([16], num_classes=10, width=width),
                             batch_size=BATCH, steps=first),
            config_lib.phase("32", model=nested, batch_size=BATCH, steps=steps - first,
                             init_from={"unet/inner_unet": "unet"}),
        ]
    run_settings(c, every=every, scale=scale, guidance=2.0, eval_samples=200, eval_batch=100)
    return c


def run_settings(c: config_lib.ConfigDict, *, every: int, scale: float, guidance: float, eval_samples: int,
                 eval_batch: int) -> None:
    """What every ablation run shares: optimiser, checkpoints, logging, no grids, a cheap classifier eval every
    ``every`` steps (the same images seen in every variant)."""
    c.optimizer = config_lib.optimizer(learning_rate=1e-3, warmup_steps=scaled(100, scale), ema_decay=0.995,
                                       ema_warmup=True)
    c.checkpoint = config_lib.ConfigDict(dict(every_steps=every, keep=2, async_save=True))
    c.log_every_steps = max(1, every // 4)
    c.sample = config_lib.sample(every_steps=0, num_images=0, num_steps=25, guidance_weight=guidance,
                                 threshold="clip")
    c.eval.every_steps = every
    c.eval.num_samples = eval_samples
    c.eval.num_reference = 1000
    c.eval.batch_size = eval_batch
    c.eval.num_steps = 20
    c.eval.guidance_weight = guidance
    c.eval.feature_nets = ("classifier",)
    c.eval.kid_subsets = 20
    c.eval.kid_subset_size = 100
