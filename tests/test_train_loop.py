"""The real training loop on the tiny demo config: two phases with growth, checkpoints, samples, resumption.

One reference run (module fixture) is shared: the other tests interrupt or damage copies of it and check that
the resumed runs end with exactly the reference parameters.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from absl import logging as absl_logging

from mdm_jax.training import config_lib, train_and_evaluate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "demo.py")


def tiny_config() -> config_lib.ConfigDict:
    return config_lib.load(f"{CONFIG}:tiny")


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def run_collecting_logs(config, workdir):
    handler = _Collect()
    logger = absl_logging.get_absl_logger()
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.INFO)
    try:
        trainer = train_and_evaluate(config, workdir)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)
    return trainer, handler.messages


def host_params(trainer):
    return jax.tree.map(np.asarray, jax.device_get((trainer.state.params, trainer.state.ema)))


def assert_trees_equal(a, b):
    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("reference"))
    trainer, messages = run_collecting_logs(tiny_config(), workdir)
    return workdir, trainer, host_params(trainer), messages


def test_real_run_two_phases(reference):
    workdir, trainer, _, messages = reference
    steps = [s for s, _ in trainer.history]
    assert steps == [2, 4, 6, 8, 10, 12]
    for _, m in trainer.history:
        assert np.isfinite(m["loss"]) and np.isfinite(m["grad_norm"])
    assert "mse/level1" in trainer.history[-1][1] and "mse/level1" not in trainer.history[0][1]
    assert int(trainer.state.step) == 12
    # Growth is reported: which parameters came from phase 1, which are new.
    text = "\n".join(messages)
    assert "unet/inner_unet <- unet" in text and "text <- text" in text
    assert "from checkpoint: unet/inner_unet/" in text and "new: unet/in_adapter/kernel" in text
    assert "Parameter overview" in text and "steps/s, ETA" in text
    # The phase-1 model is the phase-2 inner UNet: same parameter tree.
    ckpts = sorted(int(os.path.basename(p)) for p in glob.glob(os.path.join(workdir, "checkpoints", "*"))
                   if os.path.basename(p).isdigit())
    assert ckpts == [6, 8, 12]  # keep=2 plus the end of phase 1
    for name in ("inner/step_00000006_ema_8px.png", "nested/step_00000012_ema_16px.png",
                 "nested/step_00000012_ema_8px.png"):
        assert os.path.getsize(os.path.join(workdir, "samples", name)) > 100
    with open(os.path.join(workdir, "samples", "nested", "prompt_score_step_00000012_ema.json")) as f:
        score = json.load(f)
    assert score["step"] == 12 and score["weights"] == "ema" and set(score["levels"]) == {"16", "8"}
    assert glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))


@pytest.mark.slow  # default run: see README "Test" (kept under ~15 min)
def test_corrupt_latest_checkpoint_is_skipped(reference, tmp_path):
    ref_dir, _, ref_params, _ = reference
    workdir = str(tmp_path / "run")
    shutil.copytree(ref_dir, workdir)
    # Damage the newest checkpoint (12): truncate every file of its train state.
    for f in glob.glob(os.path.join(workdir, "checkpoints", "12", "state", "**", "*"), recursive=True):
        if os.path.isfile(f):
            with open(f, "wb") as fh:
                fh.write(b"\0garbage")
    trainer, messages = run_collecting_logs(tiny_config(), workdir)
    warning = [m for m in messages if "unreadable" in m and os.path.join("checkpoints", "12") in m]
    assert warning, messages[:20]
    assert any("Resumed from checkpoint" in m and m.split("(step ")[1].startswith("8,") for m in messages)
    assert os.listdir(os.path.join(workdir, "checkpoints_corrupt"))
    assert_trees_equal(host_params(trainer), ref_params)


def _wait_for(predicate, proc, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


@pytest.mark.slow  # default run: see README "Test" (kept under ~15 min)
def test_sigkill_then_resume_matches_uninterrupted_run(reference, tmp_path):
    _, _, ref_params, _ = reference
    workdir = str(tmp_path / "run")
    env = dict(os.environ, MDM_COMPILATION_CACHE="/tmp/mdm_jax_test_cache")
    cmd = [sys.executable, "-m", "mdm_jax.main", f"--config={CONFIG}:tiny", f"--workdir={workdir}"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        ckpt4 = os.path.join(workdir, "checkpoints", "4")
        found = _wait_for(lambda: os.path.isdir(os.path.join(ckpt4, "state")), proc, timeout=240)
        assert found, proc.stderr.read().decode()[-3000:] if proc.poll() is not None else "timed out"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not os.path.isdir(os.path.join(workdir, "checkpoints", "12"))  # killed before the end
    trainer, messages = run_collecting_logs(tiny_config(), workdir)
    assert any("Resumed from checkpoint" in m for m in messages)
    assert_trees_equal(host_params(trainer), ref_params)


@pytest.mark.slow
def test_sigterm_saves_then_resume_matches(reference, tmp_path):
    """SIGTERM (preemption notice): the run saves the step it is at and exits cleanly; a restart finishes it."""
    _, _, ref_params, _ = reference
    workdir = str(tmp_path / "run")
    env = dict(os.environ, MDM_COMPILATION_CACHE="/tmp/mdm_jax_test_cache")
    cmd = [sys.executable, "-m", "mdm_jax.main", f"--config={CONFIG}:tiny", f"--workdir={workdir}"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        found = _wait_for(lambda: os.path.isdir(os.path.join(workdir, "checkpoints", "4", "state")), proc, 240)
        assert found, "no checkpoint 4"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert "Stopped at step" in err
    saved = max(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
    assert 4 <= saved < 12
    trainer, _ = run_collecting_logs(tiny_config(), workdir)
    assert_trees_equal(host_params(trainer), ref_params)


# ---- resuming never discards work: only a checkpoint whose own files are unreadable is moved aside -------------
def _copy_reference(reference, tmp_path) -> str:
    workdir = str(tmp_path / "run")
    shutil.copytree(reference[0], workdir)
    return workdir


def _listing(workdir):
    return sorted(os.listdir(os.path.join(workdir, "checkpoints")))


def _expect_resume_error(config, workdir) -> str:
    from mdm_jax.training.checkpoint import ResumeError

    before = _listing(workdir)
    with pytest.raises(ResumeError) as err:
        train_and_evaluate(config, workdir)
    assert _listing(workdir) == before, "a checkpoint was moved"
    assert not os.path.exists(os.path.join(workdir, "checkpoints_corrupt"))
    message = str(err.value)
    assert os.path.join("checkpoints", "12") in message and "left in place" in message
    return message


def test_resume_with_bad_data_dir_stops_and_keeps_checkpoints(reference, tmp_path):
    workdir = _copy_reference(reference, tmp_path)
    config = tiny_config()
    config.data.name, config.data.data_dir = "image_text_tsv", str(tmp_path / "no_such_data")
    message = _expect_resume_error(config, workdir)
    assert "no_such_data" in message and "does not exist" in message


def test_resume_with_missing_text_encoder_stops_and_keeps_checkpoints(reference, tmp_path):
    workdir = _copy_reference(reference, tmp_path)
    config = tiny_config()
    config.text_encoder = config_lib.ConfigDict(dict(kind="t5", path=str(tmp_path / "flan-t5-missing")))
    message = _expect_resume_error(config, workdir)
    assert "flan-t5-missing" in message


def test_resume_with_renamed_phases_stops_and_keeps_checkpoints(reference, tmp_path):
    """The issue's reproduction: renamed phases used to move the two newest checkpoints aside and go on."""
    workdir = _copy_reference(reference, tmp_path)
    config = tiny_config()
    config.phases[0].name, config.phases[1].name = "first", "second"
    message = _expect_resume_error(config, workdir)
    assert "'nested'" in message and "first" in message and "second" in message


