"""Sharding on 8 simulated CPU devices: the loss equals the single-device loss, large kernels are split over fsdp.

XLA_FLAGS must be set before jax is imported, so the check runs this file as a script in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _worker() -> dict:
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    sys.path.insert(0, REPO)
    from absl import flags

    flags.FLAGS.mark_as_parsed()
    import jax
    import numpy as np

    jax.config.update("jax_compilation_cache_dir", "/tmp/mdm_jax_test_cache")
    from mdm_jax.training import config_lib, partitioning, phases, trainer

    assert jax.device_count() == 8
    config = config_lib.load(os.path.join(REPO, "configs", "demo.py:tiny"))
    config.sharding.min_size = 1024
    phase = phases.build_phases(config)[1]  # the 2-level nested model
    mesh8 = partitioning.make_mesh({"data": 2, "fsdp": 4})
    mesh1 = partitioning.make_mesh({"data": 1, "fsdp": 1}, devices=jax.devices()[:1])
    run8 = trainer.setup_phase(config, phase, mesh8)
    run1 = trainer.setup_phase(config, phase, mesh1)
    state8 = trainer.fresh_state(config, run8, mesh8)
    fresh1 = trainer.fresh_state(config, run1, mesh1)

    # Born sharded: big kernels (and their Adam moments and EMA) are split 4 ways over fsdp.
    kernel = state8.params["unet"]["inner_unet"]["up_blocks_0"]["resnets_0"]["conv1"]["kernel"]
    shard_shapes = {tuple(s.data.shape) for s in kernel.addressable_shards}
    split = [(("/".join(str(getattr(k, "key", k)) for k in path)), str(x.sharding.spec))
             for path, x in jax.tree_util.tree_flatten_with_path(state8)[0] if "fsdp" in str(x.sharding.spec)]
    host = jax.device_get(state8)
    init_equal = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(host), jax.tree.leaves(
        jax.device_get(fresh1)), strict=True))
    state1 = jax.device_put(host, run1.shardings)

    batch = trainer._host_batch(run8.data)
    new8, m8 = run8.step_fn(state8, partitioning.global_batch(batch, mesh8), run8.frozen)
    new1, m1 = run1.step_fn(state1, partitioning.global_batch(batch, mesh1), run1.frozen)
    p8, p1 = jax.device_get(new8.params), jax.device_get(new1.params)
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(p8), jax.tree.leaves(p1), strict=True))
    return {
        "kernel_shape": list(kernel.shape), "kernel_spec": str(kernel.sharding.spec),
        "shard_shapes": [list(s) for s in shard_shapes], "num_split": len(split),
        "split_example": split[:3], "opt_split": sum("opt_state" in p for p, _ in split),
        "init_equal": init_equal,
        "loss8": float(m8["loss"]), "loss1": float(m1["loss"]),
        "level_mse8": [float(m8[f"mse/level{i}"]) for i in range(2)],
        "level_mse1": [float(m1[f"mse/level{i}"]) for i in range(2)],
        "gnorm8": float(m8["grad_norm"]), "gnorm1": float(m1["grad_norm"]), "param_diff": diff,
        "batch_spec": str(partitioning.global_batch(batch, mesh8)["images"].sharding.spec),
    }


def test_eight_devices_match_one_device():
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    out = subprocess.run([sys.executable, __file__], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    # Large kernels are split over fsdp (4 ways), optimizer moments and EMA too.
    assert "fsdp" in r["kernel_spec"], r
    assert len(r["shard_shapes"]) == 1 and np.prod(r["shard_shapes"][0]) * 4 == np.prod(r["kernel_shape"]), r
    assert r["opt_split"] > 0 and r["num_split"] == 2 * r["opt_split"], r  # params + EMA == Adam mu + nu
    assert r["batch_spec"].startswith("P(('data', 'fsdp')"), r
    # Born-sharded init gives the same values as an unsharded one.
    assert r["init_equal"], r
    # Same loss / gradients / update as on one device (up to reduction order).
    np.testing.assert_allclose(r["loss8"], r["loss1"], rtol=1e-5)
    np.testing.assert_allclose(r["level_mse8"], r["level_mse1"], rtol=1e-5)
    np.testing.assert_allclose(r["gnorm8"], r["gnorm1"], rtol=1e-4)
    assert r["param_diff"] < 1e-5, r


if __name__ == "__main__":
    print(json.dumps(_worker()))
else:
    import numpy as np
