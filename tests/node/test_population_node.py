"""The DICOM node on a film of an adult: an SR 'not assessed' with the population's reason, and no age in the audit."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # starts a server, a browser, a venv or Ray

pytest.importorskip("pynetdicom", reason="the node extra is not installed (pip install '.[node]')")
pytest.importorskip("highdicom", reason="the node extra is not installed (pip install '.[node]')")

from pneumo_edge.testing.dicomfilm import film_dataset  # noqa: E402
from pneumo_edge.benchmarks.node import storescu  # noqa: E402
from test_node import MISSING, films, pacs, start_node, wait_reports  # noqa: E402,F401 - pacs: the fixture

pytestmark = pytest.mark.skipif(bool(MISSING), reason="not installed: " + ", ".join(MISSING))


def test_an_adult_film_gets_a_not_assessed_sr_with_the_reason(tmp_path, pacs, tiny_bundle):  # noqa: F811
    from PIL import Image

    pixels = np.asarray(Image.open(films(1)[0]).convert("L"))
    folder = tmp_path / "in"
    folder.mkdir()
    cases = {"adult": film_dataset(pixels, PatientAge="062Y"), "child": film_dataset(pixels, PatientAge="003Y")}
    for name, ds in cases.items():
        ds.save_as(folder / f"{name}.dcm", enforce_file_format=True)
    node = start_node(tmp_path, pacs, "--model", str(tiny_bundle / "model.onnx"))
    assert storescu(node.port, [folder / "adult.dcm", folder / "child.dcm"]).returncode == 0
    got = {info["source_uid"]: info for _, info in wait_reports(pacs, 2)}
    assert node.terminate() == 0
    adult, child = got[str(cases["adult"].SOPInstanceUID)], got[str(cases["child"].SOPInstanceUID)]
    assert adult["finding"] == "not assessed"
    assert "patient age 62 Y is outside this model's population (paediatric, 1-5 years)" in adult["comment"]
    assert "patient age" not in (child.get("comment") or "")
    audit = [r for r in node.audit() if r["event"] == "result"]
    assert audit and not any("62 Y" in (r.get("reason") or "") for r in audit)  # the log holds no age
    assert any("patient age is outside" in (r.get("reason") or "") for r in audit)
