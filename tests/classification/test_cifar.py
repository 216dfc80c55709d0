"""cvray.classification.cifar: the three CIFAR-10 formats, subsets, URIs, downloads and every error path.

Each test writes tiny real files (40 train / 20 test random 32x32 images) in tmp_path.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from cvray.classification import cifar
from cvray.classification.cifar import CIFAR10_CLASSES, detect_format, download_cifar10, load_cifar10
from cvray.classification.datasets import ImageClassData
from cvray.errors import DataError

N_TRAIN, N_TEST = 40, 20


# ----------------------------------------------------------------------------- writers

def random_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, 3, 32, 32) uint8 random images and labels cycling 0..9."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), np.arange(n) % 10


@pytest.fixture(scope="module")
def splits():
    return {"train": random_split(N_TRAIN, 1), "test": random_split(N_TEST, 2)}


def encode(image_chw: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image_chw.transpose(1, 2, 0)).save(buf, format=fmt)
    return buf.getvalue()


def write_python(folder: Path, splits, protocol: int = 2) -> Path:
    """torchvision's layout: 5 train batches + test_batch + batches.meta, bytes keys."""
    out = folder / "cifar-10-batches-py"
    out.mkdir(parents=True)
    train_x, train_y = splits["train"]
    chunks = np.array_split(np.arange(len(train_y)), 5)
    files = [(f"data_batch_{i + 1}", train_x[idx], train_y[idx]) for i, idx in enumerate(chunks)]
    files.append(("test_batch", *splits["test"]))
    for name, x, y in files:
        batch = {b"batch_label": name.encode(), b"labels": [int(v) for v in y],
                 b"data": x.reshape(len(x), 3072), b"filenames": [b"f%d.png" % i for i in range(len(y))]}
        (out / name).write_bytes(pickle.dumps(batch, protocol=protocol))
    meta = {b"label_names": [c.encode() for c in CIFAR10_CLASSES], b"num_vis": 3072}
    (out / "batches.meta").write_bytes(pickle.dumps(meta, protocol=protocol))
    return out


def write_parquet(folder: Path, splits, fmt: str = "PNG", row_group_size: int = 10) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, (x, y) in splits.items():
        table = pa.table({"image": [encode(im, fmt) for im in x], "label": pa.array(y, pa.int64()),
                          "path": [f"{split}/{i}.png" for i in range(len(y))]})
        pq.write_table(table, folder / f"{split}.parquet", row_group_size=row_group_size)
    return folder


def write_folders(folder: Path, splits, fmt: str = "PNG") -> Path:
    for split, (x, y) in splits.items():
        for cls in CIFAR10_CLASSES:
            (folder / split / cls).mkdir(parents=True, exist_ok=True)
        for i, (im, label) in enumerate(zip(x, y, strict=True)):
            (folder / split / CIFAR10_CLASSES[label] / f"{i:04d}.{fmt.lower()}").write_bytes(encode(im, fmt))
    return folder


def parquet_with(path: Path, **columns) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)


