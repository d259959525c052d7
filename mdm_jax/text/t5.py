"""Flax T5 encoder (T5 v1.0 / v1.1 / FLAN-T5) that loads Hugging Face weights from a local folder.

transformers 5 has no Flax models (stack.md pitfall 1), so this is our own ~200-line encoder, matched to
``transformers.T5EncoderModel`` by ``tests/test_text_t5.py``.  ml-mdm uses FLAN-T5-XL's ``last_hidden_state``
(after the final RMS norm) multiplied by the pad mask; ``T5TextEncoder.encode`` returns exactly that.

Architecture: shared embedding (no scaling) -> blocks of [RMSNorm -> self-attention without 1/sqrt(d) scaling,
with a bucketed relative-position bias computed once by block 0 and shared] and [RMSNorm -> FFN (ReLU for v1.0;
gated GELU-tanh for v1.1 / FLAN)] -> final RMSNorm.  No biases anywhere.  Norm statistics and the softmax run in
float32 even with ``dtype=bfloat16``.

Parameter tree mirrors the HF state dict so loading is a rename + transpose::

    shared/embedding (V, D)                                   <- shared.weight
    block_{i}/layer_0_SelfAttention/{q,k,v,o}/kernel          <- encoder.block.{i}.layer.0.SelfAttention.*.weight.T
    block_0/layer_0_SelfAttention/relative_attention_bias/embedding (num_buckets, H)
    block_{i}/layer_{0,1}_layer_norm/weight (D,)              <- encoder.block.{i}.layer.{0,1}.layer_norm.weight
    block_{i}/layer_1_DenseReluDense/{wi | wi_0, wi_1, wo}/kernel
    final_layer_norm/weight (D,)

Sharding: ``logical_axes(params)`` names each dimension ('vocab', 'embed', 'heads', 'mlp', 'relpos'); map them to
mesh axes with ``partition_specs(params, rules)``.  For the frozen encoder in MDM a good default is FSDP-style:
``{'mlp': 'fsdp', 'heads': 'fsdp', 'vocab': 'fsdp'}`` with 'embed' replicated (kernels are split on their large
dimension; activations stay batch-sharded on 'data').
"""

from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
import re
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class T5Config:
    """The encoder-relevant fields of a Hugging Face ``config.json``."""

    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    num_layers: int = 6
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "relu"  # 'relu' (T5 v1.0) | 'gated-gelu' (v1.1, FLAN) | 'gated-<act>'

    @property
    def is_gated(self) -> bool:
        return self.feed_forward_proj.startswith("gated-")

    @property
    def activation(self) -> str:
        act = self.feed_forward_proj.split("-")[-1]
        return "gelu_new" if self.feed_forward_proj == "gated-gelu" else act  # HF's special case

    @classmethod
    def from_json(cls, path: str) -> T5Config:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in fields})


def _activation(name: str):
    if name == "relu":
        return jax.nn.relu
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        return lambda x: jax.nn.gelu(x, approximate=True)
    if name == "gelu":
        return lambda x: jax.nn.gelu(x, approximate=False)
    if name in ("silu", "swish"):
        return jax.nn.silu
    raise ValueError(f"unsupported T5 activation {name!r}")


def relative_position_bucket(relative_position: Array, num_buckets: int, max_distance: int) -> Array:
    """Bidirectional T5 buckets: half for each sign; exact below num_buckets/4, log-spaced up to max_distance."""
    num_buckets //= 2
    buckets = (relative_position > 0).astype(jnp.int32) * num_buckets
    n = jnp.abs(relative_position)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    large = max_exact + (
        jnp.log(jnp.maximum(n, 1).astype(jnp.float32) / max_exact)
        / math.log(max_distance / max_exact)
        * (num_buckets - max_exact)
    ).astype(jnp.int32)
    large = jnp.minimum(large, num_buckets - 1)
    return buckets + jnp.where(is_small, n, large)


