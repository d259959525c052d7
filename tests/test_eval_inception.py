"""Our Flax FID Inception-v3 against pytorch-fid's ``InceptionV3([3])`` on random weights (no download)."""

import numpy as np
import torch_refs

from mdm_jax.evaluation import inception


def _random_fid_inception(fid, torch):
    """pytorch-fid's network with its weights load replaced by random weights and calibrated BN statistics."""

    def no_download():
        net = fid._inception_v3(num_classes=1008, aux_logits=False, weights=None)
        net.Mixed_5b = fid.FIDInceptionA(192, pool_features=32)
        net.Mixed_5c = fid.FIDInceptionA(256, pool_features=64)
        net.Mixed_5d = fid.FIDInceptionA(288, pool_features=64)
        net.Mixed_6b = fid.FIDInceptionC(768, channels_7x7=128)
        net.Mixed_6c = fid.FIDInceptionC(768, channels_7x7=160)
        net.Mixed_6d = fid.FIDInceptionC(768, channels_7x7=160)
        net.Mixed_6e = fid.FIDInceptionC(768, channels_7x7=192)
        net.Mixed_7b = fid.FIDInceptionE_1(1280)
        net.Mixed_7c = fid.FIDInceptionE_2(2048)
        return net

    torch.manual_seed(0)
    original = fid.fid_inception_v3
    fid.fid_inception_v3 = no_download
    try:
        model = fid.InceptionV3([fid.InceptionV3.BLOCK_INDEX_BY_DIM[2048]])
    finally:
        fid.fid_inception_v3 = original
    gen = torch.Generator().manual_seed(0)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:  # running stats from one batch, so activations stay O(1) through 94 layers
        m.momentum = None
        m.reset_running_stats()
    model.train()
    with torch.no_grad():
        model(torch.rand(4, 3, 64, 64, generator=gen))
        for m in bns:
            m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
            m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
    return model.eval()


def test_fid_inception_matches_pytorch_fid():
    fid = torch_refs.pytorch_fid_inception()
    import torch

    model = _random_fid_inception(fid, torch)
    # pytorch-fid wraps the layers as blocks.<i>.<j>; the weights file uses torchvision's layer names.
    sd = {}
    layer_names = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", None, "Conv2d_3b_1x1", "Conv2d_4a_3x3", None,
                   "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
                   "Mixed_7a", "Mixed_7b", "Mixed_7c", None]
    layers = [m for block in model.blocks for m in block]
    assert len(layers) == len(layer_names)
    for name, layer in zip(layer_names, layers, strict=True):
        if name is not None:
            sd.update({f"{name}.{k}": v.numpy() for k, v in layer.state_dict().items()})
    params = inception.params_from_torch(sd)
    inception.check_params(params)

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (2, 3, 37, 37)).astype(np.float32)  # upsampled to 299 by both
    with torch.no_grad():
        ref = model(torch.from_numpy(x))[0].reshape(2, -1).numpy()
    got = np.asarray(inception.pool3(params, x.transpose(0, 2, 3, 1)))
    err = np.abs(got - ref).max()
    print(f"FID Inception pool3 max abs error {err:.3g} (|ref| max {np.abs(ref).max():.3g})")
    assert ref.shape == (2, 2048) and np.abs(ref).max() > 1e-2
    assert err < 1e-4 * max(1.0, np.abs(ref).max())
