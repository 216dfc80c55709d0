"""The bulk job end to end on a real local Ray (Ray Data actors, random-init VGG-19, 2 steps),
plus resume planning and argument refusals that need no Ray."""

from __future__ import annotations

import io
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
import stylize_folder
from conftest import image_writer, write_bad_files
from PIL import Image

import _common
from cvray import folders, manifest
from cvray.manifest import plan_work

FAST = ["--size", "48", "--iterations", "2", "--weights", "random", "--precision", "fp32"]

# relative input path -> (output relative path, Pillow format, output (width, height))
GOOD = {
    "a.jpg": ("a.jpg", "JPEG", (48, 36)),
    "sub/b.png": ("sub/b.png", "PNG", (32, 48)),
    "sub/deep/c.webp": ("sub/deep/c.webp", "WEBP", (48, 48)),
    "modes/gray.png": ("modes/gray.png", "PNG", (48, 38)),
    "modes/rgba.png": ("modes/rgba.png", "PNG", (32, 32)),  # smaller than --size: not upscaled
    "modes/pal.gif": ("modes/pal.png", "PNG", (48, 32)),
    "modes/cmyk.jpg": ("modes/cmyk.jpg", "JPEG", (48, 32)),
    "modes/deep16.tiff": ("modes/deep16.tiff", "TIFF", (48, 34)),
    "modes/icon.bmp": ("modes/icon.bmp", "BMP", (36, 36)),
    "rot.jpg": ("rot.jpg", "JPEG", (24, 48)),  # stored 64x32 with EXIF "rotate 90": upright 32x64
}
BAD = {  # relative input path -> words of the manifest's error
    "bad/zero.png": "empty file",
    "bad/trunc.png": "truncated",
    "bad/fake.jpg": "unrecognised format",
    "notes.txt": "not an image file",
    "bad/tiny.png": "too small for the network",
}


def _make_folder(root) -> None:
    rgb, save = image_writer(root)

    save("a.jpg", rgb(64, 48))
    save("sub/b.png", rgb(40, 60))
    save("sub/deep/c.webp", rgb(64, 64))
    save("modes/gray.png", rgb(50, 40).convert("L"))
    save("modes/rgba.png", rgb(32, 32).convert("RGBA"))
    save("modes/pal.gif", rgb(48, 32).convert("P"))
    save("modes/cmyk.jpg", rgb(60, 40).convert("CMYK"))
    save("modes/deep16.tiff", Image.fromarray(np.random.default_rng(1).integers(0, 65536, (40, 56), np.uint16)))
    save("modes/icon.bmp", rgb(36, 36))
    exif = Image.Exif()
    exif[0x0112] = 6
    save("rot.jpg", rgb(64, 32), exif=exif.tobytes())
    write_bad_files(root, zero="bad/zero.png", truncated="bad/trunc.png", fake="bad/fake.jpg", text="notes.txt")
    save("bad/tiny.png", rgb(12, 40))
    (root / ".DS_Store").write_bytes(b"\0")  # hidden: not an input at all


