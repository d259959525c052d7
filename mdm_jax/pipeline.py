"""Text/class-to-image sampling from a converted (or trained) model in a few lines; used by the notebook.

    pipe = Pipeline.from_converted("converted_256", t5_dir="flan-t5-xl")
    levels = pipe(["a red panda eating bamboo"], num_steps=100, guidance_weight=7.5)   # uint8, high -> low

Defaults follow ml-mdm's demo: DDIM with eta 0, classifier-free guidance 7.5 against the negative prompt ""
(``guidance_weight`` has ml-mdm's meaning everywhere: p_u + w (p_c - p_u), guided iff w != 1),
DeepFloyd-style dynamic thresholding (q 0.95, s <= 1.5), ml-mdm's resampled timestep list.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from mdm_jax.data.image_ops import from_model_scale
from mdm_jax.diffusion import DiffusionSpec, sample
from mdm_jax.diffusion.sampler import stack_guidance_rows, uses_guidance
from mdm_jax.models.precision import cast_kernels
from mdm_jax.text.tokenizers import MLMDMTrieTokenizer, create_tokenizer


class TextEncoder(Protocol):
    def encode(self, captions: Sequence[str]) -> tuple[Any, Any]: ...


def mlmdm_tokenizer(tokenizer_path: str = "", *folders: str) -> MLMDMTrieTokenizer:
    """ml-mdm's trie tokenizer over ``t5.vocab``: ``tokenizer_path`` or the first ``<folder>/t5.vocab`` found."""
    candidates = [tokenizer_path] if tokenizer_path else [os.path.join(f, "t5.vocab") for f in folders if f]
    for path in candidates:
        if os.path.isfile(path):
            return MLMDMTrieTokenizer(path)
    raise FileNotFoundError(
        f"ml-mdm's tokenizer vocabulary not found (looked at {candidates}): ml-mdm's checkpoints were trained with "
        f"its trie tokenizer over data/t5.vocab; copy that file from an ml-mdm checkout into the T5 folder, or pass "
        f"tokenizer_path (tokenizer='t5' uses SentencePiece instead, which segments differently)")


class Pipeline:
    """A NestedUNet, its parameters, its diffusion spec and (for text models) a frozen text encoder."""

    def __init__(self, model: Any, params: Any, diffusion: DiffusionSpec, text_encoder: TextEncoder | None = None):
        self.model, self.params, self.diffusion, self.text_encoder = model, params, diffusion, text_encoder
        self.spec = model.spec

        def apply_fn(params, xs, t, cond):
            return model.apply({"params": params}, list(xs), t, cond.get("lm_outputs"), cond.get("lm_mask"),
                               cond.get("labels"))

        self._apply_fn = apply_fn

    @classmethod
    def from_converted(cls, converted_dir: str, t5_dir: str | None = None, tokenizer_path: str = "",
                       t5_dtype: Any = jnp.float32, tokenizer: str = "mlmdm") -> Pipeline:
        """Load ``python -m mdm_jax.convert`` output; ``t5_dir`` is a local FLAN-T5 folder (safetensors).

        ``tokenizer='mlmdm'`` (default) tokenizes as ml-mdm did when training its checkpoints: its own trie
        tokenizer over ``t5.vocab`` (``tokenizer_path``, else ``<t5_dir>/t5.vocab`` or ``<converted_dir>/t5.vocab``);
        ``'t5'`` uses the SentencePiece model of ``tokenizer_path`` or ``t5_dir`` (what our own T5 runs use).
        """
        from mdm_jax.convert import load_converted
        from mdm_jax.models import build_model

        model_cfg, diffusion_cfg, params = load_converted(converted_dir)
        model = build_model(model_cfg)
        encoder = None
        if model.spec.uses_text:
            if not t5_dir:
                raise ValueError(f"t5_dir: {converted_dir} holds a text-conditioned model; pass the local folder of "
                                 f"its text encoder (google/flan-t5-xl: config.json + *.safetensors + spiece.model)")
            from mdm_jax.text.t5 import T5TextEncoder, load_hf_t5_encoder

            config, t5_params = load_hf_t5_encoder(t5_dir)
            tok = mlmdm_tokenizer(tokenizer_path, t5_dir, converted_dir) if tokenizer == "mlmdm" else \
                create_tokenizer(tokenizer, tokenizer_path or t5_dir)
            encoder = T5TextEncoder(config, jax.tree.map(jnp.asarray, t5_params), tok, dtype=t5_dtype)
        return cls(model, jax.tree.map(jnp.asarray, params), DiffusionSpec.from_config(diffusion_cfg), encoder)

    def conditioning(self, batch: int, prompts: Sequence[str] | None, labels: Sequence[int] | None,
                     negative_prompt: str, guided: bool) -> dict[str, Any]:
        """Rows [uncond x B; cond x B] when guided; text padded to the longest row, as ml-mdm does."""
        cond: dict[str, Any] = {}
        if self.spec.uses_text:
            if prompts is None or len(prompts) != batch:
                raise ValueError(f"prompts: expected {batch} captions for this text-conditioned model")
            texts = ([negative_prompt] * batch if guided else []) + list(prompts)
            cond["lm_outputs"], cond["lm_mask"] = self.text_encoder.encode(texts)
        num_classes = self.spec.innermost.num_classes
        if num_classes:
            if labels is None or len(labels) != batch:
                raise ValueError(f"labels: expected {batch} class ids in [0, {num_classes}) for this model")
            lab = np.asarray(labels, np.int32)
            cond["labels"] = (stack_guidance_rows({"l": lab}, {"l": np.full_like(lab, num_classes)})["l"] if guided
                              else lab)
        return cond

    def __call__(self, prompts: Sequence[str] | None = None, labels: Sequence[int] | None = None, *,
                 negative_prompt: str = "", num_steps: int = 50, guidance_weight: float | None = 7.5,
                 method: str = "ddim", eta: float = 0.0, threshold: str = "dynamic_if", seed: int = 0,
                 return_float: bool = False) -> list[np.ndarray]:
        """Sample one image per prompt/label; returns every level's final image, high -> low."""
        batch = len(prompts) if prompts is not None else len(labels or [])
        if batch == 0:
            raise ValueError("prompts/labels: give at least one")
        guided = uses_guidance(guidance_weight)
        cond = self.conditioning(batch, prompts, labels, negative_prompt, guided)
        res = self.spec.resolution
        params = cast_kernels(self.params, self.model.dtype)  # once, not once per step
        out = sample(jax.tree_util.Partial(self._apply_fn, params), self.diffusion, cond,
                     shape=(batch, res, res, self.spec.input_channels), rng=jax.random.PRNGKey(seed),
                     num_steps=num_steps, method=method, eta=eta,
                     guidance_weight=guidance_weight if guided else None, threshold_kind=threshold)
        levels = [np.clip(np.asarray(x), -1.0, 1.0) for x in out["levels"]]
        return levels if return_float else [from_model_scale(x) for x in levels]
