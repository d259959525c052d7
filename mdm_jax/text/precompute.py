"""Encodes a data source's captions once with a frozen text encoder into array_record shards.

Frozen FLAN-T5-XL costs more than a small UNet step; precomputing removes it from training entirely.  Output
layout and reader: ``mdm_jax.data.precomputed``.  Train with ``data.text.precomputed_dir=OUT``.  Example::

    python -m mdm_jax.text.precompute --out /data/cc12m_t5xl --model_dir /models/flan-t5-xl \\
        --data name=image_text_tsv --data file_list=/data/cc12m/train.tsv --splits train --batch_size 64
"""

from __future__ import annotations

import argparse
import ast
import io
import json
import os
from collections.abc import Callable

import numpy as np

from mdm_jax import io_paths
from mdm_jax.data import precomputed
from mdm_jax.text import tokenizers as tok_lib


def _caption(source, i: int) -> str:
    if hasattr(source, "caption"):
        return source.caption(i)
    element = source[i]
    return str(element.get("caption", ""))


def precompute_split(
    source,
    encode: Callable[[np.ndarray, np.ndarray], np.ndarray],
    tokenizer: tok_lib.Tokenizer,
    out_dir: str,
    split: str,
    max_length: int = 128,
    batch_size: int = 64,
) -> int:
    """Writes ``<split>.array_record`` for ``source`` (index order); returns the number of records."""
    from array_record.python.array_record_module import ArrayRecordWriter

    io_paths.makedirs(out_dir)
    path = precomputed.record_path(out_dir, split)
    tmp = io_paths.staging_path(path)  # ArrayRecord writes local files; published whole (rename or upload)
    writer = ArrayRecordWriter(tmp, "group_size:1")
    n = len(source)
    for start in range(0, n, batch_size):
        ids = range(start, min(n, start + batch_size))
        captions = [_caption(source, i) for i in ids]
        captions += [""] * (batch_size - len(captions))  # static shape for the jitted encoder
        tokens, mask = tok_lib.tokenize_batch(tokenizer, captions, max_length)
        emb = np.asarray(encode(tokens, mask))
        lengths = mask.sum(axis=1).astype(int)
        for j in range(len(ids)):
            writer.write(precomputed.serialize(emb[j, : lengths[j]]))
    writer.close()
    io_paths.publish(tmp, path)
    return n


def precompute(
    data_config,
    encode: Callable[[np.ndarray, np.ndarray], np.ndarray],
    tokenizer: tok_lib.Tokenizer,
    out_dir: str,
    splits: tuple[str, ...] = ("train",),
    encoder_name: str = "",
    batch_size: int = 64,
) -> dict:
    """Encodes every split plus the null caption; writes ``meta.json`` last (its presence marks completion)."""
    from mdm_jax.data.factory import create_source, resolve_config

    config = resolve_config(data_config)
    max_length = int(config.text.max_length)
    null_tokens, null_mask = tok_lib.tokenize_batch(tokenizer, [config.text.null_caption] * batch_size, max_length)
    null_emb = np.asarray(encode(null_tokens, null_mask))[0, : int(null_mask[0].sum())]
    io_paths.makedirs(out_dir)
    buf = io.BytesIO()
    np.save(buf, null_emb.astype(np.float16))
    io_paths.write_bytes(io_paths.join(out_dir, precomputed.NULL_FILE), buf.getvalue())
    counts = {}
    for split in splits:
        source, _ = create_source(config, split)
        counts[split] = precompute_split(source, encode, tokenizer, out_dir, split, max_length, batch_size)
    meta = {
        "dim": int(null_emb.shape[-1]),
        "max_length": max_length,
        "encoder": encoder_name,
        "null_caption": config.text.null_caption,
        "num_examples": counts,
        "data": {k: v for k, v in config.to_dict().items() if k != "text"},
    }
    io_paths.write_text(io_paths.join(out_dir, precomputed.META_FILE), json.dumps(meta, indent=1))
    return meta


def _parse_overrides(items: list[str]) -> dict:
    out: dict = {"text": {}}
    for item in items:
        key, _, raw = item.partition("=")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        if key.startswith("text."):
            out["text"][key[5:]] = value
        else:
            out[key] = value
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--model_dir", required=True, help="local Hugging Face T5/FLAN-T5 folder")
    parser.add_argument("--tokenizer_path", default="", help="spiece.model or folder (default: model_dir)")
    parser.add_argument("--data", action="append", default=[], help="data config override key=value (repeat)")
    parser.add_argument("--splits", default="train")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    args = parser.parse_args()

    import jax.numpy as jnp

    from mdm_jax.text.t5 import T5TextEncoder

    encoder = T5TextEncoder.from_pretrained(
        args.model_dir, args.tokenizer_path, dtype=jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    )
    meta = precompute(
        _parse_overrides(args.data),
        lambda t, m: encoder(jnp.asarray(t), jnp.asarray(m)),
        encoder.tokenizer,
        args.out,
        tuple(s for s in args.splits.split(",") if s),
        encoder_name=f"t5:{os.path.basename(os.path.normpath(args.model_dir))}:{args.dtype}",
        batch_size=args.batch_size,
    )
    print(json.dumps({k: meta[k] for k in ("dim", "num_examples", "encoder")}))


if __name__ == "__main__":
    main()
