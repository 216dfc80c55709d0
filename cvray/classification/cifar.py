"""CIFAR-10 as uint8 tensors from any of three formats, detected by content (see docs/data.md):
torchvision's python pickles (`cifar-10-batches-py/`), Parquet (`train.parquet` + `test.parquet`,
encoded `image` bytes + int `label`) or image folders (`train/<class>/*`, `test/<class>/*`).
A new or empty local folder gets the official archive downloaded (a folder holding something else
is refused, naming what it holds); object-store URIs are read through cvray.storage. The result is
an ImageClassData of uint8 (N, 3, 32, 32) images. No Ray here. Every failure is a one-line DataError naming the file.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch

from cvray import images, storage
from cvray.classification import image_folders
from cvray.classification.cifar_python import (
    PYTHON_DIR,
    PYTHON_TEST_FILE,
    PYTHON_TRAIN_FILES,
    SIDE,
    check_labels,
    read_python_split,
)
from cvray.classification.config import CIFAR10_CLASSES
from cvray.classification.datasets import ImageClassData
from cvray.downloads import download_archive
from cvray.errors import DataError, first_line

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"

_HINT = "put cifar-10-batches-py/, train.parquet+test.parquet or train/<class>/ + test/<class>/ folders there"
# Decoding a 32x32 JPEG takes microseconds and the per-image Python work holds the GIL, so extra
# threads only slowed local reads down (benchmarks/cifar_decode.py); they do hide object-store latency.
_LOCAL_THREADS = 1
_REMOTE_THREADS = 16
_CHUNK = 2048  # images per decode task
_SHOWN = 5  # entries named when refusing a folder that holds no CIFAR-10


# ----------------------------------------------------------------------------- public API

def detect_format(data_dir: str) -> str | None:
    """"python", "parquet" or "folders" by what `data_dir` holds; None if none (or no folder)."""
    found = _locate(data_dir)
    return found[0] if found else None


def load_cifar10(data_dir: str, *, download: bool = True, train_samples: int | None = None,
                 test_samples: int | None = None, classes: Sequence[str] | None = None,
                 max_bad_share: float = image_folders.MAX_BAD_SHARE) -> ImageClassData:
    """Read CIFAR-10 from `data_dir` (local path or URI), downloading it first if needed.

    `train_samples` / `test_samples` keep the first N images of each split (in file order for
    python and parquet; after a fixed default_rng(0) shuffle for folders); None keeps all.
    `classes`: keep only these CIFAR-10 classes (labels renumbered in this order), e.g. to
    pretrain on eight classes and fine-tune on the other two; the sample limits apply after it.
    The folders format skips unreadable files (listed in the result's `skipped`) up to
    `max_bad_share` of a split; the other formats are all-or-nothing.
    """
    for name, n in (("train_samples", train_samples), ("test_samples", test_samples)):
        if n is not None and n <= 0:
            raise DataError(f"{name} must be a positive number of images, got {n}")
    keep = _class_indices(classes)
    found = _locate(data_dir)
    if found is None:
        _require_download(data_dir, download)
        download_cifar10(data_dir, url=CIFAR10_URL, md5=CIFAR10_MD5)  # read at call time
        found = _locate(data_dir)
        if found is None:
            raise DataError(f"downloaded CIFAR-10 into {data_dir} but cannot find it there")
    fmt, base = found
    splits, skipped = {}, []
    for split, limit in (("train", train_samples), ("test", test_samples)):
        # a class subset reads everything, then keeps the first `limit` of those classes
        read_limit = limit if keep is None else None
        if fmt == "folders":
            images, labels, bad = _read_folders(base, split, read_limit, max_bad_share)
            skipped += bad
        else:
            images, labels = {"python": read_python_split, "parquet": _read_parquet}[fmt](base, split, read_limit)
        if keep is not None:
            images, labels = _subset(images, labels, keep, limit)
        if len(labels) == 0:
            raise DataError(f"{data_dir}: the {fmt} format's {split} split holds no images")
        splits[split] = _as_tensors(images, labels)
    names = list(CIFAR10_CLASSES) if keep is None else [CIFAR10_CLASSES[i] for i in keep]
    return ImageClassData(*splits["train"], *splits["test"], names, fmt, skipped)


def _class_indices(classes: Sequence[str] | None) -> list[int] | None:
    if classes is None:
        return None
    unknown = [c for c in classes if c not in CIFAR10_CLASSES]
    if unknown or len(set(classes)) < 2 or len(set(classes)) != len(classes):
        raise DataError(f"classes must be two or more distinct CIFAR-10 names ({' '.join(CIFAR10_CLASSES)}); "
                        f"got {', '.join(classes)}")
    return [CIFAR10_CLASSES.index(c) for c in classes]


def _subset(images: np.ndarray, labels: np.ndarray, keep: list[int], limit: int | None):
    """The rows whose label is in `keep` (first `limit` of them), labels renumbered 0..len(keep)-1."""
    rows = np.flatnonzero(np.isin(labels, keep))[:limit]
    remap = np.full(10, -1, np.int64)
    remap[keep] = np.arange(len(keep))
    return images[rows], remap[labels[rows]]


def download_cifar10(data_dir: str, *, url: str = CIFAR10_URL, md5: str = CIFAR10_MD5) -> None:
    """Download and unpack CIFAR-10 (python format) into the local folder `data_dir`, once
    (file-locked, md5-checked, atomic: cvray.downloads)."""
    root = _local_root(data_dir)
    if root is None:
        raise DataError(f"no CIFAR-10 found in {data_dir}: downloads only go to local folders; {_HINT}")
    download_archive(root, url=url, algorithm="md5", digest=md5, member=PYTHON_DIR,
                     present=lambda: _locate(root) is not None, what="CIFAR-10", hint=_HINT)


# ----------------------------------------------------------------------------- detection

def _locate(data_dir: str) -> tuple[str, str] | None:
    """(format, folder to read from) or None. The python folder may be data_dir or inside it."""
    fs, root = storage.resolve(data_dir)
    kinds = _entry_types(fs, root)
    if kinds is None:
        return None
    if kinds.get(PYTHON_DIR) == "dir":
        return "python", storage.join(data_dir, PYTHON_DIR)
    if kinds.get(PYTHON_TRAIN_FILES[0]) == "file" or kinds.get(PYTHON_TEST_FILE) == "file":
        return "python", data_dir
    if kinds.get("train.parquet") == "file" or kinds.get("test.parquet") == "file":
        return "parquet", data_dir
    if kinds.get("train") == "dir" or kinds.get("test") == "dir":
        return "folders", data_dir
    return None


def _entry_types(fs: pafs.FileSystem, path: str) -> dict[str, str] | None:
    """{name: "file" | "dir"} of a folder's entries; None when it is not a folder."""
    try:
        if fs.get_file_info(path).type != pafs.FileType.Directory:
            return None
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    except OSError as exc:  # object stores: no such bucket, no credentials, no network
        raise DataError(f"cannot list {path}: {first_line(exc)}") from None
    kinds = {pafs.FileType.File: "file", pafs.FileType.Directory: "dir"}
    return {i.base_name: kinds.get(i.type, "other") for i in infos}


def _local_root(data_dir: str) -> str | None:
    """The local folder behind a path or file:// URI; None for object stores (never contacted)."""
    if storage.is_uri(data_dir) and not str(data_dir).startswith("file://"):
        return None
    return storage.resolve(data_dir)[1]


def _require_download(data_dir: str, download: bool) -> None:
    """Refuse unless downloading is on and `data_dir` is new or empty: a folder that already holds
    something else is most likely a wrong --data-dir, and the archive must not land among a user's files."""
    fs, root = storage.resolve(data_dir)
    kind = fs.get_file_info(root).type
    found = _visible_entries(fs, root) if kind == pafs.FileType.Directory else []
    if download and not found:
        return
    if found:
        shown = ", ".join(found[:_SHOWN]) + (f" and {len(found) - _SHOWN} more" if len(found) > _SHOWN else "")
        state = f"it holds {shown}"
    else:
        state = {pafs.FileType.NotFound: "it does not exist", pafs.FileType.File: "it is a file"}.get(
            kind, "it holds none of the three formats")
    cure = "; download is off" if not download else "; CIFAR-10 is only downloaded into a new or empty folder"
    raise DataError(f"no CIFAR-10 found in {data_dir} ({state}{cure}): {_HINT}")


def _visible_entries(fs: pafs.FileSystem, root: str) -> list[str]:
    """Sorted names in `root` (folders with a trailing /), leaving out hidden ones: the download's own
    lock and staging files start with a dot, and so do .DS_Store and the like."""
    kinds = _entry_types(fs, root) or {}
    return sorted(f"{n}/" if k == "dir" else n for n, k in kinds.items() if not n.startswith("."))


# ----------------------------------------------------------------------------- parquet

def _read_parquet(folder: str, split: str, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    path = storage.join(folder, f"{split}.parquet")
    if not storage.exists(path):
        raise DataError(f"{path}: missing (the Parquet format needs train.parquet and test.parquet)")
    table = _read_rows(path, limit)
    if table.column("label").null_count:
        raise DataError(f"{path}: column 'label' has {table.column('label').null_count} empty values")
    labels = table.column("label").to_numpy(zero_copy_only=False).astype(np.int64)
    check_labels(labels, path)
    blobs = table.column("image").to_pylist()
    return _decode_all(blobs, lambda i: f"{path} row {i}", threads=_LOCAL_THREADS), labels


def _read_rows(path: str, limit: int | None) -> pa.Table:
    """The `image` and `label` columns of the first `limit` rows, reading only the row groups needed."""
    fs, p = storage.resolve(path)
    try:
        pf = pq.ParquetFile(fs.open_input_file(p))
    except Exception as exc:
        raise DataError(f"{path}: not a readable Parquet file ({first_line(exc)})") from None
    _check_schema(pf.schema_arrow, path)
    groups, rows = [], 0
    for g in range(pf.num_row_groups):
        if limit is not None and rows >= limit:
            break
        groups.append(g)
        rows += pf.metadata.row_group(g).num_rows
    try:
        table = pf.read_row_groups(groups, columns=["image", "label"])
    except Exception as exc:
        raise DataError(f"{path}: cannot read rows ({first_line(exc)})") from None
    return table.slice(0, limit) if limit is not None else table


def _check_schema(schema: pa.Schema, path: str) -> None:
    for column in ("image", "label"):
        if column not in schema.names:
            raise DataError(f"{path}: no '{column}' column (found: {', '.join(schema.names)}); "
                            "expected image = encoded JPEG/PNG bytes, label = int 0..9")
    image_type, label_type = schema.field("image").type, schema.field("label").type
    if not (pa.types.is_binary(image_type) or pa.types.is_large_binary(image_type)):
        raise DataError(f"{path}: column 'image' is {image_type}, expected binary (encoded JPEG/PNG bytes)")
    if not pa.types.is_integer(label_type):
        raise DataError(f"{path}: column 'label' is {label_type}, expected an integer type")


# ----------------------------------------------------------------------------- image folders

def _read_folders(folder: str, split: str, limit: int | None, max_bad_share: float):
    """One split of the folders format through the shared tolerant reader: bad files are skipped
    (listed in the result) up to `max_bad_share` of the split."""
    listing = image_folders.list_labelled_folder(folder, classes=CIFAR10_CLASSES, allow_empty_classes=True)
    files = listing.splits[split]
    order = np.random.default_rng(0).permutation(len(files))[:limit]  # classes interleaved
    threads = _LOCAL_THREADS if listing.is_local else _REMOTE_THREADS
    decoded = image_folders.decode_files(
        [files[i] for i in order], listing.fs, _decode_one, threads=threads, max_bad_share=max_bad_share,
        what=f"files of {storage.join(folder, split)}",
    )
    images = np.stack(decoded.arrays) if decoded.arrays else np.empty((0, 3, SIDE, SIDE), np.uint8)
    return images, decoded.labels, decoded.skipped


# ----------------------------------------------------------------------------- decoding

def _decode_all(items: list, name_of: Callable[[int], str], *, read: Callable | None = None,
                threads: int = 1) -> np.ndarray:
    """Decode encoded images (or files, with `read`) into one (N, 3, 32, 32) uint8 array,
    in chunks of at most _CHUNK images; with threads > 1 the chunks run on a thread pool."""
    out = np.empty((len(items), 3, SIDE, SIDE), dtype=np.uint8)
    step = max(1, min(_CHUNK, -(-len(items) // threads)))  # every thread gets work

    def decode_range(start: int) -> None:
        stop = min(start + step, len(items))
        blobs = [read(items[i]) if read else items[i] for i in range(start, stop)]
        _decode_chunk(blobs, out[start:stop], lambda j: name_of(start + j))

    with ThreadPoolExecutor(max_workers=threads) as pool:
        for _ in pool.map(decode_range, range(0, len(items), step)):
            pass  # re-raises the first error, in row order
    return out


def _decode_chunk(blobs: list, out: np.ndarray, name_of: Callable[[int], str]) -> None:
    """Fill out[j] (3, 32, 32) from blobs[j]: JPEGs in one libjpeg-turbo call, the rest via Pillow."""
    done = _decode_jpegs(blobs, out)
    for j, blob in enumerate(blobs):
        if j not in done:
            out[j] = _decode_pil(blob, name_of(j))


def _decode_jpegs(blobs: list, out: np.ndarray) -> set[int]:
    """Decode the 32x32 JPEGs among blobs with the fast decoder (if any); the indices it filled."""
    jpegs = [j for j, blob in enumerate(blobs) if blob and blob[:2] == b"\xff\xd8"]
    decode = _jpeg_decoder() if jpegs else None  # no JPEGs: torchvision need not be imported
    if decode is None:
        return set()
    try:
        decoded = decode([torch.frombuffer(bytearray(blobs[j]), dtype=torch.uint8) for j in jpegs])
    except (RuntimeError, ValueError, TypeError):
        return set()  # one bad file fails the whole call: Pillow then names it
    done = set()
    for j, image in zip(jpegs, decoded, strict=True):
        if image.shape == (3, SIDE, SIDE):
            out[j] = image.numpy()
            done.add(j)
    return done


@functools.cache
def _jpeg_decoder() -> Callable | None:
    """A batch JPEG decoder for 32x32 images (list of byte tensors -> list of (3, H, W) uint8), the
    fastest one installed (benchmarks/image_decoders.py: same pixels as Pillow on CIFAR's JPEGs):
    torchvision's libjpeg-turbo (3-4x Pillow batched; deprecated since torchvision 0.29), else
    TorchCodec's, its successor (~3x Pillow; the `torchcodec` extra), else None: Pillow."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:
        pass
    else:
        return functools.partial(decode_jpeg, mode=ImageReadMode.RGB, apply_exif_orientation=True)
    try:
        from torchcodec.decoders import decode_jpeg as codec_jpeg
    except (ImportError, OSError, RuntimeError):  # absent, or its native libraries missing
        return None
    return lambda tensors: [codec_jpeg(t, mode="RGB") for t in tensors]


def _decode_one(blob: bytes | None, name: str) -> np.ndarray:
    """One file of the folders format -> (3, 32, 32) uint8: the fast JPEG decoder when it applies,
    else Pillow (which also names what is wrong with a bad file)."""
    out = np.empty((1, 3, SIDE, SIDE), dtype=np.uint8)
    if blob and _decode_jpegs([blob], out):
        return out[0]
    return _decode_pil(blob, name)


def _decode_pil(blob: bytes | None, name: str) -> np.ndarray:
    """Any image Pillow reads, any mode -> (3, 32, 32) uint8 RGB, or a DataError naming `name`."""
    img = images.decode_image(blob or b"", name=name)
    if img.size != (SIDE, SIDE):
        raise DataError(f"{name}: image is {img.size[0]}x{img.size[1]} pixels, CIFAR-10 images must be 32x32")
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


# ----------------------------------------------------------------------------- helpers

def _as_tensors(images_u8: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(np.ascontiguousarray(images_u8)), torch.from_numpy(labels.astype(np.int64))
