"""Ablation results -> curves over images seen, a markdown table and README's marked block (issue 9 item 4).

Pure bookkeeping on what the runs wrote, no JAX: each run directory holds ``eval/step_XXXXXXXX.json`` (the
periodic eval, ``mdm_jax.evaluation.run``) and ``ablation_run.json`` (written by ``benchmarks/ablations.py``:
variant, seed, parameter count, images seen per step, training wall-clock). Over seeds a number is reported as
the mean and its spread (min..max); a variant whose mean training wall-clock is more than ``tolerance`` away from
the study's reference variant is flagged, since the paper's comparisons are at equal compute.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from collections.abc import Sequence
from typing import Any

BEGIN, END = "<!-- ablations:begin -->", "<!-- ablations:end -->"


@dataclasses.dataclass(frozen=True)
class Metric:
    """One curve: ``levels[res][space]['samples'][name]`` of the eval JSONs (the floor from ``['floor']``)."""

    res: str
    space: str
    name: str
    lower_is_better: bool = True

    @property
    def label(self) -> str:
        return f"{self.name} @ {self.res}"

    def read(self, result: dict[str, Any], part: str = "samples") -> float | None:
        try:
            return float(result["levels"][self.res][self.space][part][self.name])
        except KeyError:
            return None


@dataclasses.dataclass
class Run:
    """One variant x seed: its eval points (images seen -> eval JSON) and its bookkeeping."""

    variant: str
    seed: int
    info: dict[str, Any]
    evals: dict[int, dict[str, Any]]  # images seen -> eval result


def images_at(step: int, phases: Sequence[dict[str, int]]) -> int:
    """Images seen after global ``step``: every phase's batch x the steps of it done by then."""
    seen, start = 0, 0
    for p in phases:
        seen += int(p["batch_size"]) * max(0, min(step - start, int(p["steps"])))
        start += int(p["steps"])
    return seen


def load_run(run_dir: str) -> Run:
    """A finished run directory -> ``Run`` (raises naming the file when the bookkeeping is missing)."""
    path = os.path.join(run_dir, "ablation_run.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: the run has not finished (rerun benchmarks/ablations.py)")
    with open(path) as f:
        info = json.load(f)
    evals = {}
    for p in sorted(glob.glob(os.path.join(run_dir, "eval", "step_*.json"))):
        with open(p) as f:
            res = json.load(f)
        evals[images_at(int(res["step"]), info["phases"])] = res
    return Run(str(info["variant"]), int(info["seed"]), info, evals)


def spread(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, min, max) of the seeds' values."""
    vals = [float(v) for v in values]
    if not vals:
        return float("nan"), float("nan"), float("nan")
    return sum(vals) / len(vals), min(vals), max(vals)


def curve(runs: Sequence[Run], metric: Metric, part: str = "samples") -> list[tuple[int, float, float, float, int]]:
    """[(images seen, mean, min, max, number of seeds)] over the eval points where any seed has the metric."""
    points: dict[int, list[float]] = {}
    for r in runs:
        for seen, res in r.evals.items():
            v = metric.read(res, part)
            if v is not None:
                points.setdefault(seen, []).append(v)
    return [(seen, *spread(vs), len(vs)) for seen, vs in sorted(points.items())]


def final(runs: Sequence[Run], metric: Metric, part: str = "samples") -> tuple[float, float, float, int]:
    """The metric at each seed's last eval point, (mean, min, max, seeds)."""
    vals = []
    for r in runs:
        if r.evals:
            v = metric.read(r.evals[max(r.evals)], part)
            if v is not None:
                vals.append(v)
    return (*spread(vals), len(vals))


def wallclock_flag(value: float, reference: float, tolerance: float = 0.1) -> str:
    """'' when within ``tolerance`` (relative) of the reference, else '+23%' / '-15%'."""
    if not (reference > 0 and value == value):
        return "?"
    rel = value / reference - 1.0
    return "" if abs(rel) <= tolerance else f"{rel:+.0%}"


