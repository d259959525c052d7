r"""ImageNet 64x64, class-conditional MDM-S64 (the first phase of the paper's ImageNet schedule, Appendix B).

  python -m mdm_jax.main --config=configs/imagenet64.py --workdir=runs/imagenet64 \
      --config.data.data_dir=data/tensorflow_datasets
  python -m mdm_jax.main --config=configs/imagenet64.py:runlocal --workdir=/tmp/in64   # CPU smoke run

``runlocal``: a tiny stand-in model on the built-in procedural shapes (class labels), a few steps, float32.
"""

from mdm_jax.training import config_lib


def imagenet_base(runlocal: bool) -> config_lib.ConfigDict:
    c = config_lib.base_config()
    c.model.num_classes = 24 if runlocal else 1000
    c.model.cond_dim = -1
    c.model.dtype = "float32" if runlocal else "bfloat16"  # Appendix B: bf16 mixed precision
    if runlocal:
        c.data = config_lib.data(name="procedural_shapes", conditioning="class", cond_drop_prob=0.1)
    else:
        c.data = config_lib.data(name="imagenet", conditioning="class", cond_drop_prob=0.1,
                                 data_dir="data/tensorflow_datasets", num_workers=16)
    c.mesh = config_lib.ConfigDict(dict(data=-1, fsdp=1))  # 8 A100s in the paper: data parallel
    c.checkpoint = config_lib.ConfigDict(dict(every_steps=10 if runlocal else 5000, keep=2 if runlocal else 3,
                                              async_save=True))
    c.log_every_steps = 5 if runlocal else 100
    c.sample = config_lib.sample(every_steps=0 if runlocal else 25_000, num_images=4 if runlocal else 16,
                                 num_steps=10 if runlocal else 250, guidance_weight=4.0, threshold="dynamic_if")
    if runlocal:
        c.optimizer = config_lib.optimizer(warmup_steps=5, learning_rate=1e-3)
    return c


def get_config(arg: str = "") -> config_lib.ConfigDict:
    runlocal = arg == "runlocal"
    c = imagenet_base(runlocal)
    if runlocal:
        c.phases = [config_lib.phase("64", model=config_lib.tiny_architecture([16], num_classes=24),
                                     batch_size=8, steps=20)]
    else:
        c.phases = [config_lib.phase("64", architecture="S64", batch_size=512, steps=300_000)]
    return c
