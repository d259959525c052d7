"""Inception-v3 as FID uses it (pytorch-fid's ``InceptionV3`` with FIDInceptionA/C/E_1/E_2), in Flax, to pool3.

The network of TTUR's TensorFlow graph differs from torchvision's Inception-v3 in its pooling: the A, C and first E
blocks average-pool without counting padding, the last E block max-pools. Inference only: batch norm uses the
stored statistics (eps 1e-3). Input: NHWC in [0, 1]; resized to 299x299 with plain bilinear interpolation (as
pytorch-fid's ``F.interpolate(align_corners=False)``), scaled to [-1, 1]; output the 2048-d pool3 features.

Weights are never downloaded: pass pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (read by the project's
restricted unpickler, no code executed) or an ``.npz``/``.safetensors`` with the same keys, via
``config.eval.inception_path``. Only with those weights are the numbers "FID".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   "pt_inception-2015-12-05-6726825d.pth")


class BasicConv(nn.Module):
    """Conv (no bias) + batch norm (stored statistics, eps 1e-3) + ReLU; torch's ``BasicConv2d``."""

    features: int
    kernel: tuple[int, int]
    stride: int = 1
    padding: tuple[int, int] = (0, 0)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.param("kernel", nn.initializers.lecun_normal(), (*self.kernel, x.shape[-1], self.features))
        scale = self.param("scale", nn.initializers.ones, (self.features,))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        mean = self.param("mean", nn.initializers.zeros, (self.features,))
        var = self.param("var", nn.initializers.ones, (self.features,))
        ph, pw = self.padding
        y = jax.lax.conv_general_dilated(x, k, (self.stride, self.stride), ((ph, ph), (pw, pw)),
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                         precision=jax.lax.Precision.HIGHEST)
        return nn.relu((y - mean) * (scale / jnp.sqrt(var + 1e-3)) + bias)


def _avg_pool_no_pad(x: jax.Array) -> jax.Array:
    return nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool(x: jax.Array, stride: int, pad: int = 0) -> jax.Array:
    return nn.max_pool(x, (3, 3), (stride, stride), padding=((pad, pad), (pad, pad)))


class InceptionA(nn.Module):
    pool_features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b1 = BasicConv(64, (1, 1), name="branch1x1")(x)
        b5 = BasicConv(48, (1, 1), name="branch5x5_1")(x)
        b5 = BasicConv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
        b3 = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
        b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
        b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
        bp = BasicConv(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_no_pad(x))
        return jnp.concatenate([b1, b5, b3, bp], -1)


class InceptionB(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = BasicConv(384, (3, 3), stride=2, name="branch3x3")(x)
        bd = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
        bd = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = BasicConv(96, (3, 3), stride=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool(x, 2)], -1)


