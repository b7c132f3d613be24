import json

from click.testing import CliRunner

from conftest import TINY_MODEL
from pneumo_edge.cli import main

TINY = ["--arch", TINY_MODEL, "--pretrained", "none", "--img-size", "64", "--epochs", "1",
        "--batch-size", "8", "--val-fraction", "0.25"]


def test_train_end_to_end_then_resume_and_refuse_clobber(tiny_data, tmp_path):
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", "--data", str(tiny_data), "--out", str(out), *TINY])
    assert r.exit_code == 0, r.output
    assert "epoch 1/1" in r.output and "val AUROC" in r.output and "wall time" in r.output
    config = json.loads((out / "config.json").read_text())
    assert config["format"].startswith("pneumo-edge-checkpoint")
    assert config["preprocess"]["size"] == 64 and config["labels"] == ["NORMAL", "PNEUMONIA"]
    assert 0 < config["temperature"] and 0 <= config["threshold"] <= 1
    assert config["validation"]["grouping"] == "patient" and config["data_fingerprint"]
    assert (out / "model.safetensors").stat().st_size > 0
    results = json.loads((out / "train_results.json").read_text())
    assert results["wall_time_s"] > 0 and len(results["history"]) == 1

    again = CliRunner().invoke(main, ["train", "--data", str(tiny_data), "--out", str(out), *TINY])
    assert again.exit_code == 2 and "--force" in again.output and "Traceback" not in again.output

    more = [a if a != "1" else "2" for a in TINY]  # --epochs 2, continuing the same run
    resumed = CliRunner().invoke(main, ["train", "--data", str(tiny_data), "--out", str(out), *more, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert "resuming after epoch 1" in resumed.output and "epoch 2/2" in resumed.output
    assert "epoch 1/2" not in resumed.output
    assert len(json.loads((out / "train_results.json").read_text())["history"]) == 2


def test_train_bad_inputs_are_one_line_errors(tiny_data, tmp_path):
    r = CliRunner().invoke(main, ["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "does not exist" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["train", "--data", str(tiny_data), "--out", str(tmp_path / "o"),
                                  "--arch", "resnet5O"])
    assert r.exit_code == 2 and "did you mean" in r.output


def test_evaluate_writes_results_plots_and_ledger(tiny_checkpoint, tiny_data, tmp_path):
    out, ledger = tmp_path / "eval", tmp_path / "ledger.jsonl"
    r = CliRunner().invoke(main, ["evaluate", str(tiny_checkpoint), "--data", str(tiny_data), "--out", str(out),
                                  "--ledger", str(ledger), "--bootstrap", "50"])
    assert r.exit_code == 0, r.output
    res = json.loads((out / "results.json").read_text())
    op = res["test"]["at_operating_point"]
    assert res["test"]["n"] == 20 and sum(map(sum, op["confusion_matrix"])) == 20
    assert res["operating_point"]["chosen_on"] == "validation"
    for k in ("accuracy", "recall", "specificity", "roc_auc", "pr_auc"):
        lo, hi = res["test"]["ci95_at_operating_point"][k]
        assert lo <= op[k] <= hi
    assert {"val_ece_before", "val_ece_after", "test_ece_before", "test_ece_after"} <= set(res["calibration"])
    for f in ("confusion_matrix.png", "roc.png", "reliability.png", "report.md"):
        assert (out / f).stat().st_size > 0
    lines = ledger.read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["roc_auc"] == round(op["roc_auc"], 4)
    CliRunner().invoke(main, ["evaluate", str(tiny_checkpoint), "--data", str(tiny_data), "--out", str(out),
                              "--ledger", str(ledger), "--bootstrap", "50", "--force"])
    assert len(ledger.read_text().splitlines()) == 2  # every read of the test split is recorded


def test_evaluate_rejects_non_checkpoint(tmp_path, tiny_data):
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "model.safetensors").write_bytes(b"junk")
    r = CliRunner().invoke(main, ["evaluate", str(tmp_path / "ck"), "--data", str(tiny_data)])
    assert r.exit_code == 2 and "not a pneumo-edge checkpoint" in r.output


def test_evaluate_refuses_an_onnx_file_and_points_to_validate(tiny_bundle, tiny_data, tmp_path):
    r = CliRunner().invoke(main, ["evaluate", str(tiny_bundle / "model.int8.onnx"), "--data", str(tiny_data),
                                  "--out", str(tmp_path / "e"), "--ledger", str(tmp_path / "ledger.jsonl")])
    assert r.exit_code == 2 and "pneumo-edge validate" in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "e").exists() and not (tmp_path / "ledger.jsonl").exists()  # nothing read or written


def test_seeds_cli_summarises_runs_and_obeys_force(tiny_checkpoint, tiny_data, tmp_path):
    dirs = []
    for i in range(2):
        out = tmp_path / f"eval{i}"
        r = CliRunner().invoke(main, ["evaluate", str(tiny_checkpoint), "--data", str(tiny_data), "--out", str(out),
                                      "--ledger", "", "--bootstrap", "20"])
        assert r.exit_code == 0, r.output
        dirs.append(str(out))
    summary = tmp_path / "seeds.json"
    r = CliRunner().invoke(main, ["seeds", *dirs, "--out", str(summary)])
    assert r.exit_code == 0, r.output
    s = json.loads(summary.read_text())
    auc = json.loads((tmp_path / "eval0" / "results.json").read_text())["test"]["at_operating_point"]["roc_auc"]
    assert s["summary"]["roc_auc"]["mean"] == auc and s["summary"]["roc_auc"]["sd"] == 0.0  # same model twice
    again = CliRunner().invoke(main, ["seeds", *dirs, "--out", str(summary)])
    assert again.exit_code == 2 and "--force" in again.output


def test_readme_cli_fills_generated_sections_from_result_files(tiny_eval, tmp_path):
    bundle = tiny_eval  # results.json is all the results section needs
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- generated:results -->\nold\n<!-- /generated:results -->\nend\n")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "results.md").write_text("# Results\n<!-- generated:results -->\nold\n<!-- /generated:results -->\n")
    r = CliRunner().invoke(main, ["bundle", "readme", str(readme), "--bundle", str(bundle)])
    assert r.exit_code == 0, r.output
    assert "\nold\n" not in (docs / "results.md").read_text()  # the numbers wherever they live: docs pages too
    text = readme.read_text()
    n = json.loads((bundle / "results.json").read_text())["test"]["n"]
    assert "\nold\n" not in text and f"official test split, {n} images" in text and text.endswith("end\n")
    assert "updated sections: README.md:results, docs/results.md:results" in r.output
