r"""CC12M text-to-image 256x256 (MDM-S64S256), progressive 64 -> 256 (Appendix B: batch 2048 / 1024, 500k steps
each). The 256 phase nests the trained 64 model (``unet/inner_unet``) and uses mixed-resolution batches ('2:1').

  python -m mdm_jax.main --config=configs/cc12m_256.py --workdir=runs/cc12m_256 \
      --config.data.file_list=data/cc12m/training.tsv
  # from ml-mdm's released 64 model (python -m mdm_jax.convert --from-mlmdm vis_model_64x64.pth --out /ckpt/m64):
  python -m mdm_jax.main --config=configs/cc12m_256.py --workdir=runs/cc12m_256 \
      --config.init.phase=1 --config.init.checkpoint=runs/m64
"""

from mdm_jax.training import config_lib

cc12m_64 = config_lib.sibling(__file__, "cc12m_64")


def phases_256(runlocal: bool) -> list:
    if runlocal:
        return [
            config_lib.phase("64", model=config_lib.tiny_architecture([8], cond_dim=32), batch_size=8, steps=20),
            config_lib.phase("256", model=config_lib.tiny_architecture([32, 8], cond_dim=32), batch_size=6,
                             steps=20, init_from={"unet/inner_unet": "unet", "text": "text"}, mixed_ratio="2:1"),
        ]
    return [
        config_lib.phase("64", architecture="S64", batch_size=2048, steps=500_000),
        config_lib.phase("256", architecture="S64S256", batch_size=1024, steps=500_000,
                         init_from={"unet/inner_unet": "unet"}, mixed_ratio="2:1"),
    ]


def get_config(arg: str = "") -> config_lib.ConfigDict:
    runlocal = arg == "runlocal"
    c = cc12m_64.cc12m_base(runlocal)
    c.phases = phases_256(runlocal)
    return c
