"""Check this implementation against ml-mdm's golden fixtures: ``python -m mdm_jax.parity DIR``.

DIR holds ``configs.json`` and the npz files described in ``../shared/parity/README.md``. For every model there,
the model is built from its config, the weights are converted with ``mdm_jax.convert``, and outputs and
intermediate tensors are compared; schedules, losses and sampler steps/trajectories are checked by the diffusion
core's checks. Prints one line per array (max abs error, tolerance, PASS/FAIL); exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

MODEL_TOL = 1e-4  # float32, highest matmul precision; ml-mdm's own fp32-vs-fp64 spread is ~3e-6


@dataclasses.dataclass
class Check:
    fixture: str
    array: str
    max_abs_err: float
    tol: float

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.max_abs_err)) and self.max_abs_err <= self.tol

    def line(self) -> str:
        return (f"{'PASS' if self.ok else 'FAIL'}  {self.fixture:<18} {self.array:<46} "
                f"max_abs_err={self.max_abs_err:.3e}  tol={self.tol:.2e}")


def compare(fixture: str, array: str, got: Any, want: np.ndarray, tol: float) -> Check:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        return Check(fixture, f"{array} (shape {got.shape} != {want.shape})", float("inf"), tol)
    return Check(fixture, array, float(np.max(np.abs(got - want))) if got.size else 0.0, tol)


def nchw_to_nhwc(x: np.ndarray) -> np.ndarray:
    return x.transpose(0, 2, 3, 1) if x.ndim == 4 else x


@dataclasses.dataclass
class FixtureModel:
    """A fixture's model, built from its config, with weights converted from the stored state dict."""

    name: str
    config: dict
    spec: Any
    model: Any
    params: Any

    def apply_fn(self) -> Callable:
        """``apply_fn(params, xs, t, cond)``: the diffusion core's calling convention."""
        model = self.model

        def apply(params, xs, t, cond):
            return model.apply({"params": params}, list(xs), t, cond.get("lm_outputs"), cond.get("lm_mask"),
                               cond.get("labels"))

        return apply

    def model_fn(self) -> Callable:
        apply, params = self.apply_fn(), self.params
        return lambda xs, t, cond: apply(params, xs, t, cond)


def model_config(entry: dict) -> dict:
    """Our model config from a ``configs.json`` model entry: ml-mdm's unet_config plus the top resolution."""
    cfg = dict(entry["unet_config"])
    cfg["resolution"] = entry["derived"]["resolutions"][0]
    return cfg


def load_fixture_model(folder: Path, name: str, entry: dict) -> tuple[FixtureModel, Any]:
    from mdm_jax.convert.keys import convert_state_dict
    from mdm_jax.models import build_model, spec_from_config

    cfg = model_config(entry)
    spec = spec_from_config(cfg)
    model = build_model(spec)
    data = np.load(folder / entry["files"]["unet"])
    state_dict = {k[len("param/"):]: data[k] for k in data.files if k.startswith("param/")}
    xs = [jax.ShapeDtypeStruct((1, r, r, 3), jnp.float32) for r in spec.resolutions]
    text = (jax.ShapeDtypeStruct((1, 2, spec.innermost.input_cond_dim), jnp.float32),
            jax.ShapeDtypeStruct((1, 2), jnp.float32)) if spec.uses_text else (None, None)
    shapes = jax.eval_shape(lambda xs, *c: model.init(jax.random.PRNGKey(0), xs, jnp.zeros((1,)), *c), xs, *text)
    params, _ = convert_state_dict(state_dict, shapes["params"], spec)
    params = jax.tree.map(jnp.asarray, params)
    return FixtureModel(name, cfg, spec, model, params), data


def check_unet(fm: FixtureModel, data: Any, entry: dict) -> list[Check]:
    """Outputs of every level and every debug tensor of a ``unet_<name>.npz`` fixture."""
    from mdm_jax.models.capture import capture_calls

    fixture = entry["files"]["unet"]
    nlev = len(fm.spec.levels)
    xs = [jnp.asarray(nchw_to_nhwc(data[f"in/x_{i}"])) for i in range(nlev)]
    cond = {k: jnp.asarray(data[f"in/{k}"]) for k in ("lm_outputs", "lm_mask", "labels") if f"in/{k}" in data}
    debug = entry["derived"].get("debug_tensors", {})
    with capture_calls({d["module"] for d in debug.values()}) as records:
        outs, state = fm.model.apply({"params": fm.params}, xs, jnp.asarray(data["in/t"]), cond.get("lm_outputs"),
                                     cond.get("lm_mask"), cond.get("labels"), mutable=["intermediates"])
    sown = state.get("intermediates", {})
    checks = [compare(fixture, f"out/{i}", o, nchw_to_nhwc(data[f"out/{i}"]), MODEL_TOL) for i, o in enumerate(outs)]
    for key, where in debug.items():
        if key not in data.files:
            continue
        got = _debug_tensor(where, records, sown)
        if got is None:
            checks.append(Check(fixture, f"{key} (module {where['module']} not run)", float("inf"), MODEL_TOL))
            continue
        ref = data[key] if where["tensor"].startswith("softmax") else nchw_to_nhwc(data[key])  # probs: not images
        checks.append(compare(fixture, key, got, ref, MODEL_TOL))
    return checks


