"""Importing torch reference implementations for parity tests (no network, no downloads)."""

import importlib
import os
import sys
import types

import pytest


def pytorch_fid_inception():
    """``pytorch_fid.inception``, importable even where torchvision's compiled ops cannot load.

    The PyPI torchvision wheels are CUDA builds; next to a CPU-only torch their ``_C.so`` does not load and
    ``import torchvision`` then fails while registering fake kernels for ops (nms, roi_align) that do not exist.
    Those registrations are irrelevant to Inception's pure-Python modules, so when the plain import fails they
    are replaced by empty modules and everything else (torchvision.models.inception, pytorch_fid) is the real
    code. ``MDM_TORCHVISION_PATH`` may name a ``pip install --target`` folder holding such a wheel: it is put on
    ``sys.path`` here only (in a shared environment a torchvision that cannot load breaks transformers' torch
    models for every other test)."""
    pytest.importorskip("torch")
    extra = os.environ.get("MDM_TORCHVISION_PATH")
    if extra and extra not in sys.path:
        sys.path.append(extra)
    try:
        import torchvision  # noqa: F401
    except ImportError:
        pytest.skip("torchvision is not installed")
    except RuntimeError:
        for name in list(sys.modules):
            if name == "torchvision" or name.startswith("torchvision."):
                del sys.modules[name]
        for stub in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
            sys.modules[stub] = types.ModuleType(stub)
        importlib.import_module("torchvision")
    return pytest.importorskip("pytorch_fid.inception")
