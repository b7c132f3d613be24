"""`infer` on DICOM media: files without a suffix (recognised by the PS3.10 preamble) and DICOMDIR file sets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
from click.testing import CliRunner
from pydicom.fileset import FileSet

from pneumo_edge.cli import main
from pneumo_edge.edge.dicomdir import file_set_images, is_dicom_file, is_dicomdir

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples" / "xrays").rglob("*.jpeg"))[:3]


def _film(image: Path) -> pydicom.Dataset:
    from PIL import Image

    from pneumo_edge.testing.dicomfilm import film_dataset

    return film_dataset(np.asarray(Image.open(image).convert("L")))


def _media(tmp_path: Path) -> Path:
    """A file set as a PACS export writes it: DICOMDIR plus PT000000/ST000000/SE000000/IM00000n."""
    fs = FileSet()
    for image in EXAMPLES:
        ds = _film(image)
        ds.PatientID = "P1"
        fs.add(ds)
    media = tmp_path / "media"
    fs.write(media)
    return media


def _rows(tmp_path: Path, *args: str) -> dict[str, dict]:
    out = tmp_path / f"rows{len(list(tmp_path.glob('rows*')))}.jsonl"
    r = CliRunner().invoke(main, ["infer", *args, "--out", str(out.with_suffix(".csv")), "--json", str(out), "-q"])
    assert r.exit_code == 0, r.output
    return {"/".join(Path(row["path"]).parts[-4:]): row for row in map(json.loads, out.read_text().splitlines())}


def test_dicomdir_folder_gets_a_row_per_image(tmp_path):
    media = _media(tmp_path)
    images = file_set_images(media / "DICOMDIR")
    assert len(images) == len(EXAMPLES) and all(Path(p).is_file() and not Path(p).suffix for p in images)
    (media / "NOTES").write_text("not a DICOM file\n")  # no suffix, no preamble: still skipped
    rows = _rows(tmp_path, str(media))
    scored = {n: r for n, r in rows.items() if r["status"] in ("ok", "rejected")}
    assert sorted(scored) == sorted("/".join(Path(p).parts[-4:]) for p in images)
    index = next(r for n, r in rows.items() if n.endswith("/DICOMDIR"))
    assert index["status"] == "skipped" and "3 images" in index["error"]
    assert next(r for n, r in rows.items() if n.endswith("/NOTES"))["status"] == "skipped"
    # the same images named through the DICOMDIR itself: its records are followed, same numbers
    via_index = _rows(tmp_path, str(media / "DICOMDIR"))
    assert {n: r["probability"] for n, r in via_index.items() if not n.endswith("DICOMDIR")} == \
           {n: r["probability"] for n, r in scored.items()}


def test_extensionless_dicom_in_a_folder_is_classified(tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    _film(EXAMPLES[0]).save_as(folder / "IM0001", enforce_file_format=True)
    (folder / "README").write_bytes(b"\0" * 128 + b"DICX" + b"\0" * 64)  # almost, but not the magic
    assert is_dicom_file(folder / "IM0001") and not is_dicom_file(folder / "README")
    assert not is_dicomdir(folder / "IM0001")
    rows = _rows(tmp_path, str(folder))
    by_name = {Path(n).name: r for n, r in rows.items()}
    assert by_name["IM0001"]["status"] == "ok" and by_name["README"]["status"] == "skipped"
    plain = next(iter(_rows(tmp_path, str(EXAMPLES[0])).values()))
    assert by_name["IM0001"]["probability"] == plain["probability"]  # the same pixels, the same score