def one_line_error(fn, *match: str) -> str:
    with pytest.raises(DataError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message
    for part in match:
        assert part in message, message
    return message


def check_arrays(data: ImageClassData, n_train: int, n_test: int, source: str) -> None:
    assert data.source == source
    assert data.classes == list(CIFAR10_CLASSES)
    assert data.train_images.shape == (n_train, 3, 32, 32) and data.test_images.shape == (n_test, 3, 32, 32)
    for images in (data.train_images, data.test_images):
        assert images.dtype == torch.uint8 and images.is_contiguous() and images.device.type == "cpu"
    for labels, n in ((data.train_labels, n_train), (data.test_labels, n_test)):
        assert labels.dtype == torch.int64 and labels.shape == (n,)
        assert int(labels.min()) >= 0 and int(labels.max()) <= 9


def as_multiset(images: torch.Tensor, labels: torch.Tensor) -> list[tuple[bytes, int]]:
    return sorted((im.numpy().tobytes(), int(lb)) for im, lb in zip(images, labels, strict=True))


# ----------------------------------------------------------------------------- the formats

def test_class_names_are_canonical():
    assert CIFAR10_CLASSES == ("airplane", "automobile", "bird", "cat", "deer",
                               "dog", "frog", "horse", "ship", "truck")


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_python_format_reads_batches_in_order(tmp_path, splits, protocol):
    inner = write_python(tmp_path, splits, protocol)
    for data_dir in (tmp_path, inner):  # the parent folder, or cifar-10-batches-py itself
        assert detect_format(str(data_dir)) == "python"
        data = load_cifar10(str(data_dir), download=False)
        check_arrays(data, N_TRAIN, N_TEST, "python")
        assert torch.equal(data.train_images, torch.from_numpy(splits["train"][0]))
        assert torch.equal(data.train_labels, torch.from_numpy(splits["train"][1]))
        assert torch.equal(data.test_images, torch.from_numpy(splits["test"][0]))
        assert torch.equal(data.test_labels, torch.from_numpy(splits["test"][1]))


def test_lossless_formats_hold_identical_pixels(tmp_path, splits):
    write_python(tmp_path / "py", splits)
    write_parquet(tmp_path / "pq", splits, "PNG")
    write_folders(tmp_path / "dirs", splits, "PNG")
    py = load_cifar10(str(tmp_path / "py"), download=False)
    parquet = load_cifar10(str(tmp_path / "pq"), download=False)
    folders = load_cifar10(str(tmp_path / "dirs"), download=False)
    check_arrays(parquet, N_TRAIN, N_TEST, "parquet")
    check_arrays(folders, N_TRAIN, N_TEST, "folders")
    for split in ("train", "test"):  # parquet keeps row order, folders are shuffled
        py_x, py_y = getattr(py, f"{split}_images"), getattr(py, f"{split}_labels")
        assert torch.equal(getattr(parquet, f"{split}_images"), py_x)
        assert torch.equal(getattr(parquet, f"{split}_labels"), py_y)
        assert as_multiset(getattr(folders, f"{split}_images"), getattr(folders, f"{split}_labels")) == \
            as_multiset(py_x, py_y)


def test_parquet_jpeg_matches_pillow_and_ignores_extra_columns(tmp_path, splits):
    write_parquet(tmp_path, splits, "JPEG")
    data = load_cifar10(str(tmp_path), download=False)
    check_arrays(data, N_TRAIN, N_TEST, "parquet")
    blobs = pq.read_table(tmp_path / "test.parquet").column("image").to_pylist()
    pillow = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")).transpose(2, 0, 1) for b in blobs])
    assert np.array_equal(data.test_images.numpy(), pillow)


def test_folders_convert_modes_and_label_by_class_name(tmp_path):
    gray = np.full((32, 32), 77, np.uint8)
    for split in ("train", "test"):
        for cls in CIFAR10_CLASSES:
            (tmp_path / split / cls).mkdir(parents=True)
    Image.fromarray(gray, "L").save(tmp_path / "train" / "frog" / "a.png")
    Image.new("RGBA", (32, 32), (10, 20, 30, 255)).save(tmp_path / "train" / "ship" / "b.png")
    palette = Image.new("P", (32, 32), 0)
    palette.putpalette([1, 2, 3] + [0] * 765)
    palette.save(tmp_path / "test" / "truck" / "c.png")
    data = load_cifar10(str(tmp_path), download=False)
    check_arrays(data, 2, 1, "folders")
    by_label = {int(lb): im for lb, im in zip(data.train_labels, data.train_images, strict=True)}
    assert set(by_label) == {6, 8}
    assert torch.all(by_label[6] == 77)
    assert by_label[8][:, 0, 0].tolist() == [10, 20, 30]
    assert data.test_labels.tolist() == [9] and data.test_images[0, :, 5, 5].tolist() == [1, 2, 3]


def test_file_uris(tmp_path, splits):
    for name, writer in (("py", write_python), ("pq", write_parquet), ("dirs", write_folders)):
        writer(tmp_path / name, splits)
        local = load_cifar10(str(tmp_path / name), download=False)
        uri = f"file://{tmp_path / name}"
        assert detect_format(uri) == local.source
        remote = load_cifar10(uri, download=False, train_samples=13)
        assert torch.equal(remote.train_images, local.train_images[:13])
        assert torch.equal(remote.test_labels, local.test_labels)


def test_object_store_uris(tmp_path, splits, monkeypatch):
    """s3:// through pyarrow against a moto S3 server on 127.0.0.1 (files uploaded with boto3)."""
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{server.get_host_and_port()[1]}"
        for key, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test",
                           "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(key, value)
        client = boto3.client("s3")
        client.create_bucket(Bucket="cifar")
        for name, writer in (("py", write_python), ("pq", write_parquet), ("dirs", write_folders)):
            writer(tmp_path / name, splits)
            for path in (tmp_path / name).rglob("*"):
                if path.is_file():
                    client.put_object(Bucket="cifar", Key=path.relative_to(tmp_path).as_posix(), Body=path.read_bytes())
            local = load_cifar10(str(tmp_path / name), download=False)
            remote = load_cifar10(f"s3://cifar/{name}", train_samples=9)
            assert remote.source == local.source
            assert torch.equal(remote.train_images, local.train_images[:9])
            assert torch.equal(remote.test_images, local.test_images)
        one_line_error(lambda: load_cifar10("s3://cifar/nothing"), "s3://cifar/nothing", "local folders")
        one_line_error(lambda: load_cifar10("s3://cifar/nothing", download=False), "does not exist")
    finally:
        server.stop()


def test_detect_format_none(tmp_path):
    assert detect_format(str(tmp_path)) is None
    assert detect_format(str(tmp_path / "absent")) is None
    (tmp_path / "notes.txt").write_text("x")
    assert detect_format(str(tmp_path)) is None


# ----------------------------------------------------------------------------- subsets

def test_subsets_take_first_rows_and_read_only_what_they_need(tmp_path, splits):
    write_python(tmp_path / "py", splits)
    write_parquet(tmp_path / "pq", splits, row_group_size=10)
    full = load_cifar10(str(tmp_path / "py"), download=False)
    # corrupt everything past the first python batch / parquet row group: a 7-image subset never reads it
    (tmp_path / "py" / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"junk")
    table = pq.read_table(tmp_path / "pq" / "train.parquet")
    images = table.column("image").to_pylist()
    images[15] = b"not an image"
    pq.write_table(table.set_column(0, "image", pa.array(images, pa.binary())),
                   tmp_path / "pq" / "train.parquet", row_group_size=10)
    for name in ("py", "pq"):
        sub = load_cifar10(str(tmp_path / name), download=False, train_samples=7, test_samples=3)
        check_arrays(sub, 7, 3, full.source if name == "py" else "parquet")
        assert torch.equal(sub.train_images, full.train_images[:7])
        assert torch.equal(sub.test_labels, full.test_labels[:3])
    one_line_error(lambda: load_cifar10(str(tmp_path / "pq"), download=False), "train.parquet row 15")


def test_folder_subsets_are_a_fixed_shuffle_prefix(tmp_path, splits):
    write_folders(tmp_path, splits)
    full = load_cifar10(str(tmp_path), download=False)
    sub = load_cifar10(str(tmp_path), download=False, train_samples=10, test_samples=1000)
    check_arrays(sub, 10, N_TEST, "folders")  # more than there is: everything
    assert torch.equal(sub.train_images, full.train_images[:10])
    assert torch.equal(sub.train_labels, full.train_labels[:10])
    assert len(set(sub.train_labels.tolist())) >= 5  # path order would give only classes 0..2
    assert torch.equal(load_cifar10(str(tmp_path), download=False).train_images, full.train_images)


@pytest.mark.parametrize("kwargs", [{"train_samples": 0}, {"test_samples": -1}])
def test_non_positive_sample_counts(tmp_path, splits, kwargs):
    write_parquet(tmp_path, splits)
    one_line_error(lambda: load_cifar10(str(tmp_path), download=False, **kwargs), next(iter(kwargs)))


# ----------------------------------------------------------------------------- errors

def test_missing_or_empty_dir_without_download(tmp_path):
    missing = tmp_path / "absent"
    one_line_error(lambda: load_cifar10(str(missing), download=False), str(missing), "download is off")
    assert not missing.exists()  # nothing created, nothing tried
    one_line_error(lambda: load_cifar10(str(tmp_path), download=False), "train.parquet")
    assert list(tmp_path.iterdir()) == []


def test_empty_split(tmp_path, splits):
    write_folders(tmp_path, {"train": splits["train"], "test": (splits["test"][0][:0], splits["test"][1][:0])})
    one_line_error(lambda: load_cifar10(str(tmp_path), download=False), "test split holds no images")


def test_python_format_errors(tmp_path, splits):
    folder = write_python(tmp_path, splits)
    good = (folder / "data_batch_2").read_bytes()
    cases = {
        b"\x80\x04garbage": "data_batch_2",
        good[: len(good) // 2]: "data_batch_2",  # truncated
        pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}): "label 10 at row 1",
        pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}): "expected uint8 (N, 3072)",
        pickle.dumps({b"labels": [0]}): "no 'data' entry",
        pickle.dumps([1, 2]): "expected a dict",
        pickle.dumps({b"data": os.getcwd, b"labels": []}): "refusing to load posix.getcwd",
    }
    for content, expected in cases.items():
        (folder / "data_batch_2").write_bytes(content)
        one_line_error(lambda: load_cifar10(str(tmp_path), download=False), "data_batch_2", expected)
    (folder / "data_batch_2").write_bytes(good)
    (folder / "data_batch_4").unlink()
    one_line_error(lambda: load_cifar10(str(tmp_path), download=False), "data_batch_4", "missing")


