"""One stop decision for all hosts: a SIGTERM on any host or a preemption notice stops every host at one step.

Each host only knows its own signals. Deciding alone is unsafe: a host that leaves the loop while the others
dispatch the next step leaves them waiting forever in that step's collectives. So local requests are only
*proposals*; the decision is a collective that every process runs at the same steps:

* **local flag**: SIGTERM sets it (our handler replaces the default "die now"), so does ``request()``.
* **JAX's preemption sync point** (``multihost_utils.reached_preemption_sync_point``): when the coordination
  service hears of a preemption on any host it picks a call counter at which every host gets True. We pass the
  number of the agreement round (not the step), so "the next call" is the next round on every host.
* **agreement round**: every process contributes its flag to a tiny all-gather over all devices; if any flag is
  set, every process sees it in the same round and stops at the same step.

Cost and its trade-off: a round is one small jitted collective, launched at a check step and read one step
later (after the next train step has been dispatched), so the host never waits for the device beyond what the
loop already does (it fetches each step's metrics one step late). The price is latency: a request is honoured
at the first check step after it arrives plus one step. Check steps are every ``every_steps`` steps plus the
steps the trainer names (checkpoint and log steps, the first step of a phase), all functions of the step number
and the config, hence the same on every host. ``every_steps=1`` checks every step (one tiny collective per
step); larger values send fewer collectives (which cross the data-center network on multi-slice runs) and
react later. A single process decides alone, at once, with no collective.
"""

from __future__ import annotations

import signal
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils


class _FlagGather:
    """All-gather of one int32 per device (each host puts its own flag on all its devices), replicated out."""

    def __init__(self) -> None:
        devices = np.array(jax.devices())
        self.mesh = jax.sharding.Mesh(devices, ("p",))
        self.owner = np.array([d.process_index for d in devices])
        self.in_sharding = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec("p"))
        replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
        self.fn = jax.jit(lambda x: x, out_shardings=replicated)

    def launch(self, flag: int) -> jax.Array:
        local = np.full((jax.local_device_count(),), flag, np.int32)
        x = jax.make_array_from_process_local_data(self.in_sharding, local, (len(self.owner),))
        return self.fn(x)  # asynchronous: read later with ``result``

    def result(self, out: jax.Array) -> dict[int, int]:
        """{process index: its flag} for every process whose flag is non-zero."""
        values = np.asarray(out.addressable_data(0))
        return {int(p): int(v) for p, v in zip(self.owner, values, strict=True) if v}


SIGNAL = 1  # bits of a process's flag
PREEMPTION = 2


def describe(flags: dict[int, int]) -> str:
    """``{1: SIGNAL}`` -> 'process 1 (SIGTERM)'."""
    def why(f: int) -> str:
        return " + ".join(n for bit, n in ((SIGNAL, "SIGTERM"), (PREEMPTION, "preemption notice")) if f & bit)
    return ", ".join(f"process {p} ({why(f)})" for p, f in sorted(flags.items()))


class StopCoordinator:
    """Turns local stop requests into one decision taken by every process at the same step.

    Call ``poll(step, check)`` at the top of every loop iteration on every process, with ``check`` computed
    the same way on every process; it returns True when all processes must save ``step`` and stop. Call
    ``finish()`` where a loop ends (all processes, same place): it settles pending rounds with a blocking one.
    """

    def __init__(self, every_steps: int = 10, *, install_handler: bool = True):
        self.every_steps = max(1, int(every_steps))
        self.local = 0
        self.rounds = 0
        self.decided: dict[int, int] | None = None
        self._pending: tuple[int, Any] | None = None
        self._gather: _FlagGather | None = None
        self._multi = jax.process_count() > 1
        self._previous = None
        if install_handler:
            try:
                # Replaces the handler of JAX's SIGTERM preemption notifier too (installed by
                # jax.distributed.initialize); notices arriving before this point still reach every host
                # through the preemption sync point. A C handler reads back as None: restore the default then.
                previous = signal.signal(signal.SIGTERM, self._handle)
                self._previous = signal.SIG_DFL if previous is None else previous
            except ValueError:  # not the main thread: leave signals alone
                self._previous = None

    # ---- local requests --------------------------------------------------------------------------------------
    def _handle(self, signum: int, frame: Any) -> None:
        logging.warning("Received signal %d: all processes will save a checkpoint and stop at an agreed step.",
                        signum)
        self.local |= SIGNAL

    def request(self) -> None:
        """Ask for a stop from code (what SIGTERM does)."""
        self.local |= SIGNAL

    @property
    def requested(self) -> bool:
        """Whether this process has a local request (not yet a decision on a multi-process run)."""
        return bool(self.local)

    def is_check_step(self, step: int, *extra_every: int) -> bool:
        """``step`` is a multiple of ``every_steps`` or of any positive ``extra_every``."""
        return any(k > 0 and step % k == 0 for k in (self.every_steps, *extra_every))

    # ---- agreement -------------------------------------------------------------------------------------------
    def _preempted(self) -> bool:
        try:
            return bool(multihost_utils.reached_preemption_sync_point(self.rounds))
        except RuntimeError:  # the preemption service is off (jax_enable_preemption_service=False)
            return False

    def _launch(self) -> Any:
        if self._gather is None:
            self._gather = _FlagGather()
        flag = self.local | (PREEMPTION if self._preempted() else 0)
        self.rounds += 1
        return self._gather.launch(flag)

    def _settle(self, step: int, out: Any) -> bool:
        flags = self._gather.result(out)
        if flags and self.decided is None:
            self.decided = flags
            logging.warning("All %d processes stop at step %d (requested by %s).", jax.process_count(), step,
                            describe(flags))
        return bool(flags)

    def poll(self, step: int, check: bool) -> bool:
        """True when every process must stop at ``step``; launches a round at check steps (read next poll)."""
        if not self._multi:
            if self.local and self.decided is None:
                self.decided = {jax.process_index(): self.local}
            return bool(self.local)
        if self._pending is not None:
            out, self._pending = self._pending, None
            if self._settle(step, out):
                return True
        if check:
            self._pending = self._launch()
        return False

    def finish(self, step: int) -> bool:
        """At the end of a loop: settle the pending round and run one more (blocking) on every process."""
        if not self._multi:
            return self.poll(step, True)
        if self._pending is not None:
            out, self._pending = self._pending, None
            if self._settle(step, out):
                return True
        return self._settle(step, self._launch())

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
