"""Feature networks behind one interface: uint8 images in, (features, logits or None) out, batch-sharded.

Every network has an honest metric prefix: ``FD_classifier`` (in-project classifier), ``FD_effnet``
(EfficientNet-Lite0 ImageNet features), ``FID`` only for the Inception-v3 FID network with user-supplied weights.
Images of any resolution are resized (bilinear, antialiased) to the network's input size the same way for real
images and samples, so real-vs-real floors and sample numbers are comparable.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mdm_jax import io_paths


@dataclasses.dataclass
class FeatureNet:
    """``prefix``: metric name prefix (FD_classifier, FD_effnet, FID); ``key``: cache identity of the weights."""

    prefix: str
    key: str
    input_size: int
    fn: Callable[[Any, jax.Array], tuple[jax.Array, jax.Array | None]]  # (params, NHWC at input_size) -> outputs
    normalize: Callable[[jax.Array], jax.Array]  # uint8-valued float NHWC -> the network's input range
    params: Any = None  # passed as an argument, not baked into the program as constants
    has_logits: bool = False
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    batch_size: int = 128
    _jitted: Any = None

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """uint8 NHWC (any size, 1 or 3 channels) -> host float32 features [N, D] (and logits when it has them).

        Batches are padded to ``batch_size`` (a multiple of the local device count) and split over the local
        devices along the batch axis."""
        images = np.asarray(images)
        if images.ndim != 4 or images.dtype != np.uint8:
            raise ValueError(f"{self.prefix}: expected uint8 NHWC images, got {images.dtype} {images.shape}")
        if images.shape[-1] == 1:
            images = np.repeat(images, 3, -1)
        devices = jax.local_devices()
        bs = max(len(devices), self.batch_size // len(devices) * len(devices))
        sharding = NamedSharding(Mesh(np.asarray(devices), ("batch",)), P("batch"))
        if self._jitted is None:
            size = self.input_size

            def run(params: Any, x: jax.Array) -> tuple[jax.Array, jax.Array | None]:
                x = x.astype(jnp.float32)
                if x.shape[1] != size or x.shape[2] != size:
                    x = jax.image.resize(x, (x.shape[0], size, size, x.shape[3]), "bilinear", antialias=True)
                return self.fn(params, self.normalize(x))
            self._jitted = jax.jit(run)
        feats, logits = [], []
        for i in range(0, len(images), bs):
            chunk = images[i:i + bs]
            n = len(chunk)
            if n < bs:
                chunk = np.concatenate([chunk, np.zeros((bs - n, *chunk.shape[1:]), np.uint8)])
            f, lg = self._jitted(self.params, jax.device_put(chunk, sharding))
            feats.append(np.asarray(f, np.float32)[:n])
            if lg is not None:
                logits.append(np.asarray(lg, np.float32)[:n])
        return np.concatenate(feats), (np.concatenate(logits) if logits else None)


def file_digest(*paths: str) -> str:
    h = hashlib.sha256()
    for p in paths:
        with io_paths.open_file(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:12]


def classifier_net(path: str) -> FeatureNet:
    """The in-project classifier (``mdm_jax.evaluation.classifier``): penultimate features + logits."""
    from mdm_jax.evaluation import classifier

    module, params, meta = classifier.load(path)
    key = f"classifier-{file_digest(io_paths.join(classifier.directory(path), 'classifier.npz'))}"
    return FeatureNet("FD_classifier", key, int(meta["resolution"]), lambda p, x: module.apply({"params": p}, x),
                      lambda x: (x - 127.0) / 128.0, params=params, has_logits=True, meta=meta)


def build(kind: str, path: str) -> FeatureNet:
    """``kind`` in classifier | effnet | inception; ``path`` the local weights (never downloaded)."""
    if not path:
        raise ValueError(f"eval feature net '{kind}': no weights path given (config.eval.{kind}_path)")
    if kind == "classifier":
        return classifier_net(path)
    if kind == "effnet":
        from mdm_jax.evaluation import effnet

        return effnet.feature_net(path)
    if kind == "inception":
        from mdm_jax.evaluation import inception

        return inception.feature_net(path)
    raise ValueError(f"eval.feature_nets: unknown '{kind}' (classifier | effnet | inception)")
