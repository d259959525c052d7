"""Read a PyTorch ``.pth`` (zip format) without torch and without running any pickled code.

``torch.load`` unpickles arbitrary classes, and torch >= 2.6 refuses ml-mdm's checkpoints by default because
their ``args`` entry pickles ml-mdm dataclasses and enums. Here a restricted ``pickle.Unpickler`` resolves only an
allow-list of globals, each to a harmless stand-in:

* tensors (``torch._utils._rebuild_tensor_v2`` and friends) -> NumPy arrays read (memory-mapped where stored
  uncompressed) from the archive's ``<name>/data/<key>`` records, dtype from the storage class;
* ml-mdm config dataclasses (new ``ml_mdm.*`` and old top-level module names such as ``models.unet``,
  ``samplers``) -> ``ConfigObject`` attribute bags; their enums -> ``EnumMember`` strings;
* ``argparse.Namespace`` -> ``ConfigObject``; ``collections.OrderedDict``, NumPy scalars, ``pathlib`` paths.

Any other global raises ``UnsafePickleError`` naming it; callers may opt in to inert stubs for extra classes with
``stub_classes`` (fnmatch patterns) -- a stub only records its arguments, it never runs the named code.
"""

from __future__ import annotations

import fnmatch
import pickle
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names a global that is not on the allow-list; the message names it."""


class CheckpointFormatError(ValueError):
    """The file is not a checkpoint this reader understands; the message says what to do."""


# ---------------------------------------------------------------------------------------------------------------
# Stand-ins for ml-mdm objects
# ---------------------------------------------------------------------------------------------------------------


class ConfigObject:
    """Attribute bag standing in for a pickled ml-mdm dataclass (or ``argparse.Namespace``).

    ``_mlmdm_class`` is the original ``module.Name``; fields are plain attributes, ``to_dict`` gives them as a
    dict, and positional arguments of a ``REDUCE`` (never used by dataclasses) are kept in ``_args``.
    """

    _mlmdm_class = "object"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if args:
            self.__dict__["_args"] = args
        self.__dict__.update(kwargs)

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            state = {**(state[0] or {}), **(state[1] or {})}
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"{self._mlmdm_class}: unexpected pickled state of type "
                                         f"{type(state).__name__}")
        self.__dict__.update(state)

    def get(self, key: str, default: Any = None) -> Any:
        return self.__dict__.get(key, default)

    def __contains__(self, key: str) -> bool:
        return key in self.__dict__

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items())
        return f"<{self._mlmdm_class}({fields})>"


class EnumMember(str):
    """A pickled ml-mdm enum member: the member NAME as a string, plus ``enum`` (class name) and ``value``."""

    enum: str
    value: Any

    def __new__(cls, enum: str, name: str, value: Any) -> EnumMember:
        obj = super().__new__(cls, name)
        obj.enum, obj.value = enum, value
        return obj

    def __reduce__(self) -> tuple:
        return EnumMember, (self.enum, str(self), self.value)


# ml-mdm's enums (ml_mdm/samplers.py): value -> member name.
MLMDM_ENUMS: dict[str, dict[int, str]] = {
    "ScheduleType": {0: "COSINE", 2: "DDPM", 3: "DEEPFLOYD", 4: "SIGMOID"},
    "PredictionType": {3: "DDPM", 4: "DDIM", 5: "V_PREDICTION"},
    "ThresholdType": {0: "NONE", 1: "CLIP", 2: "DYNAMIC", 3: "DYNAMIC_IF"},
}

# Modules whose classes ml-mdm pickles into ``args``: the package and the old top-level names that
# ``ml_mdm.utils.fix_old_checkpoints.mimic_old_modules`` aliases.
MLMDM_MODULE_ROOTS = ("ml_mdm", "models", "diffusion", "samplers", "reader", "config", "language_models",
                      "distributed")


def is_mlmdm_module(module: str) -> bool:
    return module.split(".", 1)[0] in MLMDM_MODULE_ROOTS


_config_classes: dict[str, type] = {}


def config_class(path: str) -> type:
    """The (cached) ``ConfigObject`` subclass standing in for ml-mdm class ``path`` (``module.Name``)."""
    if path not in _config_classes:
        name = path.rsplit(".", 1)[-1]
        _config_classes[path] = type(name, (ConfigObject,), {"_mlmdm_class": path, "__module__": __name__})
    return _config_classes[path]


def _enum_factory(enum: str, names: dict[int, str]) -> Callable[[Any], EnumMember]:
    def make(value: Any) -> EnumMember:
        if value not in names:
            raise pickle.UnpicklingError(f"{enum}: unknown member value {value!r} (known: {names})")
        return EnumMember(enum, names[value], value)

    return make


# ---------------------------------------------------------------------------------------------------------------
# Tensors
# ---------------------------------------------------------------------------------------------------------------


class _StorageType:
    def __init__(self, name: str, dtype: Any) -> None:
        self.name, self.dtype = name, np.dtype(dtype)


def _storage_dtypes() -> dict[str, Any]:
    import ml_dtypes

    return {
        "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
        "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
        "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
        "ComplexFloatStorage": np.complex64, "ComplexDoubleStorage": np.complex128, "UntypedStorage": np.uint8,
    }


class _Storage:
    def __init__(self, data: np.ndarray, key: str) -> None:
        self.data, self.key = data, key


class _TensorType:
    """Stand-in for ``torch.Tensor`` / ``torch.nn.Parameter`` as the type argument of ``_rebuild_from_type_v2``."""


def _as_shape(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(isinstance(v, int) and v >= 0 for v in value):
        raise pickle.UnpicklingError(f"tensor {what}: expected a tuple of non-negative ints, got {value!r}")
    return tuple(value)


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any, *_: Any) -> np.ndarray:
    """A view of ``storage`` with torch's (offset, size, stride) in elements, bounds-checked."""
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError(f"tensor rebuild: expected a storage, got {type(storage).__name__}")
    size, stride = _as_shape(size, "size"), _as_shape(stride, "stride")
    if not isinstance(storage_offset, int) or storage_offset < 0 or len(size) != len(stride):
        raise pickle.UnpicklingError(f"tensor rebuild: bad offset {storage_offset!r} or size/stride "
                                     f"{size}/{stride}")
    data = storage.data
    if 0 in size:
        return np.zeros(size, data.dtype)
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if last >= data.shape[0]:
        raise pickle.UnpicklingError(f"tensor rebuild: storage {storage.key} has {data.shape[0]} elements, the "
                                     f"tensor (offset {storage_offset}, size {size}, stride {stride}) needs "
                                     f"{last + 1}")
    item = data.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(data[storage_offset:], shape=size, strides=[s * item for s in stride],
                                           writeable=False)
    if not data.dtype.isnative:
        view = view.astype(data.dtype.newbyteorder("="))
    return view


