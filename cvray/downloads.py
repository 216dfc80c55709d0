"""Downloading a dataset archive once: file-locked, checksummed, unpacked atomically. No Ray.

Safe for concurrent callers on one node (Ray workers sharing a disk): a file lock in the target
folder serialises them and `present()` is re-checked under it. The archive is downloaded and
unpacked in a hidden temporary folder and the finished member folder moved in with one rename,
so a failed or interrupted download leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable

from cvray.errors import DataError, first_line


def download_archive(
    root: str, *, url: str, algorithm: str, digest: str, member: str, present: Callable[[], bool],
    what: str, hint: str,
) -> None:
    """Make `root/member/` exist by unpacking the archive at `url` (its `algorithm` hex digest must
    be `digest`), unless `present()` says the data is there already. DataError (one line) on
    failure, naming `what` and the `hint` (where else the data can come from)."""
    from filelock import FileLock  # imported here: only downloads need it

    try:
        os.makedirs(root, exist_ok=True)
        with FileLock(os.path.join(root, f".{member}.lock")):
            if not present():  # else another process finished it while we waited
                _download_locked(root, url, algorithm, digest, member, what, hint)
    except OSError as exc:  # unwritable folder, a file in the way
        raise DataError(f"cannot download {what} into {root} ({first_line(exc)}): {hint}") from None


def _download_locked(root, url, algorithm, digest, member, what, hint) -> None:
    staging = tempfile.mkdtemp(prefix=f".{member}-download-", dir=root)
    try:
        _fetch_into(staging, url, algorithm, digest, member, what)
        os.replace(os.path.join(staging, member), os.path.join(root, member))
    except Exception as exc:
        raise DataError(f"no {what} found in {root} and the download from {url} failed "
                        f"({first_line(exc)}): {hint}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _fetch_into(folder: str, url: str, algorithm: str, expected: str, member: str, what: str) -> None:
    """Download the archive into `folder`, check its digest and unpack it there (then drop it)."""
    from tqdm import tqdm  # only downloads need it

    archive, digest = os.path.join(folder, url.rsplit("/", 1)[-1] or "archive"), hashlib.new(algorithm)
    with urllib.request.urlopen(url, timeout=60) as response, open(archive, "wb") as f, \
            tqdm(total=response.length, unit="B", unit_scale=True, desc=what, disable=None) as bar:
        while chunk := response.read(1 << 20):
            f.write(chunk)
            digest.update(chunk)
            bar.update(len(chunk))
    if digest.hexdigest() != expected:
        raise DataError(f"{algorithm} {digest.hexdigest()} instead of {expected}")
    _unpack(archive, folder)
    os.remove(archive)
    if not os.path.isdir(os.path.join(folder, member)):
        raise DataError(f"the archive holds no {member}/ folder")


def _unpack(archive: str, folder: str) -> None:
    """tar.gz or zip; members may not leave `folder` (absolute paths, '..', links)."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            root = os.path.realpath(folder)
            for name in zf.namelist():
                target = os.path.realpath(os.path.join(folder, name))
                if target != root and not target.startswith(root + os.sep):
                    raise DataError(f"the archive's member {name!r} would land outside the folder")
            zf.extractall(folder)
        return
    with tarfile.open(archive, "r:*") as tar:
        # "data" filter: no absolute paths, links or files outside `folder` (Python >= 3.10.12)
        tar.extractall(folder, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
