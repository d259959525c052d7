"""benchmarks/compile_plans.py's slice search: a compiled plan predicts which larger slice fits, the slices in
between are skipped, and the README note says which slices rested on a prediction. The search reads compiles
from its cache folder (one JSON per compile, as ``--mode=compile`` writes them), so no libtpu is needed here."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import compile_plans  # noqa: E402

GIB = 2**30


def _plan(devices: int, state_gib: float, temps_gib: float, fsdp: int, hbm: float) -> dict:
    return {"devices": devices, "mesh": {"data": devices // fsdp, "fsdp": fsdp}, "params": state_gib / 4 * GIB,
            "opt_state": state_gib / 2 * GIB, "ema": state_gib / 4 * GIB, "frozen": 0,
            "total": (state_gib + temps_gib) * GIB, "hbm": hbm, "fits": state_gib + temps_gib <= hbm / GIB}


def test_prediction_splits_state_only_when_fsdp_spans_all_chips():
    replicated = _plan(4, 8.0, 40.0, fsdp=1, hbm=95.74 * GIB)
    sharded = _plan(4, 8.0, 40.0, fsdp=4, hbm=95.74 * GIB)
    assert compile_plans._predicted_total(replicated, "2x2x4") / GIB == 8.0 + 10.0
    assert compile_plans._predicted_total(sharded, "2x2x4") / GIB == 2.0 + 10.0


def _write(out: Path, chip: str, topo: str, plan: dict) -> None:
    (out / f"cfg_64_{chip}_{topo}.json").write_text(json.dumps([plan]))


def test_search_skips_slices_predicted_not_to_fit(tmp_path):
    # v5p-8 compiled: 120 GiB, does not fit; 2x chips -> ~62 GiB predicted: v5p-16 is compiled next and fits.
    _write(tmp_path, "v5p", "2x2x1", _plan(4, 8.0, 112.0, fsdp=1, hbm=95.74 * GIB))
    _write(tmp_path, "v5p", "2x2x2", _plan(8, 8.0, 56.0, fsdp=1, hbm=95.74 * GIB))
    plan, note = compile_plans.smallest_fit("cfg", "64", "v5p", tmp_path, timeout=1, cached_only=True)
    assert plan["devices"] == 8 and note == "v5p-16"

    # v6e from the v5p plan: 8 + 448/chips GiB; v6e-4 (120), v6e-8 (64), v6e-16 (36) exceed 29.8 GiB, so the
    # first compile is v6e-32; the note names the three slices only predicted not to fit.
    hint = plan
    _write(tmp_path, "v6e", "4x8", _plan(32, 8.0, 14.0, fsdp=1, hbm=32e9))
    plan, note = compile_plans.smallest_fit("cfg", "64", "v6e", tmp_path, timeout=1, cached_only=True, hint=hint)
    assert plan["devices"] == 32
    assert note.startswith("v6e-32; predicted not to fit: v6e-4 ~120 GiB, v6e-8 ~64 GiB, v6e-16 ~36 GiB")


def test_search_without_a_cached_compile_says_where_it_stopped(tmp_path):
    plan, note = compile_plans.smallest_fit("cfg", "64", "v5p", tmp_path, timeout=1, cached_only=True)
    assert plan is None and note == "not compiled yet from v5p-8 up"


def test_a_phase_that_fits_no_slice_gets_the_memory_levers_on_the_largest(tmp_path):
    # v6e-256 as configured: 10 + 40 GiB > 29.8; the remat compile of the same slice (10 + 12) fits, and the note
    # names the lever and its flags; without a remat compile the note says where the search stopped.
    _write(tmp_path, "v6e", "16x16", _plan(256, 10.0, 40.0, fsdp=1, hbm=32e9))
    plan, note = compile_plans.smallest_fit("cfg", "64", "v6e", tmp_path, timeout=1, cached_only=True)
    assert not plan["fits"] and note == "none up to v6e-256"
    (tmp_path / "cfg_64_v6e_16x16_remat.json").write_text(json.dumps([_plan(256, 10.0, 12.0, fsdp=1, hbm=32e9)]))
    plan, note = compile_plans.smallest_fit("cfg", "64", "v6e", tmp_path, timeout=1, cached_only=True)
    assert plan["fits"] and plan["total"] == 22.0 * GIB
    assert note == ("v6e-256; with remat (--config.model.remat=True): as configured it fits no v6e slice up to "
                    "v6e-256")
    row = compile_plans.table([("cfg", "64", "v6e", dict(plan, resolutions="64", batch=256, steps=1000, temporaries=0,
                                                         num_parameters=1e6, topology="v6e:16x16"), note)])
    assert "| v6e-256 (256x1); with remat (--config.model.remat=True)" in row
