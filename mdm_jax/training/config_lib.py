"""Building blocks shared by the files in ``configs/`` (big_vision's ``configs/common.py`` habit).

A training config is plain data (an ``ml_collections.ConfigDict``); these helpers only fill in the defaults
every experiment shares (Appendix B), so each experiment file states what differs. Field reference:

* ``seed``, ``log_every_steps``, ``workdir``-independent settings.
* ``model``: ``dtype`` ('float32' | 'bfloat16' compute; params and EMA stay float32), ``remat``,
  ``cond_dim`` (text feature width, -1 for none), ``num_classes``, ``paper_text_head``.
* ``text_encoder``: None (precomputed features or labels) or the small trainable encoder's config.
* ``diffusion``: ``DiffusionSpec`` fields shared by all phases (a phase sets ``scales`` through its model,
  and its own ``multi_res_weights`` / ``mixed_ratio``).
* ``data``: the ``mdm_jax.data.create_dataset`` config; a phase may override fields in ``phase.data``.
* ``optimizer``: Adam(b1, b2, eps), ``learning_rate`` with linear warmup, ``grad_clip_norm``, ``ema_decay``.
* ``phases``: the progressive schedule, a list of ``phase(...)`` entries (see ``phase``).
* ``init``: start at phase ``init.phase`` from ``init.checkpoint`` (our run dir or a converted ml-mdm dir).
* ``mesh``/``sharding``, ``checkpoint``, ``sample`` (sampler options for the interval grids and sample mode).
* ``stop_check_every_steps``: how often all hosts agree whether any got a SIGTERM/preemption notice (also at
  checkpoint and log steps); see ``training/stop.py`` for the latency/cost trade-off.
* ``cpu_devices`` / ``cpu_memory_scheduler``: CPU-host settings (data-parallel shards per core; XLA:CPU's
  memory-optimised scheduler for the train step, which makes ``model.remat`` save memory on a CPU).
* ``compile``: ``--mode=compile`` options (TPU topology to plan for; see ``compile_options``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

ConfigDict = ml_collections.ConfigDict


def optimizer(**overrides: Any) -> ConfigDict:
    """Appendix B: Adam(0.9, 0.99, 1e-8), lr 1e-4 after a 30k-step linear warmup, clip 2.0, EMA 0.9999."""
    cfg = ConfigDict(dict(
        name="adam",  # 'adam' | 'adamw' (weight_decay applies to adamw only)
        b1=0.9,
        b2=0.99,
        eps=1e-8,
        learning_rate=1e-4,
        warmup_steps=30_000,
        lr_decay="none",  # 'none': constant after warmup (the paper, ml-mdm); 'cosine': to final_lr_fraction at
        final_lr_fraction=0.0,  # the end of each phase
        weight_decay=0.0,
        grad_clip_norm=2.0,
        ema_decay=0.9999,
        # decay min(ema_decay, (1+n)/(10+n)) at step n of each phase (restarts after growth, so a grown level's
        # new weights are never averaged with their initialisation); False: ml-mdm's fixed decay from step 0,
        # whose average is mostly initialisation for ~1/(1-ema_decay) steps
        ema_warmup=True,
        mu_dtype="",  # '' keeps float32; 'bfloat16' halves the first-moment memory (updates use the stored moment)
    ))
    cfg.update(overrides)
    return cfg


def phase(name: str, *, batch_size: int, steps: int, architecture: str = "", model: Mapping | None = None,
          init_from: Mapping[str, str] | None = None, freeze: Sequence[str] = (),
          lr_multipliers: Mapping[str, float] | None = None, multi_res_weights: Any = None,
          mixed_ratio: Any = None, data: Mapping | None = None, diffusion: Mapping | None = None,
          grad_accum_steps: int = 1) -> ConfigDict:
    """One progressive-training phase.

    ``architecture`` names a paper model (``mdm_jax.models.architectures``) or ``model`` gives the model config
    itself (ml-mdm field names). ``init_from`` maps a subtree of this phase's parameters to a subtree of the
    previous phase's (or of ``init.checkpoint``'s), e.g. ``{"unet/inner_unet": "unet"}``: the 64 model becomes
    the inner UNet of the 256 model. ``freeze`` lists subtrees that get no updates (nor optimizer state);
    ``lr_multipliers`` scales the learning rate of subtrees. Paths are '/'-joined prefixes of the parameter
    tree whose top level is ``unet`` (+ ``text`` with a trainable text encoder). ``multi_res_weights`` (high ->
    low, e.g. '16:4:1') and ``mixed_ratio`` (e.g. '2:1': the top level trains on the first 2/3 of each batch) are
    the phase's loss settings; ``data`` and ``diffusion`` override ``config.data`` / ``config.diffusion`` fields.
    ``grad_accum_steps`` splits each batch into that many micro-batches whose gradients are summed in one step
    (same loss and gradient as the whole batch; activation memory of one micro-batch).
    """
    return ConfigDict(dict(
        name=name,
        architecture=architecture,
        model=ConfigDict(model) if model is not None else None,
        batch_size=batch_size,
        steps=steps,
        init_from=dict(init_from) if init_from else None,
        freeze=tuple(freeze),
        lr_multipliers=dict(lr_multipliers) if lr_multipliers else None,
        multi_res_weights=multi_res_weights,
        mixed_ratio=mixed_ratio,
        data=ConfigDict(data) if data else None,
        diffusion=ConfigDict(diffusion) if diffusion else None,
        grad_accum_steps=grad_accum_steps,
    ), type_safe=False)


def sample(**overrides: Any) -> ConfigDict:
    """Sampler options for the interval grids (train mode) and for ``--mode=sample`` (paper: 250 DDPM-ish
    steps with dynamic thresholding; ml-mdm's demo: DDIM, guidance 7.5)."""
    cfg = ConfigDict(dict(
        every_steps=0,  # 0: only at the end of each phase
        num_images=8,
        num_steps=250,
        method="ddim",  # 'ddim' | 'ddpm'
        eta=0.0,
        guidance_weight=7.5,  # ml-mdm's meaning: p_u + w (p_c - p_u); 1 or None: no guidance (0: unconditional)
        threshold="dynamic_if",  # 'none' | 'clip' | 'dynamic' | 'dynamic_if'
        threshold_quantile=-1.0,  # < 0: the threshold kind's default
        threshold_max=-1.0,
        prompts=(),  # text models: captions to sample (default: captions of a validation batch)
        labels=(),  # class models: labels to sample (default: 0, 1, 2, ...)
        negative_prompt="",
        use_ema=True,
        seed=0,
        checkpoint="",  # sample mode: a checkpoint dir/step dir (default: the workdir's latest)
        step=-1,  # sample mode: which step (default: latest)
        output_dir="",  # sample mode: default <workdir>/samples
        debug=False,  # run the sampler step in a Python loop (breakpoints, prints)
        prompt_score_images=0,  # procedural shapes + text: score this many samples per phase end (exact detector)
        prompt_score_phases="all",  # 'all' | 'last': which phases' end (and interval) samples are scored
    ), type_safe=False)
    cfg.update(overrides)
    return cfg


def compile_options(**overrides: Any) -> ConfigDict:
    """``--mode=compile`` (``mdm_jax.training.compile_plan``): compile every phase for a TPU topology, no TPU."""
    cfg = ConfigDict(dict(
        topology="",  # libtpu topology name '<chip>:<shape>', e.g. 'v5p:2x2x1', 'v6e:4x4'
        phases="",  # comma-separated phase names or indices; '' = all
        mfu=0.4,  # assumed model-FLOPs utilisation for the FLOPs-based step time
        sampler=True,  # also compile one sampler network evaluation (guidance-doubled rows)
        hbm_gib=0.0,  # > 0: plan against this much memory per device instead of the chip's HBM
        output="",  # a path: also write the plans there as JSON
    ))
    cfg.update(overrides)
    return cfg


def data(**fields: Any) -> ConfigDict:
    """``config.data`` with every field of ``mdm_jax.data.default_data_config`` present (the given ones set),
    so that any data field can be overridden on the command line (``--config.data.data_dir=DIR``) whatever the
    experiment file spells out; unknown fields raise, naming the field."""
    from mdm_jax.data.factory import resolve_config

    return resolve_config(fields)


def base_config() -> ConfigDict:
    """Everything but data, model and phases, with Appendix B's defaults."""
    c = ConfigDict()
    c.seed = 0
    c.model = ConfigDict(dict(dtype="float32", remat=False, cond_dim=-1, num_classes=0, paper_text_head=False))
    c.text_encoder = None
    c.diffusion = ConfigDict(dict(
        schedule_type="deepfloyd",
        num_diffusion_steps=1000,
        prediction_type="v",
        loss_target_type="eps",
        schedule_shifted=True,
        use_double_loss=True,
        use_vdm_loss_weights=False,
        downsample="box",
    ))
    c.data = data()
    c.optimizer = optimizer()
    c.phases = []
    c.init = ConfigDict(dict(checkpoint="", phase=0, step=-1))
    c.mesh = ConfigDict(dict(data=-1, fsdp=1))  # -1: sized automatically from the device count
    c.sharding = ConfigDict(dict(min_size=2**18))  # arrays with fewer elements stay replicated
    c.checkpoint = ConfigDict(dict(every_steps=5000, keep=3, async_save=True))
    c.log_every_steps = 100
    c.sample = sample()
    from mdm_jax.evaluation.run import eval_config

    c.eval = eval_config()  # --mode=eval and periodic eval (eval.every_steps > 0)
    c.max_steps = -1  # > 0: stop after this global step (tests, preemption drills)
    # > 0: split a CPU-only host into this many JAX devices, so the data-parallel mesh runs one shard per core
    # (the demo: 0.35 vs 0.46 s per nested step on 2 cores). 0: JAX's default (one CPU device). No effect on
    # accelerators, nor when XLA_FLAGS already sets --xla_force_host_platform_device_count.
    c.cpu_devices = 0
    # On a CPU host, compile the train step with XLA:CPU's memory-optimised scheduler. With ``model.remat`` (and
    # ``grad_accum_steps``) it is what makes remat save memory there: S64 at batch 4 in 4 micro-batches, XLA's
    # temporaries 4.6 -> 2.8 GiB (README, Benchmarks). Off by default: its speed cost is not measured on every
    # model. No effect on accelerators.
    c.cpu_memory_scheduler = False
    c.stop_check_every_steps = 10  # hosts agree on SIGTERM/preemption stops every k steps (training/stop.py)
    c.compile = compile_options()
    return c


def tiny_unet(resolution: int, channels: Sequence[int], *, resnets: Sequence[int] | None = None,
              attention_levels: Sequence[int] = (), num_attention_layers: Sequence[int] | None = None,
              cond_dim: int = -1, temporal_dim: int = 64, num_heads: int = 4,
              use_attention_ffn: bool = True, groups: int = 8) -> ConfigDict:
    """A small single-level UNet config (ml-mdm field names) for CPU runs and tests."""
    n = len(channels)
    return ConfigDict(dict(
        resolution=resolution,
        resolution_channels=list(channels),
        num_resnets_per_resolution=list(resnets or [1] * n),
        attention_levels=list(attention_levels),
        num_attention_layers=list(num_attention_layers or [1 if i in attention_levels else 0 for i in range(n)]),
        num_heads=num_heads,
        temporal_dim=temporal_dim,
        conditioning_feature_dim=cond_dim,
        conditioning_feature_proj_dim=-1,
        num_lm_head_layers=0,
        masked_cross_attention=1,
        skip_mid_blocks=False,
        skip_cond_emb=False,
        micro_conditioning=f"scale:{resolution}",
        resnet_config=dict(num_groups_norm=groups, dropout=0.0, use_attention_ffn=use_attention_ffn),
    ))


def tiny_nested(resolution: int, channels: Sequence[int], inner: ConfigDict, *,
                resnets: Sequence[int] | None = None) -> ConfigDict:
    """A small outer level around ``inner`` (convolutions only, as the paper's outer levels)."""
    n = len(channels)
    groups = inner.resnet_config.num_groups_norm
    return ConfigDict(dict(
        resolution=resolution,
        resolution_channels=list(channels),
        num_resnets_per_resolution=list(resnets or [1] * n),
        attention_levels=[],
        num_attention_layers=[0] * n,
        num_heads=inner.num_heads,
        temporal_dim=inner.temporal_dim,
        conditioning_feature_dim=inner.conditioning_feature_dim,
        conditioning_feature_proj_dim=-1,
        num_lm_head_layers=0,
        masked_cross_attention=1,
        skip_mid_blocks=True,
        skip_cond_emb=True,
        micro_conditioning=f"scale:{resolution}",
        resnet_config=dict(num_groups_norm=groups, dropout=0.0, use_attention_ffn=False),
        skip_normalization=True,
        skip_inner_unet_input=False,
        inner_config=inner,
    ))


def tiny_architecture(resolutions: Sequence[int], *, cond_dim: int = -1, num_classes: int = 0,
                      width: int = 32, outer_channels: int = 0) -> ConfigDict:
    """A CPU-sized stand-in for a paper architecture with the same nesting (resolutions high -> low): the inner
    UNet has attention (and cross-attention with text), the outer levels are convolutional, as in Appendix A.
    ``outer_channels``: channels of each outer level at its own resolution (0: ``max(8, width // 2)``)."""
    res = list(resolutions)
    cfg = tiny_unet(res[-1], [width, 2 * width], attention_levels=[1], cond_dim=cond_dim, temporal_dim=2 * width)
    for hi, lo in zip(res[-2::-1], res[::-1], strict=False):
        levels = {2: 2, 4: 3}.get(hi // lo)
        if levels is None:
            raise ValueError(f"tiny_architecture: nest ratio {hi // lo} ({hi} around {lo}) must be 2 or 4")
        cfg = tiny_nested(hi, [outer_channels or max(8, width // 2)] * (levels - 1) + [width], cfg)
    cfg.num_classes = num_classes
    return cfg


def _import_file(path: str, name: str) -> Any:
    import importlib.util

    module_spec = importlib.util.spec_from_file_location(f"_mdm_cfg_{name}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def load(spec: str) -> ConfigDict:
    """``'configs/demo.py:tiny'`` -> that file's ``get_config('tiny')`` (what ``--config=`` does, for scripts/tests
    and the converter's ``--config``); the one config-file loader of the project."""
    import os

    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path!r} not found")
    module = _import_file(path, os.path.basename(path)[:-3])
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {path!r} has no get_config()")
    return module.get_config(arg) if arg else module.get_config()


def sibling(config_file: str, name: str) -> Any:
    """Import ``name``.py from the directory of ``config_file`` (experiment files reuse each other's pieces)."""
    import os

    return _import_file(os.path.join(os.path.dirname(os.path.abspath(config_file)), f"{name}.py"), name)
