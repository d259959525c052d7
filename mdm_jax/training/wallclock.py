"""Where a run's wall-clock goes: compile, train steps, data, checkpoints, samples, eval, setup.

Users ask "why did my 10-minute demo take 15?" and the step rate alone cannot answer it: compilation, the
end-of-phase sampler and checkpoint waits are not steps. The trainer wraps each kind of work in ``section``; what
is left of the loop's time is the train steps themselves (dispatch plus the device work they wait on).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

ORDER = ("train", "compile", "data", "sample", "eval", "checkpoint", "setup")


class WallClock:
    """Seconds per kind of work since construction (``time.perf_counter``); sections must not nest."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.seconds: dict[str, float] = {}
        self.steps = 0

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

    def summary(self) -> dict[str, float]:
        """Seconds per kind, ``train`` being the rest of the total; plus ``total`` and ``steps``."""
        total = time.perf_counter() - self.start
        out = {"train": max(0.0, total - sum(self.seconds.values())), **self.seconds}
        return {**{k: round(out.get(k, 0.0), 2) for k in ORDER if k in out},
                **{k: round(v, 2) for k, v in out.items() if k not in ORDER},
                "total": round(total, 2), "steps": self.steps}

    def describe(self) -> str:
        s = self.summary()
        total, steps = s.pop("total"), s.pop("steps")
        loop = s.get("train", 0.0) + s.get("data", 0.0)
        parts = []
        for k, v in s.items():
            extra = ""
            if k == "train" and steps:
                extra = f", {steps} steps, {v / steps:.3f} s/step"
            elif k == "data":
                extra = f", {100 * v / max(loop, 1e-9):.1f}% of the step loop"
            parts.append(f"{k} {v:.1f} s ({100 * v / max(total, 1e-9):.0f}%{extra})")
        return f"Wall clock {total:.1f} s: " + "; ".join(parts)
