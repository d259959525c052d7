r"""WebVid-10M text-to-video 16x64x64 (MDM-S64T16), progressive image 64 -> 16x64 (Appendix B: batch 2048 / 512,
500k steps each). Clips: 16 frames, every 4th frame, horizontal flip (Appendix F), as 4x4 mosaics (256x256).
The T16 phase nests the trained 64 model as its inner UNet (``unet/inner_unet``).

  python -m mdm_jax.main --config=configs/webvid_64x16.py --workdir=/ckpt/webvid_64x16 \
      --config.data.data_dir=/data/webvid/videos --config.data.captions_file=/data/webvid/results_10M_train.csv \
      --config.text_encoder.path=/models/flan-t5-xl
  # start from ml-mdm's released 64 model (python -m mdm_jax.convert --from-mlmdm vis_model_64x64.pth --out /ckpt/m64):
  python -m mdm_jax.main --config=configs/webvid_64x16.py --workdir=/ckpt/webvid_64x16 \
      --config.init.phase=1 --config.init.checkpoint=/ckpt/m64 ...

WebVid's CSV (videoid, name, page_dir, ...) is read as captions: ``videoid`` matches ``<videoid>.mp4`` anywhere
under ``data_dir``. ``runlocal``: a CPU stand-in on procedural moving shapes with 4-frame clips.
"""

from mdm_jax.training import config_lib

cc12m_64 = config_lib.sibling(__file__, "cc12m_64")
video_demo = config_lib.sibling(__file__, "video_demo")


def webvid_base(runlocal: bool) -> config_lib.ConfigDict:
    c = cc12m_64.cc12m_base(runlocal)
    if runlocal:
        c.data = config_lib.data(name="moving_shapes", conditioning="text", cond_drop_prob=0.1,
                                 flip=False, text=dict(tokenizer="byte", max_length=40))
        c.sample.prompts = ("a red square moving left", "a blue circle moving down")
    else:
        c.data = config_lib.data(
            name="video_folder", conditioning="text", data_dir="", captions_file="", num_workers=16,
            frame_stride=4, frame_start=-1, flip=True, cond_drop_prob=0.1,
            text=dict(tokenizer="t5", tokenizer_path=cc12m_64.T5_DIR, max_length=128))
        c.sample.prompts = ("pouring milk into black coffee", "a dog running on the beach",
                            "timelapse of clouds over mountains", "a red car driving through a city at night")
        c.sample.guidance_weight = 7.0  # Fig. 19
    return c


def phases_64x16(runlocal: bool) -> list:
    if runlocal:
        inner = config_lib.tiny_architecture([8], cond_dim=32)
        return [
            config_lib.phase("64", model=inner, batch_size=8, steps=20, data=dict(frames=1)),
            config_lib.phase("T16", model=video_demo.video_level(inner, 4, 32), batch_size=4, steps=20,
                             data=dict(frames=4), init_from={"unet/inner_unet": "unet", "text": "text"}),
        ]
    return [
        config_lib.phase("64", architecture="S64", batch_size=2048, steps=500_000, data=dict(frames=1)),
        config_lib.phase("T16", architecture="S64T16", batch_size=512, steps=500_000, data=dict(frames=16),
                         init_from={"unet/inner_unet": "unet"}),
    ]


def get_config(arg: str = "") -> config_lib.ConfigDict:
    runlocal = arg == "runlocal"
    c = webvid_base(runlocal)
    c.phases = phases_64x16(runlocal)
    return c
