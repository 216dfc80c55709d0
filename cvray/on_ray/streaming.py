"""Training data too large to hold decoded: Ray Data decodes it on the cluster's CPUs every epoch
and each Ray Train worker reads its own shard (ray.train.get_dataset_shard).

Before training, one pass over every file (decoded at a small draft size, which still reads the
whole file) finds the unreadable ones: they are skipped and listed as in the memory path, and
too many of them are an error before the run folder is touched. Then, per epoch: tasks read and
decode (shorter side at decode_size) in blocks of a file order shuffled once, the train stream is
split over the workers with equal shares (Ray Train's streaming_split: disjoint, the same number
of batches on every worker, as DDP needs) and shuffled within a local buffer seeded per epoch and
worker; the test stream is read whole by rank 0.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa
import ray
import torch

from cvray.classification.datasets import Batch, RaggedImages, epoch_seed, world
from cvray.classification.finetune import FolderFiles, decode_to_array
from cvray.classification.image_folders import check_bad_share, read_file
from cvray.errors import first_line

DECODE_CPUS = 0.25
"""CPUs a decode task asks for: small, so tasks fit beside the training workers."""
CHECK_SIZE = 32
"""The validation pass decodes at this shorter side (JPEG draft mode: a fraction of full cost)."""
SHUFFLE_BUFFER_BATCHES = 4
_DECODED = pa.schema([("pixels", pa.binary()), ("height", pa.int32()), ("width", pa.int32()),
                      ("label", pa.int64()), ("name", pa.string())])


def quiet_ray_data(verbose: bool = False) -> None:
    """No Ray Data progress bars or per-dataset INFO lines (every epoch starts two datasets on every
    worker): the epoch line is the progress. verbose keeps them."""
    if verbose:
        return
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")  # read when Ray Data sets up its logging
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def _records(files) -> list[dict]:
    return [{"path": f.path, "name": f.name, "label": f.label} for f in files]


def _check_batch(batch: pa.Table, *, fs, size: int) -> pa.Table:
    """Ray Data task: the unreadable files of the batch (name, reason); good files leave nothing."""
    decode, bad = decode_to_array(size), []
    for row in batch.to_pylist():
        try:
            decode(read_file(fs, row["path"]), row["name"])
        except Exception as exc:  # noqa: BLE001 - a bad file is a row of the answer
            bad.append({"name": row["name"], "reason": first_line(exc).removeprefix(f"{row['name']}: ")})
    return pa.Table.from_pylist(bad, schema=pa.schema([("name", pa.string()), ("reason", pa.string())]))


def _decode_batch(batch: pa.Table, *, fs, size: int) -> pa.Table:
    """Ray Data task: files -> decoded RGB pixels, (h, w, 3) row-major, with their labels. A file
    that fails now (it passed the check) is dropped: one sample fewer, never a stopped run."""
    decode, rows = decode_to_array(size), []
    for row in batch.to_pylist():
        try:
            array = decode(read_file(fs, row["path"]), row["name"])
        except Exception:  # noqa: BLE001
            continue
        rows.append({"pixels": array.tobytes(), "height": array.shape[0], "width": array.shape[1],
                     "label": row["label"], "name": row["name"]})
    return pa.Table.from_pylist(rows, schema=_DECODED)


def check_files(files: FolderFiles, max_bad_share: float) -> tuple[FolderFiles, list[tuple[str, str]]]:
    """The files that decode, and (file, reason) for those that do not; DataError when a split has
    more than max_bad_share of them. One Ray Data pass over every file."""
    skipped, good = [], {}
    for split, items in files.splits.items():
        ds = ray.data.from_items(_records(items), override_num_blocks=max(1, min(len(items) // 8, 200)))
        bad = ds.map_batches(_check_batch, fn_kwargs={"fs": files.fs, "size": CHECK_SIZE},
                             batch_format="pyarrow", batch_size=None, num_cpus=DECODE_CPUS).take_all()
        pairs = [(r["name"], r["reason"]) for r in bad]
        check_bad_share(len(pairs), len(items), max_bad_share, f"files of {files.root}/{split}", pairs[:1])
        names = {name for name, _ in pairs}
        good[split] = [f for f in items if f.name not in names]
        skipped += pairs
    return FolderFiles(files.root, files.classes, good, files.fs), skipped


def datasets(files: FolderFiles, decode_size: int, seed: int) -> dict[str, ray.data.Dataset]:
    """{"train", "test"} streams of decoded images; the file order is shuffled once (seeded)."""
    out = {}
    for split, items in files.splits.items():
        order = np.random.default_rng(seed).permutation(len(items))
        records = [_records(items)[i] for i in order]
        ds = ray.data.from_items(records, override_num_blocks=max(1, min(len(records) // 16, 400)))
        if split == "train":
            ds = ds.randomize_block_order()  # a new block order each epoch
        out[split] = ds.map_batches(_decode_batch, fn_kwargs={"fs": files.fs, "size": decode_size},
                                    batch_format="pyarrow", batch_size=None, num_cpus=DECODE_CPUS)
    return out


class StreamSource:
    """An EpochSource over this worker's Ray Data shards (train: split; test: whole, read by rank 0)."""

    def __init__(self, classes: list[str], num_train: int, device: torch.device, seed: int):
        self.classes = list(classes)
        self.rank, self.world_size = world()
        self.device, self.seed = device, seed
        self.num_train = num_train // self.world_size  # streaming_split(equal=True) shares
        self.train = ray.train.get_dataset_shard("train")
        self.test = ray.train.get_dataset_shard("test")

    def train_batches(self, epoch: int, batch_size: int) -> tuple[Iterable[Batch], int]:
        batches = self.train.iter_batches(
            batch_size=batch_size, batch_format="pyarrow", drop_last=False,
            local_shuffle_buffer_size=SHUFFLE_BUFFER_BATCHES * batch_size,
            local_shuffle_seed=epoch_seed(self.seed, epoch) * 1024 + self.rank,
        )
        return self._to_device(batches), self.num_train

    def test_batches(self, batch_size: int) -> Iterable[Batch]:
        if self.rank != 0:
            return iter(())
        return self._to_device(self.test.iter_batches(batch_size=batch_size, batch_format="pyarrow"))

    def val_batches(self, batch_size: int) -> Iterable[Batch]:
        return iter(())  # a validation split needs the in-memory path (the driver refuses it here)

    def _to_device(self, tables: Iterable[pa.Table]) -> Iterator[Batch]:
        for table in tables:
            heights = table.column("height").to_pylist()
            widths = table.column("width").to_pylist()
            arrays = [np.frombuffer(p, np.uint8).reshape(h, w, 3)
                      for p, h, w in zip(table.column("pixels").to_pylist(), heights, widths, strict=True)]
            ragged = RaggedImages.from_arrays(arrays).to(self.device, non_blocking=True)  # one copy per batch
            labels = torch.tensor(table.column("label").to_pylist(), dtype=torch.int64).to(self.device)
            yield ragged.views(range(len(ragged))), labels
