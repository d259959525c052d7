"""Two real processes training one model through jax.distributed (gloo collectives on CPU), as on a pod.

One test, three two-process runs of ``tests/configs/micro_two_phase.py`` (phase 1: 4 steps, phase 2 grown out
of it: 8 steps): an uninterrupted reference; a run that starts from the reference's phase-1 checkpoint, grows
phase 2 and gets SIGTERM on ONE process (both must stop at the same step, save that step together and exit 0);
its restart, which must end with exactly the reference's weights. Each process feeds its own half of the global
batch and writes its own data-iterator state. Starting the second run from phase 1's checkpoint (instead of
step 0) only saves compilation: phase 1 already ran in the reference, and growth still happens in that run.
"""

from __future__ import annotations

import glob
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np

from mdm_jax.training import checkpoint as ckpt_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "tests", "configs", "micro_two_phase.py")
TOTAL = 12  # 4 + 8 steps; no periodic checkpoints (phase ends and the stop only), a log line every step
RUN_TIMEOUT = float(os.environ.get("MDM_TEST_RUN_TIMEOUT", 600))  # per run (generous: shared CI machines)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class TwoProcesses:
    """``python -m mdm_jax.main`` twice (process 0 and 1), logs in files; killed on any failure."""

    def __init__(self, workdir: str, logdir: str, tag: str):
        port = _free_port()
        # LLVM -O0: compiling is most of this test's time (and JAX's CPU cache keys differ per process, so
        # process 1 compiles in every run); the steps are tiny, so running unoptimised code costs little.
        flags = "--xla_force_host_platform_device_count=1 --xla_backend_optimization_level=0"
        env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=flags,
                   MDM_COMPILATION_CACHE=os.environ.get("MDM_TEST_CACHE", "/tmp/mdm_jax_test_cache"))
        self.logs = [os.path.join(logdir, f"{tag}.process{i}.log") for i in range(2)]
        self.procs: list[subprocess.Popen] = []
        self.tag, self.t0, self.cpu0 = tag, time.time(), _children_cpu()
        for i in range(2):
            cmd = [sys.executable, "-m", "mdm_jax.main", f"--config={CONFIG}", f"--workdir={workdir}",
                   f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}"]
            with open(self.logs[i], "w") as f:
                self.procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT))

    def log(self, i: int) -> str:
        with open(self.logs[i]) as f:
            return f.read()

    def wait_for_log(self, i: int, pattern: str, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if re.search(pattern, self.log(i)):
                return
            if any(p.poll() is not None for p in self.procs):
                break
            time.sleep(0.02)
        self.kill()
        raise AssertionError(f"process {i} never logged {pattern!r}:\n{self.log(i)[-4000:]}")

    def wait(self) -> list[str]:
        deadline = time.time() + RUN_TIMEOUT
        try:
            for p in self.procs:
                p.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("timed out:\n" + "\n".join(self.log(i)[-3000:] for i in range(2))) from None
        logs = [self.log(i) for i in range(2)]
        print(f"{self.tag}: {time.time() - self.t0:.1f}s wall, {_children_cpu() - self.cpu0:.1f}s CPU")
        for p, log in zip(self.procs, logs, strict=True):
            if p.returncode != 0:
                self.kill()
                raise AssertionError(f"exit status {p.returncode}:\n{log[-4000:]}")
        return logs

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _final_weights(workdir: str) -> tuple:
    step_dir = os.path.join(workdir, "checkpoints", str(TOTAL))
    state = ckpt_lib.read_numpy(os.path.join(step_dir, "state"))
    ema = ckpt_lib.read_numpy(os.path.join(step_dir, "ema"))
    return state, ema


def _assert_trees_equal(a, b) -> None:
    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    assert tree_a == tree_b
    assert len(leaves_a) > 10
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_sigterm_to_one_of_two_processes_then_resume(tmp_path):
    # 1. Uninterrupted reference.
    ref_dir = str(tmp_path / "reference")
    logs = TwoProcesses(ref_dir, str(tmp_path), "reference").wait()
    assert "process 0/2, 1 local / 2 global devices" in logs[0]
    assert "process 1/2, 1 local / 2 global devices" in logs[1]
    assert "unet/inner_unet <- unet" in logs[0]  # phase 2 grew out of phase 1
    assert sorted(os.listdir(os.path.join(ref_dir, "checkpoints"))) == ["12", "4"]
    # Metrics are global arrays: both processes log the same losses.
    losses = [re.findall(rf"step {TOTAL}/{TOTAL} loss=([0-9.]+)", log) for log in logs]
    assert losses[0] and losses[0] == losses[1]

    # 2. From phase 1's end: grow phase 2, SIGTERM to process 1 only; both stop at one step, save it, exit 0.
    workdir = str(tmp_path / "run")
    shutil.copytree(os.path.join(ref_dir, "checkpoints", "4"), os.path.join(workdir, "checkpoints", "4"))
    run = TwoProcesses(workdir, str(tmp_path), "interrupted")
    try:
        run.wait_for_log(0, rf"\[nested\] step 6/{TOTAL} ", timeout=RUN_TIMEOUT)
        run.procs[1].send_signal(signal.SIGTERM)
        logs = run.wait()
    finally:
        run.kill()
    assert "Resumed from checkpoint" in logs[0] and "unet/inner_unet <- unet" in logs[0]
    assert "Received signal" in logs[1] and "Received signal" not in logs[0]
    stops = [re.findall(r"Stopped at step (\d+) on request", log) for log in logs]
    assert len(stops[0]) == 1 and stops[0] == stops[1], stops
    stop = int(stops[0][0])
    assert 6 <= stop < TOTAL
    for log in logs:
        assert f"All 2 processes stop at step {stop} (requested by process 1 (SIGTERM))" in log
    ckpts = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
    assert ckpts[-1] == stop
    data = sorted(os.path.basename(f) for f in glob.glob(os.path.join(workdir, "checkpoints", str(stop), "data",
                                                                       "*.json")))
    assert data == ["process_0-of-2.json", "process_1-of-2.json"]

    # 3. Restart: resumes at the stop step and ends with exactly the reference's weights.
    logs = TwoProcesses(workdir, str(tmp_path), "resumed").wait()
    for log in logs:
        assert re.search(rf"Resumed from checkpoint \S+ \(step {stop}, ", log), log[-3000:]
    _assert_trees_equal(_final_weights(workdir), _final_weights(ref_dir))
