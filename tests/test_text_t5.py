"""Flax T5 encoder: parity with transformers' PyTorch T5EncoderModel, strict loading, bf16, sharding axes."""

from __future__ import annotations

import io
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdm_jax.text.t5 import (
    T5Config,
    T5Encoder,
    load_hf_t5_encoder,
    logical_axes,
    partition_specs,
    read_safetensors,
    relative_position_bucket,
)

TINY = {"vocab_size": 100, "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_heads": 4,
        "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128}


def _tokens():
    rng = np.random.default_rng(0)
    tokens = rng.integers(2, 100, size=(3, 150))  # longer than max_distance: exercises the log buckets
    tokens[0, 100:] = 0
    tokens[1, 5:] = 0
    return tokens, (tokens != 0).astype(np.float32)


def _apply(config, params, tokens, mask, dtype=jnp.float32):
    # jit: op-by-op eager Flax costs ~10x more compile time on these CPUs
    fn = jax.jit(lambda p, t, m: T5Encoder(config, dtype=dtype).apply({"params": p}, t, m))
    return fn(params, jnp.asarray(tokens), jnp.asarray(mask))


def _init(config):
    return jax.jit(lambda: T5Encoder(config).init(jax.random.PRNGKey(1), jnp.zeros((1, 4), jnp.int32)))()["params"]


@pytest.mark.parametrize("ff", ["gated-gelu", "relu"])
def test_parity_with_transformers_pytorch(tmp_path, ff):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf_cfg = transformers.T5Config(**TINY, feed_forward_proj=ff, dropout_rate=0.0)
    model = transformers.T5ForConditionalGeneration(hf_cfg).eval()  # decoder weights must be ignored
    model.save_pretrained(tmp_path)
    config, params = load_hf_t5_encoder(str(tmp_path))
    assert config.feed_forward_proj == ff and config.num_layers == 2
    tokens, mask = _tokens()
    with torch.no_grad():
        ref = model.encoder(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask)).last_hidden_state
    ref = ref.numpy() * mask[..., None]
    with jax.default_matmul_precision("highest"):
        out = np.asarray(_apply(config, params, tokens, mask))
    err = np.abs(out - ref).max()
    assert err < 1e-4, err
    assert not out[1, 5:].any()  # pad rows exactly zero, as ml-mdm's lm_outputs
    out_bf16 = _apply(config, params, tokens, mask, jnp.bfloat16)
    assert out_bf16.dtype == jnp.float32
    assert np.abs(np.asarray(out_bf16) - ref).max() < 0.1 * np.abs(ref).max()


def _hf_state_dict(params: dict) -> dict[str, np.ndarray]:
    """Inverse of the loader's mapping, to test loading without torch."""
    out = {"shared.weight": np.asarray(params["shared"]["embedding"])}
    out["encoder.final_layer_norm.weight"] = np.asarray(params["final_layer_norm"]["weight"])
    for name, block in params.items():
        if not name.startswith("block_"):
            continue
        i = name.split("_")[1]
        for sub, tree in block.items():
            layer, kind = sub.split("_", 2)[1], sub.split("_", 2)[2]
            prefix = f"encoder.block.{i}.layer.{layer}"
            if kind == "layer_norm":
                out[f"{prefix}.layer_norm.weight"] = np.asarray(tree["weight"])
                continue
            for lin, leaf in tree.items():
                if lin == "relative_attention_bias":
                    out[f"{prefix}.SelfAttention.relative_attention_bias.weight"] = np.asarray(leaf["embedding"])
                else:
                    out[f"{prefix}.{kind}.{lin}.weight"] = np.ascontiguousarray(np.asarray(leaf["kernel"]).T)
    return out


def _write_safetensors(path, tensors: dict[str, np.ndarray], bf16: bool = False) -> None:
    import ml_dtypes

    header, chunks, offset = {}, [], 0
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr.astype(ml_dtypes.bfloat16 if bf16 else np.float32))
        data = arr.tobytes()
        header[name] = {"dtype": "BF16" if bf16 else "F32", "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    raw = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw + b"".join(chunks))


def test_loader_roundtrip_bf16_and_strictness(tmp_path):
    config = T5Config(**TINY, feed_forward_proj="gated-gelu")
    params = _init(config)
    sd = _hf_state_dict(params)
    (tmp_path / "config.json").write_text(json.dumps({**TINY, "feed_forward_proj": "gated-gelu"}))
    _write_safetensors(tmp_path / "model.safetensors", sd, bf16=True)
    assert read_safetensors(str(tmp_path / "model.safetensors"))["shared.weight"].dtype.name == "bfloat16"
    _, loaded = load_hf_t5_encoder(str(tmp_path))
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-2), params, loaded)
    del sd["encoder.block.1.layer.1.DenseReluDense.wi_1.weight"]
    _write_safetensors(tmp_path / "model.safetensors", sd)
    with pytest.raises(ValueError, match="missing"):
        load_hf_t5_encoder(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        load_hf_t5_encoder(str(tmp_path / "nope"))


def test_relative_position_buckets_match_reference_formula():
    rel = jnp.arange(-200, 201)
    got = np.asarray(relative_position_bucket(rel, 32, 128))
    # reference (transformers' _relative_position_bucket, bidirectional), in plain numpy
    nb, r = 16, np.arange(-200, 201)
    exp = (r > 0) * nb
    n = np.abs(r)
    large = 8 + (np.log(np.maximum(n, 1) / 8) / np.log(128 / 8) * 8).astype(int)
    exp = exp + np.where(n < 8, n, np.minimum(large, 15))
    np.testing.assert_array_equal(got, exp)


def test_logical_axes_cover_every_parameter():
    config = T5Config(**TINY, feed_forward_proj="gated-gelu")
    params = jax.eval_shape(lambda: T5Encoder(config).init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32)))
    params = params["params"]
    axes = logical_axes(params)
    flat_p = jax.tree_util.tree_leaves(params)
    flat_a = jax.tree_util.tree_leaves(axes, is_leaf=lambda x: isinstance(x, tuple))
    assert len(flat_p) == len(flat_a)
    assert all(len(a) == len(p.shape) for a, p in zip(flat_a, flat_p, strict=True))
    specs = partition_specs(params)
    assert specs["block_0"]["layer_1_DenseReluDense"]["wi_0"]["kernel"] == jax.sharding.PartitionSpec(None, "fsdp")


def test_t5_text_encoder_from_local_folder(tmp_path):
    pytest.importorskip("transformers")
    spm = pytest.importorskip("sentencepiece")
    from mdm_jax.text.t5 import T5TextEncoder

    words = "a red blue circle square in the top left bottom right center".split()
    sents = [" ".join(np.random.default_rng(i).choice(words, 5)) for i in range(200)]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sents), model_writer=buf, vocab_size=30, hard_vocab_limit=False,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, model_type="unigram", minloglevel=2,
    )
    (tmp_path / "spiece.model").write_bytes(buf.getvalue())
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "spiece.model"))
    cfg = {**TINY, "vocab_size": 140, "feed_forward_proj": "gated-gelu"}
    config = T5Config(**cfg)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    _write_safetensors(tmp_path / "model.safetensors", _hf_state_dict(_init(config)))
    encoder = T5TextEncoder.from_pretrained(str(tmp_path), max_length=64)
    emb, mask = encoder.encode(["a red circle in the top left", ""])
    n = len(sp.encode("a red circle in the top left")) + 1
    assert emb.shape == (2, n, 32) and np.asarray(mask).sum(1).tolist() == [n, 2]
    assert not np.asarray(emb)[1, 2:].any()
