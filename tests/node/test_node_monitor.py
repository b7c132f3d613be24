"""The DICOM node watches what it classifies: the drift monitor's rates, and Prometheus text in the spool."""

from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # starts a server, a browser, a venv or Ray

pytest.importorskip("pynetdicom", reason="the [node] extra (pynetdicom, highdicom) is not installed")
pytest.importorskip("prometheus_client", reason="prometheus-client is not installed")

from pneumo_edge.testing.dicomfilm import write_film  # noqa: E402
from pneumo_edge.edge.node.service import METRICS_FILE, Node, NodeConfig, status_text  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "xrays"


def test_node_feeds_the_monitor_and_writes_metrics(tmp_path):
    import pydicom

    node = Node(NodeConfig(port=0, ae_title="PNEUMO", destinations=["PACS@127.0.0.1:1"], spool=tmp_path / "spool",
                           model=str(REPO / "export" / "model.int8.onnx")))
    assert node.monitor.reference is not None  # the shipped file carries its validation reference
    from PIL import Image, ImageOps

    negative = tmp_path / "inverted.png"  # grey levels inverted: the guard refuses it, and the monitor counts that
    ImageOps.invert(Image.open(sorted(EXAMPLES.rglob("*.jpeg"))[0]).convert("L")).save(negative)
    films = sorted(EXAMPLES.rglob("*.jpeg"))[:6] + [negative]
    paths = []
    for i, film in enumerate(films):
        dcm = write_film(film, tmp_path / f"{i}.dcm")
        uid = str(pydicom.dcmread(dcm, stop_before_pixels=True).SOPInstanceUID)
        paths.append(node.spool.put_incoming(uid, dcm.read_bytes()))
    node.process(paths)
    snap = node.monitor.snapshot()
    assert snap["totals"]["images"] == len(films) and snap["window_images"] == len(films)
    assert snap["totals"]["positive"] + snap["totals"]["negative"] + snap["totals"]["rejected"] == len(films)
    assert snap["totals"]["rejected"] == 1
    text = (node.spool.root / METRICS_FILE).read_text()
    assert f'pneumo_edge_images_total{{outcome="positive"}} {float(snap["totals"]["positive"])}' in text
    assert "pneumo_edge_drift_alarm " in text and "pneumo_edge_reference_positive_rate" in text
    assert "DRIFT ALARM" not in status_text(node.status())  # seven films: still warming up, no alarm