@pytest.mark.slow  # ~100 s: a second, uninterrupted run; the default run checks the data item is saved (below)
def test_lengthened_last_phase_resumes_exactly_from_its_final_checkpoint(reference, tmp_path):
    """Training a finished run longer: the phase's final checkpoint holds the data iterator too, so raising the last
    phase's steps continues the same data stream and ends where an uninterrupted longer run ends."""
    workdir = _copy_reference(reference, tmp_path)
    config = tiny_config()
    config.phases[1].steps += 2
    trainer, messages = run_collecting_logs(config, workdir)
    assert int(trainer.state.step) == 14 and [s for s, _ in trainer.history] == [14]
    assert not any("holds no data-iterator state" in m for m in messages)
    assert not os.path.exists(os.path.join(workdir, "checkpoints_corrupt"))
    straight, _ = run_collecting_logs(config, str(tmp_path / "straight"))
    for a, b in zip(jax.tree.leaves(host_params(trainer)), jax.tree.leaves(host_params(straight)), strict=True):
        np.testing.assert_array_equal(a, b)


def test_old_final_checkpoint_without_data_state_still_resumes(reference, tmp_path):
    """Final checkpoints of runs before the data iterator was kept there: the run goes on (fresh data stream,
    with a warning) instead of stopping with a resume error."""
    workdir = _copy_reference(reference, tmp_path)
    shutil.rmtree(os.path.join(workdir, "checkpoints", "12", "data"))
    config = tiny_config()
    config.phases[1].steps += 2
    trainer, messages = run_collecting_logs(config, workdir)
    assert int(trainer.state.step) == 14
    assert any("holds no data-iterator state" in m for m in messages)


