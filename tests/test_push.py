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


def test_push_refuses_symlinks_and_bad_repo_ids_and_keeps_pattern_names_literal(tiny_bundle, tmp_path):
    b = _bundle(tiny_bundle, tmp_path)
    (b / "[ab]*.md").write_text("a name that looks like a pattern")
    r = CliRunner().invoke(main, ["push", str(b), "--repo-id", "me/x", "--dry-run"])
    assert r.exit_code == 0 and "[ab]*.md" in r.output
    r = CliRunner().invoke(main, ["push", str(b), "--repo-id", "not a repo", "--dry-run"])
    assert r.exit_code == 2 and "not a Hugging Face repo id" in r.output
    secret = tmp_path / "secret.json"
    secret.write_text("{}")
    (b / "extra.json").symlink_to(secret)
    r = CliRunner().invoke(main, ["push", str(b), "--repo-id", "me/x", "--dry-run"])
    assert r.exit_code == 2 and "symbolic link" in r.output


def test_push_private_into_an_existing_public_repo_is_refused(tiny_bundle, tmp_path, monkeypatch):
    import huggingface_hub

    b = _bundle(tiny_bundle, tmp_path)
    calls = []

    class FakeApi:
        def __init__(self, token=None):
            pass

        def whoami(self):
            return {"name": "me"}

        def create_repo(self, *a, **k):
            calls.append("create")

        def repo_info(self, *a, **k):
            return type("Info", (), {"private": False})()

        def create_commit(self, **k):
            calls.append("commit")

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setenv("HF_TOKEN", "x")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    r = CliRunner().invoke(main, ["push", str(b), "--repo-id", "me/x", "--private"])
    assert r.exit_code == 2 and "public" in r.output and calls == ["create"]
