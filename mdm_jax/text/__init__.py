"""Text encoders and tokenizers for MDM's text conditioning.

* ``t5``: Flax T5/FLAN-T5 encoder loading local Hugging Face safetensors (frozen, as in ml-mdm).
* ``small_encoder``: small trainable encoder for offline runs (with ``ByteTokenizer``).
* ``tokenizers``: byte / HF-T5 / ml-mdm trie tokenizers and ml-mdm's padding convention.
* ``precompute``: encode a data set's captions once (``python -m mdm_jax.text.precompute``).
"""

from mdm_jax.text.tokenizers import (
    ByteTokenizer,
    HFT5Tokenizer,
    MLMDMTrieTokenizer,
    create_tokenizer,
    encode_padded,
    tokenize_batch,
)

__all__ = [
    "ByteTokenizer",
    "HFT5Tokenizer",
    "MLMDMTrieTokenizer",
    "create_tokenizer",
    "encode_padded",
    "tokenize_batch",
]