def _rebuild_parameter(data: Any, *_: Any) -> Any:
    return data


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any = None) -> Any:
    if func not in (_rebuild_tensor, _rebuild_parameter) or new_type is not _TensorType:
        raise pickle.UnpicklingError("_rebuild_from_type_v2: only plain tensors and parameters are supported")
    return func(*args)


# ---------------------------------------------------------------------------------------------------------------
# Other safe globals
# ---------------------------------------------------------------------------------------------------------------


def _safe_dtype(obj: Any, align: Any = False, copy: Any = False) -> np.dtype:
    # ``copy`` matters: numpy pickles dtypes as dtype(code, False, True) followed by a BUILD that sets the byte
    # order, which must not touch the shared builtin descriptor.
    dt = np.dtype(obj, align=bool(align), copy=bool(copy)) if isinstance(obj, str) else None
    if dt is None or dt.hasobject:
        raise UnsafePickleError(f"numpy.dtype: refusing {obj!r} (only plain numeric dtypes are allowed)")
    return dt


def _safe_scalar(dtype: Any, data: Any = None) -> Any:
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
        raise UnsafePickleError("numpy scalar: refusing a non-numeric scalar")
    if len(data) != dtype.itemsize:
        raise pickle.UnpicklingError(f"numpy scalar: {len(data)} bytes for dtype {dtype}")
    return np.frombuffer(data, dtype)[0]


def _safe_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not np.ndarray:
        raise UnsafePickleError("numpy _reconstruct: only numpy.ndarray is allowed")
    if isinstance(dtype, bytes):
        dtype = dtype.decode("latin1")
    return np.ndarray.__new__(np.ndarray, shape, _safe_dtype(dtype))


