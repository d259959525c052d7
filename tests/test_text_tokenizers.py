"""Tokenizers (byte, word, HF T5 from a local SentencePiece model, ml-mdm trie), padding rules, small text encoder."""

from __future__ import annotations

import io
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdm_jax.text.small_encoder import SmallTextEncoder
from mdm_jax.text.tokenizers import (
    ByteTokenizer,
    HFT5Tokenizer,
    MLMDMTrieTokenizer,
    WordTokenizer,
    create_tokenizer,
    encode_padded,
    tokenize_batch,
)


def test_byte_tokenizer_and_ml_mdm_padding():
    tok = ByteTokenizer()
    ids = tok.encode("ab")
    assert ids == [ord(" ") + 3, ord("a") + 3, ord("b") + 3]  # leading space as ml-mdm
    assert tok.decode(ids) == " ab"
    padded = encode_padded(tok, "ab", 6)
    assert padded.tolist() == ids + [1, 0, 0]  # EOS appended, pad id 0
    long = encode_padded(tok, "x" * 50, 8)
    assert long[-1] == tok.eos_id and len(long) == 8  # truncated, EOS kept
    tokens, mask = tokenize_batch(tok, ["ab", "abcd", ""], 16, pad_to_longest=True)
    assert tokens.shape == (3, 6) and mask.sum(1).tolist() == [4, 6, 2]
    assert tok.decode(encode_padded(tok, "caf\u00e9", 16)) == " caf\u00e9"


def test_word_tokenizer_one_id_per_word_and_no_demo_collisions():
    from mdm_jax.evaluation.shapes_score import all_prompts

    tok = create_tokenizer("word")
    assert isinstance(tok, WordTokenizer) and tok.vocab_size == 2048
    ids = tok.encode("A red circle, in the top left")
    assert len(ids) == 8 and ids[1] == tok.encode("red")[0] and ids[3] == tok.encode(",")[0]  # case, punctuation
    assert all(tok.offset <= i < tok.vocab_size for i in ids)
    assert tok.encode("") == [] and encode_padded(tok, "", 4).tolist() == [1, 0, 0, 0]  # null caption: EOS only
    assert pickle.loads(pickle.dumps(tok)).encode("blue square") == tok.encode("blue square")  # grain workers
    words = sorted({w for p in all_prompts() for w in p.split()})
    assert len({tok.encode(w)[0] for w in words}) == len(words), "two demo words share a token id"
    with pytest.raises(ValueError, match="vocab_size"):
        WordTokenizer(3)


def _spm_model(path) -> str:
    spm = pytest.importorskip("sentencepiece")
    words = "a red blue green circle square triangle in the top left bottom right center chair boat".split()
    rng = np.random.default_rng(0)
    sents = [" ".join(rng.choice(words, 6)) for _ in range(300)]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sents), model_writer=buf, vocab_size=40, hard_vocab_limit=False,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, model_type="unigram", minloglevel=2,
    )
    path.write_bytes(buf.getvalue())
    return str(path), spm.SentencePieceProcessor(model_file=str(path))


def test_hf_t5_tokenizer_from_local_spiece(tmp_path):
    pytest.importorskip("transformers")
    model_file, sp = _spm_model(tmp_path / "spiece.model")
    tok = HFT5Tokenizer(model_file)
    caption = "a red circle in the top left"
    assert tok.encode(caption) == sp.encode(caption)  # same ids as SentencePiece, leading "▁" kept
    assert (tok.pad_id, tok.eos_id) == (0, 1)
    assert tok.encode("") == [sp.piece_to_id("\u2581")]  # ml-mdm: "" -> [▁, </s>]
    assert HFT5Tokenizer(str(tmp_path)).encode(caption) == sp.encode(caption)  # folder form
    assert pickle.loads(pickle.dumps(tok)).encode(caption) == sp.encode(caption)  # grain workers
    tokens, mask = tokenize_batch(tok, [caption, ""], 128)
    assert tokens[0, len(sp.encode(caption))] == 1 and mask[1].sum() == 2


def test_mlmdm_trie_tokenizer(tmp_path):
    vocab = ["<pad>\t0", "</s>\t0", "<unk>\t0", "\u2581\t-2.0", "a\t-4.1", "\u2581chair\t-9.0", "\u2581a\t-7.0",
             "c\t-5", "h\t-5", "i\t-5", "r\t-5", "n\t-5", "ve\t-6", "v\t-5", "e\t-5", "\u2581n\t-6"]
    path = tmp_path / "t5.vocab"
    path.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tok = MLMDMTrieTokenizer(str(path))
    assert (tok.pad_id, tok.eos_id, tok.vocab_size) == (0, 1, len(vocab))
    # min summed -logprob: "▁"+"a" (2.0+4.1) beats "▁a" (7.0) as with the real t5.vocab ("a chair" -> 3, 9, 3533)
    assert tok.encode("a chair") == [3, 4, 5]
    assert encode_padded(tok, "", 4).tolist() == [3, 1, 0, 0]  # "" -> [▁, </s>]
    # unknown characters are dropped, not mapped to <unk>
    assert tok.decode(tok.encode("na\u00efve")) == " nave"
    assert tok.encode("two  spaces"[:0] + "a  a") == [3, 4, 3, 3, 4]  # whitespace runs are not collapsed


def test_small_text_encoder_masks_and_shapes():
    tok = ByteTokenizer()
    tokens, mask = tokenize_batch(tok, ["a red circle", "a"], 32)
    model = SmallTextEncoder(vocab_size=tok.vocab_size, dim=16, num_layers=2, num_heads=2, max_length=32)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.asarray(tokens), jnp.asarray(mask))
    apply = jax.jit(model.apply)
    out = apply(params, jnp.asarray(tokens), jnp.asarray(mask))
    assert out.shape == (2, 32, 16) and out.dtype == jnp.float32
    assert not np.asarray(out)[1, 3:].any()
    # pad tokens cannot influence real positions (keys are masked)
    tokens2 = tokens.copy()
    tokens2[1, 5:] = 7
    out2 = apply(params, jnp.asarray(tokens2), jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(out)[1, :3], np.asarray(out2)[1, :3], atol=1e-5)
