"""Caption tokenizers and ml-mdm's padding convention.

Convention (ml-mdm ``reader.process_text``): a leading space is prepended to the caption, there is no BOS, EOS is
appended, pad id is 0 and the mask is ``tokens != 0``; at most ``max_length`` (128) tokens.  Over-long captions
are truncated here (keeping EOS last) where ml-mdm dropped the sample.  Training batches are padded to a fixed
``max_length`` so jitted shapes stay static; ``tokenize_batch(..., pad_to_longest=True)`` reproduces ml-mdm's
inference padding (longest sequence in the batch), which matters because ml-mdm's cross-attention is unmasked.

Four tokenizers, all picklable for grain worker processes and none downloading anything:
* ``ByteTokenizer``: UTF-8 bytes (+3 offset), no vocabulary file; for the small trainable text encoder offline.
* ``WordTokenizer``: words hashed into a fixed vocabulary, no file; for a small encoder on a closed vocabulary.
* ``HFT5Tokenizer``: transformers' T5 tokenizer from a local ``spiece.model`` or tokenizer folder (FLAN-T5 ids).
* ``MLMDMTrieTokenizer``: ml-mdm's own tokenizer (minimum-cost lattice over ml-mdm's ``data/t5.vocab``), for exact
  token-id parity with ml-mdm checkpoints; same ids as T5, but differs from SentencePiece on whitespace runs,
  unknown characters (dropped) and NFKC normalisation.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Protocol

import numpy as np

PAD_ID = 0
EOS_ID = 1


class Tokenizer(Protocol):
    """What the data pipeline and samplers need from a tokenizer."""

    vocab_size: int
    pad_id: int
    eos_id: int

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` with ml-mdm's leading space, without EOS or padding."""
        ...


def encode_padded(tokenizer: Tokenizer, caption: str, max_length: int) -> np.ndarray:
    """One caption -> int32 (max_length,): ids truncated to ``max_length - 1``, EOS appended, padded with pad id."""
    ids = list(tokenizer.encode(caption))[: max_length - 1] + [tokenizer.eos_id]
    out = np.full((max_length,), tokenizer.pad_id, np.int32)
    out[: len(ids)] = ids
    return out


