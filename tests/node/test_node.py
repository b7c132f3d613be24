"""`pneumo-edge listen` against real components on loopback: Orthanc as the PACS, dcmtk's storescu as the
modality, dciodvfy (dicom3tools) judging every SR. The node runs as its own process (the CLI), so SIGTERM
and SIGKILL are real."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest


pytest.importorskip("pynetdicom", reason="the node extra is not installed (pip install '.[node]')")
pytest.importorskip("highdicom", reason="the node extra is not installed (pip install '.[node]')")

import pydicom  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from pneumo_edge.cli import main  # noqa: E402
from pneumo_edge.testing.dicomfilm import film_dataset, write_film  # noqa: E402
from pneumo_edge.edge.node.sr import read_sr  # noqa: E402
from pneumo_edge.benchmarks.node import STORESCU_FLAG, NodeProcess, storescu, storescu_args, stored_ok, class_films  # noqa: E402
from pneumo_edge.benchmarks.node_bounds import wait_for  # noqa: E402
from pneumo_edge.testing.orthanc import Orthanc, orthanc_binary  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TRAIN = ROOT.parent / "shared" / "data" / "chest_xray" / "train"
MISSING = [name for name, found in (("Orthanc (apt-get install orthanc)", orthanc_binary()),
                                    ("storescu (apt-get install dcmtk)", shutil.which("storescu")),
                                    ("dciodvfy (apt-get install dicom3tools)", shutil.which("dciodvfy"))) if not found]
pytestmark = [pytest.mark.slow, pytest.mark.skipif(bool(MISSING), reason="not installed: " + ", ".join(MISSING))]  # slow: starts a server or a browser

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"


def films(n: int) -> list[Path]:
    if not TRAIN.is_dir():
        pytest.skip(f"dataset not found at {TRAIN}")
    return class_films(TRAIN, n)


STARTED: list[NodeProcess] = []


def start_node(tmp: Path, pacs: Orthanc, *extra: str, port: int | None = None) -> NodeProcess:
    node = NodeProcess(tmp, f"{pacs.aet}@127.0.0.1:{pacs.dicom_port}", "--retry-after", "0.2", *extra, port=port)
    STARTED.append(node)
    return node.start()


@pytest.fixture(autouse=True)
def _no_node_left():
    """A failed test must not leave its node process running."""
    yield
    while STARTED:
        node = STARTED.pop()
        if node.proc is not None and node.proc.poll() is None:
            node.kill()


def reports(pacs: Orthanc) -> list[tuple[pydicom.Dataset, dict]]:
    out = []
    for inst in pacs.instances():
        if inst.get("SOPClassUID") == SR_CLASS:
            ds = pydicom.dcmread(io.BytesIO(pacs.file(inst["ID"])))
            out.append((ds, read_sr(ds)))
    return out


def wait_reports(pacs: Orthanc, n: int, timeout: float = 120.0) -> list[tuple[pydicom.Dataset, dict]]:
    def enough():
        found = reports(pacs)
        return found if len(found) >= n else None

    return wait_for(enough, timeout, f"{n} SRs in Orthanc")


def assert_conformant(datasets: list, tmp: Path) -> None:
    """PixelMed's SR validator and dciodvfy on what Orthanc received (test_node_conformance judges)."""
    from test_node_conformance import MISSING, conformance_problems

    if MISSING:
        pytest.skip("not installed: " + ", ".join(MISSING))
    paths = []
    for i, ds in enumerate(datasets):
        paths.append(tmp / f"check-{i}.dcm")
        paths[-1].write_bytes(_encode(ds))
    assert conformance_problems(paths) == {}


@pytest.fixture
def pacs(tmp_path):
    with Orthanc(tmp_path / "orthanc") as p:
        yield p


