"""The ablation harness (issue 9 item 4): the table/curve maths on synthetic eval JSONs, the configs' equal-compute
bookkeeping, and the real command end to end at a seconds-long size."""

import json
import os
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from mdm_jax.evaluation import ablation_report as report
from mdm_jax.training import config_lib, model_fn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FD = "FD_classifier"
M_FD = report.Metric("32px", FD, FD)
M_ACC = report.Metric("32px", FD, "cond_accuracy", False)


def _eval_json(step: int, fd: float, acc: float, floor_fd: float = 0.5, res: str = "32px") -> dict:
    return {"step": step, "levels": {res: {FD: {"samples": {FD: fd, "cond_accuracy": acc},
                                               "floor": {FD: floor_fd, "cond_accuracy": 0.9}}}},
            "seconds": {"total": 1.0}}


def _fake_run(root, variant, seed, fds, accs, train_s, phases=((8, 10),), every=5, params=1000):
    d = root / f"{variant}-s{seed}"
    (d / "eval").mkdir(parents=True)
    ph = [{"name": str(i), "batch_size": b, "steps": s} for i, (b, s) in enumerate(phases)]
    total = sum(s for _, s in phases)
    for k, (fd, acc) in enumerate(zip(fds, accs, strict=True)):
        step = every * (k + 1)
        (d / "eval" / f"step_{step:08d}.json").write_text(json.dumps(_eval_json(step, fd, acc)))
    info = {"variant": variant, "seed": seed, "phases": ph, "images_seen": report.images_at(total, ph),
            "params": params, "train_seconds": train_s}
    (d / "ablation_run.json").write_text(json.dumps(info))
    return report.load_run(str(d))


def test_images_at_counts_every_phase():
    phases = [{"batch_size": 8, "steps": 10}, {"batch_size": 4, "steps": 20}]
    assert report.images_at(0, phases) == 0
    assert report.images_at(6, phases) == 48
    assert report.images_at(10, phases) == 80
    assert report.images_at(15, phases) == 80 + 20
    assert report.images_at(30, phases) == 80 + 80
    assert report.images_at(99, phases) == 160  # never past the last phase


def test_curves_and_table_over_seeds(tmp_path):
    runs = [
        _fake_run(tmp_path, "nested", 0, [4.0, 2.0], [0.5, 0.7], 100.0),
        _fake_run(tmp_path, "nested", 1, [6.0, 3.0], [0.3, 0.5], 110.0),
        _fake_run(tmp_path, "single", 0, [8.0, 5.0], [0.2, 0.4], 130.0),
        _fake_run(tmp_path, "single", 1, [9.0, 6.0], [0.1, 0.2], 140.0),
        # progressive: 2 phases, same images seen (8 x 5 + 8 x 5), eval points at the same steps
        _fake_run(tmp_path, "progressive", 0, [7.0, 1.0], [0.6, 0.8], 104.0, phases=((8, 5), (8, 5))),
    ]
    c = report.curve([r for r in runs if r.variant == "nested"], M_FD)
    assert c == [(40, 5.0, 4.0, 6.0, 2), (80, 2.5, 2.0, 3.0, 2)]
    assert report.final([r for r in runs if r.variant == "single"], M_ACC) == pytest.approx((0.3, 0.2, 0.4, 2))
    assert report.final(runs, M_FD, part="floor")[0] == 0.5
    table = report.study_table("t", ["nested", "single", "progressive", "absent"], runs, [M_FD, M_ACC], "nested")
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines() if line.startswith("| ")}
    # mean (min..max) over seeds at the last eval point
    assert "| 2.5 (2..3) | 0.6 (0.5..0.7) |" in rows["nested"]
    assert "| 5.5 (5..6) | 0.3 (0.2..0.4) |" in rows["single"]
    assert "| 1 | 0.8 |" in rows["progressive"]
    # wall-clock: nested mean 105 is the reference; single 135 is +29% (flagged), progressive 104 within 10%
    assert rows["nested"].endswith("| ref |") and rows["single"].endswith("| +29% |")
    assert rows["progressive"].endswith("| ok |") and "| 104 |" in rows["progressive"]
    assert "(not run)" in rows["absent"]
    assert all("| 80 |" in rows[v] for v in ("nested", "single", "progressive"))
    assert "Real-vs-real floor (same N): FD_classifier @ 32px 0.5, cond_accuracy @ 32px 0.9." in table


def test_wallclock_flag_and_spread():
    assert report.wallclock_flag(109.0, 100.0) == ""
    assert report.wallclock_flag(91.0, 100.0) == ""
    assert report.wallclock_flag(111.0, 100.0) == "+11%"
    assert report.wallclock_flag(85.0, 100.0) == "-15%"
    assert report.wallclock_flag(120.0, 100.0, tolerance=0.25) == ""
    assert report.spread([1.0, 2.0, 6.0]) == (3.0, 1.0, 6.0)


def test_readme_block():
    text = f"intro\n{report.BEGIN}\nold table\n{report.END}\nrest\n"
    new = report.replace_block(text, "| new |")
    assert new == f"intro\n{report.BEGIN}\n| new |\n{report.END}\nrest\n"
    assert report.replace_block(new, "x").count("| new |") == 0
    with pytest.raises(ValueError, match="ablations:begin"):
        report.replace_block("no markers", "x")
    # The repository README carries the block the harness fills.
    with open(os.path.join(REPO, "README.md")) as f:
        readme = f.read()
    assert readme.index(report.BEGIN) < readme.index(report.END)