def tokenize_batch(
    tokenizer: Tokenizer, captions: Sequence[str], max_length: int = 128, pad_to_longest: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Captions -> (tokens int32 (B,S), lm_mask float32 (B,S)).

    ``pad_to_longest`` trims S to the longest sequence in the batch (ml-mdm inference; include the negative
    prompt in ``captions`` when using CFG so both branches share S).
    """
    tokens = np.stack([encode_padded(tokenizer, c, max_length) for c in captions])
    mask = (tokens != tokenizer.pad_id).astype(np.float32)
    if pad_to_longest:
        length = max(1, int(mask.sum(axis=1).max()))
        tokens, mask = tokens[:, :length], mask[:, :length]
    return tokens, mask


class ByteTokenizer:
    """UTF-8 byte tokenizer: pad=0, eos=1, unk=2, byte b -> b + 3 (vocab 259). Needs no vocabulary file."""

    vocab_size = 259
    pad_id = PAD_ID
    eos_id = EOS_ID
    offset = 3

    def encode(self, text: str) -> list[int]:
        return [b + self.offset for b in (" " + text).encode("utf-8")]

    def decode(self, ids: Sequence[int]) -> str:
        data = bytes(int(i) - self.offset for i in ids if int(i) >= self.offset)
        return data.decode("utf-8", errors="replace")


class WordTokenizer:
    """Words (lower-cased runs of letters/digits, and single punctuation marks) hashed into a fixed vocabulary:
    pad=0, eos=1, unk=2, word -> 3 + crc32(word) mod (vocab_size - 3). Needs no vocabulary file.

    For a text encoder trained from scratch on a small closed vocabulary (the procedural-shapes demo): each word
    is one token, so "red" and "blue" are different embedding rows from the first step, where byte tokens make
    the encoder learn to spell before the caption can steer anything. Distinct words may share an id (hashing
    trick); with the default 2048 rows that is rare for a vocabulary of tens of words and is checked by tests.
    """

    pad_id = PAD_ID
    eos_id = EOS_ID
    offset = 3

    def __init__(self, vocab_size: int = 2048):
        if vocab_size <= self.offset:
            raise ValueError(f"WordTokenizer: vocab_size must exceed {self.offset}, got {vocab_size}")
        self.vocab_size = int(vocab_size)

    def encode(self, text: str) -> list[int]:
        import zlib

        words = re.findall(r"\w+|[^\w\s]", text.lower())
        return [self.offset + zlib.crc32(w.encode("utf-8")) % (self.vocab_size - self.offset) for w in words]


class HFT5Tokenizer:
    """transformers' T5 tokenizer loaded from a local path only (never the Hub).

    ``path`` is a SentencePiece ``spiece.model`` file or a folder holding one (or ``tokenizer.json``).  In
    transformers 5, ``T5Tokenizer(vocab_file=...)`` silently ignores the file, so a lone model file is loaded
    through ``from_pretrained`` on a temporary folder that links it as ``spiece.model``.  An empty caption
    encodes to ``[▁]`` as in ml-mdm (``""`` -> ``[3, 1]``), where SentencePiece alone would give ``[]``.
    """

    def __init__(self, path: str):
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"T5 tokenizer not found at {path!r}: put FLAN-T5's spiece.model (or the model folder with "
                "tokenizer files) there; nothing is downloaded."
            )
        from transformers import AutoTokenizer

        if os.path.isfile(path):
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                os.symlink(os.path.abspath(path), os.path.join(tmp, "spiece.model"))
                self._tok = _load_t5_folder(tmp)
        elif os.path.isfile(os.path.join(path, "spiece.model")):
            self._tok = _load_t5_folder(path)
        else:
            self._tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.vocab_size = len(self._tok)
        self.pad_id = int(self._tok.pad_token_id)
        self.eos_id = int(self._tok.eos_token_id)
        space = self._tok.convert_tokens_to_ids("\u2581")
        self._space_id = None if space in (None, self._tok.unk_token_id) else int(space)

    def encode(self, text: str) -> list[int]:
        ids = list(self._tok(" " + text, add_special_tokens=False)["input_ids"])
        if not ids and self._space_id is not None:
            ids = [self._space_id]
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)


def _load_t5_folder(folder: str):
    from transformers import T5Tokenizer

    return T5Tokenizer.from_pretrained(folder, local_files_only=True)


class MLMDMTrieTokenizer:
    """ml-mdm's tokenizer: minimum summed ``-logprob`` segmentation over the bytes of ``" " + caption``.

    Reads ml-mdm's ``data/t5.vocab`` (``token<TAB>logprob`` per line; line number = T5 id; "▁" means space).
    Mirrors mlx-data's ``CharTrie`` lattice with ``ignore_unk=True``: when no hypothesis can consume a byte, all
    partial matches are abandoned and decoding restarts after the last complete token, so unknown characters
    are dropped rather than mapped to ``<unk>``.
    """

    def __init__(self, vocab_file: str):
        if not os.path.isfile(vocab_file):
            raise FileNotFoundError(
                f"ml-mdm vocabulary {vocab_file!r} not found: copy data/t5.vocab from an ml-mdm checkout there."
            )
        self._trie: dict = {}
        self._scores: list[float] = []
        self._tokens: list[bytes] = []
        sep = "\u2581".encode()
        with open(vocab_file, "rb") as f:
            for i, line in enumerate(f):
                token, score = line.rstrip().split(b"\t")
                token = token.replace(sep, b" ")
                self._tokens.append(token)
                self._scores.append(-float(score))
                if not token:
                    continue
                node = self._trie
                for byte in token:
                    node = node.setdefault(byte, {})
                node.setdefault(-1, i)  # key -1 marks an accepting node; first occurrence wins
        self.vocab_size = len(self._tokens)
        self.pad_id = self._tokens.index(b"<pad>")
        self.eos_id = self._tokens.index(b"</s>")

    def encode(self, text: str) -> list[int]:
        data = (" " + text).encode("utf-8")
        # Lattice: word nodes are created in increasing order; edges (src, dst, token).
        edges: list[tuple[int, int, int]] = []
        num_nodes = 1
        last_word_node = 0
        hyps: list[tuple[dict, int]] = [(self._trie, 0)]  # (trie node, word node it started from)
        for byte in data:
            words, partial = [], []
            for trie_node, start in hyps:
                child = trie_node.get(byte)
                if child is None:
                    continue
                if -1 in child:
                    words.append((start, child[-1]))
                if len(child) > (1 if -1 in child else 0):
                    partial.append((child, start))
            if not words and not partial:
                hyps = [(self._trie, last_word_node)]  # ignore_unk: drop this byte and every partial match
                continue
            if words:
                new_node = num_nodes
                num_nodes += 1
                edges.extend((start, new_node, tok) for start, tok in words)
                last_word_node = new_node
                partial.insert(0, (self._trie, new_node))
            hyps = partial
        final = last_word_node  # trailing incomplete match: mlx raises; we drop the tail bytes instead
        best = np.full(num_nodes, np.inf)
        back: list[tuple[int, int] | None] = [None] * num_nodes
        best[0] = 0.0
        for src, dst, tok in edges:  # edges are appended in topological order of dst
            cost = best[src] + self._scores[tok]
            if cost < best[dst]:
                best[dst], back[dst] = cost, (src, tok)
        out = []
        node = final
        while node != 0 and back[node] is not None:
            src, tok = back[node]
            out.append(tok)
            node = src
        return out[::-1]

    def decode(self, ids: Sequence[int]) -> str:
        return b"".join(self._tokens[int(i)] for i in ids).decode("utf-8", errors="replace")


def create_tokenizer(kind: str, path: str = "") -> Tokenizer:
    """Tokenizer by name: ``'byte'``, ``'word'`` (built-in, hashed words), ``'t5'`` (local spiece.model/folder),
    ``'mlmdm'`` (t5.vocab)."""
    if kind == "byte":
        return ByteTokenizer()
    if kind == "word":
        return WordTokenizer()
    if kind == "t5":
        return HFT5Tokenizer(path)
    if kind == "mlmdm":
        return MLMDMTrieTokenizer(path)
    raise ValueError(f"unknown tokenizer {kind!r}; expected 'byte', 'word', 't5' or 'mlmdm'")
