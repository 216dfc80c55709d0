"""Labelled image folders (`train/<class>/...` and `test/<class>/...`), read tolerantly: the
listing and its checks, and decoding that skips unreadable files, counts them and names them.

Every top-level sub-folder of a split is a class; files below it at any depth belong to it;
hidden names are ignored. Local paths and object-store URIs alike (cvray.folders). Used by the
fine-tuning recipe and by the CIFAR reader's image-folder format. Plain Python; no Ray.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow.fs as pafs

from cvray import folders, storage
from cvray.errors import DataError, first_line

SPLITS = ("train", "test")
LAYOUT = "train/<class>/... and test/<class>/... (every top-level sub-folder of a split is a class)"
MAX_BAD_SHARE = 0.1
"""Default: more than this share of unreadable files in a split is an error, not a skip."""


@dataclass(frozen=True)
class LabelledFile:
    path: str
    """Path inside the folder's filesystem."""
    name: str
    """As the user names it: local path or URI (messages, lists of skipped files)."""
    label: int
    size: int
    """Bytes."""


@dataclass
class LabelledFolder:
    uri: str
    classes: list[str]
    splits: dict[str, list[LabelledFile]]
    fs: pafs.FileSystem
    loose: list[str] = field(default_factory=list)
    """Files lying in a split folder itself, outside every class folder: not used."""

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)


def list_labelled_folder(
    data_dir: str, *, classes: Sequence[str] | None = None, allow_empty_classes: bool = False,
) -> LabelledFolder:
    """List `data_dir`'s splits and check them; DataError (one line) for: a missing split, a class
    in only one split (or, with `classes`, any other set of class folders), an empty class
    (unless allowed), fewer than two classes."""
    found: dict[str, dict[str, list]] = {}
    loose, fs = [], None
    for split in SPLITS:
        folder = folders.open_folder(storage.join(data_dir, split))
        fs = folder.fs
        if folder.fs.get_file_info(folder.path).type != pafs.FileType.Directory:
            raise DataError(f"{data_dir}: no {split}/ folder (expected {LAYOUT})")
        found[split] = {name: [] for name in _class_dirs(folder)}
        for entry in folders.list_files(folder):
            cls, sep, _ = entry.rel.partition("/")
            if not sep:
                loose.append(folder.uri_of(entry.rel))
                continue
            found[split].setdefault(cls, []).append(
                (folder.path_of(entry.rel), folder.uri_of(entry.rel), entry.size))
    names = _check_classes(data_dir, found, classes, allow_empty_classes)
    splits = {
        split: [LabelledFile(path, name, label, size) for label, cls in enumerate(names)
                for path, name, size in sorted(found[split].get(cls, []))]
        for split in SPLITS
    }
    return LabelledFolder(str(data_dir), names, splits, fs, loose)


def _class_dirs(folder: folders.Folder) -> list[str]:
    try:
        infos = folder.fs.get_file_info(pafs.FileSelector(folder.path, recursive=False))
    except OSError as exc:
        raise DataError(f"cannot list {folder.uri}: {first_line(exc)}") from None
    return [i.base_name for i in infos if i.type == pafs.FileType.Directory and not i.base_name.startswith(".")]


def _check_classes(data_dir, found, expected, allow_empty) -> list[str]:
    train, test = set(found["train"]), set(found["test"])
    if expected is not None:
        for split, got in (("train", train), ("test", test)):
            if got != set(expected):
                raise DataError(
                    f"{storage.join(data_dir, split)}: class folders must be {' '.join(expected)}; "
                    f"unexpected: {sorted(got - set(expected))}, missing: {sorted(set(expected) - got)}")
        names = list(expected)
    else:
        for only, other in ((train - test, "test"), (test - train, "train")):
            if only:
                raise DataError(f"{data_dir}: class {sorted(only)[0]!r} has no {other}/ folder "
                                f"(every class needs both splits: {LAYOUT})")
        names = sorted(train)
    if not allow_empty:
        for split in SPLITS:
            empty = [c for c in names if not found[split].get(c)]
            if empty:
                raise DataError(f"{storage.join(data_dir, split)}/{empty[0]}: empty class (no files)")
    if expected is None and len(names) < 2:
        raise DataError(f"{data_dir}: {len(names)} class folder(s) found; classification needs at least two "
                        f"({LAYOUT})")
    return names


def read_file(fs: pafs.FileSystem, path: str) -> bytes:
    """Whole-file read; plain open() locally (pyarrow's per-call cost dominates small files)."""
    if isinstance(fs, pafs.LocalFileSystem):
        with open(path, "rb") as f:
            return f.read()
    with fs.open_input_stream(path) as f:
        return f.read()


@dataclass
class Decoded:
    arrays: list[np.ndarray]
    """What `decode` returned for each good file, in file order."""
    labels: np.ndarray
    """(N,) int64."""
    skipped: list[tuple[str, str]]
    """(file, one-line reason) of every file that could not be read or decoded."""


def decode_files(
    files: Sequence[LabelledFile], fs: pafs.FileSystem, decode: Callable[[bytes, str], np.ndarray], *,
    threads: int = 1, max_bad_share: float = MAX_BAD_SHARE, what: str = "files",
) -> Decoded:
    """Read and decode every file (on `threads` threads; Pillow releases the GIL while decoding).

    decode(data, name) returns an array or raises (DataError for a bad image). Unreadable files are
    skipped and listed; DataError when their share of `files` exceeds `max_bad_share`.
    """
    def one(item: LabelledFile):
        try:
            return decode(read_file(fs, item.path), item.name), None
        except Exception as exc:  # noqa: BLE001 - a bad file is a skipped file, never a crash
            reason = first_line(exc)
            return None, reason.removeprefix(f"{item.name}: ")

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        results = list(pool.map(one, files))
    arrays, labels, skipped = [], [], []
    for item, (array, reason) in zip(files, results, strict=True):
        if reason is None:
            arrays.append(array)
            labels.append(item.label)
        else:
            skipped.append((item.name, reason))
    check_bad_share(len(skipped), len(files), max_bad_share, what, skipped[:1])
    return Decoded(arrays, np.asarray(labels, dtype=np.int64), skipped)


def check_bad_share(bad: int, total: int, max_bad_share: float, what: str, example: Sequence = ()) -> None:
    if total and bad / total > max_bad_share:
        first = f"; e.g. {example[0][0]}: {example[0][1]}" if example else ""
        raise DataError(f"{bad} of {total} {what} are unreadable ({bad / total:.0%} > --max-bad-share "
                        f"{max_bad_share:g}){first}")
