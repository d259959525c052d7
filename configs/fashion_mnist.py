r"""Fashion-MNIST, class-conditional, nested 32 <- 16, progressive (16 first, then 32/16): a real data set that
installs offline (Debian ``dataset-fashion-mnist``), small enough to train on a CPU.

  python -m mdm_jax.main --config=configs/fashion_mnist.py --workdir=/tmp/fmnist
  python -m mdm_jax.main --mode=sample --config=configs/fashion_mnist.py --workdir=/tmp/fmnist \
      --config.sample.labels='(0, 1, 2, 3, 4, 5, 6, 7, 8, 9)'
"""

from mdm_jax.training import config_lib


def get_config(arg: str = "") -> config_lib.ConfigDict:
    runlocal = arg == "runlocal"
    c = config_lib.base_config()
    c.model.num_classes = 10
    c.data = config_lib.data(name="fashion_mnist", conditioning="class", cond_drop_prob=0.1, fmnist_mode="pad",
                             num_workers=0)
    width = 16 if runlocal else 64
    inner = config_lib.tiny_architecture([16], num_classes=10, width=width)
    nested = config_lib.tiny_architecture([32, 16], num_classes=10, width=width)
    steps = (10, 10) if runlocal else (3_000, 3_000)
    c.phases = [
        config_lib.phase("16", model=inner, batch_size=8 if runlocal else 64, steps=steps[0]),
        config_lib.phase("32", model=nested, batch_size=8 if runlocal else 64, steps=steps[1],
                         init_from={"unet/inner_unet": "unet"}),
    ]
    c.optimizer = config_lib.optimizer(learning_rate=5e-4, warmup_steps=5 if runlocal else 200, ema_decay=0.999)
    c.checkpoint = config_lib.ConfigDict(dict(every_steps=10 if runlocal else 500, keep=2, async_save=True))
    c.log_every_steps = 5 if runlocal else 100
    c.sample = config_lib.sample(every_steps=0 if runlocal else 1000, num_images=4 if runlocal else 20,
                                 num_steps=10 if runlocal else 100, guidance_weight=2.0, threshold="clip",
                                 labels=tuple(i % 10 for i in range(20)))
    return c
