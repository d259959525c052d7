"""Paths that may live anywhere: local disk or an object store (``gs://``, ``s3://``), via ``etils.epath``.

Local paths are made absolute (Orbax wants absolute checkpoint paths); URLs are left exactly as given, since
``os.path.abspath("gs://b/run")`` would turn a bucket into a local folder. ``gs://`` goes through fsspec/gcsfs
(install the ``gcs`` extra); it honours ``STORAGE_EMULATOR_HOST`` for a local emulator.
"""

from __future__ import annotations

import os
import tempfile

from etils import epath

_URL = ("gs://", "s3://", "az://", "hf://")

try:  # gcsfs caches directory listings forever by default, so files that tensorstore, another process or another
    # host wrote would stay invisible to exists()/listdir(): list afresh every time (fsspec's documented setting).
    import fsspec.config

    for _proto in ("gs", "gcs"):
        fsspec.config.conf.setdefault(_proto, {}).setdefault("use_listings_cache", False)
except ImportError:  # local paths only
    pass


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


def staging_path(p: str | os.PathLike) -> str:
    """Where to write a file that a library can only write locally (encoders, ArrayRecord) before ``publish``:
    a hidden sibling locally, a fresh temporary folder for a URL."""
    if is_url(p):  # (pathlib would fold "gs://" into "gs:/")
        return os.path.join(tempfile.mkdtemp(prefix="mdm_stage_"), os.path.basename(os.fspath(p).rstrip("/")))
    head, name = os.path.split(os.path.abspath(os.fspath(p)))
    stem, ext = os.path.splitext(name)
    return os.path.join(head, f".{stem}.tmp{ext}")


def publish(staged: str, p: str | os.PathLike) -> None:
    """Put a file written at ``staging_path(p)`` in place: a rename locally, a streamed upload of one object on a
    store (readers never see a partial file either way)."""
    if not is_url(p):
        os.replace(staged, os.fspath(p))
        return
    import fsspec

    fs, remote = fsspec.core.url_to_fs(os.fspath(p))
    fs.put_file(staged, remote)
    os.unlink(staged)
    os.rmdir(os.path.dirname(staged))


def move(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Move a file or directory: a rename locally; copy + delete of every object on an object store (where
    "folders" are only name prefixes, so epath's rename, which wants the destination folder to exist, fails)."""
    if is_url(src):
        import fsspec  # only URLs need it; it comes with etils' gcs/s3 backends

        fs, src_path = fsspec.core.url_to_fs(os.fspath(src))
        dst_path = fsspec.core.url_to_fs(os.fspath(dst))[1]
        # Server-side copies, then deletes (gcsfs' mv would try GCS's newer moveTo first, which emulators lack).
        if fs.isdir(src_path):
            fs.copy(src_path.rstrip("/") + "/", dst_path.rstrip("/") + "/", recursive=True)
            fs.rm(src_path, recursive=True)
        else:
            fs.copy(src_path, dst_path)
            fs.rm(src_path)
        return
    d = epath.Path(dst)
    d.parent.mkdir(parents=True, exist_ok=True)
    epath.Path(src).rename(d)


def open_file(p: str | os.PathLike, mode: str = "rb", **kwargs):  # noqa: ANN201 - a file object
    """``open`` for local paths and URLs alike (object-store files are seekable, read in ranges)."""
    if is_url(p):
        import fsspec

        fs, rel = fsspec.core.url_to_fs(os.fspath(p))
        return fs.open(rel, mode, **kwargs)
    return open(p, mode, **kwargs)  # noqa: SIM115 - the caller closes it


def read_range(p: str | os.PathLike, offset: int, size: int) -> bytes:
    """``size`` bytes at ``offset`` (one ranged GET on an object store)."""
    if is_url(p):
        import fsspec

        fs, rel = fsspec.core.url_to_fs(os.fspath(p))
        return fs.cat_file(rel, start=offset, end=offset + size)
    with open(p, "rb") as f:
        f.seek(offset)
        return f.read(size)


def glob(pattern: str) -> list[str]:
    """Sorted matches of a glob pattern (``**`` recursive), local or on an object store."""
    if is_url(pattern):
        import fsspec

        fs, _ = fsspec.core.url_to_fs(pattern)
        scheme = pattern.split("://", 1)[0]
        return sorted(f"{scheme}://{m}" for m in fs.glob(pattern))
    import glob as glob_lib

    return sorted(glob_lib.glob(pattern, recursive=True))


def walk_files(root: str | os.PathLike) -> list[str]:
    """Every file below ``root`` (as full paths), local or on an object store."""
    if is_url(root):
        import fsspec

        fs, rel = fsspec.core.url_to_fs(os.fspath(root))
        scheme = os.fspath(root).split("://", 1)[0]
        return sorted(f"{scheme}://{f}" for f in fs.find(rel))
    out = []
    for dirpath, _, files in os.walk(root):
        out.extend(os.path.join(dirpath, f) for f in files)
    return out
