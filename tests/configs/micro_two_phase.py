r"""The smallest progressive run that still grows a model: 8px UNet (phase 1) nested in a 16px level (phase 2).

Unconditional and without attention, so compiling its train steps is cheap: for tests that start real
training processes (tests/test_train_multiprocess.py), where compilation is most of the time.
"""

from mdm_jax.training import config_lib


def get_config(arg: str = "") -> config_lib.ConfigDict:
    c = config_lib.base_config()
    c.data = config_lib.ConfigDict(dict(name="procedural_shapes", conditioning="none", num_workers=0))
    inner = config_lib.tiny_unet(8, [8, 16], temporal_dim=16, num_heads=2, use_attention_ffn=False, groups=4)
    outer = config_lib.tiny_nested(16, [8, 16], inner)
    c.phases = [
        config_lib.phase("inner", model=inner, batch_size=8, steps=4),
        config_lib.phase("nested", model=outer, batch_size=8, steps=8, init_from={"unet/inner_unet": "unet"}),
    ]
    c.optimizer = config_lib.optimizer(learning_rate=2e-3, warmup_steps=2, ema_decay=0.9, ema_warmup=True)
    c.mesh = config_lib.ConfigDict(dict(data=-1, fsdp=1))
    c.sharding.min_size = 2**10
    c.checkpoint = config_lib.ConfigDict(dict(every_steps=0, keep=2, async_save=True))
    c.log_every_steps = 1
    c.sample = config_lib.sample(num_images=0)
    return c
