r"""ImageNet 256x256, class-conditional MDM-S64S256, progressive 64 -> 256 (Appendix B).

Phase "64" trains the 64x64 UNet (batch 512, 300k steps); phase "256" nests it inside the 256 level (the 64 model
becomes ``unet/inner_unet``) and trains both with the multi-resolution loss (batch 256, 500k steps), with mixed-
resolution batches (the 256 level sees 2/3 of each batch: ml-mdm's '2:1').

  python -m mdm_jax.main --config=configs/imagenet256.py --workdir=runs/imagenet256
  # start at the 256 phase from a finished 64 run (or a converted ml-mdm checkpoint):
  python -m mdm_jax.main --config=configs/imagenet256.py --workdir=runs/in256 \
      --config.init.phase=1 --config.init.checkpoint=runs/imagenet64
"""

from mdm_jax.training import config_lib

imagenet64 = config_lib.sibling(__file__, "imagenet64")


def get_config(arg: str = "") -> config_lib.ConfigDict:
    runlocal = arg == "runlocal"
    c = imagenet64.imagenet_base(runlocal)
    if runlocal:
        c.phases = [
            config_lib.phase("64", model=config_lib.tiny_architecture([8], num_classes=24), batch_size=8, steps=20),
            config_lib.phase("256", model=config_lib.tiny_architecture([32, 8], num_classes=24), batch_size=6,
                             steps=20, init_from={"unet/inner_unet": "unet"}, mixed_ratio="2:1"),
        ]
    else:
        c.phases = [
            config_lib.phase("64", architecture="S64", batch_size=512, steps=300_000),
            config_lib.phase("256", architecture="S64S256", batch_size=256, steps=500_000,
                             init_from={"unet/inner_unet": "unet"}, mixed_ratio="2:1"),
        ]
    return c
