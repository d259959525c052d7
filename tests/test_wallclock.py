"""The run's wall-clock split (``WORKDIR/timing.json``): every second accounted for, steps counted."""

import json
import os

from mdm_jax.training import wallclock


def test_sections_and_rest_add_up_to_the_total():
    clock = wallclock.WallClock()
    with clock.section("compile"):
        sum(range(10_000))
    with clock.section("data"):
        pass
    with clock.section("data"):
        pass
    clock.steps = 3
    s = clock.summary()
    assert list(s)[:3] == ["train", "compile", "data"]
    parts = sum(v for k, v in s.items() if k not in ("total", "steps"))
    assert abs(parts - s["total"]) < 0.05 and s["steps"] == 3
    assert "3 steps" in clock.describe() and "of the step loop" in clock.describe()


def test_demo_run_writes_its_timing(demo_run):
    with open(os.path.join(demo_run, "timing.json")) as f:
        runs = json.load(f)
    last = runs[-1]
    assert last["end_step"] == 12 and last["steps"] == 12  # demo:tiny, 6 + 6 steps in one process
    assert last["compile"] > 0 and last["sample"] > 0 and last["checkpoint"] > 0 and last["setup"] > 0
    parts = sum(v for k, v in last.items() if k not in ("total", "steps", "end_step", "time"))
    assert abs(parts - last["total"]) < 0.05 * last["total"] + 0.1
