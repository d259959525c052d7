"""The model of one phase: the (Nested)UNet plus, optionally, a text encoder.

Trainable parameters are one tree ``{"unet": ..., "text": ...}`` so that progressive growth, freezing and
checkpoints address both with the same '/'-paths. A *frozen* text encoder (FLAN-T5, as in ml-mdm) keeps its
weights outside the train state (``frozen``): loaded from its Hugging Face folder at start, never checkpointed,
no gradients. ``apply(params, xs, t, cond)`` has the diffusion core's ``apply_fn`` signature; ``cond`` holds the
batch's conditioning (``labels``, ``lm_outputs``/``lm_mask`` or ``tokens``/``lm_mask``, which the text encoder
turns into ``lm_outputs``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mdm_jax.models import UNetSpec, build_model
from mdm_jax.models.precision import cast_kernels

Array = jax.Array
COND_KEYS = ("labels", "lm_outputs", "lm_mask", "tokens")


@dataclasses.dataclass(frozen=True)
class Model:
    """A phase's networks; hashable so jitted functions can close over it."""

    unet: nn.Module
    spec: UNetSpec
    text: nn.Module | None = None  # trainable, params["text"]
    frozen_text: nn.Module | None = None  # frozen, weights passed as ``frozen``
    frozen_dim: int = 0

    @property
    def uses_dropout(self) -> bool:
        return any(level.dropout > 0 for level in self.spec.levels)

    def init(self, rng: Array, cond: Mapping[str, Array]) -> dict[str, Any]:
        """Fresh float32 parameters (call under ``jax.jit(..., out_shardings=...)`` to create them sharded)."""
        k_unet, k_text = jax.random.split(rng)
        cond = {k: v[:1] for k, v in cond.items() if k in COND_KEYS}
        params = {}
        if self.text is not None:
            params["text"] = self.text.init(k_text, cond["tokens"], cond["lm_mask"])["params"]
        xs = [jnp.zeros((1, lvl.resolution, lvl.resolution, lvl.input_channels)) for lvl in self.spec.levels]
        if self.frozen_text is not None and "tokens" in cond:  # only the feature shape matters here
            lm_outputs, lm_mask = jnp.zeros((*cond["tokens"].shape, self.frozen_dim)), cond["lm_mask"]
        else:
            lm_outputs, lm_mask = self._text_features(params, cond)
        params["unet"] = self.unet.init(k_unet, xs, jnp.zeros((1,), jnp.int32), lm_outputs=lm_outputs,
                                        lm_mask=lm_mask, labels=cond.get("labels"))["params"]
        return params

    def sampling_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """``params`` with the UNet's Dense/Conv kernels already in its compute dtype, for sampling loops (bit-
        identical outputs, one cast instead of one per step: ``mdm_jax.models.precision``)."""
        return {**params, "unet": cast_kernels(params["unet"], self.unet.dtype)}

    def _text_features(self, params: Mapping[str, Any], cond: Mapping[str, Array],
                       frozen: Any = None) -> tuple[Array | None, Array | None]:
        if "tokens" in cond and self.frozen_text is not None:
            if frozen is None:
                raise ValueError("the frozen text encoder's weights were not passed (frozen=None)")
            feats = self.frozen_text.apply({"params": frozen}, cond["tokens"], cond["lm_mask"])
            return jax.lax.stop_gradient(feats), cond["lm_mask"]
        if "tokens" in cond:
            if self.text is None:
                raise ValueError("batch has 'tokens' but config.text_encoder is None: set a text encoder or give "
                                 "precomputed lm_outputs")
            if "text" not in params:
                return None, cond.get("lm_mask")
            return self.text.apply({"params": params["text"]}, cond["tokens"], cond["lm_mask"]), cond["lm_mask"]
        return cond.get("lm_outputs"), cond.get("lm_mask")

    def apply(self, params: Mapping[str, Any], xs: list[Array], t: Array, cond: Mapping[str, Array],
              dropout_rng: Array | None = None, frozen: Any = None) -> list[Array]:
        """Outputs high -> low (float32). Rows of ``cond`` beyond a level's batch are ignored by the model."""
        lm_outputs, lm_mask = self._text_features(params, cond, frozen)
        deterministic = dropout_rng is None or not self.uses_dropout
        rngs = None if deterministic else {"dropout": dropout_rng}
        return self.unet.apply({"params": params["unet"]}, list(xs), t, lm_outputs=lm_outputs, lm_mask=lm_mask,
                               labels=cond.get("labels"), deterministic=deterministic, rngs=rngs)


@dataclasses.dataclass
class TextSetup:
    """What ``build_text_encoder`` returns: a trainable module, or a frozen one with its (host) weights."""

    trainable: nn.Module | None = None
    frozen: nn.Module | None = None
    frozen_params: Any = None
    frozen_dim: int = 0
    frozen_specs: Any = None  # PartitionSpecs of frozen_params (fsdp-style)

    @property
    def dim(self) -> int | None:
        if self.trainable is not None:
            return int(self.trainable.dim)
        return self.frozen_dim or None


def build(model_config: Mapping[str, Any], *, dtype: str = "float32", remat: bool = False,
          text: TextSetup | None = None) -> Model:
    """``Model`` from a UNet config (ml-mdm field names) and an optional text encoder."""
    unet = build_model(model_config, dtype=dtype, remat=remat)
    text = text or TextSetup()
    return Model(unet=unet, spec=unet.spec, text=text.trainable, frozen_text=text.frozen,
                 frozen_dim=text.frozen_dim)


def build_text_encoder(cfg: Mapping[str, Any] | None, info: Any, dtype: str = "float32") -> TextSetup:
    """The text encoder of ``config.text_encoder`` for data that emits tokens.

    ``kind='small'`` (default): ``mdm_jax.text.small_encoder`` trained jointly (``dim`` = the UNet's
    ``conditioning_feature_dim``, ``num_layers``, ``num_heads``, ``mlp_ratio``; vocabulary and length from the
    data's tokenizer). ``kind='t5'``: a frozen FLAN-T5 encoder read from the Hugging Face folder ``path``
    (``dtype`` of its matmuls, e.g. 'bfloat16'), as ml-mdm does. None: labels or precomputed features.
    """
    if not cfg:
        return TextSetup()
    if getattr(info, "tokenizer", None) is None:
        raise ValueError("config.text_encoder is set but the data does not emit tokens (precomputed lm_outputs or "
                         "no text conditioning): set config.text_encoder = None")
    kind = cfg.get("kind", "small")
    if kind == "t5":
        from mdm_jax.text import t5

        t5_config, params = t5.load_hf_t5_encoder(str(cfg["path"]))
        module = t5.T5Encoder(t5_config, dtype=jnp.dtype(cfg.get("dtype", dtype)))
        return TextSetup(frozen=module, frozen_params=params, frozen_dim=int(t5_config.d_model),
                         frozen_specs=t5.partition_specs(params))
    if kind != "small":
        raise ValueError(f"text_encoder.kind: expected 'small' or 't5', got {kind!r}")
    from mdm_jax.text.small_encoder import SmallTextEncoder

    return TextSetup(trainable=SmallTextEncoder(
        vocab_size=int(info.vocab_size), dim=int(cfg["dim"]), num_layers=int(cfg["num_layers"]),
        num_heads=int(cfg["num_heads"]), max_length=int(info.max_length), mlp_ratio=int(cfg.get("mlp_ratio", 4)),
        dtype=jnp.dtype(dtype)))
