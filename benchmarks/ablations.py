r"""The paper's ablations at CPU scale (issue 9 item 4): train every variant x seed, then curves, table, README.

  python benchmarks/ablations.py --study a b --seeds 0 1 --out runs/ablations              # Fashion-MNIST
  python benchmarks/ablations.py --study c --seeds 0 1 --out runs/ablations --emoji_data_dir=data/emoji
  python benchmarks/ablations.py --study a b c --seeds 0 1 --out runs/ablations --readme   # + README table
  python benchmarks/ablations.py --study a --seeds 0 --steps_scale=0.02 --out /tmp/abl_smoke  # seconds-long

Studies (configs as data: ``configs/ablation_fmnist.py``, ``configs/ablation_emoji.py``):
  a  Fashion-MNIST: MDM nested 32/16 from scratch vs a standard single-resolution 32 px UNet of matching size
  b  Fashion-MNIST: progressive (16 px phase first, then nested 32/16 grown from it) vs nested from scratch
  c  Emoji, text-conditioned: 64/32/16 vs 64/16 vs 64 alone
Each run is ``python -m mdm_jax.main`` in a subprocess (the real trainer, resumable: a rerun skips finished runs
and resumes unfinished ones from their checkpoints) with periodic eval at the same images seen in every variant.
Equal compute: every variant of a study trains the same images (batch x steps; the progressive 16 px phase
counts); the training wall-clock of each run (process time minus its evals and the train-step compilation, which
the persistent compilation cache removes for later seeds) is measured, printed and put in the
table, where variants more than 10% from the study's reference are flagged. Feature space: the in-project
classifier of each data set (``FD_classifier``, never called FID), trained here once when no
``--fmnist_classifier`` / ``--emoji_classifier`` directory is given. Results: ``OUT/ablations.md``,
``OUT/plots/*.png``, with ``--readme`` README.md's ``<!-- ablations:begin/end -->`` block.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from mdm_jax.evaluation import ablation_report as report  # noqa: E402

FD = "FD_classifier"


@dataclasses.dataclass(frozen=True)
class Study:
    key: str
    title: str
    dataset: str  # 'fmnist' | 'emoji'
    config: str
    variants: tuple[str, ...]
    reference: str
    metrics: tuple[report.Metric, ...]


FMNIST_METRICS = (report.Metric("32px", FD, FD), report.Metric("32px", FD, "cond_accuracy", False),
                  report.Metric("16px", FD, FD))
EMOJI_METRICS = (report.Metric("64px", FD, FD), report.Metric("64px", FD, "KID"),
                 report.Metric("64px", FD, "recall", False))
STUDIES = {
    "a": Study("a", "(a) Fashion-MNIST: MDM nested 32/16 vs standard 32 px UNet", "fmnist",
               "configs/ablation_fmnist.py", ("nested", "single"), "nested", FMNIST_METRICS),
    "b": Study("b", "(b) Fashion-MNIST: progressive (16 px first) vs nested from scratch", "fmnist",
               "configs/ablation_fmnist.py", ("progressive", "nested"), "nested", FMNIST_METRICS),
    "c": Study("c", "(c) Emoji, text: 64/32/16 vs 64/16 vs 64 alone", "emoji", "configs/ablation_emoji.py",
               ("3", "2", "1"), "3", EMOJI_METRICS),
}
CLASSIFIER_CONFIG = {"fmnist": "configs/fashion_mnist.py", "emoji": "configs/ablation_emoji.py:3"}
# (steps, width) of a classifier trained here: emoji has 3.6k training images at 64 px (600 steps of 128 = 21 epochs)
CLASSIFIER_SIZE = {"fmnist": (500, 16), "emoji": (600, 16)}  # fmnist: 90.0% on real test images


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study", nargs="+", choices=sorted(STUDIES), default=["a", "b"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--out", default="runs/ablations")
    p.add_argument("--steps_scale", type=float, default=1.0,
                   help="multiplies every run's steps and eval interval (1.0: 1,200 Fashion-MNIST steps, est. 7-9 "
                        "min per run with its evals on 2 free CPU cores; 0.01: a smoke run)")
    p.add_argument("--width", type=int, default=0, help="base channels of every model (0: the configs' own)")
    p.add_argument("--num_evals", type=int, default=0, help="eval points per run (0: the configs' 5)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every run, e.g. --set eval.num_samples=100 (repeatable)")
    p.add_argument("--fmnist_classifier", default="", help="classifier dir (default: OUT/classifiers/fmnist, "
                                                           "trained when missing)")
    p.add_argument("--emoji_classifier", default="")
    p.add_argument("--classifier_steps", type=int, default=0,
                   help="steps of a classifier trained here (0: 500 for Fashion-MNIST, 600 for emoji)")
    p.add_argument("--emoji_data_dir", default="data/emoji")
    p.add_argument("--nice", type=int, default=0, help="run the training subprocesses under nice -n N")
    p.add_argument("--tolerance", type=float, default=0.1, help="wall-clock flag threshold (relative)")
    p.add_argument("--readme", nargs="?", const=os.path.join(REPO, "README.md"), default="",
                   help="replace the marked ablation block of this README (default: the repository's)")
    p.add_argument("--report_only", action="store_true", help="tabulate and plot what is there, train nothing")
    return p.parse_args(argv)


def _python(args: argparse.Namespace) -> list[str]:
    return (["nice", "-n", str(args.nice)] if args.nice else []) + [sys.executable]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _data_overrides(dataset: str, args: argparse.Namespace) -> list[str]:
    return [f"--config.data.data_dir={os.path.abspath(args.emoji_data_dir)}"] if dataset == "emoji" else []


def check_data(dataset: str, args: argparse.Namespace) -> None:
    """A missing emoji folder stops here with the one line saying how to make it."""
    if dataset == "emoji" and not os.path.isfile(os.path.join(args.emoji_data_dir, "emoji_64.npy")):
        raise SystemExit(f"ablations: emoji data not found in {args.emoji_data_dir!r}: `npm pack "
                         "emoji-datasource-google@16.0.0 && tar -xzf emoji-datasource-google-16.0.0.tgz`, then "
                         f"`python -m mdm_jax.data.prepare_emoji --src package --out {args.emoji_data_dir}` "
                         "(or pass --emoji_data_dir)")


def classifier_dir(dataset: str, args: argparse.Namespace) -> str:
    """The data set's in-project classifier: the given directory, or one trained under OUT once."""
    given = args.fmnist_classifier if dataset == "fmnist" else args.emoji_classifier
    if given:
        if not os.path.isfile(os.path.join(given, "classifier.npz")):
            raise SystemExit(f"ablations: {given!r} has no classifier.npz; train one with `python -m "
                             f"mdm_jax.evaluation.classifier --config={CLASSIFIER_CONFIG[dataset]} --out={given}`")
        return os.path.abspath(given)
    out = os.path.abspath(os.path.join(args.out, "classifiers", dataset))
    if os.path.isfile(os.path.join(out, "classifier.npz")):
        return out
    os.makedirs(out, exist_ok=True)
    steps, width = CLASSIFIER_SIZE[dataset]
    steps = args.classifier_steps or steps
    cmd = _python(args) + ["-m", "mdm_jax.evaluation.classifier", f"--config={CLASSIFIER_CONFIG[dataset]}",
                           f"--out={out}", f"--steps={steps}", f"--width={width}", *_data_overrides(dataset, args)]
    print(f"[ablations] training the {dataset} classifier ({steps} steps, width {width}) -> {out}", flush=True)
    with open(os.path.join(out, "train.log"), "a") as log:
        rc = subprocess.call(cmd, cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT)
    if rc:
        raise SystemExit(f"ablations: classifier training failed (exit {rc}); see {out}/train.log")
    return out


