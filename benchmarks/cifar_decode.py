"""How fast load_cifar10 reads CIFAR-10 (train + test, 60,000 images) in each format, and how
its JPEG decoder compares with plain Pillow, side by side in one run. Prints one JSON object.

The Parquet folder (default: /work/shared/data/cifar10, JPEG bytes) is read as is; the same
images are also written as train/<class>/*.jpg folders and, decoded, as torchvision-style
python pickles into a temporary folder, so all three formats hold the same pixels.

    python benchmarks/cifar_decode.py [PARQUET_DIR]
"""

from __future__ import annotations

import io
import json
import os
import pickle
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image

import _bootstrap  # noqa: F401 - first: puts the repository root on sys.path
from cvray.classification import cifar
from cvray.classification.datasets import ImageClassData


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(min(times), 3)


def pil_serial(blobs: list[bytes]) -> np.ndarray:
    return np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs]).transpose(0, 3, 1, 2)


def write_other_formats(parquet_dir: str, out: Path, reference: ImageClassData) -> None:
    """folders (the original JPEG bytes) and python pickles (decoded pixels) of the same images."""
    for split in ("train", "test"):
        table = pq.read_table(os.path.join(parquet_dir, f"{split}.parquet"), columns=["image", "label"])
        rows = zip(table.column("image").to_pylist(), table.column("label").to_pylist(), strict=True)
        for i, (blob, label) in enumerate(rows):
            folder = out / "folders" / split / cifar.CIFAR10_CLASSES[label]
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{i:05d}.jpg").write_bytes(blob)
    py = out / "python" / cifar.PYTHON_DIR
    py.mkdir(parents=True)
    chunks = np.array_split(np.arange(len(reference.train_labels)), 5)
    batches = [(f"data_batch_{k + 1}", reference.train_images[idx], reference.train_labels[idx])
               for k, idx in enumerate(chunks)]
    batches.append(("test_batch", reference.test_images, reference.test_labels))
    for name, x, y in batches:
        batch = {b"data": x.reshape(len(x), -1).numpy(), b"labels": y.tolist()}
        (py / name).write_bytes(pickle.dumps(batch, protocol=2))


def main() -> None:
    parquet_dir = sys.argv[1] if len(sys.argv) > 1 else "/work/shared/data/cifar10"
    blobs = []
    for split in ("train", "test"):
        table = pq.read_table(os.path.join(parquet_dir, f"{split}.parquet"), columns=["image"])
        blobs += table.column("image").to_pylist()
    reference = cifar.load_cifar10(parquet_dir, download=False)
    name = str
    result = {"images": len(blobs), "cpu_count": os.cpu_count(),
              "torch_threads": torch.get_num_threads(),
              "load_average_1min_at_start": round(os.getloadavg()[0], 2)}
    result["pixels_identical_to_pillow"] = bool(np.array_equal(cifar._decode_all(blobs, name), pil_serial(blobs)))
    with tempfile.TemporaryDirectory() as tmp:
        write_other_formats(parquet_dir, Path(tmp), reference)
        for fmt, folder in (("parquet", parquet_dir), ("folders", f"{tmp}/folders"), ("python", f"{tmp}/python")):
            data = cifar.load_cifar10(folder, download=False)
            assert data.source == fmt and len(data.train_labels) + len(data.test_labels) == len(blobs)
            result[f"load_{fmt}_s"] = best_of(lambda folder=folder: cifar.load_cifar10(folder, download=False))
        cifar._LOCAL_THREADS = 2  # the same folders read by 2 threads
        result["load_folders_2_threads_s"] = best_of(lambda: cifar.load_cifar10(f"{tmp}/folders", download=False))
        cifar._LOCAL_THREADS = 1
        result["load_parquet_5000_train_1000_test_s"] = best_of(
            lambda: cifar.load_cifar10(parquet_dir, download=False, train_samples=5000, test_samples=1000))
    result["decode_1_thread_s"] = best_of(lambda: cifar._decode_all(blobs, name, threads=1))
    result["decode_2_threads_s"] = best_of(lambda: cifar._decode_all(blobs, name, threads=2))
    result["decode_pillow_serial_s"] = best_of(lambda: pil_serial(blobs))
    result["pillow_over_cvray"] = round(result["decode_pillow_serial_s"] / result["decode_1_thread_s"], 2)
    result["decode_2_threads_over_1"] = round(result["decode_2_threads_s"] / result["decode_1_thread_s"], 2)
    result["folders_2_threads_over_1"] = round(result["load_folders_2_threads_s"] / result["load_folders_s"], 2)
    result["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)  # other processes skew timings
    print(json.dumps(result))


if __name__ == "__main__":
    main()
