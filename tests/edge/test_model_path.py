"""A model argument is a hub id only when it cannot be a path: a missing 'export/model.int8.onnx' is a missing
file, never a download, and each message says which reading was tried."""

from pathlib import Path

import pytest
from click.testing import CliRunner

import pneumo_edge
from pneumo_edge.cli import main
from pneumo_edge.edge import api
from pneumo_edge.edge.errors import HubError, ModelError
from pneumo_edge.edge.hub import is_repo_id, path_reason

SHIPPED = Path(__file__).resolve().parents[2] / "export" / "model.int8.onnx"


@pytest.mark.parametrize("text, why", [
    ("export/model.int8.onnx", "it ends in .onnx"),
    ("me/model.ONNX", "it ends in .onnx"),
    ("me/weights.safetensors", "it ends in .safetensors"),
    ("./me/model", "it starts with './'"),
    ("../model", "it starts with '../'"),
    ("/opt/models/model", "it starts with '/'"),
    ("~/models", "it starts with '~'"),
    ("runs/default/export", "it has more than one '/'"),
    ("me\\model", "it holds a '\\'"),
])
def test_what_can_only_be_a_path_is_never_a_hub_id(text, why):
    assert path_reason(text) == why and not is_repo_id(text)


@pytest.mark.parametrize("text", ["me/pneumo-edge-lite0", "org.name/model.v2", "a/b_c-d"])
def test_the_documented_user_repo_form_is_a_hub_id(text):
    assert path_reason(text) is None and is_repo_id(text)


@pytest.mark.parametrize("text", ["model", "me/", "/me", "me//x", "-me/x"])
def test_other_forms_are_not_hub_ids(text):
    assert not is_repo_id(text)


@pytest.fixture()
def no_downloads(monkeypatch, tmp_path):
    """Run from an empty folder; any hub download fails the test."""
    tried = []

    def download(repo_id, filename):
        tried.append((repo_id, filename))
        raise AssertionError(f"tried to download {repo_id}")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(api, "download_model", download)
    return tried


@pytest.mark.parametrize("text", ["export/model.int8.onnx", "./export/model", "../model.onnx", "a/b/c"])
def test_a_missing_path_says_no_such_file_and_downloads_nothing(no_downloads, text):
    with pytest.raises(ModelError) as e:
        pneumo_edge.load(text)
    message = str(e.value)
    assert "no such file" in message and f"'{text}'" in message and "read as a path, not a hub id" in message
    assert no_downloads == []


def test_every_command_reports_the_missing_path(no_downloads):
    runner = CliRunner()
    for args in (["info", "export/model.int8.onnx"], ["serve", "--model", "export/model.int8.onnx"],
                 ["infer", "x.png", "--model", "export/model.int8.onnx", "--out", "o.csv"]):
        r = runner.invoke(main, args)
        assert r.exit_code == 2 and "no such file" in r.output and "ends in .onnx" in r.output, (args, r.output)
        assert "Traceback" not in r.output
    assert no_downloads == []


def test_a_hub_id_says_it_was_tried_as_one(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubError) as e:
        pneumo_edge.load("nobody-here/no-such-model")
    message = str(e.value)
    assert "no file or folder 'nobody-here/no-such-model' here, so it was tried as a hub repo id" in message
    assert "\n" not in message


def test_a_name_that_is_not_a_hub_id_and_not_here(no_downloads):
    with pytest.raises(ModelError, match=r"'model' not found: no such file or folder and not a hub id"):
        pneumo_edge.load("model")


@pytest.mark.skipif(not SHIPPED.is_file(), reason="the shipped export/model.int8.onnx is absent")
def test_local_files_and_folders_win_over_the_hub(no_downloads, tmp_path):
    import shutil

    bundle = tmp_path / "me" / "model"  # looks like a hub id, exists here
    bundle.mkdir(parents=True)
    shutil.copy(SHIPPED, bundle / "model.int8.onnx")
    assert api.resolve_model("me/model", "model.int8.onnx") == Path("me/model/model.int8.onnx")
    with pytest.raises(ModelError, match="bundle folder 'me/model' has no model.onnx"):
        api.resolve_model("me/model")
    assert api.resolve_model("me/model/model.int8.onnx").is_file()
    assert no_downloads == []
