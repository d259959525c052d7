"""CLIP (vision and text towers with their projections) in JAX, from a local Hugging Face folder; CLIP score.

Reads ``config.json`` + ``model.safetensors`` (the layout ``CLIPModel.save_pretrained`` writes; no torch, no
network) and applies the towers as pure functions of the Hugging Face parameter names, so there is no key
mapping to get wrong. CLIP score follows torchmetrics / Hessel et al. 2021: ``100 * max(cos(image, text), 0)``
per pair, averaged. No CLIP weights install offline here: the user supplies the folder
(``config.eval.clip_path``), e.g. ``openai/clip-vit-base-patch32`` downloaded elsewhere.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
_HI = jax.lax.Precision.HIGHEST


def _act(name: str, x: jax.Array) -> jax.Array:
    if name == "quick_gelu":
        return x * jax.nn.sigmoid(1.702 * x)
    if name == "gelu":
        return jax.nn.gelu(x, approximate=False)
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        return jax.nn.gelu(x, approximate=True)
    raise ValueError(f"CLIP hidden_act {name!r} is not supported (quick_gelu, gelu, gelu_new)")


def _linear(p: Mapping[str, jax.Array], name: str, x: jax.Array) -> jax.Array:
    y = jnp.matmul(x, p[name + ".weight"].T, precision=_HI)
    b = p.get(name + ".bias")
    return y if b is None else y + b


def _ln(p: Mapping[str, jax.Array], name: str, x: jax.Array, eps: float) -> jax.Array:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / jnp.sqrt(var + eps) * p[name + ".weight"] + p[name + ".bias"]


def _encoder(p: Mapping[str, jax.Array], prefix: str, cfg: Mapping[str, Any], x: jax.Array,
             mask: jax.Array | None) -> jax.Array:
    """Pre-LN transformer; ``mask`` [B, 1, S, S] additive (0 or -inf-like) or None."""
    heads, eps = int(cfg["num_attention_heads"]), float(cfg.get("layer_norm_eps", 1e-5))
    b, s, d = x.shape
    hd = d // heads
    for i in range(int(cfg["num_hidden_layers"])):
        lp = f"{prefix}.encoder.layers.{i}"
        h = _ln(p, f"{lp}.layer_norm1", x, eps)
        q, k, v = (_linear(p, f"{lp}.self_attn.{n}_proj", h).reshape(b, s, heads, hd) for n in "qkv")
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=_HI) * hd ** -0.5
        if mask is not None:
            logits = logits + mask
        att = jax.nn.softmax(logits, -1)
        o = jnp.einsum("bhqk,bkhd->bqhd", att, v, precision=_HI).reshape(b, s, d)
        x = x + _linear(p, f"{lp}.self_attn.out_proj", o)
        h = _ln(p, f"{lp}.layer_norm2", x, eps)
        x = x + _linear(p, f"{lp}.mlp.fc2", _act(cfg.get("hidden_act", "quick_gelu"), _linear(p, f"{lp}.mlp.fc1", h)))
    return x


def image_embeds(p: Mapping[str, jax.Array], config: Mapping[str, Any], pixels: jax.Array) -> jax.Array:
    """Normalised pixels NHWC at the model's image size -> projected image embeddings [B, projection_dim]."""
    cfg = config["vision_config"]
    w = p["vision_model.embeddings.patch_embedding.weight"]  # [D, C, P, P]
    ps = int(cfg["patch_size"])
    x = jax.lax.conv_general_dilated(pixels, jnp.transpose(w, (2, 3, 1, 0)), (ps, ps), "VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=_HI)
    b = x.shape[0]
    x = x.reshape(b, -1, x.shape[-1])
    cls = jnp.broadcast_to(p["vision_model.embeddings.class_embedding"], (b, 1, x.shape[-1]))
    x = jnp.concatenate([cls, x], 1) + p["vision_model.embeddings.position_embedding.weight"][None]
    eps = float(cfg.get("layer_norm_eps", 1e-5))
    x = _ln(p, "vision_model.pre_layrnorm", x, eps)
    x = _encoder(p, "vision_model", cfg, x, None)
    pooled = _ln(p, "vision_model.post_layernorm", x[:, 0], eps)
    return _linear(p, "visual_projection", pooled)


def text_embeds(p: Mapping[str, jax.Array], config: Mapping[str, Any], input_ids: jax.Array,
                attention_mask: jax.Array | None = None) -> jax.Array:
    """Token ids [B, S] (+ padding mask) -> projected text embeddings [B, projection_dim] (causal attention,
    pooled at the end-of-text token as transformers does)."""
    cfg = config["text_config"]
    ids = jnp.asarray(input_ids, jnp.int32)
    b, s = ids.shape
    x = p["text_model.embeddings.token_embedding.weight"][ids] + p["text_model.embeddings.position_embedding.weight"][
        None, :s]
    neg = jnp.finfo(jnp.float32).min
    allowed = jnp.tril(jnp.ones((s, s), bool))[None, None]
    if attention_mask is not None:
        allowed = allowed & (jnp.asarray(attention_mask)[:, None, None, :] > 0)
    x = _encoder(p, "text_model", cfg, x, jnp.where(allowed, 0.0, neg))
    x = _ln(p, "text_model.final_layer_norm", x, float(cfg.get("layer_norm_eps", 1e-5)))
    eos = int(cfg.get("eos_token_id", 2))
    pos = ids.argmax(-1) if eos == 2 else (ids == eos).astype(jnp.int32).argmax(-1)
    return _linear(p, "text_projection", x[jnp.arange(b), pos])


class CLIP:
    """A local CLIP folder: ``embed_images(uint8 NHWC)``, ``embed_texts(list of str)``, ``score(images, texts)``."""

    def __init__(self, path: str):
        cfg_path, st = os.path.join(path, "config.json"), os.path.join(path, "model.safetensors")
        if not (os.path.isfile(cfg_path) and os.path.isfile(st)):
            raise FileNotFoundError(f"CLIP: {path!r} needs config.json and model.safetensors (a Hugging Face "
                                    "CLIPModel folder, e.g. openai/clip-vit-base-patch32 fetched elsewhere)")
        with open(cfg_path) as f:
            self.config = json.load(f)
        from safetensors.numpy import load_file

        self.params = {k: jnp.asarray(v, jnp.float32) for k, v in load_file(st).items()}
        self.path = path
        self.image_size = int(self.config["vision_config"]["image_size"])
        self._img = jax.jit(lambda p, x: image_embeds(p, self.config, x))
        self._txt = jax.jit(lambda p, i, m: text_embeds(p, self.config, i, m))
        self._tokenizer = None

    def preprocess(self, images: np.ndarray) -> jax.Array:
        """uint8 NHWC (square) -> bicubic resize to the model size, CLIP mean/std normalisation."""
        x = jnp.asarray(images, jnp.float32) / 255.0
        if x.shape[-1] == 1:
            x = jnp.repeat(x, 3, -1)
        n = self.image_size
        if x.shape[1] != n or x.shape[2] != n:
            x = jax.image.resize(x, (x.shape[0], n, n, 3), "bicubic", antialias=True)
        return (x - CLIP_MEAN) / CLIP_STD

    def embed_images(self, images: np.ndarray, batch: int = 64) -> np.ndarray:
        return np.concatenate([np.asarray(self._img(self.params, self.preprocess(images[i:i + batch])))
                               for i in range(0, len(images), batch)])

    def tokenize(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            try:
                self._tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
            except Exception as e:  # noqa: BLE001 - name the missing files
                raise FileNotFoundError(f"CLIP: no tokenizer files in {self.path!r} (tokenizer.json or vocab.json "
                                        f"+ merges.txt, saved with the model): {e}") from e
        n = int(self.config["text_config"].get("max_position_embeddings", 77))
        t = self._tokenizer(list(texts), padding="max_length", truncation=True, max_length=n, return_tensors="np")
        return np.asarray(t["input_ids"]), np.asarray(t["attention_mask"])

    def embed_texts(self, texts: list[str], batch: int = 256) -> np.ndarray:
        ids, mask = self.tokenize(texts)
        return np.concatenate([np.asarray(self._txt(self.params, ids[i:i + batch], mask[i:i + batch]))
                               for i in range(0, len(ids), batch)])

    def score(self, images: np.ndarray, texts: list[str]) -> float:
        return clip_score(self.embed_images(images), self.embed_texts(texts))


def clip_score(image_emb: np.ndarray, text_emb: np.ndarray) -> float:
    """Mean over pairs of ``100 * max(cos, 0)`` (torchmetrics' CLIPScore; Hessel et al. use 2.5 * max(cos, 0))."""
    a = image_emb / np.linalg.norm(image_emb, axis=-1, keepdims=True)
    b = text_emb / np.linalg.norm(text_emb, axis=-1, keepdims=True)
    return float(np.mean(100.0 * np.maximum((a * b).sum(-1), 0.0)))
