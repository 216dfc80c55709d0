"""Style sweeps on a real local Ray: 4 style weights at 32x48 px with random VGG weights."""

import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

JOBS = Path(__file__).resolve().parents[2] / "jobs"
sys.path.insert(0, str(JOBS))
import sweep_style  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 60, 3), np.uint8)).save(folder / "content.png")
    stripes = (np.indices((40, 40)).sum(0) % 8 * 30).astype(np.uint8)[..., None].repeat(3, 2)
    Image.fromarray(stripes).save(folder / "style.png")
    return folder


def _run(argv) -> int:
    from _common import run

    return run(sweep_style.main, [str(a) for a in argv])


def test_four_style_weights_make_a_sheet_a_front_and_a_table(ray_local, pictures, tmp_path, capsys):
    argv = ["--content", pictures / "content.png", "--style", pictures / "style.png", "--arch", "vgg16",
            "--weights", "random", "--shape", "32x48", "--iterations", 30, "--no-gpu",
            "--param", "style-weight=0.01|0.03|0.1|1", "--storage-path", tmp_path, "--name", "st"]
    assert _run(argv) == 0
    out = capsys.readouterr().out
    sweep = tmp_path / "st"
    rows = pq.read_table(sweep / "trials.parquet").to_pylist()
    assert [r["style_weight"] for r in rows] == [0.01, 0.03, 0.1, 1.0] and {r["status"] for r in rows} == {"finished"}
    style = [r["style_loss"] for r in rows]
    assert all(b <= a * 1.02 for a, b in zip(style, style[1:], strict=False))  # more weight: less style loss
    assert style[-1] < 0.8 * style[0]
    content = [r["content_loss"] for r in rows]
    assert content[-1] > content[0]  # ... at the content's expense
    sheet = Image.open(sweep / "contact_sheet.png")
    assert sheet.width >= 4 * 48 or sheet.height >= 2 * 32  # four tiles of 32x48 (plus labels)
    assert (sweep / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert all(Path(r["image"]).exists() for r in rows)
    assert "Pareto front" in out and "python jobs/stylize.py" in out and "--style-weight" in out
    assert _run(argv) == 0  # the rerun resumes: nothing left to do
    assert "resuming sweep" in capsys.readouterr().out


@pytest.mark.parametrize("extra, words", [
    (["--param", "style-weight=a|b"], "is not a number"),
    (["--param", "style-weight=10..1"], "0 < LOW <= HIGH"),
    (["--param", "arch=vgg16|vgg19"], "FIELD one of"),
    (["--style-weight", "3", "--param", "style-weight=1|2"], "drop the fixed --style-weight"),
])
def test_bad_style_sweeps_exit_2(pictures, tmp_path, capsys, extra, words):
    argv = ["--content", pictures / "content.png", "--style", pictures / "style.png", "--weights", "random",
            "--storage-path", tmp_path, "--name", "bad", *extra]
    assert _run(argv) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and "\n" not in err, err
    assert not (tmp_path / "bad").exists()