def test_end_to_end_every_transfer_syntax(tmp_path, pacs):
    """Seven films, one per transfer syntax: Orthanc holds exactly one SR per film, in its study, that references
    it, with infer's label and probability; dciodvfy finds no error; SIGTERM exits 0; nothing identifying logged."""
    syntaxes = list(STORESCU_FLAG)
    src = films(len(syntaxes))
    made = {}
    for i, (film, syntax) in enumerate(zip(src, syntaxes)):
        path = write_film(film, tmp_path / "films" / f"{i}-{syntax}.dcm", syntax,
                          PatientName="Secret^Name", PatientID=f"PID-SECRET-{i}")
        made[pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID] = path
    node = start_node(tmp_path, pacs)
    for path, syntax in zip(made.values(), syntaxes):
        r = storescu(node.port, [path], syntax)
        assert r.returncode == 0 and stored_ok(r.stderr) == [str(path)], r.stderr
    found = wait_reports(pacs, len(made))
    assert node.terminate() == 0

    expected = CliRunner().invoke(main, ["infer", *map(str, made.values()), "--out", str(tmp_path / "p.csv"),
                                         "--json", str(tmp_path / "p.jsonl")])
    assert expected.exit_code == 0, expected.output
    rows = {r["path"]: r for r in map(json.loads, (tmp_path / "p.jsonl").read_text().splitlines())}
    assert len(found) == len(made)
    by_source = {}
    for ds, got in found:
        by_source.setdefault(got["source_uid"], []).append(ds)
        film = pydicom.dcmread(made[got["source_uid"]], stop_before_pixels=True)
        assert ds.StudyInstanceUID == film.StudyInstanceUID and ds.SeriesInstanceUID != film.SeriesInstanceUID
        assert ds.PatientID == film.PatientID  # the patient module is copied from the source
        row = rows[str(made[got["source_uid"]])]
        assert row["status"] == "ok"
        assert got["finding"] == ("present" if row["label"] == "PNEUMONIA" else "absent")
        assert got["probability"] == pytest.approx(row["probability"], abs=2e-6)
        assert got["threshold"] == pytest.approx(row["threshold"]) and got["guard_verdict"] == "accepted"
        evidence = ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
        assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == film.SOPInstanceUID
    assert sorted(by_source) == sorted(made) and all(len(v) == 1 for v in by_source.values())
    assert {r["label"] for r in rows.values()} == {"NORMAL", "PNEUMONIA"}  # both findings were exercised

    lines = node.audit()
    assert sorted(r["sop_instance_uid"] for r in lines if r["status"] == "sent") == sorted(made)
    for text in ((node.spool / "audit.jsonl").read_text(), node.log.read_text()):
        assert "SECRET" not in text and "Secret" not in text
    assert_conformant([ds for ds, _ in found], tmp_path)  # last: it skips where a validator is missing


