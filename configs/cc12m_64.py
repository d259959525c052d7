r"""CC12M text-to-image 64x64 (MDM-S64): the first phase of the paper's CC12M schedule (Appendix B).

Text: frozen FLAN-T5-XL (2048-d) run inside the train step from a local Hugging Face folder, as in ml-mdm;
captions are tokenized by the data pipeline with the T5 tokenizer (128 tokens). Data: ml-mdm's TSV shards.

  python -m mdm_jax.main --config=configs/cc12m_64.py --workdir=runs/cc12m_64 \
      --config.data.file_list=data/cc12m/training.tsv --config.text_encoder.path=models/flan-t5-xl

``runlocal``: tiny stand-in on the procedural captioned shapes with the small trainable text encoder.
"""

from mdm_jax.training import config_lib

T5_DIR = "models/flan-t5-xl"  # relative to the working directory; README says how to fetch it


def cc12m_base(runlocal: bool) -> config_lib.ConfigDict:
    c = config_lib.base_config()
    if runlocal:
        c.text_encoder = config_lib.ConfigDict(dict(kind="small", dim=32, num_layers=1, num_heads=4, mlp_ratio=2))
        c.model.cond_dim = 32
        c.data = config_lib.data(name="procedural_shapes", conditioning="text", cond_drop_prob=0.1,
                                 text=dict(tokenizer="byte", max_length=40))
    else:
        c.text_encoder = config_lib.ConfigDict(dict(kind="t5", path=T5_DIR, dtype="bfloat16"))
        c.model.cond_dim = 2048
        c.model.dtype = "bfloat16"  # Appendix B: bf16 mixed precision
        c.data = config_lib.data(
            name="image_text_tsv", conditioning="text", file_list="", data_dir="", num_workers=16,
            cond_drop_prob=0.1,  # caption dropout for classifier-free guidance (absent from ml-mdm's open code)
            text=dict(tokenizer="t5", tokenizer_path=T5_DIR, max_length=128))
    c.mesh = config_lib.ConfigDict(dict(data=-1, fsdp=1))  # 32 A100s in the paper; set fsdp>1 to split weights
    c.checkpoint = config_lib.ConfigDict(dict(every_steps=10 if runlocal else 5000, keep=2 if runlocal else 3,
                                              async_save=True))
    c.log_every_steps = 5 if runlocal else 100
    c.sample = config_lib.sample(
        every_steps=0 if runlocal else 25_000, num_images=4 if runlocal else 16, num_steps=10 if runlocal else 250,
        guidance_weight=7.5, threshold="dynamic_if",
        prompts=("a red circle in the top left", "a blue square in the center") if runlocal else (
            "a panda playing guitar in a garden", "a photo of a red sports car on a mountain road",
            "an oil painting of a lighthouse at sunset", "a bowl of ramen, studio photo"))
    if runlocal:
        c.optimizer = config_lib.optimizer(warmup_steps=5, learning_rate=1e-3)
    return c


def get_config(arg: str = "") -> config_lib.ConfigDict:
    runlocal = arg == "runlocal"
    c = cc12m_base(runlocal)
    if runlocal:
        c.phases = [config_lib.phase("64", model=config_lib.tiny_architecture([16], cond_dim=32), batch_size=8,
                                     steps=20)]
    else:
        c.phases = [config_lib.phase("64", architecture="S64", batch_size=2048, steps=500_000)]
    return c
