"""Paths that may live anywhere: local disk or an object store (``gs://``, ``s3://``), via ``etils.epath``.

Local paths are made absolute (Orbax wants absolute checkpoint paths); URLs are left exactly as given, since
``os.path.abspath("gs://b/run")`` would turn a bucket into a local folder. ``gs://`` goes through fsspec/gcsfs
(install the ``gcs`` extra); it honours ``STORAGE_EMULATOR_HOST`` for a local emulator.
"""

from __future__ import annotations

import os

from etils import epath

_URL = ("gs://", "s3://", "az://", "hf://")


def is_url(path: str | os.PathLike) -> bool:
    return os.fspath(path).startswith(_URL)


def resolve(path: str | os.PathLike) -> str:
    """An absolute local path, or the URL unchanged (``~`` is expanded locally)."""
    path = os.fspath(path)
    if is_url(path):
        return path.rstrip("/")
    return os.path.abspath(os.path.expanduser(path))


def join(root: str | os.PathLike, *parts: str) -> str:
    """``root/part/...`` as a string, for local paths and URLs alike."""
    return os.fspath(epath.Path(root).joinpath(*parts))


def path(p: str | os.PathLike) -> epath.Path:
    return epath.Path(p)


def makedirs(p: str | os.PathLike) -> None:
    epath.Path(p).mkdir(parents=True, exist_ok=True)


def exists(p: str | os.PathLike) -> bool:
    return epath.Path(p).exists()


def isdir(p: str | os.PathLike) -> bool:
    return epath.Path(p).is_dir()


def isfile(p: str | os.PathLike) -> bool:
    return epath.Path(p).is_file()


def listdir(p: str | os.PathLike) -> list[str]:
    return sorted(c.name for c in epath.Path(p).iterdir())


def read_text(p: str | os.PathLike) -> str:
    return epath.Path(p).read_text()


def read_bytes(p: str | os.PathLike) -> bytes:
    return epath.Path(p).read_bytes()


def write_text(p: str | os.PathLike, text: str) -> None:
    """Write a whole text file at once: a temporary file renamed locally; one object upload on a store."""
    write_bytes(p, text.encode("utf-8"))


def write_bytes(p: str | os.PathLike, data: bytes) -> None:
    """Write a whole file at once (object stores replace objects atomically; locally a rename does it)."""
    target = epath.Path(p)
    target.parent.mkdir(parents=True, exist_ok=True)
    if is_url(p):
        target.write_bytes(data)
        return
    tmp = target.parent / f".{target.name}.tmp{os.getpid()}"
    tmp.write_bytes(data)
    os.replace(tmp, target)


def move(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Move a file or directory: a rename locally; copy + delete of every object on an object store (where
    "folders" are only name prefixes, so epath's rename, which wants the destination folder to exist, fails)."""
    if is_url(src):
        import fsspec  # only URLs need it; it comes with etils' gcs/s3 backends

        fs, src_path = fsspec.core.url_to_fs(os.fspath(src))
        fs.mv(src_path, fsspec.core.url_to_fs(os.fspath(dst))[1], recursive=True)
        return
    d = epath.Path(dst)
    d.parent.mkdir(parents=True, exist_ok=True)
    epath.Path(src).rename(d)
