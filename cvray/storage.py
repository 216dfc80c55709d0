"""Local paths and object-store URIs behind one small API (pyarrow filesystems).

Every writer here is atomic: a reader never sees a partial file. Local files are written to a
hidden temporary name in the same folder and renamed; object stores get one PUT, which is
atomic by the store's own semantics.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from pathlib import Path

import pyarrow.fs as pafs

from cvray.errors import DataError, first_line


def is_uri(path: str) -> bool:
    return "://" in str(path)


def resolve(path: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path (``~`` expanded) or a URI like s3://b/k."""
    path = str(path)
    if is_uri(path):
        if path.startswith("file://"):
            return pafs.LocalFileSystem(), str(Path(path[len("file://"):]).expanduser().resolve())
        try:
            return pafs.FileSystem.from_uri(_single_put(path))
        except Exception as exc:  # pyarrow raises several types for bad URIs/credentials
            raise DataError(f"cannot open {path}: {first_line(exc)}") from None
    return pafs.LocalFileSystem(), str(Path(path).expanduser().resolve())


def _single_put(uri: str) -> str:
    """S3: allow_delayed_open=true writes objects smaller than one upload part with a single PUT
    instead of a multipart upload (fewer requests; emulators such as moto 5.2 mishandle
    CompleteMultipartUpload)."""
    if not uri.startswith("s3://") or "allow_delayed_open=" in uri:
        return uri
    return uri + ("&" if "?" in uri else "?") + "allow_delayed_open=true"


def join(base: str, *parts: str) -> str:
    """Join path parts with '/', for local paths and URIs alike."""
    if is_uri(base):
        return posixpath.join(base, *parts)
    return str(Path(base).joinpath(*parts))


def exists(path: str) -> bool:
    fs, p = resolve(path)
    return fs.get_file_info(p).type != pafs.FileType.NotFound


def is_dir(path: str) -> bool:
    fs, p = resolve(path)
    return fs.get_file_info(p).type == pafs.FileType.Directory


def read_bytes(path: str) -> bytes:
    fs, p = resolve(path)
    try:
        with fs.open_input_stream(p) as f:
            return f.read()
    except FileNotFoundError:
        raise DataError(f"file not found: {path}") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {first_line(exc)}") from None


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Write `data` so that `path` is either absent, the old file, or the whole new file."""
    fs, p = resolve(path)
    parent = posixpath.dirname(p) if is_uri(path) else os.path.dirname(p)
    try:
        _write(fs, p, parent, data)
    except OSError as exc:
        raise DataError(f"cannot write {path}: {first_line(exc)}") from None


def _write(fs: pafs.FileSystem, p: str, parent: str, data: bytes) -> None:
    fs.create_dir(parent, recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        tmp = os.path.join(parent, f".{os.path.basename(p)}.{uuid.uuid4().hex[:8]}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    else:
        with fs.open_output_stream(p) as f:  # one PUT: object stores publish whole objects
            f.write(data)


def write_text_atomic(path: str, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def remove_tree(path: str) -> None:
    fs, p = resolve(path)
    if fs.get_file_info(p).type == pafs.FileType.Directory:
        fs.delete_dir(p)
