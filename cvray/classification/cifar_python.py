"""CIFAR-10's python format (`cifar-10-batches-py/`, torchvision's layout) read without
torchvision, which would re-check every file's md5, and without trusting pickle: only the classes
CIFAR batches are made of may be loaded. Part of cvray.classification.cifar; no Ray here.
"""

from __future__ import annotations

import codecs
import io
import pickle

import numpy as np

from cvray import storage
from cvray.errors import DataError, first_line

PYTHON_DIR = "cifar-10-batches-py"
PYTHON_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
PYTHON_TEST_FILE = "test_batch"
SIDE = 32  # CIFAR-10 images are 32x32 RGB


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches (dicts, lists, bytes, numpy arrays) and refuses any other class,
    so a tampered batch cannot name an arbitrary callable. Still: only read data you trust."""

    _reconstruct = np.zeros(1).__reduce__()[0]  # numpy's array-rebuild function, any numpy
    _frombuffer = np.zeros(1).__reduce_ex__(5)[0]  # protocol-5 rebuild function
    _allowed = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy.core.numeric", "_frombuffer"): _frombuffer,
        ("numpy._core.numeric", "_frombuffer"): _frombuffer,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # how protocol 2 stores bytes
    }

    def find_class(self, module: str, name: str):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None


def read_python_split(folder: str, split: str, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    """One split ("train" or "test") as (N, 3, 32, 32) uint8 images and (N,) int64 labels,
    the first `limit` images only (None: all)."""
    batches: list[tuple[np.ndarray, np.ndarray]] = []
    for name in PYTHON_TRAIN_FILES if split == "train" else (PYTHON_TEST_FILE,):
        if limit is not None and sum(len(b[1]) for b in batches) >= limit:
            break  # later batches are never read
        batches.append(_read_batch(storage.join(folder, name)))
    data, labels = (np.concatenate(column)[:limit] for column in zip(*batches, strict=True))
    return data.reshape(-1, 3, SIDE, SIDE), labels  # each row: R plane, G plane, B plane


def _read_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> ((n, 3072) uint8, (n,) int64)."""
    if not storage.exists(path):
        raise DataError(f"{path}: missing (a CIFAR-10 python folder needs {', '.join(PYTHON_TRAIN_FILES)}, "
                        f"{PYTHON_TEST_FILE})")
    try:
        batch = _NumpyOnlyUnpickler(io.BytesIO(storage.read_bytes(path)), encoding="bytes").load()
        data, labels = _field(batch, "data"), _field(batch, "labels")
        data, labels = np.asarray(data), np.asarray(labels, dtype=np.int64)
    except Exception as exc:  # truncated/corrupt pickles raise many types
        raise DataError(f"{path}: not a readable CIFAR-10 batch ({first_line(exc)})") from None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * SIDE * SIDE:
        raise DataError(f"{path}: data is {data.dtype} {data.shape}, expected uint8 (N, 3072)")
    if labels.shape != (len(data),):
        raise DataError(f"{path}: {len(data)} images but labels of shape {labels.shape}")
    check_labels(labels, path)
    return data, labels


def _field(batch, key: str):
    if not isinstance(batch, dict):
        raise TypeError(f"expected a dict, found {type(batch).__name__}")
    if key.encode() not in batch and key not in batch:
        raise KeyError(f"no '{key}' entry")
    return batch.get(key.encode(), batch.get(key))


def check_labels(labels: np.ndarray, path: str) -> None:
    """A one-line DataError naming `path` unless every label is a CIFAR-10 class index 0..9."""
    bad = np.flatnonzero((labels < 0) | (labels > 9))
    if bad.size:
        raise DataError(f"{path}: label {labels[bad[0]]} at row {bad[0]} is outside 0..9 "
                        f"({bad.size} bad labels)")
