"""Long commands: a bar on a terminal, heartbeat lines elsewhere, nothing with --quiet."""

import io

import pytest
from click.testing import CliRunner

from conftest import write_xrays
from pneumo_edge.cli import main
from pneumo_edge.edge import progress
from pneumo_edge.edge.progress import Progress, stage, track


@pytest.fixture()
def err(monkeypatch):
    buf = io.StringIO()  # not a terminal: heartbeat mode
    monkeypatch.setattr(progress, "_stream", lambda: buf)
    monkeypatch.setattr(progress, "HEARTBEAT_S", 0.0)
    yield buf
    progress.set_quiet(False)


def test_heartbeat_lines_when_not_on_a_terminal(err):
    with Progress(4, "decode", heartbeat_s=0.0) as bar:
        for _ in range(4):
            bar.set_postfix(loss="0.31")
            bar.update()
    lines = err.getvalue().splitlines()
    assert lines[0].startswith("decode: 1/4 img (25%)") and "img/s" in lines[0] and lines[0].endswith("loss 0.31")
    assert lines[3].startswith("decode: 4/4 img (100%)")
    assert lines[-1].startswith("decode: done, 4 img in")
    stage("export", "quantizing to INT8")
    assert err.getvalue().splitlines()[-1] == "export: quantizing to INT8"


def test_quiet_prints_nothing(err):
    progress.set_quiet(True)
    assert list(track(range(3), 3, "x", enabled=True)) == [0, 1, 2]
    stage("bench", "timing")
    assert err.getvalue() == ""


def test_disabled_progress_prints_nothing(err):
    list(track(range(3), 3, "x", enabled=False))
    assert err.getvalue() == ""


LONG = ["train", "evaluate", "export", "infer", "validate", "explain", "bench variants", "bundle guard-report",
        "study recipes", "bundle build", "bench memory", "guard-report"]


@pytest.mark.parametrize("command", LONG)
def test_every_long_command_has_quiet(command):
    r = CliRunner().invoke(main, [*command.split(), "--help"])
    assert r.exit_code == 0 and "-q, --quiet" in r.output


def test_explain_quiet_vs_heartbeat(tiny_bundle, tmp_path, monkeypatch):
    monkeypatch.setattr(progress, "HEARTBEAT_S", 0.0)
    paths = write_xrays(tmp_path, seed=8)
    model = str(tiny_bundle / "model.onnx")
    loud = CliRunner().invoke(main, ["explain", *paths, "--model", model, "--out", str(tmp_path / "a")])
    assert loud.exit_code == 0 and f"explain: {len(paths)}/{len(paths)} img (100%)" in loud.output, loud.output
    quiet = CliRunner().invoke(main, ["explain", *paths, "--model", model, "--out", str(tmp_path / "b"), "-q"])
    assert quiet.exit_code == 0 and "explain:" not in quiet.output and "P(pneumonia)" in quiet.output