def config_spec(study: Study, variant: str, args: argparse.Namespace) -> str:
    opts = [variant, f"scale={args.steps_scale:g}"] + ([f"width={args.width}"] if args.width else []) + (
        [f"evals={args.num_evals}"] if args.num_evals else [])
    return f"{study.config}:{','.join(opts)}"


def run_phases(spec: str, overrides: list[str]) -> list[dict[str, int]]:
    """[{batch_size, steps}] of the config the run trains (with the ``--set`` overrides that touch phases)."""
    from mdm_jax.training import config_lib

    c = config_lib.load(os.path.join(REPO, spec))
    for item in overrides:
        key, _, value = item.partition("=")
        m = re.fullmatch(r"phases\[(\d+)\]\.(batch_size|steps)", key)
        if m:
            c.phases[int(m.group(1))][m.group(2)] = int(value)
    return [{"name": str(p.name), "batch_size": int(p.batch_size), "steps": int(p.steps)} for p in c.phases]


def train_run(study: Study, variant: str, seed: int, args: argparse.Namespace, clf: str) -> str:
    """Train (or resume, or skip when finished) one variant x seed; returns its run directory."""
    run_dir = os.path.abspath(os.path.join(args.out, "runs", f"{study.dataset}-{variant}-s{seed}"))
    spec = config_spec(study, variant, args)
    settings = {"config": spec, "seed": seed, "set": list(args.set), "classifier": clf}
    done_path = os.path.join(run_dir, "ablation_run.json")
    if os.path.isfile(done_path):
        with open(done_path) as f:
            done = json.load(f)
        if done.get("settings") != settings:
            raise SystemExit(f"ablations: {run_dir} was trained with other settings ({done.get('settings')}); "
                             "use another --out")
        print(f"[ablations] {study.dataset} {variant} seed {seed}: finished earlier, skipped", flush=True)
        return run_dir
    os.makedirs(run_dir, exist_ok=True)
    attempts_path = os.path.join(run_dir, "ablation_attempts.json")
    attempts = json.load(open(attempts_path)) if os.path.isfile(attempts_path) else []
    cmd = _python(args) + ["-m", "mdm_jax.main", f"--config={spec}", f"--workdir={run_dir}",
                           f"--config.seed={seed}", f"--config.eval.classifier_path={clf}",
                           f"--config.eval.cache_dir={os.path.abspath(os.path.join(args.out, 'eval_cache'))}",
                           *_data_overrides(study.dataset, args), *[f"--config.{s}" for s in args.set]]
    print(f"[ablations] {study.dataset} {variant} seed {seed}: training ({spec}) -> {run_dir}", flush=True)
    t0 = time.time()
    with open(os.path.join(run_dir, "train.log"), "a") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n")
        log.flush()
        rc = subprocess.call(cmd, cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT)
    attempts.append({"seconds": time.time() - t0, "exit": rc})
    with open(attempts_path, "w") as f:
        json.dump(attempts, f)
    if rc:
        raise SystemExit(f"ablations: training {variant} seed {seed} failed (exit {rc}); see {run_dir}/train.log "
                         "(rerun to resume)")
    last = sum(p["steps"] for p in run_phases(spec, args.set))
    if not os.path.isdir(os.path.join(run_dir, "checkpoints", str(last))):
        raise SystemExit(f"ablations: {variant} seed {seed} stopped before its last step (a stop request?); rerun "
                         f"to resume it from {run_dir}/checkpoints")
    finish_run(run_dir, study, variant, seed, spec, settings, attempts)
    return run_dir


