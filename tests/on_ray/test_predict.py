"""The predict job end to end on a real local Ray (Ray Data actors; a CIFAR run trained a few steps
in-process and a hand-written torchvision ResNet-18 run with the crop preset), plus the Ray-free
parts: sizes, labels, accuracy, the table, and refusals that exit 2."""

from __future__ import annotations

import io
import json

import numpy as np
import predict as predict_job
import pyarrow.parquet as pq
import pytest
import ray
import torch
from conftest import image_writer, write_bad_files
from PIL import Image

import _common
from cvray.classification import predict, predict_report, runs
from cvray.classification.transforms import eval_transform
from cvray.images import decode_image_at

GOOD = [  # the train/<class>/... layout: every top-level folder is a CIFAR-10 class
    "cat/a.jpg", "cat/gray.png", "cat/sub/rgba.png", "cat/sub/deep/pal.gif",
    "dog/b.webp", "dog/c.bmp", "dog/rot.jpg", "dog/more/d.tiff",
]
BAD = {  # relative input path -> words of the manifest's error
    "cat/zero.png": "empty file",
    "dog/trunc.png": "truncated",
    "dog/fake.jpg": "unrecognised format",
    "cat/notes.txt": "not an image file",
}


def _make_folder(root) -> None:
    rgb, save = image_writer(root)

    save("cat/a.jpg", rgb(40, 30))
    save("cat/gray.png", rgb(33, 50).convert("L"))
    save("cat/sub/rgba.png", rgb(64, 64).convert("RGBA"))
    save("cat/sub/deep/pal.gif", rgb(20, 28).convert("P"))
    save("dog/b.webp", rgb(50, 40))
    save("dog/c.bmp", rgb(32, 32))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 48x24, upright 24x48
    save("dog/rot.jpg", rgb(48, 24), exif=exif.tobytes())
    save("dog/more/d.tiff", rgb(70, 45))
    write_bad_files(root, zero="cat/zero.png", truncated="dog/trunc.png", fake="dog/fake.jpg", text="cat/notes.txt")


def _run(argv) -> int:
    try:
        return _common.run(predict_job.main, [str(a) for a in argv])
    except SystemExit as exc:  # argparse refusing a flag
        return exc.code


@pytest.fixture(scope="module")
def cifar_run(tmp_path_factory, tiny_cifar):
    """A CIFAR run folder: the lab's recipe trained in-process (one step of 32 tiny images)."""
    from cvray.classification.cifar import load_cifar10
    from cvray.classification.config import CifarTrainConfig
    from cvray.classification.recipes import CifarRecipe
    from cvray.classification.worker import fit

    config = CifarTrainConfig(data_dir=str(tiny_cifar), epochs=1, batch_size=32, train_samples=32, test_samples=16,
                              precision="fp32", eval_batch_size=32)
    data = load_cifar10(str(tiny_cifar), download=False, train_samples=32, test_samples=16)
    run = fit(CifarRecipe(), config, data, "cpu")
    folder = tmp_path_factory.mktemp("runs") / "cifar"
    runs.save_model(str(folder), run.state_dict())
    return folder


@pytest.fixture(scope="module")
def crop_run(tmp_path_factory):
    """A hand-written model.pt: torchvision ResNet-18, 3 classes, the crop preset (32, ImageNet), decoded at 41."""
    from cvray.classification.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet18", 3)
    with torch.no_grad():  # BatchNorm running statistics away from (0, 1), so eval mode matters
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    folder = tmp_path_factory.mktemp("runs") / "finetune"
    runs.save_model(str(folder), {
        "model": model.state_dict(), "classes": ["hotdog", "not-hotdog", "other"], "arch": "resnet18",
        "transform": {"preset": "crop", "crop_size": 32, "normalization": "imagenet"}, "decode_size": 41,
        "config": {}, "epoch": 1, "recipe": "finetune",
    })
    return folder


def _direct(run, root, relpaths, size_for) -> np.ndarray:
    """Probabilities from model(eval_transform(...)(one image)) in this process, image by image."""
    model, info = runs.load_model(str(run))
    transform = eval_transform(**info["transform"])
    out = []
    for rel in relpaths:
        img, _ = decode_image_at((root / rel).read_bytes(), size_for, name=rel)
        x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)[None].contiguous()
        with torch.no_grad():
            out.append(torch.softmax(model(transform(x, None)), dim=1)[0].numpy())
    return np.stack(out)


def _probabilities(table) -> tuple[list[str], np.ndarray]:
    classes = json.loads(table.schema.metadata[predict_report.CLASSES_KEY])
    return classes, np.stack([table.column(f"p_{c}").to_numpy() for c in classes], axis=1)


