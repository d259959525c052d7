r"""The README's TPU plan table: every phase of every paper config at its global batch, compiled (compile-only,
no TPU) for growing v5p and v6e slices until it fits, next to the paper's reported A100 cost (Table 3).

  python benchmarks/compile_plans.py                  # all configs, both chips, into benchmarks/tpu_plans (slow)
  python benchmarks/compile_plans.py --chips v5p --configs imagenet64

Each compile runs ``python -m mdm_jax.main --mode=compile`` in its own process (train step only:
``--config.compile.sampler=False``) and leaves its JSON in ``--out``; a rerun reuses those files. Phases that are
the same in several configs (the 64 phase of cc12m_64/256/1024) are compiled once. Needs libtpu
(``pip install -e '.[tpu]'``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Slices from small to large: (libtpu topology, Cloud TPU accelerator type).
CHIP_HBM = {"v5p": 95.74 * 2**30, "v6e": 32e9}  # what XLA:TPU allows per chip (mdm_jax.training.compile_plan.CHIPS)
SLICES = {
    "v5p": [("2x2x1", "v5p-8"), ("2x2x2", "v5p-16"), ("2x2x4", "v5p-32"), ("2x4x4", "v5p-64"), ("4x4x4", "v5p-128")],
    "v6e": [("2x2", "v6e-4"), ("2x4", "v6e-8"), ("4x4", "v6e-16"), ("4x8", "v6e-32"), ("8x8", "v6e-64"),
            ("8x16", "v6e-128"), ("16x16", "v6e-256")],
}
# (config, phase) -> the (config, phase) whose compile it shares (same model, batch, data and text encoder).
SAME = {("imagenet256", "64"): ("imagenet64", "64"), ("cc12m_256", "64"): ("cc12m_64", "64"),
        ("cc12m_1024", "64"): ("cc12m_64", "64"), ("cc12m_1024", "256"): ("cc12m_256", "256")}
CONFIG_PHASES = {"imagenet64": ["64"], "imagenet256": ["64", "256"], "cc12m_64": ["64"],
                 "cc12m_256": ["64", "256"], "cc12m_1024": ["64", "256", "1024"]}
# Paper Table 3 (all on 4x8 = 32 A100s): samples/GPU, iterations, seconds/iteration; keyed by (config, phase).
PAPER = {("imagenet64", "64"): ("INet 64", 64, 100_000, 1.01),
         ("imagenet256", "256"): ("INet 64->256", 32, 375_000, 1.21),
         ("cc12m_64", "64"): ("CC 64", 64, 500_000, 1.14),
         ("cc12m_256", "256"): ("CC 64->256", 32, 500_000, 1.38),
         ("cc12m_1024", "1024"): ("CC 256->1024", 12, 100_000, 1.88)}


# Memory levers tried, in order, on a chip's largest slice when a phase fits none of its slices as configured
# (name, overrides): the paper's global batch is kept; the table names the lever a row needed.
LEVERS = {"remat": ("--config.model.remat=True",),
          "remat+fsdp8": ("--config.model.remat=True", "--config.mesh.fsdp=8")}


def _stem(config: str, phase: str, chip: str, topo: str, lever: str = "") -> str:
    return f"{config}_{phase}_{chip}_{topo}" + (f"_{lever.replace('+', '_')}" if lever else "")


def compile_one(config: str, phase: str, chip: str, topo: str, out: Path, timeout: int,
                cached_only: bool = False, lever: str = "") -> dict | None:
    stem = _stem(config, phase, chip, topo, lever)
    path = out / f"{stem}.json"
    if not path.exists() and cached_only:
        return None
    if not path.exists():
        cmd = [sys.executable, "-m", "mdm_jax.main", "--mode=compile", f"--config=configs/{config}.py",
               f"--config.compile.phases={phase}", f"--config.compile.topology={chip}:{topo}",
               "--config.compile.sampler=False", f"--config.compile.output={path}", *LEVERS.get(lever, ())]
        t = time.time()
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        log = out / f"{stem}.log"
        log.write_text(proc.stdout + "\n" + proc.stderr)
        print(f"  {config}/{phase} on {chip}:{topo}{' with ' + lever if lever else ''}: exit {proc.returncode} "
              f"after {time.time() - t:.0f} s ({log})", flush=True)
        if not path.exists():
            return None
    (plan,) = json.loads(path.read_text())
    return plan


def _chips(topo: str) -> int:
    return math.prod(int(v) for v in topo.split("x"))


def _predicted_total(plan: dict, topo: str) -> float:
    """Per-chip bytes on another slice, scaled from a compiled plan: activations split over all chips (data
    parallel); the state splits too when FSDP spans every chip, else it stays whole. A guide for where to compile
    next, never a table entry."""
    chips = _chips(topo)
    state = plan["params"] + plan["opt_state"] + plan["ema"] + plan["frozen"]
    fsdp = plan["mesh"].get("fsdp", 1)
    state_new = state * fsdp / chips if fsdp == plan["devices"] else state
    return state_new + (plan["total"] - state) * plan["devices"] / chips


def smallest_fit(config: str, phase: str, chip: str, out: Path, timeout: int, cached_only: bool = False,
                 hint: dict | None = None) -> tuple[dict | None, str]:
    """Compile on growing slices until one fits. Each compiled plan predicts (``_predicted_total``) which larger
    slice will fit, and the slices in between are skipped; so is the start when ``hint`` (the same phase compiled
    for another chip, else any slice of this chip already compiled) predicts it. The returned note names the
    smaller slices that were only predicted not to fit, so the README says which rows rest on a compile and which
    on a scaled estimate."""
    slices = SLICES[chip]
    if hint is None:  # a plan already compiled for any slice of this chip predicts the others just as well
        cached = [out / f"{config}_{phase}_{chip}_{topo}.json" for topo, _ in slices]
        hint = next((json.loads(p.read_text())[0] for p in cached if p.exists()), None)
    last, skipped, basis, i = None, [], hint, 0
    while i < len(slices):
        topo, name = slices[i]
        compiled_before = (out / f"{config}_{phase}_{chip}_{topo}.json").exists()
        if basis is not None and not compiled_before and i + 1 < len(slices):
            predicted = _predicted_total(basis, topo)
            if predicted > CHIP_HBM[chip]:
                skipped.append(f"{name} ~{predicted / 2**30:.0f} GiB")
                i += 1
                continue
        plan = compile_one(config, phase, chip, topo, out, timeout, cached_only)
        if plan is None and cached_only:
            return last, f"not compiled yet from {name} up"
        i += 1
        if plan is None:
            continue  # e.g. the batch does not divide over the devices
        last = basis = plan
        if plan["fits"]:
            return plan, name + (f"; predicted not to fit: {', '.join(skipped)}" if skipped else "")
    topo, name = slices[-1]
    tried = None
    for lever, flags in LEVERS.items():  # fits no slice as configured: the levers, on the largest slice
        plan = compile_one(config, phase, chip, topo, out, timeout, cached_only, lever)
        if plan is not None and plan["fits"]:
            return plan, f"{name}; with {lever} ({' '.join(flags)}): as configured it fits no {chip} slice up to {name}"
        if plan is None and cached_only:
            break
        tried = lever if plan is not None else tried
    return last, f"none up to {name}" + (f", even with {tried}" if tried else "")


def gib(n: float) -> str:
    return f"{n / 2**30:.1f}"


def table(rows: list[tuple[str, str, str, dict | None, str]]) -> str:
    head = ("| config | phase | batch | steps | params | TPU slice (mesh) | GiB/chip: state + temps = total / HBM | "
            "TFLOP/step/chip | s/step XLA est. | s/step @40% MFU | img/s (XLA / 40%) | days (XLA / 40%) | "
            "paper, 32 A100 (Table 3) |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for config, phase, chip, p, slice_name in rows:
        paper = PAPER.get((config, phase))
        paper_s = "-"
        if paper:
            label, per_gpu, iters, sec = paper
            paper_s = f"{label}: batch {per_gpu * 32}, {iters // 1000}k it x {sec} s = {iters * sec / 86400:.1f} d"
        if p is None:
            lines.append(f"| {config} | {phase} | | | | {chip}: {slice_name} | | | | | | | {paper_s} |")
            continue
        state = p["params"] + p["opt_state"] + p["ema"] + p["frozen"]
        mesh = "x".join(str(v) for v in p["mesh"].values())
        name, _, note = slice_name.partition("; ")
        if p["fits"]:
            slice_name = f"{name} ({mesh})" + (f"; {note}" if note else "")
        else:
            slice_name = f"{p['topology']} ({mesh}) DOES NOT FIT; {slice_name}"
        def num(key: str, fmt: str, scale: float = 1.0, plan: dict = p) -> str:  # a refused step has no cost
            v = plan.get(key)
            return format(v / scale, fmt) if isinstance(v, (int, float)) and math.isfinite(v) else "-"

        lines.append(
            f"| {config} | {phase} ({p['resolutions']}) | {p['batch']} | {p['steps'] // 1000}k | "
            f"{p['num_parameters'] / 1e6:.0f}M | {slice_name} | {gib(state)} + {gib(p['temporaries'])} = "
            f"{gib(p['total'])} / {gib(p['hbm'])} | {num('flops', '.2f', 1e12)} | {num('step_seconds', '.3f')} | "
            f"{num('mfu_seconds', '.3f')} | {num('images_per_second_xla', ',.0f')} / "
            f"{num('images_per_second_mfu', ',.0f')} | {num('days_xla', '.1f')} / {num('days_mfu', '.1f')} | "
            f"{paper_s} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "tpu_plans"),
                    help="folder for the per-compile JSON (kept in git) and logs (ignored)")
    ap.add_argument("--chips", nargs="+", default=["v5p", "v6e"], choices=sorted(SLICES))
    ap.add_argument("--configs", nargs="+", default=list(CONFIG_PHASES), choices=list(CONFIG_PHASES))
    ap.add_argument("--timeout", type=int, default=7200, help="seconds per compile")
    ap.add_argument("--cached-only", action="store_true", help="only tabulate the plans already in --out")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, done = [], {}
    for chip in args.chips:
        for config in args.configs:
            for phase in CONFIG_PHASES[config]:
                key = SAME.get((config, phase), (config, phase))
                if (key, chip) not in done:
                    hint = next((done[key, c][0] for c in args.chips if (key, c) in done and done[key, c][0]
                                 and done[key, c][0]["fits"]), None)
                    done[key, chip] = smallest_fit(*key, chip, out, args.timeout, args.cached_only, hint)
                rows.append((config, phase, chip, *done[key, chip]))
    print(table(rows))


if __name__ == "__main__":
    main()
