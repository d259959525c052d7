"""Launch scripts: the commands they run, checked with recording stand-ins for sbatch/srun/scontrol/gcloud on PATH,
and the distributed-init decision (TPU VM detection) as a unit."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from mdm_jax import cluster_env

ROOT = Path(__file__).resolve().parents[1]
SEP = "\x1f"


def _standins(tmp_path: Path, srun_waits: bool = False) -> tuple[dict[str, str], Path]:
    """A bin/ with recording sbatch, srun, scontrol and gcloud; returns (env, record file)."""
    bin_dir, record = tmp_path / "bin", tmp_path / "calls.txt"
    bin_dir.mkdir()
    record.touch()
    rec = f'(IFS=$\'{SEP}\'; echo "$(basename "$0"){SEP}$*") >> "$MDM_CALLS"\n'
    for name in ("sbatch", "scontrol"):
        (bin_dir / name).write_text("#!/usr/bin/env bash\n" + rec)
    # srun: record, then (like a running job step) wait until signalled; the signal is recorded too.
    # (The trap is set before the call is recorded, so the test's signal never comes too early.)
    trap = ('trap \'echo "srun-got-TERM" >> "$MDM_CALLS"; kill $sleeper; exit 0\' TERM\n' if srun_waits else "")
    wait = "sleep 30 >/dev/null 2>&1 &\nsleeper=$!\nwait\n" if srun_waits else ""
    (bin_dir / "srun").write_text("#!/usr/bin/env bash\n" + trap + rec + wait)
    # gcloud: record; answer the queued-resource state query with ACTIVE.
    (bin_dir / "gcloud").write_text("#!/usr/bin/env bash\n" + rec
                                    + 'if [[ " $* " == *" describe "* ]]; then echo ACTIVE; fi\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", MDM_CALLS=str(record), TMPDIR=str(tmp_path))
    env.pop("MDM_SLURM_IN_JOB", None)
    return env, record


def _calls(record: Path) -> list[list[str]]:
    return [line.split(SEP) for line in record.read_text().splitlines() if line]


def _run(args: list[str], env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=check)


def _opt(call: list[str], name: str) -> str:
    vals = [a.split("=", 1)[1] for a in call if a.startswith(name + "=")]
    assert len(vals) == 1, (name, call)
    return vals[0]


# ---- SLURM ------------------------------------------------------------------------------------------------------


def test_slurm_submit_one_process_per_gpu(tmp_path):
    env, record = _standins(tmp_path)
    _run(["launch/gpu_slurm.sh", "--nodes=4", "--time=24:00:00", "configs/cc12m_256.py", "/ckpt/run",
          "--config.mesh.fsdp=8"], env)
    (full,) = _calls(record)
    script = full.index(str(ROOT / "launch/gpu_slurm.sh"))
    call = full[:script]  # sbatch's own options
    assert call[0] == "sbatch"
    assert _opt(call, "--nodes") == "4" and _opt(call, "--ntasks-per-node") == "8"
    assert _opt(call, "--gpus-per-node") == "8" and _opt(call, "--time") == "24:00:00"
    assert "--requeue" in call and _opt(call, "--signal") == "B:TERM@120"
    assert "MDM_SLURM_IN_JOB=1" in _opt(call, "--export")
    assert full[script + 1:] == ["--nodes=4", "--gpus-per-node=8", "--procs=gpu", "--max-restarts=100",
                                 "configs/cc12m_256.py", "/ckpt/run", "--config.mesh.fsdp=8"]


@pytest.mark.parametrize("procs,tasks,per_node,gpu_opt,ids", [
    ("gpu", "16", "8", "--gpus-per-task=1", "visible"),
    ("node", "2", "1", "--gpus-per-node=8", "0,1,2,3,4,5,6,7"),
])
def test_slurm_job_step_signal_and_requeue(tmp_path, procs, tasks, per_node, gpu_opt, ids):
    """Inside the job: srun starts the right number of processes, SIGTERM reaches srun (which forwards it to the
    tasks), and the job is requeued so that it resumes from the workdir."""
    env, record = _standins(tmp_path, srun_waits=True)
    env.update(MDM_SLURM_IN_JOB="1", SLURM_JOB_ID="4242", SLURM_RESTART_COUNT="0")
    proc = subprocess.Popen(["launch/gpu_slurm.sh", "--nodes=2", f"--procs={procs}", "configs/imagenet64.py",
                             "gs://bucket/run", "--config.seed=3"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 30
    while not any(c[0] == "srun" for c in _calls(record)) and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    calls = _calls(record)
    srun = calls[0]
    assert srun[0] == "srun"
    assert _opt(srun, "--nodes") == "2" and _opt(srun, "--ntasks") == tasks
    assert _opt(srun, "--ntasks-per-node") == per_node and gpu_opt in srun
    py = srun.index("python")
    assert srun[py:] == ["python", "-m", "mdm_jax.main", "--config=configs/imagenet64.py",
                         "--workdir=gs://bucket/run", f"--local_device_ids={ids}", "--config.seed=3"]
    assert calls[1] == ["srun-got-TERM"]
    assert calls[2] == ["scontrol", "requeue", "4242"]


def test_slurm_finished_job_is_not_requeued(tmp_path):
    env, record = _standins(tmp_path)
    env.update(MDM_SLURM_IN_JOB="1", SLURM_JOB_ID="7")
    _run(["launch/gpu_slurm.sh", "configs/imagenet64.py", "/ckpt/run"], env)
    assert [c[0] for c in _calls(record)] == ["srun"]


def test_slurm_dry_run_runs_nothing(tmp_path):
    env, record = _standins(tmp_path)
    out = _run(["launch/gpu_slurm.sh", "--dry-run", "--nodes=4", "configs/cc12m_256.py", "/ckpt/run"], env).stdout
    assert _calls(record) == []
    lines = [ln for ln in out.splitlines() if not ln.startswith("#")]
    assert lines[0].startswith("sbatch ") and "--signal=B:TERM@120" in lines[0]
    assert lines[1].startswith("srun --nodes=4 --ntasks=32 --ntasks-per-node=8 --gpus-per-task=1 ")
    assert lines[2].startswith("scontrol requeue")


# ---- TPU --------------------------------------------------------------------------------------------------------


def test_tpu_pod_queued_resource_ship_install_run(tmp_path):
    env, record = _standins(tmp_path)
    _run(["launch/tpu_pod.sh", "--tpu=mdm", "--zone=us-east5-a", "--create=queued", "--accelerator-type=v5p-64",
          "--spot", "configs/cc12m_256.py", "gs://bucket/mdm/run", "--config.mesh.fsdp=8"], env)
    calls = _calls(record)
    assert [c[:4] for c in calls] == [["gcloud", "compute", "tpus", "queued-resources"]] * 2 + \
        [["gcloud", "compute", "tpus", "tpu-vm"]] * 4
    create, describe, scp, unpack, install, train = calls
    assert create[4:6] == ["create", "mdm"] and _opt(create, "--node-id") == "mdm"
    assert _opt(create, "--accelerator-type") == "v5p-64" and _opt(create, "--runtime-version") == "v2-alpha-tpuv5"
    assert "--spot" in create and _opt(create, "--zone") == "us-east5-a"
    assert describe[4] == "describe"
    assert scp[4] == "scp" and scp[6] == "mdm:mdm-jax.tar.gz"
    archive = Path(scp[5])
    assert archive.exists() and archive.stat().st_size > 0  # git archive of the repository
    for c in (scp, unpack, install, train):
        assert _opt(c, "--worker") == "all"
    assert "tar xzf ~/mdm-jax.tar.gz" in _opt(unpack, "--command")
    assert "pip install -q -e '.[tpu]'" in _opt(install, "--command")
    cmd = _opt(train, "--command")
    assert ("nohup python3 -m mdm_jax.main --config=configs/cc12m_256.py --workdir=gs://bucket/mdm/run "
            "--config.mesh.fsdp=8") in cmd
    assert "echo $! > ~/mdm-train.pid" in cmd


def test_tpu_pod_needs_gs_workdir_and_dry_run_runs_nothing(tmp_path):
    env, record = _standins(tmp_path)
    bad = _run(["launch/tpu_pod.sh", "--tpu=mdm", "--zone=z", "configs/imagenet64.py", "/local/dir"], env, check=False)
    assert bad.returncode == 2 and "gs://" in bad.stderr
    out = _run(["launch/tpu_pod.sh", "--dry-run", "--tpu=mdm", "--zone=z", "--no-ship", "configs/imagenet64.py",
                "gs://b/run"], env).stdout
    assert _calls(record) == []
    lines = [ln for ln in out.splitlines() if not ln.startswith("#")]
    assert len(lines) == 3  # install, train, how to follow the log
    assert all(ln.startswith("gcloud compute tpus tpu-vm ssh mdm --zone=z --worker=") for ln in lines)
    stop = _run(["launch/tpu_pod.sh", "--tpu=mdm", "--zone=z", "--stop"], env)
    assert stop.returncode == 0 and "kill -TERM" in _opt(_calls(record)[0], "--command")


def test_local_multiprocess_dry_run(tmp_path):
    env, _ = _standins(tmp_path)
    out = _run(["launch/local_multiprocess.sh", "--dry-run", "3", "configs/demo.py:tiny", str(tmp_path / "w")],
               env).stdout.splitlines()
    assert len(out) == 3
    for i, line in enumerate(out):
        assert "python -m mdm_jax.main" in line and "--num_processes=3" in line and f"--process_id={i}" in line


# ---- distributed init -------------------------------------------------------------------------------------------


def _fake_pci(root: Path, devices: dict[str, tuple[str, str]]) -> str:
    for slot, (vendor, device) in devices.items():
        d = root / "bus/pci/devices" / slot
        d.mkdir(parents=True)
        (d / "vendor").write_text(vendor + "\n")
        (d / "device").write_text(device + "\n")
    return str(root)


def test_distributed_init_triggers_on_tpu_vm_without_env(tmp_path):
    """A Cloud TPU VM has no cluster variables in its environment; its TPU chips on the PCI bus decide."""
    tpu = _fake_pci(tmp_path / "tpu", {"0000:00:04.0": ("0x1ae0", "0x0062"), "0000:00:05.0": ("0x1ae0", "0x0062"),
                                       "0000:00:06.0": ("0x8086", "0x1234")})
    other = _fake_pci(tmp_path / "gce", {"0000:00:04.0": ("0x1ae0", "0x0042"), "0000:00:05.0": ("0x10de", "0x2330")})
    assert cluster_env.tpu_chips(tpu) == 2 and cluster_env.tpu_chips(other) == 0
    assert cluster_env.wants_distributed({}, sys_root=tpu)
    assert not cluster_env.wants_distributed({}, sys_root=other)
    assert not cluster_env.wants_distributed({"TPU_SKIP_MDS_QUERY": "1"}, sys_root=tpu)
    assert cluster_env.wants_distributed({"SLURM_NTASKS": "8"}, sys_root=other)
    assert not cluster_env.wants_distributed({"SLURM_NTASKS": "1"}, sys_root=other)
    assert cluster_env.wants_distributed({"TPU_WORKER_HOSTNAMES": "a,b"}, sys_root=other)
    assert cluster_env.wants_distributed({}, coordinator_address="h:1", sys_root=other)


def test_local_device_ids():
    assert cluster_env.local_device_ids("", {}) is None
    assert cluster_env.local_device_ids("visible", {"CUDA_VISIBLE_DEVICES": "3"}) == [0]
    assert cluster_env.local_device_ids("visible", {"CUDA_VISIBLE_DEVICES": "0,1,2,3"}) == [0, 1, 2, 3]
    assert cluster_env.local_device_ids("visible", {}) is None
    assert cluster_env.local_device_ids("0,1", {}) == [0, 1]
    with pytest.raises(ValueError, match="local_device_ids"):
        cluster_env.local_device_ids("all", {})
