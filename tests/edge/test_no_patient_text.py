"""No DICOM header text in any output: DICOMs whose free-text and coded attributes hold a name and a record
number go through `infer`, `explain`, the Python API and `serve`, and every output and log is searched for them.

`patient_dicoms` and `assert_no_patient_text` are the reusable part: another way in (a new command, a node) is
checked by feeding it `patient_dicoms(folder)` and passing everything it wrote or said to the assertion.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pneumo_edge.cli import main
from test_imaging import ramp, write_dicom

NAME, MRN, BIRTH = "QUIMBY^ZEBEDEE", "40417733", "19610913"
MARKERS = ("QUIMBY", "ZEBEDEE", MRN, BIRTH)  # none of these may appear in an output
FREE_TEXT = {"PatientName": NAME, "PatientID": f"MRN{MRN}", "PatientBirthDate": BIRTH, "OtherPatientIDs": MRN,
             "AccessionNumber": MRN, "InstitutionName": f"Ward of {NAME}", "ReferringPhysicianName": NAME,
             "StudyDescription": f"CHEST {NAME} {MRN}", "SeriesDescription": f"PA {NAME}",
             "ImageComments": f"patient {NAME} MRN {MRN}", "StudyID": MRN[:8]}


def _patch(path: Path, placeholder: bytes, value: bytes) -> None:
    """Put a value pydicom would not write (not valid for the attribute's VR) in place of a same-length one."""
    assert len(placeholder) == len(value)
    data = path.read_bytes()
    assert data.count(placeholder) == 1
    path.write_bytes(data.replace(placeholder, value))


def patient_dicoms(folder: Path) -> dict[str, Path]:
    """DICOMs with the markers in every free-text attribute, and in coded ones that refuse the file."""
    folder.mkdir(parents=True, exist_ok=True)
    pixels = ramp(64, 64)
    files = {
        "accepted": write_dicom(folder / "accepted.dcm", pixels, Modality="DX", BodyPartExamined="CHEST", **FREE_TEXT),
        "body_part": write_dicom(folder / "body_part.dcm", pixels, Modality="DX",
                                 BodyPartExamined=f"HAND QUIMBY {MRN}", **FREE_TEXT),
        "modality": write_dicom(folder / "modality.dcm", pixels, Modality="QUIMBY40417733", **FREE_TEXT),
        "frames": write_dicom(folder / "frames.dcm", pixels, Modality="DX", NumberOfFrames="999999999999", **FREE_TEXT),
    }
    _patch(files["frames"], b"999999999999", b"QUIMBY404177")  # an IS that is a name and a number
    return files


def assert_no_patient_text(outputs: dict[str, str | bytes]) -> None:
    """Every output (file contents, terminal text, HTTP bodies, log lines) free of the markers."""
    assert outputs
    for where, content in outputs.items():
        text = content.decode("latin-1") if isinstance(content, bytes) else str(content)
        found = [m for m in MARKERS if m.lower() in text.lower()]
        assert not found, f"{where} holds patient text {found}: {text[:300]}"


def _files_under(folder: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_refusals_name_the_attribute_not_its_value(tmp_path):
    from pneumo_edge.edge.errors import ImageError
    from pneumo_edge.edge.imaging import load_gray

    files = patient_dicoms(tmp_path / "in")
    assert load_gray(files["accepted"]).shape == (64, 64)
    expected = {"body_part": "DICOM body part (BodyPartExamined: unrecognised value) is not a chest radiograph",
                "modality": "DICOM modality (Modality: unrecognised value) is not a chest radiograph",
                "frames": "invalid DICOM header NumberOfFrames (not an integer)"}
    for key, message in expected.items():
        with pytest.raises(ImageError) as e:
            load_gray(files[key])
        assert str(e.value) == message


def test_infer_and_explain_outputs_hold_no_header_text(tiny_bundle, tmp_path):
    files = patient_dicoms(tmp_path / "in")
    runner = CliRunner()
    out = tmp_path / "out"
    r = runner.invoke(main, ["infer", str(tmp_path / "in"), "--model", str(tiny_bundle / "model.onnx"),
                             "--out", str(out / "rows.csv"), "--json", str(out / "rows.jsonl"), "--verbose",
                             "--heatmaps", str(out / "maps")])
    assert r.exit_code in (0, 1), r.output
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    assert len(rows) == len(files) and sum(row["status"] in ("ok", "rejected") for row in rows) == 1
    assert any("BodyPartExamined: unrecognised value" in (row.get("error") or "") for row in rows)
    e = runner.invoke(main, ["explain", *map(str, files.values()), "--model", str(tiny_bundle / "model.onnx"),
                             "--out", str(out / "explain")])
    assert_no_patient_text({"infer terminal": r.output, "explain terminal": e.output, **_files_under(out)})


def test_api_and_serve_answers_and_logs_hold_no_header_text(tiny_bundle, tmp_path, caplog):
    pytest.importorskip("fastapi", reason="the [serve] extra (fastapi) is not installed")
    from fastapi.testclient import TestClient

    import pneumo_edge
    from pneumo_edge.edge.serve import ServeConfig, create_app

    files = patient_dicoms(tmp_path / "in")
    caplog.clear()  # what pydicom said while the test wrote the files
    said: dict[str, str] = {}
    model = pneumo_edge.load(tiny_bundle / "model.onnx")
    for key, path in files.items():
        try:
            said[f"api {key}"] = repr(model.predict(str(path)))
        except Exception as e:  # noqa: BLE001 - the message is what is checked
            said[f"api {key} error"] = str(e)
    app = create_app(ServeConfig(model=str(tiny_bundle / "model.onnx"), threads=1))
    with caplog.at_level("DEBUG"), TestClient(app, base_url="http://127.0.0.1") as c:
        for key, path in files.items():
            r = c.post("/v1/predict", content=path.read_bytes(), headers={"Content-Type": "application/dicom"})
            said[f"serve {key} ({r.status_code})"] = r.text
            form = c.post("/v1/predict", files={"file": (path.name, path.read_bytes(), "application/dicom")})
            said[f"serve form {key}"] = form.text
    assert any("(200)" in k for k in said) and any("(422)" in k for k in said)
    said["logs"] = "\n".join(f"{rec.name}: {rec.getMessage()}" for rec in caplog.records)
    assert_no_patient_text(said)
    assert np.isfinite(json.loads(said["serve accepted (200)"])["probability"])