def _fmt(mean: float, lo: float, hi: float, n: int, digits: int = 3) -> str:
    if n == 0 or mean != mean:
        return "-"
    if n == 1:
        return f"{mean:.{digits}g}"
    return f"{mean:.{digits}g} ({lo:.{digits}g}..{hi:.{digits}g})"


def study_table(title: str, variants: Sequence[str], runs: Sequence[Run], metrics: Sequence[Metric],
                reference: str, tolerance: float = 0.1) -> str:
    """One study as markdown: a row per variant, final metrics as mean (min..max over seeds), the floor, params,
    images seen, training wall-clock and its flag against the reference variant."""
    by_variant = {v: [r for r in runs if r.variant == v] for v in variants}
    ref_wall = spread([r.info["train_seconds"] for r in by_variant.get(reference, [])])[0]
    head = ["variant", "seeds", "params", "images seen"] + [m.label for m in metrics] + [
        "train wall-clock s (min..max)", f"vs {reference} (±{tolerance:.0%})"]
    lines = [f"**{title}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v in variants:
        rs = by_variant[v]
        if not rs:
            lines.append(f"| {v} | (not run) |" + " |" * (len(head) - 2))
            continue
        seeds = ",".join(str(r.seed) for r in sorted(rs, key=lambda r: r.seed))
        params = sorted({int(r.info["params"]) for r in rs})
        seen = sorted({int(r.info["images_seen"]) for r in rs})
        cells = [v, seeds, "/".join(f"{p:,}" for p in params), "/".join(f"{s:,}" for s in seen)]
        for m in metrics:
            cells.append(_fmt(*final(rs, m)))
        wall = spread([r.info["train_seconds"] for r in rs])
        cells.append(_fmt(*wall, len(rs), digits=4))
        flag = wallclock_flag(wall[0], ref_wall, tolerance)
        cells.append("ref" if v == reference else (flag or "ok"))
        lines.append("| " + " | ".join(cells) + " |")
    floors = []
    for m in metrics:
        fl = final([r for rs in by_variant.values() for r in rs], m, part="floor")
        if fl[3]:
            floors.append(f"{m.label} {fl[0]:.3g}")
    if floors:
        lines += ["", "Real-vs-real floor (same N): " + ", ".join(floors) + "."]
    return "\n".join(lines)


def replace_block(readme: str, block: str) -> str:
    """README text with the part between the ablation markers replaced by ``block``."""
    i, j = readme.find(BEGIN), readme.find(END)
    if i < 0 or j < i:
        raise ValueError(f"README has no '{BEGIN}' ... '{END}' block to fill")
    return readme[:i + len(BEGIN)] + "\n" + block.strip() + "\n" + readme[j:]


def plot_study(path: str, title: str, variants: Sequence[str], runs: Sequence[Run], metric: Metric) -> None:
    """PNG of ``metric`` against images seen: per variant the mean over seeds, a min..max band, the floor dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=110)
    for i, v in enumerate(variants):
        pts = curve([r for r in runs if r.variant == v], metric)
        if not pts:
            continue
        x = [p[0] for p in pts]
        nseeds = max(p[4] for p in pts)
        (line,) = ax.plot(x, [p[1] for p in pts], marker="o", ms=3, label=f"{v} ({nseeds} seed{'s' * (nseeds > 1)})",
                          color=f"C{i}")
        ax.fill_between(x, [p[2] for p in pts], [p[3] for p in pts], color=line.get_color(), alpha=0.2, lw=0)
    fl = final(list(runs), metric, part="floor")
    if fl[3]:
        ax.axhline(fl[0], color="gray", ls="--", lw=1, label="real-vs-real floor")
    if metric.name.startswith("FD") or metric.name == "FID":  # positive, spans decades early in training
        ax.set_yscale("log")
    ax.set_xlabel("images seen")
    ax.set_ylabel(metric.label)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.png"
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
