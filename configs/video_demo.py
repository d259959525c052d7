r"""Offline text-to-video demo: 4-frame clips of moving shapes ("a red square moving left"), trained on a CPU.

Progressive like the paper's video schedule (image 64 -> 16x64), scaled down: phase "image" trains a 16x16 UNet
on single frames; phase "video" nests it (``unet/inner_unet``) inside a temporal level over 4 frames (4 -> 2 -> 1,
temporal attention with RoPE, Conv1d frame resampling) and trains both jointly on 2x2-frame mosaics (32x32);
the image level learns the clip's first frame. No download: clips are generated (``moving_shapes``).

Captions are word tokens through a small text encoder that stays *frozen at its random initialisation*, as the
paper keeps FLAN-T5 frozen: trained jointly, the encoder learnt in the image phase (where the direction word says
nothing about a still) to drown "left/right/up/down" (its outputs for them differed by 2-5%, for colours by
50-90%), and the clips never followed the direction; frozen, every word stays distinct and the UNet's own text
projections learn to read it (``python -m mdm_jax.evaluation.caption_swap``). The loss targets v, guidance 4.
Clips start near the centre whatever their direction, so only the caption says which way the shape goes.
Measured (README, "Video"): 900 + 1600 steps, about 15 min on two cores, 64 sampled clips: colour 100%,
direction 100%.

  python -m mdm_jax.main --config=configs/video_demo.py --workdir=/tmp/mdm_video_demo
  python -m mdm_jax.main --mode=sample --config=configs/video_demo.py --workdir=/tmp/mdm_video_demo \
      --config.sample.prompts='("a red square moving left", "a blue circle moving down")'

Samples: ``<workdir>/samples/<phase>/step_*_32px.gif|.mp4`` (the clips) and ``_16px`` (their first frames).
Use ``data.name=video_folder`` with ``data.data_dir`` from ``python -m mdm_jax.data.prepare_video`` for real clips.
``:tiny`` is a seconds-long version used by the tests; ``:16`` uses 16 frames (4x4 mosaics of 16x16, slower).
"""

from mdm_jax.training import config_lib


def video_level(inner: config_lib.ConfigDict, frames: int, channels: int) -> config_lib.ConfigDict:
    """A temporal level over ``frames`` frames (log2(frames) + 1 resolutions) around ``inner``."""
    n = frames.bit_length()
    level = config_lib.tiny_nested(inner.resolution * int(round(frames ** 0.5)), [channels] * n, inner)
    level.update(dict(temporal_mode=True, temporal_positional_encoding=True, frames=frames,
                      num_temporal_attention_layers=[1] * (n - 1) + [0],
                      micro_conditioning=f"scale:{inner.resolution}"))
    level.resnet_config.num_groups_norm = 8
    return level


def get_config(arg: str = "") -> config_lib.ConfigDict:
    tiny, frames = arg == "tiny", 16 if arg == "16" else 4
    c = config_lib.base_config()
    c.seed = 0
    dim = 32 if tiny else 64
    c.text_encoder = config_lib.ConfigDict(dict(dim=dim, num_layers=1 if tiny else 2, num_heads=4, mlp_ratio=2))
    c.model.cond_dim = dim
    # No flips: a flipped "moving left" clip would move right.
    c.data = config_lib.data(
        name="moving_shapes", conditioning="text", cond_drop_prob=0.1, num_workers=0, flip=False,
        text=dict(tokenizer="word", max_length=16))
    c.diffusion.loss_target_type = "v"  # the prompt sets colour and path at high noise, where epsilon weights ~0
    ch = 16 if tiny else 32
    size = 8 if tiny else 16
    inner = config_lib.tiny_unet(size, [ch, 2 * ch] if tiny else [ch, 2 * ch, 2 * ch],
                                 attention_levels=[1] if tiny else [1, 2], cond_dim=dim, temporal_dim=2 * ch,
                                 num_heads=4)
    inner.masked_cross_attention = 1
    outer = video_level(inner, frames, 32)
    steps, bs = ((4, 4), 4) if tiny else ((900, 1600), 16)
    frozen = ("text",)  # the text encoder keeps its random initialisation (see above)
    c.phases = [
        config_lib.phase("image", model=inner, batch_size=bs, steps=steps[0], data=dict(frames=1), freeze=frozen),
        config_lib.phase("video", model=outer, batch_size=bs, steps=steps[1], data=dict(frames=frames),
                         init_from={"unet/inner_unet": "unet", "text": "text"}, freeze=frozen),
    ]
    c.optimizer = config_lib.optimizer(learning_rate=2e-3 if tiny else 1e-3, warmup_steps=2 if tiny else 100,
                                       ema_decay=0.9 if tiny else 0.995, ema_warmup=True)
    c.mesh = config_lib.ConfigDict(dict(data=-1, fsdp=1))
    c.cpu_devices = 0 if tiny else 2  # on a CPU host: one data-parallel shard per core
    c.sharding.min_size = 2**10 if tiny else 2**16
    c.checkpoint = config_lib.ConfigDict(dict(every_steps=4 if tiny else 100, keep=2, async_save=True))
    c.log_every_steps = 2 if tiny else 25
    c.sample = config_lib.sample(
        every_steps=0, num_images=2 if tiny else 16, num_steps=3 if tiny else 25, guidance_weight=4.0,
        threshold="clip",
        prompts=() if tiny else (
            "a red square moving left", "a blue circle moving down", "a green triangle moving right",
            "a yellow diamond moving up", "a purple circle moving left", "a orange square moving up",
            "a red triangle moving down", "a blue diamond moving right"))
    return c
