"""JAX EfficientNet-Lite0 vs the efficientnet-lite-pytorch module (the packaged ImageNet weights when installed)."""

import numpy as np
import pytest

from mdm_jax.evaluation import effnet


def test_effnet_lite0_matches_torch(tmp_path):
    torch = pytest.importorskip("torch")
    lib = pytest.importorskip("efficientnet_lite_pytorch")
    model = lib.EfficientNet.from_name("efficientnet-lite0")
    try:
        model.load_state_dict(torch.load(effnet.default_pth(), map_location="cpu", weights_only=True))
        which = "packaged ImageNet weights"
    except FileNotFoundError:
        which = "random weights"
    model.eval()
    npz = str(tmp_path / "lite0.npz")
    np.savez(npz, **effnet.arrays_from_torch(model))
    p = effnet.load(npz)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        ref_f = model.extract_features(torch.from_numpy(x)).mean((2, 3)).numpy()
        ref_l = model(torch.from_numpy(x)).numpy()
    f, lg = (np.asarray(a) for a in effnet.apply(p, x.transpose(0, 2, 3, 1)))
    ef, el = np.abs(f - ref_f).max(), np.abs(lg - ref_l).max()
    print(f"EfficientNet-Lite0 ({which}) features max abs error {ef:.3g}, logits {el:.3g}")
    assert f.shape == (2, 1280) and np.abs(ref_f).max() > 1e-2
    assert ef < 1e-4 and el < 1e-3