def _encode(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_documented_outcomes(tmp_path, pacs):
    """A CT is refused at association; a hand, a multi-frame image and corrupt pixels each get a 'not assessed'
    SR with the reason; an unknown calling AE is refused and audited."""
    node = start_node(tmp_path, pacs, "--calling-ae", "MOD")
    film = films(1)[0]
    from PIL import Image

    pixels = np.asarray(Image.open(film).convert("L"))
    folder = tmp_path / "odd"
    folder.mkdir()
    cases = {"hand": film_dataset(pixels, BodyPartExamined="HAND"),
             "frames": film_dataset(np.concatenate([pixels, pixels]), NumberOfFrames=2,
                                    SOPClassUID="1.2.840.10008.5.1.4.1.1.1.1", Modality="DX",
                                    Rows=pixels.shape[0]),
             "corrupt": film_dataset(pixels)}
    ct = film_dataset(pixels, SOPClassUID="1.2.840.10008.5.1.4.1.1.2", Modality="CT")
    paths = {}
    for name, ds in {**cases, "ct": ct}.items():
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        paths[name] = folder / f"{name}.dcm"
        ds.save_as(paths[name], enforce_file_format=True)
    # corrupt: a JPEG baseline instance whose single fragment is not a JPEG stream
    corrupt = pydicom.dcmread(paths["corrupt"])
    from pydicom.encaps import encapsulate

    corrupt.PixelData = encapsulate([b"\xff\xd8\xff\xe0" + os.urandom(2000)])
    corrupt["PixelData"].VR = "OB"
    corrupt.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.50"
    corrupt.save_as(paths["corrupt"], enforce_file_format=True)

    for name in ("hand", "frames"):
        assert storescu(node.port, [paths[name]]).returncode == 0
    assert storescu(node.port, [paths["corrupt"]], "jpeg-baseline").returncode == 0
    ct_run = storescu(node.port, [paths["ct"]])
    assert ct_run.returncode != 0 and not stored_ok(ct_run.stderr)
    assert "no acceptable presentation contexts" in (ct_run.stdout + ct_run.stderr).lower()
    stranger = storescu(node.port, [paths["hand"]], calling="STRANGER")
    assert stranger.returncode != 0 and "rejected" in (stranger.stdout + stranger.stderr).lower()

    uids = {name: str(cases[name].SOPInstanceUID) for name in cases}
    found = wait_reports(pacs, 3)
    assert node.terminate() == 0
    got = {info["source_uid"]: (ds, info) for ds, info in found}
    assert sorted(got) == sorted(uids.values())
    assert str(ct.SOPInstanceUID) not in got
    for name, why in (("hand", "body part HAND"), ("frames", "multi-frame"), ("corrupt", "cannot decode")):
        ds, info = got[uids[name]]
        assert info["finding"] == "not assessed" and why in info["comment"], (name, info)
    lines = node.audit()
    assert any(r["event"] == "association-refused" and r["calling_ae"] == "STRANGER" for r in lines)
    assert {r["result"] for r in lines if r["event"] == "result"} == {"NOT_ASSESSED"}
    assert_conformant([ds for ds, _ in found], tmp_path)  # last: it skips where a validator is missing


def test_sigkill_during_burst_then_restart(tmp_path, pacs):
    """SIGKILL the node in the middle of a burst; after a restart, every instance that got C-STORE success has
    exactly one SR in Orthanc: none missing, none doubled."""
    n = 100
    srcs = films(4)
    paths = [write_film(srcs[i % 4], tmp_path / "burst" / f"{i:03d}.dcm", "jpeg-baseline") for i in range(n)]
    uid_of = {str(p): str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}
    node = start_node(tmp_path, pacs)
    proc = subprocess.Popen(storescu_args(node.port, paths, "jpeg-baseline"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    incoming = node.spool / "incoming"
    wait_for(lambda: len(node.audit()) >= 10 or len(list(incoming.glob("*.dcm"))) >= 10, what="a burst under way")
    node.kill()
    out, _ = proc.communicate(timeout=60)
    ok = stored_ok(out)
    assert 10 <= len(ok) < n, f"{len(ok)} instances got success before the kill"
    again = start_node(tmp_path, pacs, port=node.port)  # the same spool: picks up what was left
    want = {uid_of[p] for p in ok}
    def complete():
        counts = _sources(pacs)
        return counts if want <= set(counts) and _settled(counts, pacs) else None

    counts = wait_for(complete, timeout=90, what="an SR for every acknowledged instance")
    assert all(counts[u] == 1 for u in want), {u: counts[u] for u in want if counts[u] != 1}
    assert all(v == 1 for v in counts.values())  # instances spooled without an answer: at most one SR too
    assert again.terminate() == 0


def _sources(pacs: Orthanc) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _, info in reports(pacs):
        counts[info["source_uid"]] = counts.get(info["source_uid"], 0) + 1
    return counts


def _settled(counts: dict, pacs: Orthanc) -> bool:
    time.sleep(1.0)
    return _sources(pacs) == counts


def test_pacs_outage_results_queue_then_arrive(tmp_path, pacs):
    node = start_node(tmp_path, pacs)
    pacs.stop()
    paths = [write_film(f, tmp_path / "films" / f"{i}.dcm") for i, f in enumerate(films(3))]
    assert storescu(node.port, paths).returncode == 0  # receiving goes on while the PACS is down
    outbox = node.spool / "outbox"
    wait_for(lambda: len(list(outbox.glob("*/*.dcm"))) == 3, what="three results queued")
    time.sleep(1.5)  # a few retries fail meanwhile
    assert len(list(outbox.glob("*/*.dcm"))) == 3 and not list((node.spool / "dead").glob("*/*"))
    pacs.start()
    wait_reports(pacs, 3, timeout=45)
    assert node.terminate() == 0
    assert not list(outbox.glob("*/*.dcm"))
    assert sum(r["status"] == "sent" for r in node.audit()) == 3


def test_listen_cli_refuses_bad_destination(tmp_path):
    r = CliRunner().invoke(main, ["listen", "--port", "11112", "--ae-title", "PNEUMO", "--send-to", "nohost",
                                  "--spool", str(tmp_path / "s"), "-q"])
    assert r.exit_code == 2 and "expected AET@HOST:PORT" in r.output


def test_refused_results_go_to_the_dead_letter_folder_with_the_reason(tmp_path):
    """A destination that answers every C-STORE with 'out of resources': after --max-attempts the SR moves to
    dead/<destination>/ with the reason beside it, and the audit says so."""
    from pynetdicom import AE, evt

    from pneumo_edge.testing.orthanc import free_port

    refusals = []
    pacs = AE(ae_title="FULL")
    pacs.add_supported_context(SR_CLASS)

    def refuse(event):
        refusals.append(event.request.AffectedSOPInstanceUID)
        return 0xA700

    port = free_port()
    server = pacs.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, refuse)])
    try:
        node = NodeProcess(tmp_path, f"FULL@127.0.0.1:{port}", "--max-attempts", "2", "--retry-after", "0.1")
        STARTED.append(node)
        node.start()
        film = write_film(films(1)[0], tmp_path / "film.dcm")
        assert storescu(node.port, [film]).returncode == 0
        dead = node.spool / "dead" / f"FULL@127.0.0.1_{port}"
        wait_for(lambda: list(dead.glob("*.reason.txt")), what="a dead-letter file")
        assert node.terminate() == 0
    finally:
        server.shutdown()
    (reason,) = dead.glob("*.reason.txt")
    assert "2 attempts" in reason.read_text() and "0xA700" in reason.read_text()
    assert reason.with_name(reason.name.replace(".reason.txt", ".dcm")).is_file()
    assert len(refusals) == 2 and not list((node.spool / "outbox").glob("*/*.dcm"))
    assert [r["status"] for r in node.audit() if r["event"] == "result"] == ["dead-letter"]