def test_unpickler_refuses_code_execution(tmp_path, splits):
    marker = tmp_path / "marker"

    class Evil:
        def __reduce__(self):
            return (marker.touch, ())  # creates `marker` if unpickled blindly

    assert pickle.loads(pickle.dumps(Evil())) is None and marker.exists()  # the payload works...
    marker.unlink()
    folder = write_python(tmp_path, splits)
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    one_line_error(lambda: load_cifar10(str(tmp_path), download=False), "test_batch", "refusing to load")
    assert not marker.exists()  # ...but not through cvray


def test_parquet_schema_errors(tmp_path, splits):
    blob = encode(splits["train"][0][0])
    cases = {
        "no_image": ({"label": [1]}, "no 'image' column"),
        "no_label": ({"image": [blob]}, "no 'label' column"),
        "string_image": ({"image": ["abc"], "label": [1]}, "column 'image' is string"),
        "float_label": ({"image": [blob], "label": [1.0]}, "column 'label' is double"),
        "null_label": ({"image": [blob], "label": pa.array([None], pa.int64())}, "empty values"),
        "bad_label": ({"image": [blob, blob], "label": [3, -2]}, "label -2 at row 1"),
        "bad_image": ({"image": [blob, blob, b"\x89PNG broken"], "label": [1, 2, 3]}, "row 2", "not a readable image"),
        "big_image": ({"image": [encode(np.zeros((3, 33, 32), np.uint8))], "label": [1]}, "row 0", "32x33 pixels"),
    }
    for name, (columns, *expected) in cases.items():
        folder = tmp_path / name
        write_parquet(folder, splits)
        parquet_with(folder / "train.parquet", **columns)
        one_line_error(lambda folder=folder: load_cifar10(str(folder), download=False), f"{folder}/train.parquet",
                       *expected)
    (tmp_path / "no_image" / "train.parquet").write_bytes(b"PAR1 not really")
    one_line_error(lambda: load_cifar10(str(tmp_path / "no_image"), download=False), "not a readable Parquet file")
    write_parquet(tmp_path / "no_test", splits)
    (tmp_path / "no_test" / "test.parquet").unlink()
    one_line_error(lambda: load_cifar10(str(tmp_path / "no_test"), download=False), "test.parquet", "missing")