def _sown(sown: dict, module: str, name: str) -> Any:
    """A value ``self.sow``-n as ``name`` by the module ml-mdm calls ``module`` (``a.0.b`` -> ``a_0/b``)."""
    node = sown
    for part in _flax_path(module):
        node = node.get(part, {}) if isinstance(node, dict) else {}
    value = node.get(name) if isinstance(node, dict) else None
    return None if value is None else value[0]


def _flax_path(module: str) -> list[str]:
    out: list[str] = []
    for part in module.split("."):
        if part.isdigit() and out:
            out[-1] = f"{out[-1]}_{part}"
        else:
            out.append(part)
    return out


def _debug_tensor(where: dict, records: dict, sown: dict) -> Any:
    """The tensor a ``derived.debug_tensors`` entry names: a module's output or positional input, or a value
    inside it (attention probabilities) that the module sows."""
    kind = where["tensor"]
    if kind.startswith("softmax probabilities"):
        return _sown(sown, where["module"], "attn_probs")
    rec = records.get(where["module"])
    if rec is None:
        return None
    if kind == "output":
        out = rec["output"]
        return out[0] if isinstance(out, tuple) else out  # blocks called with return_activations
    return rec["args"][int(kind.rsplit(" ", 1)[-1])]


def _rows(fixture: str, rows: Iterable[tuple]) -> list[Check]:
    """Rows ``(array, max_abs_err, effective_tol, ok)`` of the diffusion core's checks -> ``Check``s."""
    return [Check(fixture, name, float(err), float(tol)) for name, err, tol, *_ in rows]


def run(folder: Path, only: Iterable[str] | None = None) -> list[Check]:
    folder = Path(folder)
    if not (folder / "configs.json").exists():
        raise FileNotFoundError(f"{folder}/configs.json not found: point to a folder in the ../shared/parity format")
    configs = json.loads((folder / "configs.json").read_text())
    checks: list[Check] = []
    with jax.default_matmul_precision("highest"):
        from mdm_jax.diffusion import parity as dparity

        if (folder / "schedules.npz").exists() and (not only or "schedules" in only):
            checks += _rows("schedules.npz", dparity.check_schedules(folder / "schedules.npz"))
        cases = configs.get("temporal_attention_block_cases")
        if cases and (folder / "tab.npz").exists() and (not only or "tab" in only):
            from mdm_jax.parity_blocks import check_temporal_blocks

            checks += check_temporal_blocks(folder / "tab.npz", cases)
        for name, entry in configs["models"].items():
            if only and name not in only:
                continue
            fm, data = load_fixture_model(folder, name, entry)
            checks += check_unet(fm, data, entry)
            files = entry["files"]
            if "loss" in files and (folder / files["loss"]).exists():
                checks += _rows(files["loss"], dparity.check_loss(folder / files["loss"], entry, fm.apply_fn(),
                                                                  fm.params))
            if "sampler" in files and (folder / files["sampler"]).exists():
                path = folder / files["sampler"]
                checks += _rows(files["sampler"], dparity.check_sampler_steps(path))
                checks += _rows(files["sampler"], dparity.check_trajectories(path, entry, fm.model_fn()))
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mdm_jax.parity", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="fixture folder (configs.json + npz files)")
    parser.add_argument("--only", nargs="*", help="model names (e.g. p1 p2) and/or 'schedules', 'tab'")
    parser.add_argument("--quiet", action="store_true", help="print failures and the summary only")
    args = parser.parse_args(argv)
    checks = run(args.folder, args.only)
    for c in checks:
        if not args.quiet or not c.ok:
            print(c.line())
    failed = [c for c in checks if not c.ok]
    worst = max((c.max_abs_err / c.tol for c in checks if c.tol > 0), default=0.0)
    exact = sum(c.tol == 0 for c in checks)
    print(f"{len(checks) - len(failed)}/{len(checks)} checks passed ({exact} required bit-exact); worst "
          f"error/tolerance ratio among the rest {worst:.3g}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
