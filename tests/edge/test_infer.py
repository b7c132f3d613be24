import csv
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import EXTERNAL, xray_like
from pneumo_edge.cli import main
from test_imaging import ramp, write_dicom


def rows_of(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture()
def messy_folder(tmp_path):
    """Real-looking X-rays next to every kind of bad input."""
    d = tmp_path / "xrays"
    (d / "sub").mkdir(parents=True)
    rng = np.random.default_rng(3)
    good = {}
    for i in range(5):
        Image.fromarray(xray_like(rng, i % 2 == 0, (120, 100))).save(d / f"good{i}.jpeg")
        good[f"good{i}.jpeg"] = "ok"
    Image.fromarray(xray_like(rng, True)).save(d / "sub" / "nested.png")
    Image.fromarray((xray_like(rng, False).astype(np.uint16) * 200)).save(d / "sixteen.png")
    Image.fromarray(xray_like(rng, False)).convert("RGBA").save(d / "rgba.png")
    Image.fromarray(xray_like(rng, False)).convert("P").save(d / "palette.png")
    Image.fromarray(xray_like(rng, False)).convert("CMYK").save(d / "cmyk.tiff")
    Image.fromarray(xray_like(rng, False)).save(d / "plain.bmp")
    write_dicom(d / "m2.dcm", ramp(80, 80))
    write_dicom(d / "m1.dcm", ramp(80, 80), "MONOCHROME1")
    bad = {}
    (d / "zero.jpeg").write_bytes(b"")
    bad["zero.jpeg"] = "empty"
    data = (d / "good0.jpeg").read_bytes()
    (d / "truncated.jpeg").write_bytes(data[: len(data) // 3])
    bad["truncated.jpeg"] = "corrupt"
    (d / "text.jpeg").write_text("this is not a picture")
    bad["text.jpeg"] = "not an image"
    (d / "random.png").write_bytes(os.urandom(2000))
    bad["random.png"] = "not an image"
    Image.new("L", (1, 1)).save(d / "one.png")
    bad["one.png"] = "too small"
    os.symlink(d / "gone.png", d / "broken.png")
    bad["broken.png"] = "broken symbolic link"
    weird = os.fsdecode(b"caf\xe9-\xff.png")  # not valid UTF-8
    Image.fromarray(xray_like(rng, False)).save(os.path.join(os.fsencode(d), os.fsencode(weird)))
    (d / "notes.txt").write_text("a note")
    return d, good, bad


def test_infer_folder_of_real_world_files(tiny_bundle, messy_folder, tmp_path):
    d, good, bad = messy_folder
    out, js = tmp_path / "pred.csv", tmp_path / "pred.jsonl"
    r = CliRunner().invoke(main, ["infer", str(d), str(tmp_path / "missing.png"), "--model",
                                  str(tiny_bundle / "model.onnx"), "--out", str(out), "--json", str(js), "--no-guard"])
    assert r.exit_code == 1, r.output  # some files failed, all others classified
    rows = rows_of(out)
    by_name = {os.path.basename(row["path"]): row for row in rows}
    n_files = sum(len(files) for _, _, files in os.walk(d)) + 1  # + the missing path
    assert len(rows) == n_files == len(by_name)
    for name in (*good, "nested.png", "sixteen.png", "rgba.png", "palette.png", "cmyk.tiff", "plain.bmp",
                 "m2.dcm", "m1.dcm"):
        row = by_name[name]
        assert row["status"] == "ok" and row["label"] in ("NORMAL", "PNEUMONIA"), row
        assert 0.0 <= float(row["probability"]) <= 1.0
    for name, reason in bad.items():
        assert by_name[name]["status"] == "error" and reason in by_name[name]["error"], by_name[name]
    assert by_name["missing.png"]["error"] == "path does not exist"
    assert by_name["notes.txt"]["status"] == "skipped"
    assert any("\\x" in name and by_name[name]["status"] == "ok" for name in by_name)  # non-UTF-8 name kept
    assert len(js.read_text().splitlines()) == n_files
    assert "images/s" in r.output and "could not be classified" in r.output


def test_infer_resume_completes_an_interrupted_run(tiny_bundle, messy_folder, tmp_path, monkeypatch):
    import pneumo_edge.edge.infer as rt

    d, _, _ = messy_folder
    out = tmp_path / "pred.csv"
    real = rt.classify_batch
    calls = {"n": 0}

    def dies_on_second_batch(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(rt, "classify_batch", dies_on_second_batch)
    args = ["infer", str(d), "--model", str(tiny_bundle / "model.onnx"), "--out", str(out), "--batch-size", "4"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 130
    partial = rows_of(out)
    assert 4 <= len(partial) < 26  # the first batch survived the interruption
    monkeypatch.setattr(rt, "classify_batch", real)

    refused = CliRunner().invoke(main, args)
    assert refused.exit_code == 2 and "--resume" in refused.output
    r = CliRunner().invoke(main, [*args, "--resume"])
    rows = rows_of(out)
    assert len({row["path"] for row in rows}) == len(rows) == sum(len(f) for _, _, f in os.walk(d))
    assert "already done" in r.output


def test_infer_refuses_model_without_metadata(tmp_path, tiny_bundle):
    import onnx

    proto = onnx.load(str(tiny_bundle / "model.onnx"))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "plain.onnx"))
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "a.png")
    r = CliRunner().invoke(main, ["infer", str(tmp_path / "a.png"), "--model", str(tmp_path / "plain.onnx"),
                                  "--out", str(tmp_path / "p.csv")])
    assert r.exit_code == 2 and "no pneumo-edge metadata" in r.output and "labels" in r.output


def test_infer_empty_folder_and_unreadable_file(tmp_path, tiny_bundle):
    (tmp_path / "empty").mkdir()
    locked = tmp_path / "locked.png"
    Image.fromarray(xray_like(np.random.default_rng(0), False)).save(locked)
    locked.chmod(0)
    r = CliRunner().invoke(main, ["infer", str(tmp_path / "empty"), str(locked), "--model",
                                  str(tiny_bundle / "model.onnx"), "--out", str(tmp_path / "p.csv")])
    rows = {os.path.basename(row["path"]): row for row in rows_of(tmp_path / "p.csv")}
    assert rows["empty"]["error"] == "folder contains no files"
    if os.geteuid() == 0:  # root reads anything: the file is simply classified
        assert rows["locked.png"]["status"] == "ok"
    else:
        assert "permission denied" in rows["locked.png"]["error"]
    assert r.exit_code == 1


def test_infer_path_does_not_import_torch(tiny_bundle, tmp_path):
    Image.fromarray(xray_like(np.random.default_rng(0), True)).save(tmp_path / "x.png")
    code = ("import sys\nfrom pneumo_edge.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\nprint('NO_TORCH')")
    r = subprocess.run([sys.executable, "-c", code, "infer", str(tmp_path / "x.png"), "--model",
                        str(tiny_bundle / "model.onnx"), "--out", str(tmp_path / "p.csv")],
                       capture_output=True, text=True, timeout=120)
    assert "NO_TORCH" in r.stdout, r.stderr


@pytest.mark.skipif(not EXTERNAL.is_dir(), reason="external X-rays not present")
def test_infer_real_dicom_and_png(tiny_bundle, tmp_path):
    r = CliRunner().invoke(main, ["infer", str(EXTERNAL), "--model", str(tiny_bundle / "model.onnx"),
                                  "--out", str(tmp_path / "p.csv"), "--no-guard", "--verbose"])
    rows = rows_of(tmp_path / "p.csv")
    assert r.exit_code == 0, r.output
    assert sum(line.split()[0] in ("NORMAL", "PNEUMONIA") for line in r.output.splitlines()) == 9
    assert sum(row["status"] == "ok" for row in rows) == 9  # 7 PNG/JPEG + 2 DICOM
    assert json.dumps(rows)  # plain serialisable rows


# ---------------------------------------------------------------- what a user sees

@pytest.fixture()
def xrays_and_blank(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    rng = np.random.default_rng(7)
    for i in range(3):
        Image.fromarray(xray_like(rng, i % 2 == 0)).save(d / f"xray{i}.png")
    Image.fromarray(np.zeros((96, 80), np.uint8)).save(d / "blank.png")  # the guard refuses it
    return d


def test_infer_rows_carry_the_scored_record_and_rejected_status(tiny_bundle, xrays_and_blank, tmp_path):
    from pneumo_edge.edge.decision import decide
    from pneumo_edge.edge.meta import read_meta

    out, js = tmp_path / "p.csv", tmp_path / "p.jsonl"
    r = CliRunner().invoke(main, ["infer", str(xrays_and_blank), "--model", str(tiny_bundle), "--out", str(out),
                                  "--json", str(js)])
    assert r.exit_code == 0, r.output
    meta = read_meta(tiny_bundle / "model.onnx")
    rows = {os.path.basename(row["path"]): row for row in rows_of(out)}
    blank = rows.pop("blank.png")
    assert blank["status"] == "rejected" and blank["label"] == "REJECTED_OOD" and blank["guard_verdict"] == "rejected"
    assert float(blank["guard_score"]) > 1 and 0 <= float(blank["probability"]) <= 1 and blank["guard_reason"]
    assert blank["model_label"] == decide(meta, float(blank["probability"])).model_label and not blank["error"]
    kept = [row for row in rows.values() if row["status"] == "ok"]
    assert kept and all(row["guard_verdict"] == "accepted" and row["label"] == row["model_label"]
                        == decide(meta, float(row["probability"])).label for row in kept)
    assert all(float(row["threshold"]) == meta.threshold for row in rows_of(out))
    for line in js.read_text().splitlines():  # numbers as numbers
        row = json.loads(line)
        assert isinstance(row["probability"], float) and isinstance(row["guard_score"], float)
        assert row["threshold"] == meta.threshold and row["guard_verdict"] in ("accepted", "rejected")
    printed = [line for line in r.output.splitlines() if ".png" in line]  # few inputs: one line each, no -v
    assert len(printed) == 4 and any(line.startswith("REJECTED_OOD") for line in printed)
    again = CliRunner().invoke(main, ["infer", str(xrays_and_blank), "--model", str(tiny_bundle), "--out", str(out),
                                      "--json", str(js), "--resume"])
    assert again.exit_code == 0 and "4 already done" in again.output  # a rejected row is a finished row


def test_infer_to_stdout_keeps_stdout_for_the_csv(tiny_bundle, xrays_and_blank, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, ["infer", str(xrays_and_blank), "--model", str(tiny_bundle), "--out", "-"])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert len(rows) == 4 and {os.path.basename(row["path"]) for row in rows} >= {"blank.png", "xray0.png"}
    assert "standard output" in r.stderr and not (tmp_path / "-").exists()
    resumed = CliRunner().invoke(main, ["infer", str(xrays_and_blank), "--model", str(tiny_bundle), "--out", "-",
                                        "--resume"])
    assert resumed.exit_code == 2 and "--resume" in resumed.output and len(resumed.output.strip().splitlines()) == 1


def test_infer_prints_rows_only_for_few_inputs_and_fails_when_nothing_is_classified(tiny_bundle, tmp_path):
    many = tmp_path / "many"
    many.mkdir()
    for i in range(21):
        Image.fromarray(xray_like(np.random.default_rng(i), False)).save(many / f"x{i:02d}.png")
    args = ["--model", str(tiny_bundle), "--no-guard", "--out"]
    r = CliRunner().invoke(main, ["infer", str(many), *args, str(tmp_path / "a.csv")])
    assert r.exit_code == 0 and len(r.output.strip().splitlines()) == 1  # the summary only
    r = CliRunner().invoke(main, ["infer", str(many), *args, str(tmp_path / "b.csv"), "-v"])
    assert len(r.output.strip().splitlines()) == 22

    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no images here")
    Image.fromarray(np.zeros((96, 80), np.uint8)).save(tmp_path / "blank.png")
    for inputs, guard in (([tmp_path / "notes"], "--no-guard"), ([tmp_path / "blank.png"], "--guard")):
        r = CliRunner().invoke(main, ["infer", *map(str, inputs), "--model", str(tiny_bundle), guard, "--out",
                                      str(tmp_path / f"{guard}.csv")])
        assert r.exit_code == 1 and "nothing was classified" in r.output, r.output