def _inject_read_errors(monkeypatch, workdir, failures):
    """The first ``failures`` reads of the newest checkpoint's meta item (the first file a resume reads) raise
    EIO, as a flaky disk or bucket would."""
    import errno

    from etils import epath

    from mdm_jax.training import checkpoint as ckpt_lib

    monkeypatch.setattr(ckpt_lib, "RETRY_BACKOFF_S", 0.01)
    cls = type(epath.Path(workdir))
    original = cls.read_text
    count = {"n": 0}

    def flaky(self, *args, **kwargs):
        if os.path.join(workdir, "checkpoints", "12", "meta") in os.fspath(self) and count["n"] < failures:
            count["n"] += 1
            raise OSError(errno.EIO, "Input/output error", os.fspath(self))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, "read_text", flaky)
    return count


def test_transient_read_error_is_retried(reference, tmp_path, monkeypatch):
    _, _, ref_params, _ = reference
    workdir = _copy_reference(reference, tmp_path)
    count = _inject_read_errors(monkeypatch, workdir, failures=1)
    config = tiny_config()
    config.sample.num_images = 0
    before = _listing(workdir)
    trainer, messages = run_collecting_logs(config, workdir)
    assert count["n"] == 1
    assert any("Transient error reading" in m for m in messages)
    assert any("Resumed from checkpoint" in m and "(step 12," in m for m in messages)
    assert _listing(workdir) == before and not os.path.exists(os.path.join(workdir, "checkpoints_corrupt"))
    assert_trees_equal(host_params(trainer), ref_params)


def test_persistent_read_error_stops_and_keeps_checkpoints(reference, tmp_path, monkeypatch):
    workdir = _copy_reference(reference, tmp_path)
    _inject_read_errors(monkeypatch, workdir, failures=10**9)
    from mdm_jax.training.checkpoint import ResumeError

    before = _listing(workdir)
    with pytest.raises(ResumeError, match="Input/output error.*nothing was moved"):
        train_and_evaluate(tiny_config(), workdir)
    assert _listing(workdir) == before and not os.path.exists(os.path.join(workdir, "checkpoints_corrupt"))


# ---- gs:// end to end, against a GCS API served on localhost ----------------------------------------------------
def test_gcs_workdir_sigkill_then_resume_matches(reference, tmp_path, monkeypatch):
    """Workdir gs://bucket/run on gcp-storage-emulator: train in a subprocess, SIGKILL it after a checkpoint,
    resume here; the parameters equal the uninterrupted local run's, and config/samples/TensorBoard are in the
    bucket."""
    import importlib.util

    if importlib.util.find_spec("gcsfs") is None or importlib.util.find_spec("gcp_storage_emulator") is None:
        pytest.skip("needs the gcs and dev extras: pip install -e '.[gcs,dev]'")
    from gcs_emulator import Emulator

    _, _, ref_params, _ = reference
    (tmp_path / "bucket").mkdir()
    with Emulator("mdm-test", str(tmp_path / "bucket")) as emu:
        for k, v in emu.env.items():
            monkeypatch.setenv(k, v)
        workdir = "gs://mdm-test/run"
        env = dict(os.environ, MDM_COMPILATION_CACHE="/tmp/mdm_jax_test_cache")
        cmd = [sys.executable, "-m", "mdm_jax.main", f"--config={CONFIG}:tiny", f"--workdir={workdir}"]
        with open(tmp_path / "train.log", "wb") as log:
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log)
            try:
                committed = lambda: "run/checkpoints/4/commit_success.txt" in emu.objects("run/checkpoints/4/")  # noqa: E731
                found = _wait_for(committed, proc, timeout=300)
                assert found, (tmp_path / "train.log").read_text()[-3000:]
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=30)
            finally:
                if proc.poll() is None:
                    proc.kill()
        assert proc.returncode == -signal.SIGKILL
        assert not [n for n in emu.objects("run/checkpoints/12/")]  # killed before the end
        trainer, messages = run_collecting_logs(tiny_config(), workdir)
        assert any("Resumed from checkpoint gs://mdm-test/run/checkpoints/" in m for m in messages), messages[:30]
        assert_trees_equal(host_params(trainer), ref_params)
        names = emu.objects("run/")
        assert "run/config.json" in names
        assert "run/samples/nested/step_00000012_ema_16px.png" in names
        assert any(n.startswith("run/tensorboard/events.out.tfevents.") for n in names)
        assert "run/checkpoints/12/commit_success.txt" in names
