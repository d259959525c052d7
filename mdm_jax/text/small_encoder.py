"""A small trainable text encoder for offline runs (no pretrained T5 weights exist offline here).

Token embedding + learned positions + a few pre-LN self-attention blocks (masked keys) + final LayerNorm, output
``(B, S, D) * mask`` so it drops into the UNet's ``lm_outputs`` slot exactly like T5's masked hidden states.  Pair
it with ``ByteTokenizer`` (vocab 259, no file needed).  It is trained jointly with the UNet: keep its params in
the train state (e.g. ``params['text_encoder']``) and call it inside the loss on ``batch['tokens']``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


class SelfAttentionBlock(nn.Module):
    """Pre-LN transformer block: x + MHA(LN(x), key mask); x + MLP(LN(x)) with exact GELU."""

    num_heads: int
    mlp_ratio: int = 4
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, mask: Array) -> Array:
        dim = x.shape[-1]
        h = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="norm1")(x)
        attn_mask = nn.make_attention_mask(jnp.ones_like(mask), mask > 0)  # (B, 1, S, S): mask keys only
        h = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, dtype=self.dtype, deterministic=True, name="attn"
        )(h, h, mask=attn_mask)
        x = x + h
        h = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="norm2")(x)
        h = nn.Dense(dim * self.mlp_ratio, dtype=self.dtype, name="mlp_in")(h)
        h = nn.Dense(dim, dtype=self.dtype, name="mlp_out")(nn.gelu(h, approximate=False))
        return x + h


class SmallTextEncoder(nn.Module):
    """``apply(params, tokens (B,S) int32, mask (B,S)) -> (B,S,dim) float32``, zero on pad positions."""

    vocab_size: int = 259
    dim: int = 256
    num_layers: int = 2
    num_heads: int = 4
    max_length: int = 128
    mlp_ratio: int = 4
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, tokens: Array, mask: Array | None = None) -> Array:
        if mask is None:
            mask = (tokens != 0).astype(jnp.float32)
        s = tokens.shape[1]
        if s > self.max_length:
            raise ValueError(f"sequence length {s} exceeds max_length {self.max_length}")
        x = nn.Embed(self.vocab_size, self.dim, name="token_embedding")(tokens)
        pos = self.param("position_embedding", nn.initializers.normal(0.02), (self.max_length, self.dim))
        x = (x + pos[None, :s]).astype(self.dtype)
        for i in range(self.num_layers):
            x = SelfAttentionBlock(self.num_heads, self.mlp_ratio, self.dtype, name=f"blocks_{i}")(x, mask)
        x = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="final_norm")(x)
        return x.astype(jnp.float32) * mask[..., None].astype(jnp.float32)