def finish_run(run_dir: str, study: Study, variant: str, seed: int, spec: str, settings: dict,
               attempts: list[dict]) -> None:
    """Write ``ablation_run.json``: images seen, parameters (from the trainer's log), wall-clock minus evals."""
    phases = run_phases(spec, settings["set"])
    total = sum(p["steps"] for p in phases)
    with open(os.path.join(run_dir, "train.log")) as f:
        log = f.read()
    counts = re.findall(r"([\d,]+) parameters, mesh", log)
    if not counts:
        raise SystemExit(f"ablations: no parameter count in {run_dir}/train.log")
    evals = []
    for name in sorted(os.listdir(os.path.join(run_dir, "eval"))) if os.path.isdir(
            os.path.join(run_dir, "eval")) else []:
        if name.startswith("step_"):
            with open(os.path.join(run_dir, "eval", name)) as f:
                evals.append(json.load(f))
    every = _eval_every(run_dir)
    expected = list(range(every, total + 1, every)) if every > 0 else []
    missing = sorted(set(expected) - {int(e["step"]) for e in evals})
    if missing:
        raise SystemExit(f"ablations: {run_dir} has no eval at steps {missing} (the eval failed: see train.log)")
    wall = sum(a["seconds"] for a in attempts)
    eval_seconds = sum(float(e["seconds"]["total"]) for e in evals)
    # A one-off cost that the persistent compilation cache removes for the next seed: not training compute.
    compile_seconds = sum(float(x) for x in re.findall(r"Compiled the train step of phase .* in ([\d.]+)s", log))
    info = {"variant": variant, "seed": seed, "study_dataset": study.dataset, "settings": settings,
            "phases": phases, "steps": total, "images_seen": report.images_at(total, phases),
            "params": int(counts[-1].replace(",", "")), "wall_seconds": wall, "eval_seconds": eval_seconds,
            "compile_seconds": compile_seconds, "train_seconds": wall - eval_seconds - compile_seconds,
            "attempts": len(attempts),
            "eval_steps": sorted(int(e["step"]) for e in evals)}
    tmp = os.path.join(run_dir, "ablation_run.json.tmp")
    with open(tmp, "w") as f:
        json.dump(info, f, indent=2)
    os.replace(tmp, os.path.join(run_dir, "ablation_run.json"))
    print(f"[ablations] {study.dataset} {variant} seed {seed}: {info['params']:,} params, "
          f"{info['images_seen']:,} images, train wall-clock {info['train_seconds']:.1f} s "
          f"(+ {eval_seconds:.1f} s eval, {compile_seconds:.1f} s train-step compile, {len(attempts)} attempt(s))",
          flush=True)


