r"""CC12M text-to-image 1024x1024 (MDM-S64S256S1024), progressive 64 -> 256 -> 1024 (Appendix B: batch
2048 / 1024 / 768, 500k / 500k / 100k steps). The 1024 phase is initialised with the whole trained 256 model as
its inner part; the 1024 level uses ml-mdm's shifted schedule with power 2 and level weights 16:4:1.

  python -m mdm_jax.main --config=configs/cc12m_1024.py --workdir=runs/cc12m_1024
  # start at the 1024 phase from a 256 run, keeping the 256 model frozen for a warm-up period:
  python -m mdm_jax.main --config=configs/cc12m_1024.py --workdir=runs/c1024 --config.init.phase=2 \
      --config.init.checkpoint=runs/cc12m_256 --config.phases[2].freeze='("unet/inner_unet",)'
"""

from mdm_jax.training import config_lib

cc12m_64 = config_lib.sibling(__file__, "cc12m_64")
cc12m_256 = config_lib.sibling(__file__, "cc12m_256")


def get_config(arg: str = "") -> config_lib.ConfigDict:
    runlocal = arg == "runlocal"
    c = cc12m_64.cc12m_base(runlocal)
    phases = cc12m_256.phases_256(runlocal)
    if runlocal:
        phases.append(config_lib.phase(
            "1024", model=config_lib.tiny_architecture([64, 32, 8], cond_dim=32), batch_size=4, steps=10,
            init_from={"unet/inner_unet": "unet", "text": "text"}, multi_res_weights="16:4:1",
            diffusion=dict(schedule_shifted_power=2.0)))
    else:
        phases.append(config_lib.phase(
            "1024", architecture="S64S256S1024", batch_size=768, steps=100_000,
            init_from={"unet/inner_unet": "unet"}, multi_res_weights="16:4:1",
            diffusion=dict(schedule_shifted_power=2.0)))
    c.phases = phases
    return c
