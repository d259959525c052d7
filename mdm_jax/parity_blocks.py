"""Standalone-block fixtures of the parity command: ml-mdm ``TemporalAttentionBlock``s (``tab.npz``).

Each case ``<c>/`` holds block-relative weights, the input, the output and every internal step (README of
``../shared/parity_video`` section 6); the block is built from ``configs.json`` ``temporal_attention_block_cases``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import traverse_util

MODEL_TOL = 1e-4

# dbg key -> (ml-mdm-named submodule, what to take, image layout?)
_DEBUG = {
    "down_conv_output": ("down_conv", "output", True),
    "seq_input": ("attn", "input", False),
    "qkv": ("attn.qkv", "output", False),
    "attn_context": ("attn.proj_out", "input", False),
    "attn_output": ("attn", "output", False),
    "mlp_output": ("mlp", "output", False),
}
_SOWN = {"q_rotated": "q_rotated", "k_rotated": "k_rotated", "attn_probs": "attn_probs"}


def block_params(state_dict: dict[str, np.ndarray], shapes: Any, rope: bool) -> dict:
    """Flax params of one block from its ml-mdm keys, strictly (every key used, every leaf filled)."""
    from mdm_jax.convert.keys import ConversionError, to_flax_layout, torch_key
    from mdm_jax.models.temporal import rope_frequencies

    remaining = dict(state_dict)
    out = {}
    for path, leaf in traverse_util.flatten_dict(shapes).items():
        key = torch_key(path)
        if key not in remaining:
            raise ConversionError(f"{key}: missing from the block's weights")
        out[path] = to_flax_layout(np.asarray(remaining.pop(key), np.float32), tuple(leaf.shape), key)
    freqs = remaining.pop("attn.pos_emb.freqs", None)
    if rope and (freqs is None or not np.allclose(freqs, np.asarray(rope_frequencies()), rtol=1e-6, atol=0)):
        raise ConversionError("attn.pos_emb.freqs: missing or not 10000^(-2i/32)")
    if remaining:
        raise ConversionError(f"unexpected keys: {sorted(remaining)}")
    return traverse_util.unflatten_dict(out)


def check_temporal_blocks(path: Path, cases: dict[str, dict]) -> list:
    """Checks (``mdm_jax.parity.Check``) of every case in ``tab.npz``."""
    import jax

    from mdm_jax.models.capture import capture_calls
    from mdm_jax.models.temporal import TemporalAttentionBlock
    from mdm_jax.parity import Check, compare, nchw_to_nhwc

    data = np.load(path)
    fixture = path.name
    checks: list[Check] = []
    for name, case in cases.items():
        prefix = f"{name}/"
        if f"{prefix}in/x" not in data.files:
            continue
        rope = bool(case.get("temporal_positional_encoding", False))
        block = TemporalAttentionBlock(int(case["channels"]), rope)
        x = jnp.asarray(nchw_to_nhwc(data[f"{prefix}in/x"]))
        clips = int(data[f"{prefix}in/temb"].shape[0])
        shapes = jax.eval_shape(lambda x, b=block, c=clips: b.init(jax.random.PRNGKey(0), x, c), x)["params"]
        sd = {k[len(prefix + "param/"):]: data[k] for k in data.files if k.startswith(prefix + "param/")}
        params = jax.tree.map(jnp.asarray, block_params(sd, shapes, rope))
        with capture_calls({m for m, _, _ in _DEBUG.values()}) as records:
            out, state = block.apply({"params": params}, x, clips, mutable=["intermediates"])
        checks.append(compare(fixture, f"{prefix}out", out, nchw_to_nhwc(data[f"{prefix}out"]), MODEL_TOL))
        sown = state.get("intermediates", {}).get("attn", {})
        for key in sorted(k[len(prefix + "dbg/"):] for k in data.files if k.startswith(prefix + "dbg/")):
            ref = data[f"{prefix}dbg/{key}"]
            if key in _SOWN:
                got = sown.get(_SOWN[key], (None,))[0]
            elif key in _DEBUG:
                module, what, image = _DEBUG[key]
                rec = records.get(module)
                got = None if rec is None else (rec["output"] if what == "output" else rec["args"][0])
                ref = nchw_to_nhwc(ref) if image else ref
            else:
                checks.append(Check(fixture, f"{prefix}dbg/{key} (unknown tensor)", float("inf"), MODEL_TOL))
                continue
            if got is None:
                checks.append(Check(fixture, f"{prefix}dbg/{key} (not computed)", float("inf"), MODEL_TOL))
                continue
            checks.append(compare(fixture, f"{prefix}dbg/{key}", got, ref, MODEL_TOL))
    return checks
