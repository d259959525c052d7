"""The stop agreement (training/stop.py) in one process; two real processes: test_train_multiprocess.py."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from mdm_jax.training.stop import PREEMPTION, SIGNAL, StopCoordinator, describe

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_single_process_stops_at_once_on_sigterm():
    stop = StopCoordinator(every_steps=10)
    try:
        assert not stop.poll(0, True) and not stop.poll(1, False)
        os.kill(os.getpid(), signal.SIGTERM)  # handled: sets the flag instead of killing pytest
        assert stop.requested
        assert stop.poll(2, False)  # alone: no round needed, no latency
        assert stop.decided == {0: SIGNAL}
    finally:
        stop.close()
    assert signal.getsignal(signal.SIGTERM) is not stop._handle


def test_check_steps():
    stop = StopCoordinator(every_steps=4, install_handler=False)
    assert [s for s in range(13) if stop.is_check_step(s)] == [0, 4, 8, 12]
    assert [s for s in range(13) if stop.is_check_step(s, 6, 0)] == [0, 4, 6, 8, 12]


def test_rounds_are_launched_at_check_steps_and_read_one_step_later():
    """The multi-process path (forced on in one process): a real all-gather, decided one poll after the round."""
    stop = StopCoordinator(every_steps=3, install_handler=False)
    stop._multi = True
    assert not stop.poll(0, True)  # round 1 launched (no request)
    assert not stop.poll(1, False)  # round 1 read: nobody asked
    stop.request()
    assert not stop.poll(2, False)  # not a check step: nothing launched, nothing to read
    assert not stop.poll(3, True)  # round 2 launched with the request ...
    assert stop.poll(4, False)  # ... and read at the next poll: every process stops at step 4
    assert stop.decided == {0: SIGNAL} and stop.rounds == 2
    # At the end of a loop, a blocking round settles late requests.
    late = StopCoordinator(every_steps=100, install_handler=False)
    late._multi = True
    assert not late.poll(1, False) and not late.finish(5)
    late.request()
    assert late.finish(6)


def test_describe():
    assert describe({1: SIGNAL}) == "process 1 (SIGTERM)"
    assert describe({0: PREEMPTION, 3: SIGNAL | PREEMPTION}) == (
        "process 0 (preemption notice), process 3 (SIGTERM + preemption notice)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("handler,every,reason", [(True, 5, SIGNAL), (False, 3, PREEMPTION)],
                         ids=["sigterm-handler", "jax-preemption-notice"])
def test_two_processes_stop_at_the_same_step(tmp_path, handler, every, reason):
    """SIGTERM to process 1 only; both leave their collective loop at one step. With our handler the flag is
    all-gathered; without it JAX's SIGTERM notifier and preemption sync point carry the notice."""
    port = _free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1",
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    logs = [tmp_path / f"p{i}.log" for i in range(2)]
    procs = []
    try:
        for i in range(2):
            with open(logs[i], "w") as f:
                procs.append(subprocess.Popen(
                    [sys.executable, os.path.join(REPO, "tests", "stop_worker.py"), f"localhost:{port}", str(i),
                     str(every), "1" if handler else "0", "3000"], env=env, stdout=f, stderr=subprocess.STDOUT))
        deadline = time.time() + 120
        while "step 10\n" not in logs[0].read_text():
            assert time.time() < deadline and procs[0].poll() is None, logs[0].read_text()[-3000:]
            time.sleep(0.02)
        procs[1].send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=120)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    outs = [log.read_text() for log in logs]
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-3000:]
    stops = [re.findall(r"STOPPED AT (\d+) (.*)", out) for out in outs]
    assert len(stops[0]) == 1 and stops[0] == stops[1], stops
    step = int(stops[0][0][0])
    assert step > 10 and (step - 1) % every == 0  # read one step after a check step
    flags = dict(eval(stops[0][0][1]))  # noqa: S307 - our own printed list of pairs
    assert flags == ({1: SIGNAL} if reason == SIGNAL else {0: PREEMPTION, 1: PREEMPTION})
