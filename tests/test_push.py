from click.testing import CliRunner

from pneumo_edge.cli import main


def _bundle(tiny_bundle, tmp_path):
    import shutil

    b = tmp_path / "b"
    shutil.copytree(tiny_bundle, b)
    (b / "README.md").write_text("---\nlicense: apache-2.0\n---\n# card\n")
    (b / "results.json").write_text("{}")
    return b


def test_push_dry_run_lists_exactly_the_bundle(tiny_bundle, tmp_path):
    b = _bundle(tiny_bundle, tmp_path)
    r = CliRunner().invoke(main, ["push", str(b), "--repo-id", "me/x", "--dry-run"])
    assert r.exit_code == 0, r.output
    listed = {line.split()[2].rsplit("/", 1)[-1] for line in r.output.splitlines() if line.startswith("would upload")}
    assert {"model.onnx", "model.int8.onnx", "model.safetensors", "config.json", "README.md", "parity.json"} <= listed
    assert "(dry run)" in r.output


def test_push_refuses_incomplete_bundle_and_missing_token(tiny_bundle, tmp_path, monkeypatch):
    b = _bundle(tiny_bundle, tmp_path)
    (b / "model.int8.onnx").unlink()
    r = CliRunner().invoke(main, ["push", str(b), "--repo-id", "me/x", "--dry-run"])
    assert r.exit_code == 2 and "missing model.int8.onnx" in r.output
    b2 = _bundle(tiny_bundle, tmp_path / "second")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    r = CliRunner().invoke(main, ["push", str(b2), "--repo-id", "me/x"])
    assert r.exit_code == 2 and "token" in r.output
