"""Feature extraction batch-sharded over 8 (forced host) devices gives the single-device features."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

SCRIPT = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np
from mdm_jax.evaluation import classifier, features
m = classifier.SmallCNN(5, 8, 16)
p = m.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))["params"]
net = features.FeatureNet("FD_classifier", "t", 16, lambda q, x: m.apply({"params": q}, x),
                          lambda x: (x - 127.0) / 128.0, params=p, has_logits=True, batch_size=16)
imgs = np.random.default_rng(0).integers(0, 256, (21, 12, 12, 3)).astype(np.uint8)
f, lg = net(imgs)
print(json.dumps({"devices": jax.local_device_count(), "f": f.tolist(), "lg": lg.tolist()}))
"""


def _run(devices: int) -> dict:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_features_sharded_over_devices_match_single_device():
    one, eight = _run(1), _run(8)
    assert one["devices"] == 1 and eight["devices"] == 8
    np.testing.assert_allclose(np.array(eight["f"]), np.array(one["f"]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.array(eight["lg"]), np.array(one["lg"]), rtol=1e-5, atol=1e-5)
    assert np.array(one["f"]).shape == (21, 16)
