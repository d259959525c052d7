r"""Noto emoji, text-to-image, nested 64 <- 32 <- 16 (three levels, factor 2), progressive 16 -> 32 -> 64, with
the small trainable text encoder on the emoji names (byte tokenizer). Prepare the data once:

  npm pack emoji-datasource-google@16.0.0 && tar -xzf emoji-datasource-google-16.0.0.tgz
  python -m mdm_jax.data.prepare_emoji --src package --out data/emoji      # what data_dir reads by default
  python -m mdm_jax.main --config=configs/emoji.py --workdir=runs/emoji    # or --config.data.data_dir=DIR
"""

from mdm_jax.training import config_lib


def get_config(arg: str = "") -> config_lib.ConfigDict:
    runlocal = arg == "runlocal"
    c = config_lib.base_config()
    dim = 32 if runlocal else 128
    c.text_encoder = config_lib.ConfigDict(dict(kind="small", dim=dim, num_layers=1 if runlocal else 3,
                                                num_heads=4, mlp_ratio=2 if runlocal else 4))
    c.model.cond_dim = dim
    if runlocal:  # the emoji files may be absent: the procedural captions stand in
        c.data = config_lib.data(name="procedural_shapes", conditioning="text", cond_drop_prob=0.1,
                                 text=dict(tokenizer="byte", max_length=40))
    else:
        c.data = config_lib.data(name="emoji", data_dir="data/emoji", conditioning="text",
                                 cond_drop_prob=0.1, flip=False, num_workers=0,
                                 text=dict(tokenizer="byte", max_length=64))
    width = 16 if runlocal else 64
    arch = [[16], [32, 16], [64, 32, 16]]
    steps = (10, 10, 6) if runlocal else (4_000, 4_000, 4_000)
    batch = (8, 8, 4) if runlocal else (64, 64, 32)
    grow = {"unet/inner_unet": "unet", "text": "text"}
    c.phases = [
        config_lib.phase(str(a[0]), model=config_lib.tiny_architecture(a, cond_dim=dim, width=width),
                         batch_size=b, steps=s, init_from=grow if i else None)
        for i, (a, s, b) in enumerate(zip(arch, steps, batch, strict=True))
    ]
    c.optimizer = config_lib.optimizer(learning_rate=5e-4, warmup_steps=5 if runlocal else 200, ema_decay=0.999)
    c.checkpoint = config_lib.ConfigDict(dict(every_steps=10 if runlocal else 500, keep=2, async_save=True))
    c.log_every_steps = 5 if runlocal else 100
    c.sample = config_lib.sample(
        every_steps=0 if runlocal else 2000, num_images=4 if runlocal else 16, num_steps=10 if runlocal else 100,
        guidance_weight=3.0, threshold="clip",
        prompts=("a red circle in the top left",) if runlocal else (
            "grinning face", "red heart", "thumbs up sign", "rocket", "cat face", "pizza", "sun with face",
            "christmas tree"))
    return c
