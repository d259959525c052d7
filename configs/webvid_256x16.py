r"""WebVid-10M text-to-video 16x256x256 (MDM-S64T16S256), the paper's full video schedule (Appendix B):
image 64 (batch 2048, 500k) -> 16x64 (512, 500k) -> 16x256 (128, 300k); each phase nests the previous model
as its inner UNet. Clips are 4x4 mosaics (1024x1024 at the top level: 16 frames of 256x256).

  python -m mdm_jax.main --config=configs/webvid_256x16.py --workdir=/ckpt/webvid_256x16 \
      --config.data.data_dir=/data/webvid/videos --config.data.captions_file=/data/webvid/results_10M_train.csv
  # resume from a finished webvid_64x16 run (phase 2 = T16S256):
  python -m mdm_jax.main --config=configs/webvid_256x16.py --workdir=/ckpt/webvid_256x16 \
      --config.init.phase=2 --config.init.checkpoint=/ckpt/webvid_64x16

``runlocal``: CPU stand-in (4-frame clips of 8x8 -> 16x16 frames) on procedural moving shapes.
"""

from mdm_jax.training import config_lib

webvid_64x16 = config_lib.sibling(__file__, "webvid_64x16")


def get_config(arg: str = "") -> config_lib.ConfigDict:
    runlocal = arg == "runlocal"
    c = webvid_64x16.webvid_base(runlocal)
    phases = webvid_64x16.phases_64x16(runlocal)
    if runlocal:
        t16 = phases[-1].model
        top = config_lib.tiny_nested(2 * t16.resolution, [16, 32], t16)
        top.update(dict(temporal_mode=True, temporal_spatial_ds=True, micro_conditioning="scale:16"))
        phases.append(config_lib.phase("T16S256", model=top, batch_size=2, steps=20, data=dict(frames=4),
                                       init_from={"unet/inner_unet": "unet", "text": "text"}))
    else:
        phases.append(config_lib.phase("T16S256", architecture="S64T16S256", batch_size=128, steps=300_000,
                                       data=dict(frames=16), init_from={"unet/inner_unet": "unet"}))
    c.phases = phases
    return c