def test_folders_skip_unreadable_files_up_to_the_bad_share(tmp_path, splits):
    write_folders(tmp_path, splits)
    big = tmp_path / "test" / "cat" / "big.png"
    Image.new("RGB", (64, 48)).save(big)
    data = load_cifar10(str(tmp_path), download=False)
    assert data.skipped == [(str(big), "image is 64x48 pixels, CIFAR-10 images must be 32x32")]
    assert len(data.test_labels) == N_TEST and len(data.train_labels) == N_TRAIN  # the rest all read
    one_line_error(lambda: load_cifar10(str(tmp_path), download=False, max_bad_share=0.0),
                   "1 of 21 files", str(big), "64x48", "--max-bad-share")
    big.write_bytes(b"not an image")
    assert "not a readable image" in load_cifar10(str(tmp_path), download=False).skipped[0][1]
    for i in range(3):  # 4 of 24 test files bad: over the default 10%
        (tmp_path / "test" / "dog" / f"empty{i}.png").write_bytes(b"")
    one_line_error(lambda: load_cifar10(str(tmp_path), download=False), "4 of 24 files", "17% > --max-bad-share 0.1")


def test_folder_class_errors(tmp_path, splits):
    write_folders(tmp_path, splits)
    (tmp_path / "train" / "kitten").mkdir()
    one_line_error(lambda: load_cifar10(str(tmp_path), download=False), "kitten", "class folders must be")
    (tmp_path / "train" / "kitten").rmdir()
    (tmp_path / "train" / "cat").rename(tmp_path / "train" / "Cat")
    one_line_error(lambda: load_cifar10(str(tmp_path), download=False), "missing: ['cat']")


def test_class_subsets_renumber_labels(tmp_path, splits):
    write_parquet(tmp_path, splits)
    full = load_cifar10(str(tmp_path), download=False)
    pair = load_cifar10(str(tmp_path), download=False, classes=["dog", "cat"], train_samples=3)
    assert pair.classes == ["dog", "cat"] and len(pair.train_labels) == 3
    want = [i for i, label in enumerate(full.train_labels.tolist()) if label in (5, 3)][:3]
    assert torch.equal(pair.train_images, full.train_images[want])
    assert pair.train_labels.tolist() == [0 if full.train_labels[i] == 5 else 1 for i in want]
    one_line_error(lambda: load_cifar10(str(tmp_path), download=False, classes=["cat", "kitten"]), "kitten")