class T5LayerNorm(nn.Module):
    """RMS norm without mean subtraction or bias; statistics in float32."""

    epsilon: float = 1e-6
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        weight = self.param("weight", nn.initializers.ones, (x.shape[-1],), jnp.float32)
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.epsilon)
        return (weight.astype(self.dtype) * x32.astype(self.dtype)).astype(self.dtype)


def _dense(features: int, name: str, dtype: Any) -> nn.Dense:
    return nn.Dense(features, use_bias=False, dtype=dtype, param_dtype=jnp.float32, name=name)


class T5Attention(nn.Module):
    config: T5Config
    has_relative_bias: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, bias: Array | None) -> tuple[Array, Array]:
        c = self.config
        inner = c.num_heads * c.d_kv
        b, s, _ = x.shape

        def heads(t: Array) -> Array:
            return t.reshape(b, s, c.num_heads, c.d_kv)

        q = heads(_dense(inner, "q", self.dtype)(x))
        k = heads(_dense(inner, "k", self.dtype)(x))
        v = heads(_dense(inner, "v", self.dtype)(x))
        if self.has_relative_bias:
            table = nn.Embed(
                c.relative_attention_num_buckets, c.num_heads, param_dtype=jnp.float32,
                name="relative_attention_bias",
            )
            pos = jnp.arange(s)
            buckets = relative_position_bucket(
                pos[None, :] - pos[:, None], c.relative_attention_num_buckets, c.relative_attention_max_distance
            )
            position_bias = jnp.transpose(table(buckets), (2, 0, 1))[None].astype(jnp.float32)  # (1, H, S, S)
            bias = position_bias if bias is None else position_bias + bias
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)  # no 1/sqrt(d) in T5
        weights = jax.nn.softmax(logits + bias, axis=-1).astype(self.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, s, inner)
        return _dense(c.d_model, "o", self.dtype)(out), bias


class T5FeedForward(nn.Module):
    config: T5Config
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = self.config
        act = _activation(c.activation)
        if c.is_gated:
            h = act(_dense(c.d_ff, "wi_0", self.dtype)(x)) * _dense(c.d_ff, "wi_1", self.dtype)(x)
        else:
            h = act(_dense(c.d_ff, "wi", self.dtype)(x))
        return _dense(c.d_model, "wo", self.dtype)(h)


class T5Block(nn.Module):
    config: T5Config
    has_relative_bias: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, bias: Array | None) -> tuple[Array, Array]:
        eps = self.config.layer_norm_epsilon
        # Sub-module names reproduce HF's `layer.0` / `layer.1` nesting for a mechanical weight mapping.
        attn_in = T5LayerNorm(eps, self.dtype, name="layer_0_layer_norm")(x)
        attn_out, bias = T5Attention(self.config, self.has_relative_bias, self.dtype, name="layer_0_SelfAttention")(
            attn_in, bias
        )
        x = x + attn_out
        ff_in = T5LayerNorm(eps, self.dtype, name="layer_1_layer_norm")(x)
        x = x + T5FeedForward(self.config, self.dtype, name="layer_1_DenseReluDense")(ff_in)
        return x, bias


class T5Encoder(nn.Module):
    """``apply(params, tokens (B,S) int32, mask (B,S)) -> (B,S,D)`` last hidden state times the mask, float32."""

    config: T5Config
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, tokens: Array, mask: Array | None = None) -> Array:
        c = self.config
        if mask is None:
            mask = (tokens != 0).astype(jnp.float32)
        x = nn.Embed(c.vocab_size, c.d_model, param_dtype=jnp.float32, name="shared")(tokens).astype(self.dtype)
        big_neg = jnp.finfo(jnp.float32).min
        bias = jnp.where(mask[:, None, None, :] > 0, 0.0, big_neg).astype(jnp.float32)  # (B, 1, 1, S)
        for i in range(c.num_layers):
            x, bias = T5Block(c, has_relative_bias=(i == 0), dtype=self.dtype, name=f"block_{i}")(x, bias)
        x = T5LayerNorm(c.layer_norm_epsilon, self.dtype, name="final_layer_norm")(x)
        return x.astype(jnp.float32) * mask[..., None].astype(jnp.float32)


