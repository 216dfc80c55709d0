"""Security: names cannot move outputs out of their folders, credentials stay out of output and run
folders, and no file a user hands over is unpickled with code in it.

Policy (cvray/names.py, docs/cluster.md): a bad run or sweep name is refused with one line (exit
code 2 through the jobs), never rewritten, so the same command always finds the same folder."""

from __future__ import annotations

import ast
import io
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import _common
from cvray import names
from cvray.classification import runs
from cvray.classification.config import CifarTrainConfig, FinetuneConfig
from cvray.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]

BAD_NAMES = {
    "..": "not a folder name", ".": "not a folder name", "../escape": "'/'", "a/../../b": "'/'",
    "/etc": "'/'", "C:\\runs": "':'", "a\\b": "'\\\\'", "con": "device name", "NUL.txt": "device name",
    "com1": "device name", "run\x00x": "U+0000", "\u202egnp.exe": "U+202E", "a\u200bb": "U+200B",
    "line\nbreak": "U+000A", "．．": "normalises to '..'", "ｒｕｎ": "normalises to 'run'",
    "．．／x": "normalises to '../x'", ".hidden": "starts with '.'", "-rf": "starts with '-'",
    " padded": "space", "dot.": "ends with '.'", "": "empty", "x" * 201: "longer than 200",
}


@pytest.mark.parametrize("bad", sorted(BAD_NAMES))
def test_bad_names_are_refused_in_one_readable_line(bad):
    with pytest.raises(ConfigError) as info:
        names.check_name(bad, "--name")
    message = str(info.value)
    assert BAD_NAMES[bad] in message, message
    assert message.isprintable() and message.startswith("--name "), repr(message)  # escapes, no raw bidi/NUL


def test_default_and_ordinary_names_pass():
    good = [CifarTrainConfig().default_name(), FinetuneConfig().default_name(), "sweep-cifar-lr-best",
            "trial-3f2a1_00004", "Läufe 2026", "run_1.5e-3", "日本語"]
    assert [names.check_name(n) for n in good] == good


@pytest.mark.parametrize("bad", ["../victim", "/abs/victim", "．．", "\u202ex", "nul"])
def test_run_names_cannot_leave_the_storage_path(tmp_path, bad):
    """run_dir is where every training job (and every sweep trial) gets its folder, before
    anything is written or --fresh deletes: a name that could leave --storage-path stops there."""
    storage_path, victim = tmp_path / "runs", tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    config = CifarTrainConfig(storage_path=str(storage_path), name=bad.replace("/abs", str(tmp_path)))
    with pytest.raises(ConfigError):
        directory = runs.run_dir(config)
        runs.open_run(directory, "cifar10", config, fresh=True)  # would delete the folder it names
    assert (victim / "keep.txt").read_text() == "mine" and not storage_path.exists()


