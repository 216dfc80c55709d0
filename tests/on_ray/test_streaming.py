"""The streamed input of fine-tuning on a real local Ray: the check pass finds the unreadable files,
and the train stream, split over two workers as Ray Train splits it, gives them disjoint shares
that cover the folder, every epoch."""

from __future__ import annotations

import threading

import pytest

from cvray.classification.config import FinetuneConfig
from cvray.classification.finetune import FinetuneRecipe, list_folder
from cvray.errors import DataError
from cvray.on_ray import streaming


def test_check_pass_lists_bad_files_and_the_splits_are_disjoint_every_epoch(ray_local, tiny_folder):
    config = FinetuneRecipe().resolve(FinetuneConfig(data_dir=str(tiny_folder), scratch=True, crop_size=32))
    files, skipped = streaming.check_files(list_folder(config), max_bad_share=0.1)
    assert sorted(name.rsplit("/", 1)[-1] for name, _ in skipped) == ["corrupt.jpg", "notes.txt"]
    assert len(files.splits["train"]) == 64 and len(files.splits["test"]) == 32
    train = streaming.datasets(files, config.decode_size, seed=0)["train"]
    shards = train.streaming_split(2, equal=True)
    for _epoch in range(2):
        seen = [[], []]

        def read(i, seen=seen):
            for batch in shards[i].iter_batches(batch_size=8, batch_format="pyarrow"):
                seen[i] += batch.column("name").to_pylist()
                assert min(batch.column("height").to_pylist() + batch.column("width").to_pylist()) == 41  # 32 x 288/224

        threads = [threading.Thread(target=read, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        assert len(seen[0]) == len(seen[1]) == 32  # equal shares: the same number of steps
        assert not set(seen[0]) & set(seen[1])
        assert set(seen[0]) | set(seen[1]) == {f.name for f in files.splits["train"]}
    with pytest.raises(DataError, match="unreadable"):
        streaming.check_files(list_folder(config), max_bad_share=0.0)