# ---------------------------------------------------------------------------------------------------------------
# Loading Hugging Face safetensors (host numpy; bf16 via ml_dtypes; no torch, no network).

_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32}


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """Memory-maps a .safetensors file into numpy arrays (supports BF16, which safetensors.numpy rejects)."""
    import ml_dtypes

    dtypes = dict(_ST_DTYPES, BF16=ml_dtypes.bfloat16)
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_len))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_len)
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        begin, end = meta["data_offsets"]
        out[name] = data[begin:end].view(dtypes[meta["dtype"]]).reshape(meta["shape"])
    return out


def _hf_to_flax_name(key: str) -> tuple[tuple[str, ...], bool] | None:
    """HF encoder key -> (flax param path, needs transpose); None for keys the encoder does not use."""
    if key in ("shared.weight", "encoder.embed_tokens.weight"):
        return ("shared", "embedding"), False
    if key == "encoder.final_layer_norm.weight":
        return ("final_layer_norm", "weight"), False
    m = re.fullmatch(r"encoder\.block\.(\d+)\.layer\.(\d)\.(.+)", key)
    if not m:
        return None
    block, layer, rest = f"block_{m.group(1)}", m.group(2), m.group(3)
    if rest == "layer_norm.weight":
        return (block, f"layer_{layer}_layer_norm", "weight"), False
    if rest == "SelfAttention.relative_attention_bias.weight":
        return (block, "layer_0_SelfAttention", "relative_attention_bias", "embedding"), False
    m2 = re.fullmatch(r"(SelfAttention|DenseReluDense)\.(\w+)\.weight", rest)
    if m2:
        return (block, f"layer_{layer}_{m2.group(1)}", m2.group(2), "kernel"), True
    return None


def load_hf_t5_encoder(model_dir: str, dtype: Any = np.float32) -> tuple[T5Config, dict]:
    """Reads ``config.json`` + ``*.safetensors`` from a local Hugging Face T5/FLAN-T5 folder into encoder params.

    Strict: every encoder parameter must be present exactly once and every ``encoder.*`` key must be used;
    decoder and lm_head weights are ignored.  Returns host numpy arrays in ``dtype`` (shard them on device).
    """
    cfg_path = os.path.join(model_dir, "config.json")
    files = sorted(glob.glob(os.path.join(model_dir, "*.safetensors")))
    if not os.path.isfile(cfg_path) or not files:
        raise FileNotFoundError(
            f"no T5 model at {model_dir!r}: put the Hugging Face folder (config.json + *.safetensors, e.g. "
            "google/flan-t5-xl) there; nothing is downloaded."
        )
    config = T5Config.from_json(cfg_path)
    params: dict = {}
    unused = []
    for path in files:
        for key, value in read_safetensors(path).items():
            mapped = _hf_to_flax_name(key)
            if mapped is None:
                if key.startswith("encoder."):
                    unused.append(key)
                continue
            names, transpose = mapped
            node = params
            for n in names[:-1]:
                node = node.setdefault(n, {})
            if names[-1] in node:
                continue  # shared.weight and encoder.embed_tokens.weight are the same tied tensor
            arr = np.asarray(value, dtype=np.float32)
            node[names[-1]] = np.ascontiguousarray(arr.T if transpose else arr).astype(dtype)
    if unused:
        raise ValueError(f"unexpected encoder weights in {model_dir}: {unused[:5]}")
    expected = jax.eval_shape(
        lambda: T5Encoder(config).init(jax.random.PRNGKey(0), jnp.zeros((1, 2), jnp.int32))["params"]
    )
    exp_flat = {"/".join(p): s.shape for p, s in _flatten(expected)}
    got_flat = {"/".join(p): v.shape for p, v in _flatten(params)}
    missing = sorted(set(exp_flat) - set(got_flat))
    if missing:
        raise ValueError(f"T5 weights missing from {model_dir}: {missing[:5]}")
    bad = [k for k in exp_flat if exp_flat[k] != got_flat[k]]
    if bad:
        raise ValueError(f"T5 weight shape mismatch: {[(k, exp_flat[k], got_flat[k]) for k in bad[:5]]}")
    return config, params