# ----------------------------------------------------------------------------- downloads

@pytest.fixture
def archive_server(tmp_path, splits, file_server):
    """A 127.0.0.1 HTTP server holding a real cifar-10-python.tar.gz built from the tiny splits."""
    served = file_server.folder
    write_python(tmp_path / "src", splits)
    with tarfile.open(served / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    md5 = hashlib.md5((served / "cifar-10-python.tar.gz").read_bytes()).hexdigest()
    return f"{file_server.url}/cifar-10-python.tar.gz", md5, file_server.gets


def test_download_failure_is_one_line_and_leaves_nothing(tmp_path):
    target = tmp_path / "cifar"
    url = "http://127.0.0.1:9/x.tar.gz"  # connection refused: no network needed
    one_line_error(lambda: download_cifar10(str(target), url=url), str(target), url, "cifar-10-batches-py/")
    assert [p.name for p in target.iterdir()] == [".cifar-10-batches-py.lock"]  # no archive, no staging folder


def test_load_downloads_into_empty_dir(tmp_path, splits, archive_server, monkeypatch):
    url, md5, gets = archive_server
    monkeypatch.setattr(cifar, "CIFAR10_URL", url)
    monkeypatch.setattr(cifar, "CIFAR10_MD5", md5)
    data = load_cifar10(str(tmp_path / "cache"), train_samples=12)
    check_arrays(data, 12, N_TEST, "python")
    assert torch.equal(data.train_images, torch.from_numpy(splits["train"][0][:12]))
    names = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert names == [".cifar-10-batches-py.lock", "cifar-10-batches-py"]
    load_cifar10(str(tmp_path / "cache"))
    assert len(gets) == 1  # the second load finds the data


def test_non_empty_folder_without_cifar_is_refused_not_downloaded_into(tmp_path, archive_server, monkeypatch):
    """A --data-dir that already holds other files is a mistake to report, not a place to download to."""
    url, md5, gets = archive_server
    monkeypatch.setattr(cifar, "CIFAR10_URL", url)
    monkeypatch.setattr(cifar, "CIFAR10_MD5", md5)
    photos = tmp_path / "photos"
    (photos / "holiday").mkdir(parents=True)
    for name in ("notes.txt", "a.jpg", "b.jpg", "c.jpg", "y.png", "z.png"):
        (photos / name).write_bytes(b"x")
    before = sorted(p.name for p in photos.iterdir())
    message = one_line_error(lambda: load_cifar10(str(photos)), str(photos), "a.jpg", "holiday/", "notes.txt",
                             "and 2 more", "new or empty folder", "train.parquet")
    assert "download is off" not in message and "y.png" not in message
    assert gets == [] and sorted(p.name for p in photos.iterdir()) == before  # nothing fetched, nothing written
    (tmp_path / "hidden").mkdir()
    (tmp_path / "hidden" / ".DS_Store").write_bytes(b"x")  # hidden files alone: still an empty folder
    check_arrays(load_cifar10(str(tmp_path / "hidden"), train_samples=12), 12, N_TEST, "python")
    assert len(gets) == 1


def test_concurrent_downloads_fetch_once(tmp_path, archive_server):
    url, md5, gets = archive_server
    errors = []

    def fetch():
        try:
            download_cifar10(str(tmp_path / "cache"), url=url, md5=md5)
        except Exception as exc:  # surfaced in the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=fetch) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(gets) == 1
    assert detect_format(str(tmp_path / "cache")) == "python"


def test_download_with_wrong_checksum_leaves_nothing(tmp_path, archive_server):
    url, _, gets = archive_server
    target = tmp_path / "cache"
    one_line_error(lambda: download_cifar10(str(target), url=url, md5="0" * 32), url, "failed")
    assert len(gets) == 1 and [p.name for p in target.iterdir()] == [".cifar-10-batches-py.lock"]


def test_download_into_a_file_path(tmp_path):
    (tmp_path / "cifar").write_text("not a folder")
    one_line_error(lambda: download_cifar10(str(tmp_path / "cifar"), url="http://127.0.0.1:9/x"),
                   "cannot download CIFAR-10 into")


def test_no_download_into_object_store(tmp_path):
    one_line_error(lambda: download_cifar10("s3://bucket/cifar"), "s3://bucket/cifar", "local folders")