@pytest.mark.slow
def test_predict_job_on_a_labelled_folder_resumes_and_overwrites(ray_local, tmp_path, cifar_run, capsys):
    inp, out = tmp_path / "train", tmp_path / "pred"
    _make_folder(inp)
    argv = ["--run", cifar_run, "--input", inp, "--output", out, "--batch-size", "3"]

    assert _run(argv) == 0
    console = capsys.readouterr().out
    assert f"done {len(GOOD)}, skipped 0, failed {len(BAD)}," in console
    assert "  failed: " in console and f"predictions: {len(GOOD)} images" in console
    table = pq.read_table(out / predict_report.PREDICTIONS_NAME)
    assert table.column_names[:5] == ["relpath", "input", "label", "predicted", "probability"]
    assert table.column("relpath").to_pylist() == sorted(GOOD)  # one row per good image, nothing else
    classes, probs = _probabilities(table)
    assert len(classes) == 10 and table.num_columns == 5 + 10
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert table.column("predicted").to_pylist() == [classes[i] for i in probs.argmax(axis=1)]
    np.testing.assert_allclose(table.column("probability").to_numpy(), probs.max(axis=1))
    assert table.column("label").to_pylist() == [rel.split("/")[0] for rel in sorted(GOOD)]
    assert table.column("input").to_pylist() == [str(inp / rel) for rel in sorted(GOOD)]

    # The same predictions as the model called directly on each image (32x32 LANCZOS squash).
    direct = _direct(cifar_run, inp, sorted(GOOD), lambda w, h: (32, 32))
    np.testing.assert_allclose(probs, direct, atol=1e-5)

    rows = {r["relpath"]: r for r in pq.read_table(out / "_cvray/manifest.parquet").to_pylist()}
    assert sorted(rows) == sorted([*GOOD, *BAD])  # every input file
    for rel, words in BAD.items():
        assert rows[rel]["status"] == "failed" and words in rows[rel]["error"], rows[rel]
    assert all(rows[rel]["status"] == "done" and rows[rel]["error"] is None for rel in GOOD)
    assert {rows[rel]["node"] for rel in GOOD} == {ray.get_runtime_context().get_node_id()}  # who decided each row
    assert (rows["dog/rot.jpg"]["input_width"], rows["dog/rot.jpg"]["input_height"]) == (24, 48)
    assert {(rows[rel]["width"], rows[rel]["height"]) for rel in GOOD} == {(32, 32)}

    accuracy = json.loads((out / predict_report.ACCURACY_NAME).read_text())
    hits = [p == lab for p, lab in zip(table.column("predicted").to_pylist(), table.column("label").to_pylist(),
                                       strict=True)]
    assert accuracy["accuracy"] == pytest.approx(sum(hits) / len(hits))
    assert accuracy["images"] == len(GOOD) and accuracy["correct"] == sum(hits) and accuracy["failed"] == 4
    assert {c: v["images"] for c, v in accuracy["per_class"].items()} == {"cat": 4, "dog": 4}
    assert np.array(accuracy["confusion"]["matrix"]).sum() == len(GOOD)
    with Image.open(out / predict_report.CONFUSION_NAME) as picture:
        assert picture.format == "PNG" and min(picture.size) > 200

    # --gpu on a cluster without GPUs: one line, exit 2.
    assert _run([*argv, "--gpu", "--overwrite"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --gpu asked but the Ray cluster has no GPUs") and "\n" not in err

    # The same command again: nothing predicted twice (failures are retried and fail again).
    assert _run(argv) == 0
    assert f"done 0, skipped {len(GOOD)}, failed {len(BAD)}," in capsys.readouterr().out
    assert pq.read_table(out / predict_report.PREDICTIONS_NAME).equals(table)
    again = {r["relpath"]: r for r in pq.read_table(out / "_cvray/manifest.parquet").to_pylist()}
    assert all(again[rel]["run_id"] == rows[rel]["run_id"] for rel in GOOD)
    assert not list((out / "_cvray/parts").iterdir())

    # --overwrite redoes every image, with the same results.
    assert _run([*argv, "--overwrite"]) == 0
    assert f"done {len(GOOD)}, skipped 0, failed {len(BAD)}," in capsys.readouterr().out
    redone = pq.read_table(out / predict_report.PREDICTIONS_NAME)
    np.testing.assert_allclose(_probabilities(redone)[1], probs, atol=1e-6)
    latest = {r["relpath"]: r for r in pq.read_table(out / "_cvray/manifest.parquet").to_pylist()}
    assert all(latest[rel]["run_id"] != rows[rel]["run_id"] for rel in GOOD)


@pytest.mark.slow
def test_crop_preset_run_on_an_unlabelled_folder_matches_the_model(ray_local, tmp_path, crop_run, capsys):
    """Mixed sizes batched together (padded, with their sizes) give each image's own prediction."""
    inp, out = tmp_path / "photos", tmp_path / "pred"
    rng = np.random.default_rng(3)
    sizes = {"x.jpg": (90, 60), "y.png": (41, 77), "sub/z.png": (50, 50), "sub/w.webp": (120, 37)}
    for rel, (w, h) in sizes.items():
        (inp / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)).save(inp / rel)

    argv = ["--run", crop_run / "model.pt", "--input", inp, "--output", out, "--batch-size", "4",
            "--num-actors", "1"]
    assert _run(argv) == 0
    assert f"done {len(sizes)}, skipped 0, failed 0," in capsys.readouterr().out
    table = pq.read_table(out / predict_report.PREDICTIONS_NAME)
    assert "label" not in table.column_names  # "sub" is not a class: no labels, no accuracy
    assert not (out / predict_report.ACCURACY_NAME).exists() and not (out / predict_report.CONFUSION_NAME).exists()
    classes, probs = _probabilities(table)
    assert classes == ["hotdog", "not-hotdog", "other"]

    def short_side_41(w, h):  # the run's decode size, round(32 * 288 / 224) = 41, aspect kept
        return (round(h * 41 / w), 41) if w <= h else (41, round(w * 41 / h))

    direct = _direct(crop_run, inp, table.column("relpath").to_pylist(), short_side_41)
    np.testing.assert_allclose(probs, direct, atol=1e-5)
    manifest = {r["relpath"]: r for r in pq.read_table(out / "_cvray/manifest.parquet").to_pylist()}
    assert (manifest["sub/w.webp"]["width"], manifest["sub/w.webp"]["height"]) == (133, 41)  # 120x37 decoded at 41
    assert (manifest["y.png"]["width"], manifest["y.png"]["height"]) == (41, 77)  # already 41 on its shorter side


# ------------------------------------------------------------------ no Ray needed


def test_refusals_exit_2_with_one_line_and_write_nothing(tmp_path, cifar_run, capsys):
    inp = tmp_path / "train"
    _make_folder(inp)
    cases = [
        (["--run", cifar_run, "--input", inp, "--output", inp / "pred"], "inside the input folder"),
        (["--run", cifar_run, "--input", inp / "cat", "--output", inp], "lies inside --output"),
        (["--run", tmp_path / "nope", "--input", inp, "--output", tmp_path / "o"], "no such run"),
        (["--run", tmp_path / "empty", "--input", inp, "--output", tmp_path / "o"], "has no model.pt"),
        (["--run", inp / "cat/notes.txt", "--input", inp, "--output", tmp_path / "o"], "not a cvray model file"),
        (["--run", tmp_path / "garbage.pt", "--input", inp, "--output", tmp_path / "o"],
         "is not a cvray model file"),
        (["--run", cifar_run, "--input", tmp_path / "missing", "--output", tmp_path / "o"], "folder not found"),
        (["--run", cifar_run, "--input", inp, "--output", tmp_path / "o", "--batch-size", "0"],
         "must be a positive integer"),
    ]
    (tmp_path / "empty").mkdir()
    (tmp_path / "garbage.pt").write_bytes(b"not a torch file")
    for argv, words in cases:
        assert _run(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert words in err and "\n" not in err, (argv, err)
    assert not (tmp_path / "o").exists() and not (inp / "pred").exists()


def test_decode_sizes_follow_the_run_transform():
    cifar = predict.decode_spec({"preset": "cifar"})
    assert cifar.size_for(640, 480) == (32, 32) and cifar.size_for(7, 300) == (32, 32)
    crop = predict.decode_spec({"preset": "crop", "crop_size": 224, "normalization": "imagenet"})
    assert crop == predict.DecodeSpec("short_side", 256)  # runs that recorded no decode size: R
    assert predict.decode_spec({"preset": "crop", "crop_size": 224, "normalization": "imagenet"}, 288).size == 288
    assert crop.size_for(640, 480) == (256, 341) and crop.size_for(480, 640) == (341, 256)
    assert crop.size_for(100, 100) == (256, 256)  # small images are enlarged: the crop needs R x R
    with pytest.raises(Exception, match="unknown transform preset"):
        predict.decode_spec({"preset": "nope"})


def test_labels_only_when_every_top_level_folder_is_a_class():
    classes = ["cat", "dog", "ship"]
    assert predict_report.folder_labels(["cat/a.png", "dog/x/b.png", "top.png"], classes) == {
        "cat/a.png": "cat", "dog/x/b.png": "dog"}
    assert predict_report.folder_labels(["cat/a.png", "misc/b.png"], classes) is None
    assert predict_report.folder_labels(["a.png", "b.png"], classes) is None


def test_accuracy_report_and_confusion_picture():
    classes = ["airplane", "cat", "dog", "ship"]
    labels = ["cat", "cat", "cat", "dog", "dog"]
    guesses = ["cat", "dog", "ship", "dog", "dog"]
    report = predict_report.accuracy_report(labels, guesses, classes)
    assert report["accuracy"] == pytest.approx(3 / 5) and (report["images"], report["correct"]) == (5, 3)
    assert report["per_class"] == {"cat": {"images": 3, "correct": 1, "accuracy": pytest.approx(1 / 3)},
                                   "dog": {"images": 2, "correct": 2, "accuracy": 1.0}}
    assert report["confusion"] == {"classes": ["cat", "dog", "ship"],
                                   "matrix": [[1, 1, 1], [0, 2, 0], [0, 0, 0]]}
    picture = Image.open(io.BytesIO(predict_report.confusion_png(report, "test")))
    assert picture.format == "PNG"


def test_predictions_table_from_manifest_rows():
    records = {
        "b/x.png": {"relpath": "b/x.png", "input": "/in/b/x.png", "status": "done", "predicted": "b",
                    "probability": 0.75, "probabilities": [0.25, 0.75]},
        "a/y.png": {"relpath": "a/y.png", "input": "/in/a/y.png", "status": "failed"},
        "gone.png": {"relpath": "gone.png", "input": "/in/gone.png", "status": "done", "predicted": "a",
                     "probability": 1.0, "probabilities": [1.0, 0.0]},  # no longer in the input
    }
    listed = ["a/y.png", "b/x.png"]
    labels = predict_report.folder_labels(listed, ["a", "b"])
    table = predict_report.predictions_table(records, listed, ["a", "b"], labels)
    assert table.column_names == ["relpath", "input", "label", "predicted", "probability", "p_a", "p_b"]
    assert table.to_pylist() == [{"relpath": "b/x.png", "input": "/in/b/x.png", "label": "b", "predicted": "b",
                                  "probability": 0.75, "p_a": 0.25, "p_b": 0.75}]
    assert json.loads(table.schema.metadata[predict_report.CLASSES_KEY]) == ["a", "b"]


def _model(sha1="a" * 40, classes=("a", "b")) -> predict.RunModel:
    return predict.RunModel(path="/runs/r/model.pt", sha1=sha1, classes=list(classes),
                            transform={"preset": "cifar"}, arch="d2l_resnet18", spec=predict.DecodeSpec("exact", 32))


def test_another_model_into_a_used_output_is_refused(tmp_path):
    from cvray import folders
    from cvray.errors import ConfigError

    src, dst = folders.open_folder(str(tmp_path / "in")), folders.open_folder(str(tmp_path / "out"))
    config = predict.PredictConfig(run="r", input=str(tmp_path / "in"), output=str(tmp_path / "out"))
    predict.check_run_config(config, src, dst, _model(), has_outputs=False)
    predict.check_run_config(config, src, dst, _model(), has_outputs=True)  # the same model: fine
    with pytest.raises(ConfigError, match=r"other settings \(model_sha1\): rerun with --overwrite"):
        predict.check_run_config(config, src, dst, _model(sha1="b" * 40), has_outputs=True)
    predict.check_run_config(config, src, dst, _model(sha1="b" * 40), has_outputs=False)  # nothing predicted yet
    predict.check_run_config(config.replace(overwrite=True), src, dst, _model(), has_outputs=True)
    assert json.loads((tmp_path / "out/_cvray/config.json").read_text())["model_sha1"] == "a" * 40


def test_results_files_follow_the_input_layout(tmp_path):
    """accuracy.json and confusion.png for a labelled input; removed when it is not labelled any more."""
    from cvray import folders
    from cvray.manifest import RunSummary

    dst = folders.open_folder(str(tmp_path / "out"))
    summary = RunSummary(done=2, skipped=0, failed=0, seconds=1.0, images_per_sec=2.0, manifest="m", run_id="r",
                         errors=[])
    records = {rel: {"relpath": rel, "input": f"/in/{rel}", "status": "done", "predicted": "a", "probability": 0.6,
                     "probabilities": [0.6, 0.4]} for rel in ("a/1.png", "b/2.png")}
    result = predict_report.write_results(dst, records, ["a/1.png", "b/2.png"], _model(), summary)
    assert result.images == 2 and result.accuracy["accuracy"] == 0.5
    assert "accuracy 0.5000 on 2 labelled images" in "\n".join(result.lines())
    assert (tmp_path / "out/accuracy.json").exists() and (tmp_path / "out/confusion.png").exists()
    records["c/3.png"] = {**records["a/1.png"], "relpath": "c/3.png"}  # "c" is not a class of the run
    result = predict_report.write_results(dst, records, ["a/1.png", "b/2.png", "c/3.png"], _model(), summary)
    assert result.accuracy is None and result.images == 3
    assert not (tmp_path / "out/accuracy.json").exists() and not (tmp_path / "out/confusion.png").exists()
    assert "label" not in pq.read_table(tmp_path / "out" / predict_report.PREDICTIONS_NAME).column_names
