"""mdm-jax: Matryoshka Diffusion Models (Gu et al., ICLR 2024) in JAX/Flax."""

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent

setup(
    name="mdm-jax",
    version="0.1.0",
    description="Matryoshka Diffusion Models in JAX/Flax: NestedUNet, multi-resolution diffusion, TPU/GPU training",
    long_description=(ROOT / "README.md").read_text() if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["mdm_jax", "mdm_jax.*"]),
    install_requires=[
        "jax>=0.10.2,<0.11",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8",
        "ml-collections>=1.1.0",
        "grain>=0.2.18",
        "clu>=0.0.12",
        "einops>=0.8",
        "numpy>=1.26",
        "pillow>=10.0",
        "safetensors>=0.4",
        "tensorboardX>=2.6",
        "absl-py>=2.0",
    ],
    extras_require={
        # Reading .pth checkpoints needs no torch (restricted unpickler); torch is only used by tests that write
        # them and by the T5 parity test. CPU wheel: pip install torch --index-url https://download.pytorch.org/whl/cpu
        "convert": ["torch>=2.2"],
        "text": ["transformers>=5.0,<6", "sentencepiece>=0.2,<0.3"],
        "data": ["tensorflow-datasets>=4.9.10,<5", "array-record>=0.5"],
        "video": ["av>=14"],  # PyAV: decoding video_folder clips, MP4 samples (tested with 18.1)
        "dev": ["pytest>=8.0", "ruff>=0.6"],
        "cuda": ["jax[cuda12]>=0.10.2,<0.11"],
        "tpu": ["jax[tpu]>=0.10.2,<0.11"],
    },
)