def test_stow_rs_destination(tmp_path):
    """--send-to a DICOMweb base URL: each SR is stored by STOW-RS (Orthanc's DICOMweb plugin)."""
    from pneumo_edge.testing.orthanc import dicomweb_plugin

    if dicomweb_plugin() is None:
        pytest.skip("Orthanc's DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)")
    with Orthanc(tmp_path / "orthanc", dicomweb=True) as pacs:
        node = NodeProcess(tmp_path, f"{pacs.url}/dicom-web", "--retry-after", "0.2")
        STARTED.append(node)
        node.start()
        paths = [write_film(f, tmp_path / "films" / f"{i}.dcm") for i, f in enumerate(films(2))]
        assert storescu(node.port, paths).returncode == 0
        found = wait_reports(pacs, 2)
        assert node.terminate() == 0
    sources = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in paths}
    assert {info["source_uid"] for _, info in found} == sources
    assert [r["destination"] for r in node.audit() if r["status"] == "sent"] == [f"{pacs.url}/dicom-web"] * 2


def test_heatmaps_secondary_capture(tmp_path, pacs):
    """--heatmaps: each assessed film also gets a derived Secondary Capture in its study, 'NOT FOR DIAGNOSIS'
    burned in; an image that is not assessed gets its SR and no map. A present result's SR places its region on
    the map's strongest cell, an absent one's on the area read. PixelMed and dciodvfy find nothing in either."""
    node = start_node(tmp_path, pacs, "--heatmaps")
    paths = [write_film(f, tmp_path / "films" / f"{i}.dcm") for i, f in enumerate(films(2))]
    from PIL import Image

    hand = film_dataset(np.asarray(Image.open(films(1)[0]).convert("L")), BodyPartExamined="HAND")
    hand.save_as(tmp_path / "hand.dcm", enforce_file_format=True)
    assert storescu(node.port, [*paths, tmp_path / "hand.dcm"]).returncode == 0
    wait_for(lambda: len(pacs.get("/instances")) >= 5, what="three SRs and two heat maps")
    assert node.terminate() == 0
    caps = [pydicom.dcmread(io.BytesIO(pacs.file(i["ID"]))) for i in pacs.instances()
            if i.get("SOPClassUID") == "1.2.840.10008.5.1.4.1.1.7"]
    films_by_uid = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in paths}
    assert len(caps) == 2 and len(reports(pacs)) == 3
    for sc in caps:
        src = sc.SourceImageSequence[0].ReferencedSOPInstanceUID
        film = pydicom.dcmread(films_by_uid[src], stop_before_pixels=True)
        assert sc.StudyInstanceUID == film.StudyInstanceUID and sc.SeriesInstanceUID != film.SeriesInstanceUID
        assert list(sc.ImageType)[0] == "DERIVED" and sc.BurnedInAnnotation == "YES"
        assert "NOT FOR DIAGNOSIS" in sc.SeriesDescription and sc.pixel_array.ndim == 3
    regions = {info["finding"]: list(info["regions"]) for _, info in reports(pacs)}
    assert regions.get("present", ["evidence"]) == ["evidence"] and regions.get("absent", ["assessed"]) == ["assessed"]
    assert regions["not assessed"] == [] and len(regions) >= 2
    assert_conformant([*caps, *(ds for ds, _ in reports(pacs))], tmp_path)


def test_audit_and_log_hold_no_patient_text(tmp_path, pacs):
    """Header text (names, record numbers, birth date, in free-text and refused coded attributes) reaches the
    SRs, which must carry the patient module, and nothing else the node writes or prints."""
    from test_no_patient_text import assert_no_patient_text, patient_dicoms

    files = patient_dicoms(tmp_path / "patients")
    node = start_node(tmp_path, pacs)
    for path in files.values():
        storescu(node.port, [path])  # some are refused, by design: only what the node writes matters here
    wait_for(lambda: sum(r["event"] == "result" for r in node.audit()) >= 1, what="a result")
    time.sleep(2)
    assert node.terminate() == 0
    assert_no_patient_text({"audit.jsonl": (node.spool / "audit.jsonl").read_bytes(),
                            "node.log": node.log.read_bytes()})


def test_bench_node_command_with_two_senders(tmp_path):
    """`pneumo-edge bench-node --senders 2` end to end on a few films: two storescu at once, every SR in Orthanc."""
    r = CliRunner().invoke(main, ["bench-node", "--images", str(Path(__file__).resolve().parents[2] / "examples" / "xrays"),
                                  "--films", "6", "--senders", "2", "--out", str(tmp_path), "-q"])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "node-2-senders.json").read_text())
    assert res["senders"] == 2 and res["films"] == 6 and res["sr_in_orthanc"] == 6
    assert res["instances_per_s"] > 0 and "from 2 senders" in r.output