def test_a_refused_name_is_exit_code_2_and_one_line(capsys):
    def main(argv):
        runs.run_dir(CifarTrainConfig(storage_path="/tmp/runs", name=argv[0]))

    assert _common.run(main, ["../x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --name '../x'"), err


def test_sweep_names_cannot_leave_the_storage_path():
    import sweep_train

    args, job_argv = sweep_train.build_parser().parse_known_args(["--name", "../escape", "--smoke-test"])
    with pytest.raises(ConfigError):
        sweep_train.make_sweep(args, job_argv)


@pytest.mark.parametrize("key", ["a/../../x.jpg", "../x.jpg", "/etc/x.jpg", "a//x.jpg", "./x.jpg", "a\\..\\x.jpg",
                                 "x\x00.jpg", "_cvray/manifest.png", "．．/x.jpg", "\u202egpj.png", "con.png",
                                 "a/\u2025/x.png", "%2e%2e/x.jpg"])
def test_folder_job_outputs_stay_in_the_output_folder(tmp_path, key):
    """Bulk stylisation and predict name each output after its input's key, which an object store
    lets anyone choose: every key is refused or lands inside OUTPUT (and outside OUTPUT/_cvray)."""
    from cvray import folders

    out = folders.open_folder(str(tmp_path / "out"))
    try:
        rel, _ = folders.output_name(key)
    except DataError as exc:
        assert "\n" not in str(exc)
        return
    path = os.path.realpath(out.path_of(rel))
    assert path.startswith(out.path + os.sep) and not path.startswith(folders.metadata_path(out)), (key, path)


# ----------------------------------------------------------------------------- credentials

@pytest.mark.parametrize(("uri", "shown"), [
    ("s3://AKIAEXAMPLE:wJalrSECRET@bucket/runs", "s3://***@bucket/runs"),
    ("s3://bucket/cifar?region=us-west-2&secret_key=wJalrSECRET&access_key=AKIAEXAMPLE",
     "s3://bucket/cifar?region=us-west-2&secret_key=***&access_key=***"),
    ("https://user:hunter2@host/data.zip?X-Amz-Signature=abc", "https://***@host/data.zip?X-Amz-Signature=***"),
    ("s3://bucket/runs", "s3://bucket/runs"), ("/home/me/runs", "/home/me/runs"),
])
def test_uris_are_shown_without_credentials(uri, shown):
    assert names.redact(uri) == shown
    assert names.redact_text(f"wrote 3 files to {uri}, done") == f"wrote 3 files to {shown}, done"


def test_stylize_keeps_credentials_out_of_console_and_outputs(tmp_path, monkeypatch, capsys):
    """A real run: content and style read from a local S3 emulator through a URI that carries a key
    pair, with a secret in the environment too; neither may appear on the console or in any file."""
    boto3 = pytest.importorskip("boto3")
    import stylize
    from moto.server import ThreadedMotoServer

    env_secret, uri_secret = "ENVSECRET0123456789", "URISECRET9876543210"
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        port = server.get_host_and_port()[1]
        for key, value in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
                           "AWS_SECRET_ACCESS_KEY": env_secret, "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(key, value)
        client = boto3.client("s3")
        client.create_bucket(Bucket="art")
        rng = np.random.default_rng(0)
        for key in ("content.png", "style.png"):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(buf, format="PNG")
            client.put_object(Bucket="art", Key=key, Body=buf.getvalue())
        query = f"?endpoint_override=127.0.0.1:{port}&scheme=http"
        uri = f"s3://AKIDTEST:{uri_secret}@art/%s{query}"
        out = tmp_path / "out" / "result.png"
        code = _common.run(stylize.main, ["--content", uri % "content.png", "--style", uri % "style.png",
                                          "--output", str(out), "--arch", "vgg16", "--weights", "random",
                                          "--shape", "32x48", "--no-gpu", "--iterations", "2"])
    finally:
        server.stop()
    console = "".join(capsys.readouterr())
    assert code == 0 and out.is_file(), console
    written = {p.name: p.read_bytes() for p in out.parent.rglob("*") if p.is_file()}
    assert "result_run.json" in written and b"art/content.png" in written["result_run.json"]
    for secret in (env_secret, uri_secret):
        assert secret not in console
        assert not [name for name, data in written.items() if secret.encode() in data], secret


def test_run_config_json_holds_no_credentials(tmp_path):
    config = CifarTrainConfig(storage_path=str(tmp_path), name="r",
                              data_dir="s3://AKIAEXAMPLE:wJalrSECRET@bucket/cifar?secret_key=wJalrSECRET")
    runs.open_run(runs.run_dir(config), "cifar10", config)
    assert b"wJalrSECRET" not in (tmp_path / "r" / "config.json").read_bytes()


# ----------------------------------------------------------------------------- unpickling

def python_files() -> list[Path]:
    """Every Python file of the repository but this one (whose last test loads a file unsafely on purpose)."""
    skip = {".git", ".venv", "venv", "build", "dist", "data", "results"}
    return [p for p in REPO.rglob("*.py") if not skip & set(p.relative_to(REPO).parts) and p != Path(__file__)]


def test_every_torch_load_is_weights_only():
    """Every torch.load call in the repository passes weights_only=True, and no library or job code
    unpickles freely (pickle only through cifar_python's numpy-only unpickler)."""
    loads, offenders = 0, []
    for path in python_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
            where = f"{path.relative_to(REPO)}:{node.lineno}"
            if owner == "torch" and node.func.attr == "load":
                loads += 1
                safe = [k for k in node.keywords if k.arg == "weights_only" and getattr(k.value, "value", None) is True]
                if not safe:
                    offenders.append(where)
            elif path.is_relative_to(REPO / "tests"):
                continue  # tests unpickle their own payloads on purpose, to prove they are real
            elif owner in ("pickle", "dill", "joblib") and node.func.attr in ("load", "loads"):
                offenders.append(where)
            elif any(k.arg == "allow_pickle" and getattr(k.value, "value", None) is True for k in node.keywords):
                offenders.append(where)
    assert loads >= 3  # the scan sees the real loaders (runs, state_dicts, training)
    assert not offenders, offenders


class _Payload:
    """Unpickling this runs open(marker, "w"): the proof a loader executed pickled code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_malicious_model_file_is_refused_without_running_its_code(tmp_path):
    from cvray.state_dicts import read_state_dict

    marker = tmp_path / "pwned"
    evil = tmp_path / "run" / "model.pt"
    evil.parent.mkdir()
    torch.save({"model": {"w": torch.zeros(1)}, "classes": ["a", "b"], "config": _Payload(marker)}, evil)
    with pytest.raises(DataError) as info:
        runs.load_model(str(evil.parent))
    assert "not a cvray model file" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(DataError):
        read_state_dict(str(evil))
    assert not marker.exists()
    torch.load(evil, weights_only=False)  # the file really does run code when trusted
    assert marker.exists()
    os.remove(marker)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
