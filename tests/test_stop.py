"""The stop agreement (training/stop.py) in one process; two real processes: test_train_multiprocess.py."""

from __future__ import annotations

import os
import signal

from mdm_jax.training.stop import PREEMPTION, SIGNAL, StopCoordinator, describe


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
