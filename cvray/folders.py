"""Image folders on local disks and object stores: listing, safe output naming, atomic writes.

Plain pyarrow + os; no Ray. A folder job (bulk stylisation) lists an input folder here, maps each
input's relative path to an output path that can never leave the output folder, and refuses
folder pairs where one lies inside the other (a rerun would otherwise process its own outputs).
What it decided per file is kept by cvray.manifest under OUTPUT/_cvray/.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass

import pyarrow.fs as pafs

from cvray import storage
from cvray.errors import ConfigError, DataError, first_line
from cvray.images import WRITE_FORMATS

# Every input keeps its suffix in the output except GIF: a palette format cannot hold a stylised
# RGB image, so .gif becomes .png.
RENAMED_SUFFIXES = {".gif": ".png"}
INPUT_SUFFIXES = {*WRITE_FORMATS, *RENAMED_SUFFIXES}
METADATA_DIR = "_cvray"
"""Top-level folder of the output that holds the manifest, its parts and the run config."""


@dataclass(frozen=True)
class Folder:
    """A folder as the user named it (`uri`) and where it lives (`fs`, `path` inside fs)."""

    uri: str
    fs: pafs.FileSystem
    path: str

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def path_of(self, rel: str) -> str:
        """Path inside `fs` of the relative path `rel` (already checked by check_relpath)."""
        return posixpath.join(self.path, rel) if not self.is_local else os.path.join(self.path, rel)

    def uri_of(self, rel: str) -> str:
        """What a user reads in the manifest: the folder as given, joined with `rel`."""
        if self.is_local:
            return self.path_of(rel)
        base, sep, query = self.uri.partition("?")
        return posixpath.join(base, rel) + (sep + query if query else "")


@dataclass(frozen=True)
class FileEntry:
    rel: str
    """Path relative to the folder, '/'-separated."""
    size: int
    """Bytes."""


def open_folder(uri: str) -> Folder:
    """Resolve a local path or object-store URI to a Folder (it need not exist yet).

    S3 objects smaller than one upload part are written with a single PUT (storage.resolve).
    """
    fs, path = storage.resolve(str(uri))
    if isinstance(fs, pafs.LocalFileSystem):
        path = os.path.realpath(path)  # symlinks resolved, so nesting checks compare real places
    else:
        path = path.rstrip("/")
    return Folder(uri=str(uri), fs=fs, path=path)


def list_files(folder: Folder) -> list[FileEntry]:
    """Every file under `folder` (recursive), sorted by relative path.

    Hidden names (starting with '.': editor files, our own temporary files, .DS_Store) are left
    out. On local disks symlinked folders are not descended (no loops, no escaping the folder).
    """
    info = folder.fs.get_file_info(folder.path)
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"folder not found: {folder.uri}")
    if info.type != pafs.FileType.Directory:
        raise DataError(f"not a folder: {folder.uri}")
    entries = _walk_local(folder.path) if folder.is_local else _walk_fs(folder)
    return sorted(entries, key=lambda e: e.rel)


def _walk_local(root: str) -> list[FileEntry]:
    entries = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith("."):
                continue
            full = os.path.join(dirpath, name)
            try:
                size = os.stat(full).st_size
            except OSError:
                size = -1  # dangling symlink or vanished file: reading it will fail and say why
            entries.append(FileEntry(os.path.relpath(full, root).replace(os.sep, "/"), size))
    return entries


def _walk_fs(folder: Folder) -> list[FileEntry]:
    selector = pafs.FileSelector(folder.path, recursive=True)
    try:
        infos = folder.fs.get_file_info(selector)
    except OSError as exc:
        raise DataError(f"cannot list {folder.uri}: {first_line(exc)}") from None
    entries = []
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        rel = info.path[len(folder.path):].lstrip("/")
        if any(part.startswith(".") for part in rel.split("/")):
            continue
        entries.append(FileEntry(rel, int(info.size or 0)))
    return entries


def check_relpath(rel: str) -> None:
    """DataError unless `rel` is a plain relative path that stays inside its folder.

    Object-store keys can hold anything ('a/../../b', '/abs', 'a//b'), so every component is
    checked; the metadata folder's name is reserved at the top level.
    """
    parts = rel.split("/")
    if not rel or rel.startswith("/") or "\\" in rel or "\x00" in rel:
        raise DataError(f"{rel!r}: not a safe relative path")
    if any(part in ("", ".", "..") for part in parts):
        raise DataError(f"{rel!r}: not a safe relative path ('.', '..' or empty component)")
    if parts[0] == METADATA_DIR:
        raise DataError(f"{rel!r}: the top-level name {METADATA_DIR} is reserved for the manifest")


def output_name(rel: str) -> tuple[str, str]:
    """(output relative path, Pillow format) for an input relative path.

    DataError for files that are not images by extension (they are failed, not skipped, so the
    manifest accounts for every file of the input).
    """
    check_relpath(rel)
    stem, suffix = posixpath.splitext(rel)
    if suffix.lower() not in INPUT_SUFFIXES:
        kind = f"extension {suffix}" if suffix else "no extension"
        raise DataError(f"not an image file ({kind}; expected {', '.join(sorted(INPUT_SUFFIXES))})")
    out_rel = stem + RENAMED_SUFFIXES[suffix.lower()] if suffix.lower() in RENAMED_SUFFIXES else rel
    return out_rel, WRITE_FORMATS[posixpath.splitext(out_rel)[1].lower()]


def check_not_nested(input_folder: Folder, output_folder: Folder) -> None:
    """ConfigError when the output lies inside the input, the input inside the output, or both
    are the same folder: a rerun would then list (and stylise) its own outputs."""
    if type(input_folder.fs) is not type(output_folder.fs):
        return
    a, b = _norm(input_folder), _norm(output_folder)
    if a == b:
        raise ConfigError(f"--output {output_folder.uri} is the input folder: choose another folder")
    if b.startswith(a + "/"):
        raise ConfigError(
            f"--output {output_folder.uri} lies inside the input folder {input_folder.uri}: "
            "choose a folder outside it"
        )
    if a.startswith(b + "/"):
        raise ConfigError(
            f"the input folder {input_folder.uri} lies inside --output {output_folder.uri}: "
            "choose an output folder that does not contain the input"
        )


def _norm(folder: Folder) -> str:
    path = folder.path if folder.is_local else posixpath.normpath("/" + folder.path)
    return path.rstrip("/") or "/"


def check_inside(folder: Folder, path: str) -> None:
    """DataError unless the local `path`'s parent really lies inside `folder` (after symlinks).

    Relative paths are checked already; this catches a symlinked subfolder of the output that
    points elsewhere. Object stores have no symlinks.
    """
    if not folder.is_local:
        return
    parent = os.path.realpath(os.path.dirname(path))
    root = os.path.realpath(folder.path)
    if parent != root and not parent.startswith(root + os.sep):
        raise DataError(f"output {path} would land outside the output folder (symlinked folder?)")


# --- writing into an output folder -------------------------------------------------------------

def write_file(folder: Folder, path: str, data: bytes) -> None:
    """Publish `data` at `path` (inside `folder.fs`) so no partial file is ever visible.

    Local disks: a hidden temporary name in the same folder, then a rename (storage). Object
    stores: one upload, which the store publishes whole (a PUT, or a completed multipart upload).
    """
    if folder.is_local:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        check_inside(folder, path)
        storage.write_bytes_atomic(path, data)
    else:
        with folder.fs.open_output_stream(path) as f:
            f.write(data)


def metadata_path(folder: Folder, *parts: str) -> str:
    """Path inside `folder.fs` of OUTPUT/_cvray/<parts>."""
    return folder.path_of("/".join((METADATA_DIR, *parts)))
