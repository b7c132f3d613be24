"""The node's result as a radiologist sees it: a PNEUMONIA and a NORMAL film go to Orthanc (the PACS) and to
`pneumo-edge listen --heatmaps`, whose SR and heat map Orthanc stores; the OHIF viewer (the prebuilt
`@ohif/app` package, fetched by tests/support/fetch_ohif.sh) opens each study through Orthanc's DICOMweb
plugin on the same origin, in Debian's chromium driven by Playwright. The test reads what the page shows:
the finding, the probability the SR holds, its region drawn on the film, and the heat map's series.

PNEUMO_EDGE_OHIF_SCREENSHOT=path keeps the PNEUMONIA film's page as a picture (docs/img/ohif-sr.png).
"""

from __future__ import annotations

import io
import os
import shutil
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # starts a server, a browser, a venv or Ray

pytest.importorskip("pynetdicom", reason="the node extra is not installed (pip install '.[node]')")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")

import pydicom  # noqa: E402

from pneumo_edge.testing.dicomfilm import write_film  # noqa: E402
from pneumo_edge.edge.node.sc import SERIES_DESCRIPTION as SC_SERIES  # noqa: E402
from pneumo_edge.edge.node.sr import SERIES_DESCRIPTION as SR_SERIES, read_sr  # noqa: E402
from pneumo_edge.benchmarks.node import NodeProcess, storescu  # noqa: E402
from pneumo_edge.testing.ohif import VERSION, Viewer, dist_dir  # noqa: E402
from pneumo_edge.testing.orthanc import Orthanc, dicomweb_plugin, orthanc_binary  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "xrays"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
REQUIRED = bool(os.environ.get("PNEUMO_EDGE_REQUIRE_BROWSER"))
MISSING = [what for what, ok in (("chromium (apt-get install chromium)", CHROMIUM),
                                 ("Orthanc (apt-get install orthanc)", orthanc_binary()),
                                 ("Orthanc's DICOMweb plugin (apt-get install orthanc-dicomweb)", dicomweb_plugin()),
                                 ("storescu (apt-get install dcmtk)", shutil.which("storescu")),
                                 (f"the OHIF viewer {VERSION} (run tests/support/fetch_ohif.sh)", dist_dir()))
           if not ok]
SR_CLASS, SC_CLASS = "1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.7"


@pytest.fixture(scope="module", autouse=True)
def _tools():
    if MISSING and REQUIRED:
        pytest.fail("PNEUMO_EDGE_REQUIRE_BROWSER is set but these are missing: " + "; ".join(MISSING))
    if MISSING:
        pytest.skip("not installed: " + "; ".join(MISSING))


def classified_as(label: str) -> Path:
    """The first committed example the shipped model gives its folder's label (the test checks the viewer)."""
    import pneumo_edge

    model = pneumo_edge.load()
    for f in sorted((EXAMPLES / label).glob("*.jp*g")):
        if model.predict(str(f))["label"] == label:
            return f
    pytest.fail(f"the shipped model labels none of the committed {label} examples {label}")


def results_in(pacs: Orthanc, study_uid: str) -> tuple[pydicom.Dataset, list[str]]:
    """The study's SR (when Orthanc has it and its heat map) and the classes of everything in the study."""
    found = [i for i in pacs.instances() if i.get("StudyInstanceUID") == study_uid]
    classes = [i.get("SOPClassUID") for i in found]
    srs = [pydicom.dcmread(io.BytesIO(pacs.file(i["ID"]))) for i in found if i.get("SOPClassUID") == SR_CLASS]
    return (srs[0] if srs else None), classes


def open_report(page, viewer: Viewer, study_uid: str) -> None:
    """The study in the viewer; the SR series opened in the viewport, read-only (not taken over as tracked
    measurements: OHIF asks)."""
    page.goto(viewer.study_url(study_uid))
    thumbnail = page.get_by_text(SR_SERIES).first
    sync_api.expect(thumbnail).to_be_visible()
    thumbnail.dblclick()
    no = page.locator("[data-cy=no-hydrate-btn]")
    no.wait_for()
    no.click()


