"""Two local processes training one model through jax.distributed (gloo collectives on CPU), as on a pod.

Each process feeds its own half of the global batch (grain slices the stream by process), checkpoints are
written cooperatively (one data-iterator file per process) and both processes report the same global loss.
"""

from __future__ import annotations

import glob
import os
import re
import socket
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_and_checkpoint(tmp_path):
    workdir = str(tmp_path / "run")
    port = _free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1",
               MDM_COMPILATION_CACHE="/tmp/mdm_jax_test_cache")
    procs = []
    for i in range(2):
        cmd = [sys.executable, "-m", "mdm_jax.main", f"--config={REPO}/configs/demo.py:tiny", f"--workdir={workdir}",
               f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}",
               "--config.max_steps=4", "--config.sample.num_images=2", "--config.checkpoint.every_steps=2"]
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    logs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=540)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        logs.append(out)
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log[-4000:]
    assert "process 0/2, 1 local / 2 global devices" in logs[0]
    assert "process 1/2, 1 local / 2 global devices" in logs[1]
    data_dir = os.path.join(workdir, "checkpoints", "4", "data")
    data_files = sorted(os.path.basename(f) for f in glob.glob(os.path.join(data_dir, "*.json")))
    assert data_files == ["process_0-of-2.json", "process_1-of-2.json"]
    # Metrics are global arrays: both processes log the same losses.
    losses = [re.findall(r"step 4/4 loss=([0-9.]+)", log) for log in logs]
    assert losses[0] and losses[0] == losses[1]
