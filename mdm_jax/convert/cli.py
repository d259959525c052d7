"""``python -m mdm_jax.convert --from-mlmdm vis_model.pth --out DIR``: an ml-mdm checkpoint -> Orbax params + config.

The model is built from the checkpoint's own config (its pickled ``args``; ``--config`` otherwise) with
``jax.eval_shape``, so only the converted parameters are ever allocated. Conversion is strict: every missing,
unexpected or mis-shaped key is reported by name and fails the run. With ``--no-strict`` such leaves get a fresh
initialisation and are listed (on screen and in ``config.json``); nothing is ever left at a random value silently.

Output: ``DIR/params`` (Orbax checkpoint of ``{"params": tree}``) and ``DIR/config.json`` (``model``,
``diffusion``, ``provenance``), written last so that its presence marks a complete conversion.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from flax import traverse_util

from mdm_jax import io_paths
from mdm_jax.convert.keys import ConversionError, ConversionReport, convert_state_dict, to_flax_layout, torch_key
from mdm_jax.convert.mlmdm_config import (
    ConfigDecodeError,
    DecodedConfig,
    decode_config,
    load_config_file,
    reconcile_with_state_dict,
    to_jsonable,
)
from mdm_jax.convert.readers import SourceCheckpoint, read_checkpoint
from mdm_jax.convert.torch_pickle import CheckpointFormatError, UnsafePickleError

FORMAT = "mdm_jax.converted/1"
DTYPES = {"float32": np.float32, "bfloat16": jnp.bfloat16, "float16": np.float16}


@dataclasses.dataclass
class ConversionResult:
    out_dir: epath.Path
    model: ml_collections.ConfigDict
    diffusion: ml_collections.ConfigDict
    report: ConversionReport
    fresh_init: list[str]
    num_params: int
    notes: list[str]


def sha256_file(path: Path, chunk: int = 1 << 23) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _inputs(spec: Any, concrete: bool) -> tuple[list[Any], Any, Any, Any, Any]:
    """Batch-1 dummy inputs for ``model.init`` (ShapeDtypeStructs for eval_shape, zeros for a real init)."""
    make = (lambda shape, dt: jnp.zeros(shape, dt)) if concrete else jax.ShapeDtypeStruct
    xs = [make((1, lvl.resolution, lvl.resolution, lvl.input_channels), jnp.float32) for lvl in spec.levels]
    text = ((make((1, 2, spec.innermost.input_cond_dim), jnp.float32), make((1, 2), jnp.float32))
            if spec.uses_text else (None, None))
    labels = make((1,), jnp.int32) if spec.innermost.num_classes else None
    return xs, make((1,), jnp.float32), text[0], text[1], labels


def param_shapes(model: Any, spec: Any) -> Any:
    """The parameter tree as ShapeDtypeStructs; nothing is allocated."""
    xs, t, lm, mask, labels = _inputs(spec, concrete=False)
    return jax.eval_shape(lambda *a: model.init(jax.random.PRNGKey(0), *a), xs, t, lm, mask, labels)["params"]


@functools.lru_cache(maxsize=8)
def _shapes_for(spec: Any) -> Any:
    """``param_shapes`` per (hashable) spec: tracing a large model takes seconds, and the tree only depends on it."""
    from mdm_jax.models import build_model

    return param_shapes(build_model(spec), spec)


def fresh_init(model: Any, spec: Any, paths: Sequence[tuple[str, ...]], seed: int) -> dict:
    """Fresh initial values of only ``paths`` (jit prunes the rest of the init)."""
    if not paths:
        return {}
    xs, t, lm, mask, labels = _inputs(spec, concrete=True)

    def init(rng: jax.Array) -> dict:
        flat = traverse_util.flatten_dict(model.init(rng, xs, t, lm, mask, labels)["params"])
        return {"/".join(p): flat[p] for p in paths}

    values = jax.jit(init)(jax.random.PRNGKey(seed))
    return traverse_util.unflatten_dict({tuple(k.split("/")): np.asarray(v) for k, v in values.items()})


def plan(state_dict: dict[str, np.ndarray], shapes: Any) -> tuple[list[tuple[str, ...]], list[str]]:
    """Leaves the checkpoint cannot fill (missing or mis-shaped key) and the mis-shape messages, without copying
    any tensor (shapes are checked on zero-stride views)."""
    need, misshaped = [], []
    for path, leaf in traverse_util.flatten_dict(shapes).items():
        key = torch_key(path)
        if key not in state_dict:
            need.append(path)
            continue
        probe = np.broadcast_to(np.zeros((), np.float32), np.shape(state_dict[key]))
        try:
            to_flax_layout(probe, tuple(leaf.shape), key)
        except ConversionError as e:
            need.append(path)
            misshaped.append(str(e))
    return need, misshaped


def _config_for(ckpt: SourceCheckpoint, config: str | None, resolution: int | None,
                phase: int = -1) -> DecodedConfig:
    if config:
        decoded = load_config_file(config, resolution=resolution, phase=phase)
        if ckpt.args is not None:
            decoded.notes.insert(0, f"using --config {config}; the checkpoint's own config ({ckpt.args_source}) "
                                    f"was not used")
        return decoded
    if ckpt.args is None:
        raise ConfigDecodeError(
            f"{ckpt.path}: the file carries no config (no pickled args, no sidecar args.json/config.json); pass "
            f"--config with a JSON file, a configs/*.py[:arg] file or an architecture name such as S64S256")
    return decode_config(ckpt.args, ckpt.args_source or str(ckpt.path), resolution)


def _write_json_atomic(path: epath.Path, obj: Any) -> None:
    io_paths.write_text(path, json.dumps(obj, indent=1) + "\n")


def convert_checkpoint(source: str | Path, out_dir: str | Path, *, config: str | None = None,
                       resolution: int | None = None, strict: bool = True, dtype: str = "float32",
                       stub_classes: Sequence[str] = (), seed: int = 0, overwrite: bool = False,
                       log: Callable[[str], None] = print, phase: int = -1) -> ConversionResult:
    """Convert one ml-mdm checkpoint into ``out_dir`` (see the module docstring); raises on any problem."""
    from mdm_jax import __version__
    from mdm_jax.diffusion import DiffusionSpec
    from mdm_jax.models import build_model, spec_from_config

    if dtype not in DTYPES:
        raise ValueError(f"--dtype: expected one of {sorted(DTYPES)}, got {dtype!r}")
    out_dir = epath.Path(io_paths.resolve(out_dir))  # local or gs://...
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{out_dir}: exists and is not empty (pass --overwrite to replace it)")

    ckpt = read_checkpoint(source, stub_classes=stub_classes)
    decoded = _config_for(ckpt, config, resolution, phase)
    notes = ckpt.notes + decoded.notes
    notes += reconcile_with_state_dict(decoded.model, {k: np.shape(v) for k, v in ckpt.state_dict.items()})
    spec = spec_from_config(decoded.model)
    try:
        DiffusionSpec.from_config(decoded.diffusion)
    except (TypeError, ValueError) as e:
        raise ConfigDecodeError(f"diffusion config: {e}") from e
    model = build_model(spec)
    shapes = _shapes_for(spec)

    need, misshaped = plan(ckpt.state_dict, shapes)
    if strict:
        params, report = convert_state_dict(ckpt.state_dict, shapes, spec, strict=True)
        filled: list[str] = []
    else:
        bad = {m.split(":", 1)[0] for m in misshaped}
        state_dict = {k: v for k, v in ckpt.state_dict.items() if k not in bad}
        fill = fresh_init(model, spec, need, seed)
        params, report = convert_state_dict(state_dict, shapes, spec, strict=False, fill=fill)
        report.missing = [k for k in report.missing if k not in bad]
        report.mismatched = misshaped
        filled = [torch_key(p) for p in need]
    cast = DTYPES[dtype]
    # Leaves may still be (transposed) views of the memory-mapped file: Orbax makes the one copy it writes.
    params = jax.tree.map(lambda x: x if x.dtype == cast else x.astype(cast), params)
    num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))

    log(report.summary())
    for key in filled:
        log(f"  fresh init (seed {seed}): {key}")
    for note in notes:
        log(f"note: {note}")
    log(f"parameters: {num_params:,} in {len(jax.tree.leaves(shapes))} tensors; resolutions "
        f"{list(spec.resolutions)}; stored as {dtype}")

    import orbax.checkpoint as ocp

    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in (out_dir / "config.json", out_dir / "params"):  # only reached when empty or --overwrite
        if stale.is_dir():
            stale.rmtree()
        elif stale.exists():
            stale.unlink()
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(out_dir / "params", {"params": params})
    checkpointer.wait_until_finished()

    provenance = {
        "converter": f"mdm_jax {__version__} (mdm_jax.convert)",
        "source": str(Path(source).absolute()),
        "source_format": ckpt.format,
        "sha256": sha256_file(Path(source)),
        "size_bytes": Path(source).stat().st_size,
        "config_source": decoded.source,
        "mlmdm_model": decoded.model_name,
        "strict": strict,
        "dtype": dtype,
        "num_params": num_params,
        "num_tensors": len(jax.tree.leaves(shapes)),
        "report": {
            "ok": report.ok,
            "loaded": len(report.loaded),
            "missing": report.missing,
            "unexpected": report.unexpected,
            "mismatched": report.mismatched,
            "unused_by_forward": report.unused,
            "fresh_init": filled,
            "fresh_init_seed": seed if filled else None,
        },
        "notes": notes,
        "checkpoint_items": to_jsonable(ckpt.extras),
        "mlmdm_args": to_jsonable(ckpt.args) if ckpt.args is not None else None,
    }
    _write_json_atomic(out_dir / "config.json", {
        "format": FORMAT,
        "model": decoded.model.to_dict(),
        "diffusion": decoded.diffusion.to_dict(),
        "provenance": provenance,
    })
    log(f"wrote {out_dir / 'params'} and {out_dir / 'config.json'}")
    return ConversionResult(out_dir, decoded.model, decoded.diffusion, report, filled, num_params, notes)


def load_converted(directory: str | Path) -> tuple[ml_collections.ConfigDict, ml_collections.ConfigDict, dict]:
    """``(model_config, diffusion_config, params)`` of a converted checkpoint; params are host NumPy arrays.

    ``build_model(model_config)`` and ``DiffusionSpec.from_config(diffusion_config)`` accept the configs as they
    are; ``config.json``'s ``provenance`` says where the weights came from.
    """
    import orbax.checkpoint as ocp

    directory = epath.Path(io_paths.resolve(directory))
    cfg_path = directory / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{directory}: no config.json; not a (complete) converted checkpoint -- run "
                                f"python -m mdm_jax.convert --from-mlmdm <vis_model.pth> --out {directory}")
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("format") != FORMAT:
        raise ValueError(f"{cfg_path}: format {cfg.get('format')!r}, expected {FORMAT!r}")
    restored = ocp.StandardCheckpointer().restore(directory / "params")
    return (ml_collections.ConfigDict(cfg["model"]), ml_collections.ConfigDict(cfg["diffusion"]),
            restored["params"])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mdm_jax.convert",
                                description="Convert an ml-mdm (PyTorch) checkpoint into an mdm-jax Orbax checkpoint.")
    p.add_argument("--from-mlmdm", required=True, metavar="FILE",
                   help="ml-mdm checkpoint: vis_model.pth (torch zip), .npz or .safetensors (flat ml-mdm keys)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (DIR/params, DIR/config.json)")
    p.add_argument("--config", metavar="CFG",
                   help="model/diffusion config when the file has none (or to override its args): a JSON file, "
                        "a configs/*.py[:arg] file, or an architecture name (S64, S64S256, ...)")
    p.add_argument("--resolution", type=int, help="outermost input size, when the config does not say")
    p.add_argument("--phase", type=int, default=-1,
                   help="with a training --config (configs/*.py with phases): the phase whose model to use "
                        "(index, default -1: the last)")
    p.add_argument("--no-strict", dest="strict", action="store_false",
                   help="convert despite missing/unexpected/mis-shaped keys; missing leaves get a fresh init and "
                        "are listed")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="storage dtype of the parameters")
    p.add_argument("--seed", type=int, default=0, help="seed of the fresh init used with --no-strict")
    p.add_argument("--stub-class", action="append", default=[], metavar="MODULE.NAME",
                   help="also accept this pickled class (fnmatch pattern) as an inert attribute bag")
    p.add_argument("--overwrite", action="store_true", help="replace an existing, non-empty --out folder")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry; returns the exit status (0 ok, 1 conversion failed, 2 bad input)."""
    args = build_parser().parse_args(argv)
    try:
        convert_checkpoint(args.from_mlmdm, args.out, config=args.config, resolution=args.resolution,
                           strict=args.strict, dtype=args.dtype, stub_classes=args.stub_class, seed=args.seed,
                           overwrite=args.overwrite, phase=args.phase)
    except ConversionError as e:
        print(f"error: {e}\n(nothing written; --no-strict converts anyway and lists what was filled)",
              file=sys.stderr)
        return 1
    except (FileNotFoundError, FileExistsError, CheckpointFormatError, UnsafePickleError, ConfigDecodeError,
            ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