class InceptionC(nn.Module):
    channels_7x7: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.channels_7x7
        b1 = BasicConv(192, (1, 1), name="branch1x1")(x)
        b7 = BasicConv(c, (1, 1), name="branch7x7_1")(x)
        b7 = BasicConv(c, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
        b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        bd = BasicConv(c, (1, 1), name="branch7x7dbl_1")(x)
        bd = BasicConv(c, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
        bd = BasicConv(c, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
        bd = BasicConv(c, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
        bd = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
        bp = BasicConv(192, (1, 1), name="branch_pool")(_avg_pool_no_pad(x))
        return jnp.concatenate([b1, b7, bd, bp], -1)


class InceptionD(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = BasicConv(192, (1, 1), name="branch3x3_1")(x)
        b3 = BasicConv(320, (3, 3), stride=2, name="branch3x3_2")(b3)
        b7 = BasicConv(192, (1, 1), name="branch7x7x3_1")(x)
        b7 = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = BasicConv(192, (3, 3), stride=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool(x, 2)], -1)


class InceptionE(nn.Module):
    """``max_pool``: the FID network's last block (FIDInceptionE_2) max-pools its pool branch."""

    max_pool: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b1 = BasicConv(320, (1, 1), name="branch1x1")(x)
        b3 = BasicConv(384, (1, 1), name="branch3x3_1")(x)
        b3 = jnp.concatenate([BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                              BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], -1)
        bd = BasicConv(448, (1, 1), name="branch3x3dbl_1")(x)
        bd = BasicConv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate([BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                              BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], -1)
        pooled = _max_pool(x, 1, 1) if self.max_pool else _avg_pool_no_pad(x)
        bp = BasicConv(192, (1, 1), name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], -1)


class FIDInceptionV3(nn.Module):
    """NHWC images in [0, 1] -> [N, 2048] pool3 features (pytorch-fid ``InceptionV3([3])``)."""

    resize_input: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.resize_input:
            x = jax.image.resize(x, (x.shape[0], 299, 299, x.shape[3]), "bilinear", antialias=False)
        x = 2.0 * x - 1.0
        x = BasicConv(32, (3, 3), stride=2, name="Conv2d_1a_3x3")(x)
        x = BasicConv(32, (3, 3), name="Conv2d_2a_3x3")(x)
        x = BasicConv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
        x = _max_pool(x, 2)
        x = BasicConv(80, (1, 1), name="Conv2d_3b_1x1")(x)
        x = BasicConv(192, (3, 3), name="Conv2d_4a_3x3")(x)
        x = _max_pool(x, 2)
        x = InceptionA(32, name="Mixed_5b")(x)
        x = InceptionA(64, name="Mixed_5c")(x)
        x = InceptionA(64, name="Mixed_5d")(x)
        x = InceptionB(name="Mixed_6a")(x)
        for name, c in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
            x = InceptionC(c, name=name)(x)
        x = InceptionD(name="Mixed_7a")(x)
        x = InceptionE(False, name="Mixed_7b")(x)
        x = InceptionE(True, name="Mixed_7c")(x)
        return x.mean((1, 2))


_BN = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}


def params_from_torch(state_dict: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """pytorch-fid / torchvision key names (``Mixed_5b.branch1x1.conv.weight``, ``...bn.running_var``) -> our
    params. The classifier head (``fc.*``) and ``num_batches_tracked`` are not part of pool3 and are ignored;
    every conv of the network must be present with its shape (checked when applied)."""
    params: dict[str, Any] = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if parts[0] in ("fc", "AuxLogits") or parts[-1] == "num_batches_tracked":
            continue
        *path, layer, leaf = parts
        node = params
        for p in path:
            node = node.setdefault(p, {})
        v = np.asarray(value, np.float32)
        if layer == "conv" and leaf == "weight":
            node["kernel"] = v.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        elif layer == "bn" and leaf in _BN:
            node[_BN[leaf]] = v
        else:
            raise ValueError(f"inception weights: unexpected key {key!r}")
    return params


def check_params(params: Mapping[str, Any], module: FIDInceptionV3 | None = None) -> None:
    """Every expected array present with the right shape; names each missing / unexpected / mis-shaped key."""
    module = module or FIDInceptionV3()
    want = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 299, 299, 3))))["params"]
    flat_w = {"/".join(str(k.key) for k in p): v.shape for p, v in jax.tree_util.tree_leaves_with_path(want)}
    flat_g = {"/".join(str(k.key) for k in p): np.shape(v) for p, v in jax.tree_util.tree_leaves_with_path(params)}
    problems = [f"missing {k}" for k in flat_w if k not in flat_g]
    problems += [f"unexpected {k}" for k in flat_g if k not in flat_w]
    problems += [f"{k}: shape {flat_g[k]} != {s}" for k, s in flat_w.items() if k in flat_g and flat_g[k] != s]
    if problems:
        raise ValueError(f"inception weights do not fit the FID Inception-v3 ({len(problems)} problems): "
                         + "; ".join(problems[:10]))


def load_params(path: str) -> dict[str, Any]:
    """Read the user's weights file (.pth through the restricted unpickler, .npz, .safetensors)."""
    import os

    from mdm_jax.convert import readers

    if not os.path.isfile(path):
        raise FileNotFoundError(f"Inception FID weights {path!r} not found: get {FID_WEIGHTS_NAME} from "
                                f"{FID_WEIGHTS_URL} on a machine with network access (never downloaded here)")
    params = params_from_torch(readers.read_checkpoint(path).state_dict)
    check_params(params)
    return params


def feature_net(path: str, batch_size: int = 50) -> Any:
    """FID feature network (pool3) for ``mdm_jax.evaluation.features``."""
    from mdm_jax.evaluation import features

    params = jax.tree.map(jnp.asarray, load_params(path))
    module = FIDInceptionV3()
    return features.FeatureNet("FID", f"inception-{features.file_digest(path)}", 299,
                               lambda p, x: (module.apply({"params": p}, x), None), lambda x: x / 255.0,
                               params=params, batch_size=batch_size)


def pool3(params: Mapping[str, Any], images01: np.ndarray | jax.Array, resize: bool = True) -> jax.Array:
    """Features of NHWC images in [0, 1] (parity tests, notebooks)."""
    return FIDInceptionV3(resize).apply({"params": params}, jnp.asarray(images01, jnp.float32))