def _params(model_config) -> int:
    m = model_fn.build(model_config)
    p = jax.eval_shape(lambda k: m.init(k, {"labels": np.zeros((1,), np.int32)}), jax.random.key(0))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(p))


@pytest.mark.parametrize("scale", ["1", "0.01"])
def test_fmnist_variants_equal_images_and_matching_size(scale):
    cfgs = {v: config_lib.load(f"{REPO}/configs/ablation_fmnist.py:{v},scale={scale}")
            for v in ("nested", "single", "progressive")}
    seen = {v: sum(p.batch_size * p.steps for p in c.phases) for v, c in cfgs.items()}
    assert len(set(seen.values())) == 1, seen
    every = {v: c.eval.every_steps for v, c in cfgs.items()}
    assert len(set(every.values())) == 1 and all(c.phases[0].batch_size == cfgs["nested"].phases[0].batch_size
                                                 for c in cfgs.values())
    total = sum(p.steps for p in cfgs["nested"].phases)
    assert total % every["nested"] == 0  # the last eval falls on the last step
    prog = cfgs["progressive"]
    assert prog.phases[0].steps % every["nested"] == 0 and dict(prog.phases[1].init_from) == {"unet/inner_unet": "unet"}
    if scale == "1":  # the models do not depend on the scale
        n, s = _params(cfgs["nested"].phases[0].model), _params(cfgs["single"].phases[0].model)
        assert abs(s / n - 1) < 0.1, (n, s)
        assert _params(prog.phases[1].model) == n


def test_config_args_are_checked():
    with pytest.raises(ValueError, match="not one of"):
        config_lib.load(f"{REPO}/configs/ablation_fmnist.py:deep")
    with pytest.raises(ValueError, match="scale=<float>"):
        config_lib.load(f"{REPO}/configs/ablation_emoji.py:3,depth=2")
    c = config_lib.load(f"{REPO}/configs/ablation_emoji.py:2,scale=0.1,evals=2")
    assert c.phases[0].steps == 80 and c.eval.every_steps == 40
    assert c.phases[0].model.inner_config.resolution == 16  # 64 around 16 directly


def _harness(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "benchmarks/ablations.py", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)


def test_missing_emoji_data_is_one_line(tmp_path):
    p = _harness("--study", "c", "--seeds", "0", "--out", str(tmp_path), "--emoji_data_dir", str(tmp_path / "x"))
    assert p.returncode != 0
    assert "emoji data not found" in p.stderr and "prepare_emoji" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.slow
def test_ablation_command_end_to_end(tmp_path):
    """Study (a) at seconds-long size through the real command: both variants trained by the real trainer, eval
    points at equal images seen, table + plots + README block; a rerun skips the finished runs.

    Slow: two trainer processes, each compiling its train step and sampler (measured on 2 shared cores: 254 s
    cold at load 6.5, of which 120 s train-step compiles and ~40 s Fashion-MNIST loading; 107 s with a warm
    compilation cache)."""
    from mdm_jax.evaluation import classifier

    clf = str(tmp_path / "clf")
    classifier.train(config_lib.load(f"{REPO}/configs/fashion_mnist.py"), clf, steps=5, batch_size=16, width=8,
                     feature_dim=16, num_test=50)
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{report.BEGIN}\n{report.END}\n")
    out = tmp_path / "out"
    args = ["--study", "a", "--seeds", "0", "--out", str(out), "--steps_scale", "0.0034", "--num_evals", "2",
            "--width", "8", "--fmnist_classifier", clf, "--readme", str(readme),
            "--set", "eval.num_samples=20", "--set", "eval.num_reference=20", "--set", "eval.batch_size=20",
            "--set", "eval.num_steps=2", "--set", "eval.kid_subsets=2", "--set", "eval.kid_subset_size=10"]
    p = _harness(*args)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    infos = {v: json.load(open(out / "runs" / f"fmnist-{v}-s0" / "ablation_run.json")) for v in ("nested", "single")}
    # equal images seen: batch 32 x 4 steps, eval at steps 2 and 4 in both
    assert infos["nested"]["images_seen"] == infos["single"]["images_seen"] == 32 * 4
    assert infos["nested"]["eval_steps"] == infos["single"]["eval_steps"] == [2, 4]
    for info in infos.values():
        assert info["train_seconds"] > 0 and info["params"] > 0
    assert abs(infos["single"]["params"] / infos["nested"]["params"] - 1) < 0.1
    md = (out / "ablations.md").read_text()
    assert "| nested | 0 | " in md and "| single | 0 | " in md and "| 128 |" in md
    assert md.strip() in readme.read_text()
    for name in ("32px_FD_classifier", "32px_cond_accuracy", "16px_FD_classifier"):
        png = out / "plots" / f"study_a_{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    t0 = time.time()
    again = _harness(*args)
    assert again.returncode == 0 and again.stdout.count("finished earlier, skipped") == 2
    assert time.time() - t0 < 60
