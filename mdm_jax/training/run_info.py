"""What sampling needs from the data, saved in the run directory so ``--mode=sample`` needs only the run.

A phase's ``DataInfo`` (conditioning, class names, null label, text length, null caption, precomputed-feature
width) goes to ``<workdir>/data_info/<phase index>.json``; the tokenizer's vocabulary file(s) are copied to
``<workdir>/tokenizer/`` and the JSON names them relative to the workdir, so a run directory moved to another
machine still samples without the data set or the original vocabulary path.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from mdm_jax import io_paths
from mdm_jax.data.pipeline import DataInfo
from mdm_jax.text import tokenizers as tok_lib

_FIELDS = ("name", "resolution", "conditioning", "num_classes", "class_names", "null_label", "max_length", "pad_id",
           "null_caption", "lm_dim")
_VOCAB_FILES = ("spiece.model", "t5.vocab", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _path(workdir: str, phase_index: int) -> str:
    return io_paths.join(workdir, "data_info", f"{int(phase_index)}.json")


def _copy_vocabulary(workdir: str, path: str) -> str:
    """Copy a tokenizer file or folder's vocabulary files under ``workdir/tokenizer``; returns the relative path."""
    dest = io_paths.join(workdir, "tokenizer")
    if io_paths.isfile(path):
        name = os.path.basename(os.fspath(path))
        io_paths.write_bytes(io_paths.join(dest, name), io_paths.read_bytes(path))
        return f"tokenizer/{name}"
    for name in _VOCAB_FILES:
        if io_paths.isfile(io_paths.join(path, name)):
            io_paths.write_bytes(io_paths.join(dest, name), io_paths.read_bytes(io_paths.join(path, name)))
    return "tokenizer"


def save(workdir: str, phase_index: int, info: DataInfo, data_config: Any) -> str:
    """Write the phase's data info (and tokenizer vocabulary) once; returns the JSON path."""
    out = _path(workdir, phase_index)
    if io_paths.exists(out):
        return out
    record = {k: getattr(info, k) for k in _FIELDS}
    record["class_names"] = list(info.class_names) if info.class_names else None
    if info.tokenizer is not None:
        kind, path = str(data_config.text.tokenizer), str(data_config.text.tokenizer_path)
        record["tokenizer"] = {"kind": kind, "path": _copy_vocabulary(workdir, path) if path else ""}
    io_paths.write_text(out, json.dumps(record, indent=1))  # whole-file write: atomic locally and on a store
    return out


def load(workdir: str, phase_index: int) -> DataInfo | None:
    """The saved ``DataInfo`` of a phase (tokenizer rebuilt from the copied vocabulary), or None if absent."""
    path = _path(workdir, phase_index)
    if not io_paths.exists(path):
        return None
    record = json.loads(io_paths.read_text(path))
    tokenizer = None
    if record.get("tokenizer"):
        tk = record["tokenizer"]
        vocab = io_paths.join(workdir, tk["path"]) if tk["path"] else ""
        tokenizer = tok_lib.create_tokenizer(tk["kind"], vocab)
    fields = {k: record.get(k) for k in _FIELDS}
    fields["class_names"] = tuple(fields["class_names"]) if fields["class_names"] else None
    return dataclasses.replace(
        DataInfo(split="sample", num_examples=0, global_batch_size=0, per_host_batch_size=0, **fields),
        tokenizer=tokenizer, vocab_size=tokenizer.vocab_size if tokenizer is not None else None)