def _eval_every(run_dir: str) -> int:
    with open(os.path.join(run_dir, "config.json")) as f:
        return int(json.load(f)["eval"]["every_steps"])


def write_report(args: argparse.Namespace, studies: list[Study]) -> str:
    """Plots and the markdown table of every study from the run directories; returns the markdown."""
    parts = [f"Command: `python benchmarks/ablations.py --study {' '.join(s.key for s in studies)} --seeds "
             f"{' '.join(map(str, args.seeds))} --steps_scale={args.steps_scale:g}`"
             + (f" `--width={args.width}`" if args.width else "")
             + (f" `--num_evals={args.num_evals}`" if args.num_evals else "")
             + "".join(f" `--set {s}`" for s in args.set)
             + f". Numbers: mean over seeds (min..max) at the last eval point; wall-clock: the training process "
             f"minus its evals and train-step compilation (process start and data loading included), flagged when "
             f"more than {args.tolerance:.0%} from the study's reference."]
    plots_dir = os.path.join(args.out, "plots")
    for study in studies:
        runs = []
        for v in study.variants:
            for seed in args.seeds:
                d = os.path.join(args.out, "runs", f"{study.dataset}-{v}-s{seed}")
                if os.path.isfile(os.path.join(d, "ablation_run.json")):
                    runs.append(report.load_run(d))
        seen = {r.info["images_seen"] for r in runs}
        table = report.study_table(study.title, study.variants, runs, study.metrics, study.reference,
                                   args.tolerance)
        if len(seen) > 1:
            table += f"\n\nWARNING: unequal images seen across variants: {sorted(seen)}."
        pngs = []
        for m in study.metrics:
            name = f"study_{study.key}_{m.res}_{m.name}.png"
            report.plot_study(os.path.join(plots_dir, name), study.title, study.variants, runs, m)
            pngs.append(name)
        parts.append(table + "\n\nPlots: " + ", ".join(f"`plots/{p}`" for p in pngs) + ".")
    md = "\n\n".join(parts) + "\n"
    with open(os.path.join(args.out, "ablations.md"), "w") as f:
        f.write(md)
    return md


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    studies = [STUDIES[k] for k in dict.fromkeys(args.study)]
    os.makedirs(args.out, exist_ok=True)
    if not args.report_only:
        for ds in dict.fromkeys(s.dataset for s in studies):
            check_data(ds, args)
        clfs = {ds: classifier_dir(ds, args) for ds in dict.fromkeys(s.dataset for s in studies)}
        for study in studies:
            for variant in study.variants:
                for seed in args.seeds:
                    train_run(study, variant, seed, args, clfs[study.dataset])
    md = write_report(args, studies)
    print(md)
    if args.readme:
        with open(args.readme) as f:
            text = f.read()
        new = report.replace_block(text, md)
        with open(args.readme + ".tmp", "w") as f:
            f.write(new)
        os.replace(args.readme + ".tmp", args.readme)
        print(f"[ablations] README block updated: {args.readme}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