def _flatten(tree: dict, prefix: tuple[str, ...] = ()):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _flatten(v, (*prefix, k))
        else:
            yield (*prefix, k), v


# ---------------------------------------------------------------------------------------------------------------
# Sharding annotations.

_LOGICAL_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (r"shared/embedding$", ("vocab", "embed")),
    (r"relative_attention_bias/embedding$", ("relpos", "heads")),
    (r"SelfAttention/[qkv]/kernel$", ("embed", "heads")),
    (r"SelfAttention/o/kernel$", ("heads", "embed")),
    (r"DenseReluDense/wi(_0|_1)?/kernel$", ("embed", "mlp")),
    (r"DenseReluDense/wo/kernel$", ("mlp", "embed")),
    (r"layer_norm/weight$", ("embed",)),
)


def logical_axes(params: dict) -> dict:
    """Tree of logical axis-name tuples matching ``params`` (for ``nn.logical_to_mesh_sharding`` or our rules)."""

    def name(path, _):
        key = "/".join(getattr(p, "key", str(p)) for p in path)
        for pattern, axes in _LOGICAL_RULES:
            if re.search(pattern, key):
                return axes
        raise KeyError(f"no logical axes for T5 parameter {key}")

    return jax.tree_util.tree_map_with_path(name, params)


def partition_specs(params: dict, rules: dict[str, str | None] | None = None) -> dict:
    """PartitionSpec tree from logical axes; default rules shard 'mlp', 'heads' and 'vocab' over 'fsdp'."""
    from jax.sharding import PartitionSpec

    rules = {"mlp": "fsdp", "heads": "fsdp", "vocab": "fsdp"} if rules is None else rules
    return jax.tree_util.tree_map(
        lambda axes: PartitionSpec(*(rules.get(a) for a in axes)),
        logical_axes(params),
        is_leaf=lambda x: isinstance(x, tuple),
    )


# ---------------------------------------------------------------------------------------------------------------


class T5TextEncoder:
    """Frozen FLAN-T5 encoder + tokenizer: ``encode(captions) -> (lm_outputs (B,S,D) f32, lm_mask (B,S) f32)``.

    ``from_pretrained(model_dir)`` reads everything locally (tokenizer from ``tokenizer_path`` or the model
    folder).  ``dtype=jnp.bfloat16`` runs matmuls in bf16 (ml-mdm ran T5 under bf16 autocast for the 1024 model).
    """

    def __init__(self, config: T5Config, params: dict, tokenizer: Any = None, dtype: Any = jnp.float32,
                 max_length: int = 128):
        self.config, self.params, self.tokenizer = config, params, tokenizer
        self.max_length = max_length
        self.module = T5Encoder(config, dtype=dtype)
        self._apply = jax.jit(lambda p, t, m: self.module.apply({"params": p}, t, m))

    @classmethod
    def from_pretrained(cls, model_dir: str, tokenizer_path: str = "", dtype: Any = jnp.float32,
                        max_length: int = 128) -> T5TextEncoder:
        from mdm_jax.text.tokenizers import HFT5Tokenizer

        config, params = load_hf_t5_encoder(model_dir)
        params = jax.tree_util.tree_map(jnp.asarray, params)
        tokenizer = HFT5Tokenizer(tokenizer_path or model_dir)
        return cls(config, params, tokenizer, dtype, max_length)

    def __call__(self, tokens: Array, mask: Array) -> Array:
        return self._apply(self.params, tokens, mask)

    def encode(self, captions: Sequence[str], pad_to_longest: bool = True) -> tuple[Array, Array]:
        """ml-mdm's text path: tokenize (leading space, EOS, pad 0), encode, multiply by the mask."""
        from mdm_jax.text.tokenizers import tokenize_batch

        tokens, mask = tokenize_batch(self.tokenizer, captions, self.max_length, pad_to_longest=pad_to_longest)
        return self(jnp.asarray(tokens), jnp.asarray(mask)), jnp.asarray(mask)