def _safe_encode(text: Any, encoding: str = "utf-8") -> bytes:
    if not isinstance(text, str) or encoding.lower().replace("_", "-") not in ("latin1", "latin-1", "utf-8"):
        raise UnsafePickleError("_codecs.encode: only str with latin1/utf-8 encoding is allowed")
    return text.encode(encoding)


def _safe_path(*parts: Any) -> str:
    if not all(isinstance(p, str) for p in parts):
        raise UnsafePickleError("pathlib path: expected string parts")
    return str(PurePosixPath(*parts)) if parts else "."


def _safe_reconstructor(cls: Any, base: Any, state: Any = None) -> Any:
    """Protocol 0/1 ``copyreg._reconstructor`` for our stand-in classes only."""
    if not (isinstance(cls, type) and issubclass(cls, ConfigObject)) or base is not object:
        raise UnsafePickleError("copyreg._reconstructor: only ml-mdm config classes are allowed")
    return cls()


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex,
    ("builtins", "object"): object,
    ("copyreg", "_reconstructor"): _safe_reconstructor,
    ("_codecs", "encode"): _safe_encode,
    ("argparse", "Namespace"): config_class("argparse.Namespace"),
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Tensor"): _TensorType,
    ("torch.nn.parameter", "Parameter"): _TensorType,
    ("torch", "Size"): tuple,
}
for _np in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[(_np, "scalar")] = _safe_scalar
    _ALLOWED[(_np, "_reconstruct")] = _safe_reconstruct
_ALLOWED[("numpy", "dtype")] = _safe_dtype
_ALLOWED[("numpy", "ndarray")] = np.ndarray
for _mod in ("pathlib", "pathlib._local"):
    for _cls in ("Path", "PosixPath", "WindowsPath", "PurePath", "PurePosixPath", "PureWindowsPath"):
        _ALLOWED[(_mod, _cls)] = _safe_path


def resolve_global(module: str, name: str, stub_classes: Iterable[str] = ()) -> Any:
    """The harmless stand-in for pickle global ``module.name``, or ``UnsafePickleError``."""
    if (module, name) in _ALLOWED:
        return _ALLOWED[(module, name)]
    if module in ("torch", "torch.storage") and name.endswith("Storage"):
        dtypes = _storage_dtypes()
        if name in dtypes:
            return _StorageType(name, dtypes[name])
    if is_mlmdm_module(module):
        if name in MLMDM_ENUMS:
            return _enum_factory(name, MLMDM_ENUMS[name])
        if name.endswith("Config") or name in ("Namespace",):
            return config_class(f"{module}.{name}")
    path = f"{module}.{name}"
    if any(fnmatch.fnmatchcase(path, pattern) for pattern in stub_classes):
        return config_class(path)
    raise UnsafePickleError(
        f"refusing to unpickle global '{path}': it is not on the allow-list of a PyTorch/ml-mdm checkpoint "
        f"(tensors, OrderedDict, argparse.Namespace, ml-mdm *Config dataclasses and enums). If you trust this "
        f"file and the class only holds data, pass --stub-class '{path}' to load it as an inert attribute bag.")


# ---------------------------------------------------------------------------------------------------------------
# The zip archive
# ---------------------------------------------------------------------------------------------------------------


