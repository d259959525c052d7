"""Sampling pipeline: converted checkpoint in, uint8 images per level out."""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import PARITY, needs_parity

from mdm_jax import parity
from mdm_jax.convert import convert_checkpoint
from mdm_jax.pipeline import Pipeline

pytestmark = needs_parity


class WordEncoder:
    """A deterministic stand-in for T5: one 48-d vector per word, EOS row, padded to the longest caption."""

    def __init__(self):
        self.calls = []

    def encode(self, captions):
        self.calls.append(list(captions))
        lengths = [len(c.split()) + 1 for c in captions]
        s = max(lengths)
        feats = np.zeros((len(captions), s, 48), np.float32)
        mask = np.zeros((len(captions), s), np.float32)
        for i, c in enumerate(captions):
            for j, w in enumerate(c.split() + ["</s>"]):
                feats[i, j] = np.random.default_rng(abs(hash(w)) % 2**32).normal(size=48)
                mask[i, j] = 1
        return jnp.asarray(feats), jnp.asarray(mask)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    entry = json.loads((PARITY / "configs.json").read_text())["models"]["p2"]
    cfg = tmp_path_factory.mktemp("cfg") / "p2.json"
    cfg.write_text(json.dumps(parity.model_config(entry)))
    out = tmp_path_factory.mktemp("conv") / "p2"
    convert_checkpoint(PARITY / "unet_p2.npz", out, config=str(cfg), log=lambda s: None)
    from mdm_jax.convert import load_converted
    from mdm_jax.diffusion import DiffusionSpec
    from mdm_jax.models import build_model

    model_cfg, diff_cfg, params = load_converted(out)
    pipe = Pipeline(build_model(model_cfg), params, DiffusionSpec.from_config(diff_cfg), WordEncoder())
    pipe.converted_dir = str(out)
    return pipe


def test_pipeline_returns_every_level_as_uint8(pipe):
    levels = pipe(["a red circle", "a blue square at the top"], num_steps=4, seed=1)
    assert [lv.shape for lv in levels] == [(2, 32, 32, 3), (2, 16, 16, 3)]
    assert all(lv.dtype == np.uint8 for lv in levels)
    # Guided: negative prompts first, then the prompts, encoded together (so padded to the same length).
    assert pipe.text_encoder.calls[-1] == ["", "", "a red circle", "a blue square at the top"]
    again = pipe(["a red circle", "a blue square at the top"], num_steps=4, seed=1)
    for a, b in zip(levels, again, strict=True):
        np.testing.assert_array_equal(a, b)


def test_guidance_and_seed_change_the_images(pipe):
    base = pipe(["a red circle"], num_steps=3, seed=0, return_float=True)[0]
    other_seed = pipe(["a red circle"], num_steps=3, seed=1, return_float=True)[0]
    unguided = pipe(["a red circle"], num_steps=3, seed=0, guidance_weight=None, return_float=True)[0]
    assert np.abs(base - other_seed).max() > 1e-2
    assert np.abs(base - unguided).max() > 1e-3


def test_missing_prompts_is_a_clear_error(pipe):
    with pytest.raises(ValueError, match="prompts: expected 1 captions"):
        pipe(None, labels=[1], num_steps=2)


def tiny_t5_with_mlmdm_vocab(folder: Path, vocab: bool = True) -> Path:
    """A local 48-d FLAN-T5-shaped folder (random weights) + a small ml-mdm-format t5.vocab: fits the p2 model."""
    from test_text_t5 import TINY, T5Config, _hf_state_dict, _init, _write_safetensors

    folder.mkdir(parents=True, exist_ok=True)
    cfg = {**TINY, "d_model": 48, "d_kv": 12, "vocab_size": 64, "feed_forward_proj": "gated-gelu"}
    (folder / "config.json").write_text(json.dumps(cfg))
    _write_safetensors(folder / "model.safetensors", _hf_state_dict(_init(T5Config(**cfg))))
    if vocab:
        lines = ["<pad>\t0", "</s>\t0", "<unk>\t0", "\u2581\t-2.0", "a\t-4.1", "\u2581chair\t-9.0",
                 "\u2581a\t-7.0", "\u2581red\t-8.0", "re\t-3.0", "d\t-3.0"]
        (folder / "t5.vocab").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def test_from_converted_tokenizes_as_mlmdm(pipe, tmp_path):
    """A converted text model gets ml-mdm's trie tokenizer over t5.vocab (not SentencePiece), in front of a real
    (tiny, local) T5 encoder, and samples."""
    from mdm_jax.text.tokenizers import MLMDMTrieTokenizer, tokenize_batch

    out = Path(pipe.converted_dir)
    t5 = tiny_t5_with_mlmdm_vocab(tmp_path / "t5", vocab=False)
    with pytest.raises(FileNotFoundError, match="t5.vocab"):
        Pipeline.from_converted(str(out), t5_dir=str(t5))
    tiny_t5_with_mlmdm_vocab(t5)
    loaded = Pipeline.from_converted(str(out), t5_dir=str(t5))
    tok = loaded.text_encoder.tokenizer
    assert isinstance(tok, MLMDMTrieTokenizer)
    assert tok.encode("a chair") == [3, 4, 5]  # min summed -logprob, as ml-mdm's tokenizer segments
    tokens, mask = tokenize_batch(tok, ["a red chair", ""], 16, pad_to_longest=True)
    assert tokens[1, :2].tolist() == [3, 1] and mask.sum(1).tolist() == [len(tok.encode("a red chair")) + 1, 2]
    levels = loaded(["a red chair"], num_steps=2, seed=0)
    assert [lv.shape for lv in levels] == [(1, 32, 32, 3), (1, 16, 16, 3)]
