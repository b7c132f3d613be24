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
    assert r.exit_code == 0 and "left out" in r.output and "[ab]*.md" in r.output  # named literally, not uploaded
    assert not any("[ab]*.md" in line for line in r.output.splitlines() if line.startswith("would upload"))
    r = CliRunner().invoke(main, ["push", str(b), "--repo-id", "not a repo", "--dry-run"])
    assert r.exit_code == 2 and "not a Hugging Face repo id" in r.output
    secret = tmp_path / "secret.json"
    secret.write_text("{}")
    (b / "extra.json").symlink_to(secret)
    r = CliRunner().invoke(main, ["push", str(b), "--repo-id", "me/x", "--dry-run"])
    assert r.exit_code == 2 and "symbolic link" in r.output


def fake_hub(monkeypatch, existing_private: bool | None = None) -> list:
    """HfApi replaced by a recorder: ('create', private) and ('commit', paths) in order. `existing_private`: the
    repository already exists with that visibility (None: it is created as asked)."""
    import huggingface_hub

    calls: list = []

    class FakeApi:
        def __init__(self, token=None):
            pass

        def whoami(self):
            return {"name": "me"}

        def create_repo(self, repo_id, repo_type=None, private=None, exist_ok=None):
            calls.append(("create", private))

        def repo_info(self, *a, **k):
            return type("Info", (), {"private": calls[-1][1] if existing_private is None else existing_private})()

        def create_commit(self, **k):
            calls.append(("commit", sorted(op.path_in_repo for op in k["operations"])))

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setenv("HF_TOKEN", "x")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return calls


def test_push_private_into_an_existing_public_repo_is_refused(tiny_bundle, tmp_path, monkeypatch):
    b = _bundle(tiny_bundle, tmp_path)
    calls = fake_hub(monkeypatch, existing_private=False)
    r = CliRunner().invoke(main, ["push", str(b), "--repo-id", "me/x"])  # private is the default
    assert r.exit_code == 2 and "public" in r.output and [c[0] for c in calls] == ["create"]


def _uploads(r) -> set[str]:
    return {line.split()[2].split("/b/", 1)[-1] for line in r.output.splitlines() if line.startswith("would upload")}


def test_push_uploads_the_bundle_manifest_only_and_no_patient_images(tiny_bundle, tmp_path):
    from pneumo_edge.bundle.manifest import BUNDLE_FILES

    b = _bundle(tiny_bundle, tmp_path)
    (b / "gradcam").mkdir(exist_ok=True)
    (b / "gradcam" / "contact_sheet.png").write_bytes(b"\x89PNG films of six patients")
    (b / "gradcam" / "person12_virus.gradcam.png").write_bytes(b"\x89PNG a stray heat map")
    (b / "predictions.json").write_text("[]")
    r = CliRunner().invoke(main, ["push", str(b), "--repo-id", "me/x", "--dry-run"])
    assert r.exit_code == 0, r.output
    up = _uploads(r)
    assert up <= {f.name for f in BUNDLE_FILES} and "model.onnx" in up
    assert not {"gradcam/contact_sheet.png", "gradcam/person12_virus.gradcam.png", "predictions.json"} & up
    assert "shows patients' films" in r.output and "not one of the bundle's files" in r.output
    r = CliRunner().invoke(main, ["push", str(b), "--repo-id", "me/x", "--dry-run", "--include-patient-images"])
    assert "gradcam/contact_sheet.png" in _uploads(r) and "predictions.json" not in _uploads(r)


def test_push_is_private_unless_public(tiny_bundle, tmp_path, monkeypatch):
    b = _bundle(tiny_bundle, tmp_path)
    calls = fake_hub(monkeypatch)
    r = CliRunner().invoke(main, ["push", str(b), "--repo-id", "me/x"])
    assert r.exit_code == 0, r.output
    assert calls[0] == ("create", True) and "model.onnx" in calls[1][1] and "(private)" in r.output
    calls.clear()
    r = CliRunner().invoke(main, ["push", str(b), "--repo-id", "me/x", "--public"])
    assert r.exit_code == 0 and calls[0] == ("create", False) and "(public)" in r.output


def test_push_uploads_the_cards_demo_film_sheet_and_still_no_patient_films(tiny_bundle, tmp_path):
    b = _bundle(tiny_bundle, tmp_path)
    (b / "heatmaps").mkdir(exist_ok=True)
    (b / "heatmaps" / "contact_sheet.png").write_bytes(b"\x89PNG the demo films' heat maps")
    (b / "heatmaps" / "NORMAL2-IM-1427-0001.cam.png").write_bytes(b"\x89PNG one overlay")
    (b / "gradcam").mkdir(exist_ok=True)
    (b / "gradcam" / "contact_sheet.png").write_bytes(b"\x89PNG films of six test patients")
    r = CliRunner().invoke(main, ["push", str(b), "--repo-id", "me/x", "--dry-run"])
    assert r.exit_code == 0, r.output
    up = _uploads(r)
    assert "heatmaps/contact_sheet.png" in up
    assert not {"gradcam/contact_sheet.png", "heatmaps/NORMAL2-IM-1427-0001.cam.png"} & up
    assert "shows patients' films" in r.output


def test_every_picture_the_shipped_card_shows_goes_up_with_it():
    import re
    from pathlib import Path

    export = Path(__file__).resolve().parents[2] / "export"
    if not (export / "README.md").is_file():
        import pytest

        pytest.skip("no shipped export/ bundle")
    pictures = set(re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", (export / "README.md").read_text()))
    assert "heatmaps/contact_sheet.png" in pictures
    r = CliRunner().invoke(main, ["push", str(export), "--repo-id", "me/x", "--dry-run"])
    assert r.exit_code == 0, r.output
    up = {line.split()[2].split("export/", 1)[-1] for line in r.output.splitlines() if line.startswith("would upload")}
    assert pictures <= up, pictures - up
    assert "gradcam/contact_sheet.png" not in up