class _Archive:
    """Records of a torch zip checkpoint, storages memory-mapped when stored uncompressed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.zip = zipfile.ZipFile(path)
        names = self.zip.namelist()
        pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if not pkl:
            hint = " (a TorchScript archive?)" if any(n.endswith("constants.pkl") for n in names) else ""
            raise CheckpointFormatError(f"{path}: a zip file without '<name>/data.pkl'{hint}; expected a "
                                        f"torch.save checkpoint")
        self.data_pkl = pkl[0]
        self.prefix = pkl[0][: -len("data.pkl")]
        order = f"{self.prefix}byteorder"
        self.byteorder = self.zip.read(order).decode().strip() if order in names else "little"
        self.storages: dict[str, _Storage] = {}

    def storage(self, key: str, stype: _StorageType, numel: int) -> _Storage:
        if key in self.storages:
            return self.storages[key]
        name = f"{self.prefix}data/{key}"
        try:
            info = self.zip.getinfo(name)
        except KeyError as e:
            raise CheckpointFormatError(f"{self.path}: storage record '{name}' is missing") from e
        dtype = stype.dtype.newbyteorder(">" if self.byteorder == "big" else "<") if stype.dtype.itemsize > 1 \
            else stype.dtype
        if info.file_size % dtype.itemsize:
            raise CheckpointFormatError(f"{self.path}: storage '{name}' has {info.file_size} bytes, not a multiple "
                                        f"of {stype.name}'s {dtype.itemsize}")
        count = info.file_size // dtype.itemsize
        if info.compress_type == zipfile.ZIP_STORED and count:
            offset = self._data_offset(info)
            raw = np.memmap(self.path, dtype=np.uint8, mode="r", offset=offset, shape=(info.file_size,))
            data = raw.view(dtype)
        else:
            data = np.frombuffer(self.zip.read(name), dtype)
        if isinstance(numel, int) and stype.name != "UntypedStorage" and numel != count:
            raise CheckpointFormatError(f"{self.path}: storage '{name}' holds {count} elements, the pickle says "
                                        f"{numel}")
        self.storages[key] = _Storage(data, key)
        return self.storages[key]

    def _data_offset(self, info: zipfile.ZipInfo) -> int:
        with open(self.path, "rb") as f:
            f.seek(info.header_offset)
            header = f.read(30)
        if header[:4] != b"PK\x03\x04":
            raise CheckpointFormatError(f"{self.path}: bad local header for '{info.filename}'")
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        return info.header_offset + 30 + name_len + extra_len


# BUILD may only fill data objects: never a class, function or module (a pickle could otherwise set attributes
# on our stand-in classes).
_BUILD_TARGETS = (ConfigObject, OrderedDict, dict, np.dtype, np.ndarray)


class _Unpickler(pickle._Unpickler):  # the pure-Python unpickler, so BUILD can be checked
    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: Any, archive: _Archive | None, stub_classes: Iterable[str]) -> None:
        super().__init__(file)
        self._archive, self._stubs = archive, tuple(stub_classes)

    def _load_build(self) -> None:
        inst = self.stack[-2]
        if isinstance(inst, type) or not isinstance(inst, _BUILD_TARGETS):
            raise UnsafePickleError(f"refusing to set the state of a {type(inst).__name__} object "
                                    f"(only data objects take pickled state)")
        pickle._Unpickler.load_build(self)

    dispatch[pickle.BUILD[0]] = _load_build

    def find_class(self, module: str, name: str) -> Any:
        return resolve_global(module, name, self._stubs)

    def persistent_load(self, pid: Any) -> Any:
        if self._archive is None:
            raise pickle.UnpicklingError(f"persistent id {pid!r} outside a torch zip archive")
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r} (expected a torch storage)")
        _, stype, key, _location, numel = pid
        if not isinstance(stype, _StorageType):
            raise pickle.UnpicklingError(f"persistent id {pid!r}: not a storage type")
        return self._archive.storage(str(key), stype, numel)


def restricted_loads(data: bytes, stub_classes: Iterable[str] = ()) -> Any:
    """Unpickle ``data`` (no tensors) with the same allow-list; for tests and sidecar pickles."""
    import io

    return _Unpickler(io.BytesIO(data), None, stub_classes).load()


def load_pth(path: str | Path, *, stub_classes: Iterable[str] = ()) -> Any:
    """The object a ``torch.save`` zip checkpoint holds, tensors as NumPy arrays, ml-mdm objects as stand-ins.

    Arrays of uncompressed storages are read-only views of a memory map of the file, so a 2 GB checkpoint
    is paged in only as tensors are used.
    """
    path = Path(path)
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04":
        if magic[:1] == b"\x80":
            raise CheckpointFormatError(
                f"{path}: PyTorch's legacy (pre-1.6, non-zip) serialization format is not supported; re-save it "
                f"with torch.save(torch.load(path, weights_only=False), new_path) under torch >= 1.6")
        raise CheckpointFormatError(f"{path}: not a torch.save zip checkpoint (starts with {magic!r})")
    archive = _Archive(path)
    with archive.zip.open(archive.data_pkl) as f:
        return _Unpickler(f, archive, stub_classes).load()