def shown(page, text: str, nudges: int = 8) -> None:
    """`text` visible on the page. OHIF draws an SR's annotations at the viewport's next render: when the
    report was opened before the film had finished rendering, that is the next resize (or pan, zoom, ...).
    On a loaded box one resize can still come before the film is drawn, so the page is nudged until the text
    shows or the nudges run out; the text itself, exact, is what passes."""
    found = page.get_by_text(text, exact=True)
    for _ in range(nudges):
        try:
            found.wait_for(state="visible", timeout=10_000)
            return
        except sync_api.TimeoutError:
            size = page.viewport_size
            page.set_viewport_size({"width": size["width"] - 20, "height": size["height"]})
            page.set_viewport_size(size)
    sync_api.expect(found).to_be_visible()


def test_ohif_shows_the_finding_the_probability_and_the_region(tmp_path):
    films = {label: write_film(classified_as(label), tmp_path / f"{label}.dcm", "jpeg-baseline",
                               PatientName="Test^Viewer", PatientID=f"OHIF-{label}")
             for label in ("PNEUMONIA", "NORMAL")}
    studies = {label: str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID) for label, p in films.items()}
    with Orthanc(tmp_path / "orthanc", dicomweb=True) as pacs, Viewer(pacs.url) as viewer:
        node = NodeProcess(tmp_path, f"{pacs.aet}@127.0.0.1:{pacs.dicom_port}", "--heatmaps", "--retry-after", "0.2")
        node.start()
        try:
            for film in films.values():  # the modality's copy, as the PACS would hold it
                pacs.post("/instances", film.read_bytes())
            assert storescu(node.port, list(films.values()), "jpeg-baseline").returncode == 0
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not all(
                    (found := results_in(pacs, uid))[0] is not None and SC_CLASS in found[1] for uid in studies.values()):
                time.sleep(0.5)
        finally:
            assert node.terminate() == 0
        reports = {label: read_sr(results_in(pacs, uid)[0]) for label, uid in studies.items()}
        assert {label: r["finding"] for label, r in reports.items()} == {"PNEUMONIA": "present", "NORMAL": "absent"}
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            try:
                page = browser.new_page(viewport={"width": 1600, "height": 1000})
                skip = page.get_by_text("Skip all")  # the first-visit tour, whenever it covers the page
                page.add_locator_handler(skip, lambda: skip.click())
                page.set_default_timeout(90_000)  # a loaded 2-core box is slow; the checks, not the clock, decide
                sync_api.expect.set_options(timeout=90_000)
                for label, uid in studies.items():
                    got = reports[label]
                    open_report(page, viewer, uid)
                    word = "PRESENT" if got["finding"] == "present" else "ABSENT"
                    # OHIF writes each number of the group as "<concept>: <value with 2 decimals> <unit>"
                    line = f"AI: pneumonia {word}, probability: {100 * got['probability']:.2f} %"
                    shown(page, line)
                    shown(page, f"AI decision threshold, probability: {100 * got['threshold']:.2f} %")
                    sync_api.expect(page.get_by_text(SC_SERIES).first).to_be_visible()  # the heat map's series
                    # the region: OHIF draws the SR's polyline as an SVG path over the film
                    kind = "evidence" if got["finding"] == "present" else "assessed"
                    assert list(got["regions"]) == [kind]
                    sync_api.expect(page.locator("svg polyline, svg path[d]").first).to_be_attached()
                    shot = tmp_path / f"ohif-{label}.png"
                    page.screenshot(path=str(shot))
                    keep = os.environ.get("PNEUMO_EDGE_OHIF_SCREENSHOT")
                    if keep and label == "PNEUMONIA":
                        Path(keep).parent.mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(shot, keep)
            finally:
                browser.close()