def _outputs(out) -> dict[str, tuple[int, int]]:
    """relative path -> (inode, mtime_ns) of every file outside the metadata folder."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(out):
        dirnames[:] = [d for d in dirnames if d != folders.METADATA_DIR]
        for name in filenames:
            st = os.stat(os.path.join(dirpath, name))
            found[os.path.relpath(os.path.join(dirpath, name), out)] = (st.st_ino, st.st_mtime_ns)
    return found


def _run(argv) -> int:
    return _common.run(stylize_folder.main, [str(a) for a in argv])


@pytest.fixture(scope="module")
def style_image(tmp_path_factory):
    path = tmp_path_factory.mktemp("style") / "style.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), np.uint8)).save(path)
    return path


@pytest.mark.slow
def test_bulk_job_writes_every_good_image_once_and_records_the_bad(ray_local, tmp_path, style_image, capsys):
    inp, out = tmp_path / "in", tmp_path / "out"
    _make_folder(inp)
    argv = ["--input", inp, "--output", out, "--style", style_image, *FAST]

    assert _run(argv) == 0
    console = capsys.readouterr().out
    assert f"done {len(GOOD)}, skipped 0, failed {len(BAD)}," in console
    first = _outputs(out)
    assert sorted(first) == sorted(o for o, _, _ in GOOD.values())
    for rel, (out_rel, fmt, size) in GOOD.items():
        with Image.open(out / out_rel) as img:
            assert (img.format, img.mode, img.size) == (fmt, "RGB", size), rel
    rows = {r["relpath"]: r for r in pq.read_table(out / "_cvray/manifest.parquet").to_pylist()}
    assert sorted(rows) == sorted([*GOOD, *BAD])  # every input file, nothing hidden
    for rel, (out_rel, _, (w, h)) in GOOD.items():
        row = rows[rel]
        assert (row["status"], row["error"], row["width"], row["height"]) == ("done", None, w, h)
        assert row["output"] == str(out / out_rel) and len(row["loss_curve"]) == 2
        assert row["loss_total"] > 0 and row["seconds"] > 0
    assert (rows["rot.jpg"]["input_width"], rows["rot.jpg"]["input_height"]) == (32, 64)
    for rel, words in BAD.items():
        assert rows[rel]["status"] == "failed" and words in rows[rel]["error"], rows[rel]
        assert rows[rel]["output"] is None
    # Each row names the Ray node that decided it; a file refused while listing has none.
    node = ray.get_runtime_context().get_node_id()
    assert {rel: row["node"] for rel, row in rows.items()} == {rel: None if rel == "notes.txt" else node
                                                                for rel in rows}
    assert not list((out / "_cvray/parts").iterdir())  # merged into the manifest

    # The same command again (the input spelt differently): finished images are neither re-read
    # nor rewritten; failures are retried.
    assert _run(["--input", f"{inp}/", *argv[2:]]) == 0
    assert f"done 0, skipped {len(GOOD)}, failed {len(BAD)}," in capsys.readouterr().out
    assert _outputs(out) == first
    again = {r["relpath"]: r for r in pq.read_table(out / "_cvray/manifest.parquet").to_pylist()}
    assert all(again[rel]["run_id"] == rows[rel]["run_id"] for rel in GOOD)
    assert all(again[rel]["run_id"] != rows[rel]["run_id"] for rel in BAD)  # retried

    # Other settings into the same output are refused before anything runs.
    assert _run([*argv, "--iterations", "3"]) == 2
    assert "other settings" in capsys.readouterr().err

    # --overwrite redoes every image (each file is replaced: a new inode from the atomic rename).
    assert _run([*argv, "--overwrite"]) == 0
    assert f"done {len(GOOD)}, skipped 0, failed {len(BAD)}," in capsys.readouterr().out
    redone = _outputs(out)
    assert sorted(redone) == sorted(first)
    assert all(redone[rel][0] != first[rel][0] for rel in first)


def _moto(monkeypatch):
    server_mod = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    port = server.get_host_and_port()[1]
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1")
    client.create_bucket(Bucket="photos")
    return server, client, port


@pytest.mark.slow
def test_bulk_job_reads_and_writes_an_object_store(ray_local, tmp_path, style_image, monkeypatch, capsys):
    server, client, port = _moto(monkeypatch)
    try:
        rng = np.random.default_rng(2)
        for key, size in [("in/x.jpg", (64, 40)), ("in/d/y.png", (30, 40))]:
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), np.uint8)).save(
                buffer, "JPEG" if key.endswith("jpg") else "PNG")
            client.put_object(Bucket="photos", Key=key, Body=buffer.getvalue())
        client.put_object(Bucket="photos", Key="in/broken.png", Body=b"\x89PNG garbage")
        query = f"?endpoint_override=127.0.0.1:{port}&scheme=http"
        argv = ["--input", f"s3://photos/in{query}", "--output", f"s3://photos/out{query}",
                "--style", style_image, *FAST]
        assert _run(argv) == 0
        console = capsys.readouterr().out
        assert "done 2, skipped 0, failed 1," in console
        assert "  failed: broken.png: not a readable image" in console  # the console names the file
        keys = {o["Key"] for o in client.list_objects_v2(Bucket="photos", Prefix="out/")["Contents"]}
        assert {"out/x.jpg", "out/d/y.png", "out/_cvray/manifest.parquet"} <= keys
        assert not [k for k in keys if k.startswith("out/_cvray/parts/") and k.endswith(".parquet")]
        img = Image.open(io.BytesIO(client.get_object(Bucket="photos", Key="out/x.jpg")["Body"].read()))
        assert (img.format, img.size) == ("JPEG", (48, 30))
        manifest = pq.read_table(io.BytesIO(
            client.get_object(Bucket="photos", Key="out/_cvray/manifest.parquet")["Body"].read()))
        status = dict(zip(manifest.column("relpath").to_pylist(), manifest.column("status").to_pylist(), strict=True))
        assert status == {"x.jpg": "done", "d/y.png": "done", "broken.png": "failed"}
        assert _run(argv) == 0  # resumes from the store's manifest: nothing is redone
        assert "done 0, skipped 2, failed 1," in capsys.readouterr().out
    finally:
        server.stop()


# ------------------------------------------------------------------ no Ray needed


def test_output_inside_input_and_missing_input_exit_2(tmp_path, style_image, capsys):
    inp = tmp_path / "in"
    _make_folder(inp)
    assert _run(["--input", inp, "--output", inp / "styled", "--style", style_image, *FAST]) == 2
    assert "inside the input folder" in capsys.readouterr().err
    assert _run(["--input", tmp_path / "nope", "--output", tmp_path / "o", "--style", style_image, *FAST]) == 2
    assert "folder not found" in capsys.readouterr().err
    assert _run(["--input", inp, "--output", tmp_path / "o", "--style", tmp_path / "no.png", *FAST]) == 2
    assert "no.png" in capsys.readouterr().err
    assert not (inp / "styled").exists() and not (tmp_path / "o").exists()


def _done(dst, rel, out_rel, run_id="old"):
    manifest.write_manifest_part(dst, {
        "relpath": rel, "status": "done", "output": dst.uri_of(out_rel), "run_id": run_id,
        "finished_at": manifest.now_utc()})


def test_resume_plan_after_a_crash(tmp_path):
    """Parts left by a killed run count; a done row whose output is missing, and failures, redo."""
    inp, out = tmp_path / "in", tmp_path / "out"
    _make_folder(inp)
    src, dst = folders.open_folder(str(inp)), folders.open_folder(str(out))
    _done(dst, "a.jpg", "a.jpg")
    (out / "a.jpg").write_bytes(b"finished")
    _done(dst, "modes/pal.gif", "modes/pal.png")
    (out / "modes").mkdir()
    (out / "modes/pal.png").write_bytes(b"finished")
    _done(dst, "sub/b.png", "sub/b.png")  # recorded, but the crash came before the image landed
    manifest.write_manifest_part(dst, {"relpath": "rot.jpg", "status": "failed", "error": "x",
                                       "run_id": "old", "finished_at": manifest.now_utc()})
    plan = plan_work(src, dst, "new")
    todo = {item["relpath"] for item in plan.todo}
    assert plan.skipped == 2 and "a.jpg" not in todo and "modes/pal.gif" not in todo
    assert {"sub/b.png", "rot.jpg", "bad/zero.png"} <= todo
    assert [r["relpath"] for r in plan.failed] == ["notes.txt"]  # no image extension
    assert len(plan_work(src, dst, "new", overwrite=True).todo) == len(GOOD) + len(BAD) - 1


def test_output_names_that_clash_fail_the_second(tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    Image.new("RGB", (32, 32)).save(inp / "x.gif")
    Image.new("RGB", (32, 32)).save(inp / "x.png")
    plan = plan_work(folders.open_folder(str(inp)), folders.open_folder(str(out)), "r")
    assert [i["relpath"] for i in plan.todo] == ["x.png"]  # the file that keeps its own name wins
    assert plan.failed[0]["relpath"] == "x.gif" and "taken by x.png" in plan.failed[0]["error"]
