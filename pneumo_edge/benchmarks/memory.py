"""Peak memory of `infer` over a folder of the largest files the decoder accepts, and of decompression bombs.

    result = measure_decode_memory(MemoryConfig(out="bench/results"))

The folder holds deflate-compressed DICOMs (a few hundred KB each on disk) of two kinds:
films just under the pixel limit (`imaging.MAX_PIXELS`, 16-bit), which must decode, and
"bombs" that declare 256 Mpx, which must be refused before they are inflated (imaging._check_deflated)
or decoded. Each kind is measured in its own run.
Three more, one file each, try to make pydicom or a decoder believe a header (edge.dicom_bounds):
a sparse file whose 1 GiB private element is a hole (deferred, never read: the film is classified), a small
file declaring a 1 GiB element it does not hold (refused before reading), and an embedded JPEG whose frame
claims 11000 x 11000 inside a 1024 x 1024 header (refused before decoding).
`pneumo-edge infer` runs over it in a child process with the given decode workers; its peak
resident memory (the kernel's high-water mark) is compared with the same run over one small
X-ray, so the difference is what decoding costs.
"""

from __future__ import annotations

import csv
import io
import resource
import struct
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    generate_uid,
)

from pneumo_edge.edge.atomic import write_json
from pneumo_edge.edge.imaging import MAX_PIXELS
from pneumo_edge.edge.model import default_model_path


@dataclass
class MemoryConfig:
    model: str | None = None  # .onnx file or bundle folder; None: the shipped one
    out: str = "bench/results"
    at_limit: int = 4  # films just under the pixel limit
    bombs: int = 4  # files declaring 16x the limit
    workers: tuple[int, ...] = (1, 2)  # decode threads per run


def new_dicom(path: str | Path, transfer_syntax):
    """An empty single-image CR DICOM data set with its file meta: the header every synthetic film shares."""

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    return ds


def write_deflated_dicom(path: Path, rows: int, cols: int, pixel_bytes: bytes | None = None) -> Path:
    """A chest CR DICOM, deflate transfer syntax: smooth 12-bit pixels compress to almost nothing."""
    ds = new_dicom(path, DeflatedExplicitVRLittleEndian)
    ds.BodyPartExamined = "CHEST"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, cols, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if pixel_bytes is None:  # a vertical ramp with a bright disc: a plausible grey-level spread
        y, x = np.ogrid[:rows, :cols]
        film = (y * (3000 / rows)).astype(np.uint16) + ((x - cols / 2) ** 2 + (y - rows / 2) ** 2 < (rows / 4) ** 2) * 800
        pixel_bytes = film.astype(np.uint16).tobytes()
    ds.PixelData = pixel_bytes
    ds.save_as(str(path), enforce_file_format=True)
    return path


PRIVATE_PLACEHOLDER = b"PNEUMO-EDGE-HOLE"  # 16 bytes; its length field is rewritten to the declared size
HEADER_BOMBS = ("sparse_element", "lying_length", "jpeg_frame")


def _chest_cr(path: Path, transfer_syntax, rows: int, cols: int, bits: int = 16):
    ds = new_dicom(path, transfer_syntax)
    ds.BodyPartExamined = "CHEST"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, cols, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, min(bits, 12), min(bits, 12) - 1, 0
    return ds


def write_element_bomb(path: Path, declared: int = 1 << 30, sparse: bool = True) -> Path:
    """A small chest film with a private OB element declaring `declared` bytes: held as a hole in a sparse
    file (sparse=True: the file really is that long, but costs nothing on disk), or not held at all."""
    ds = _chest_cr(path, ExplicitVRLittleEndian, 256, 256)
    ds.private_block(0x0009, "PNEUMO-EDGE BENCH", create=True).add_new(0x10, "OB", PRIVATE_PLACEHOLDER)
    y = np.arange(256, dtype=np.uint16)[:, None] * 12
    ds.PixelData = np.repeat(y, 256, axis=1).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    header = b"OB\0\0" + struct.pack("<I", len(PRIVATE_PLACEHOLDER))
    at = data.index(header + PRIVATE_PLACEHOLDER)
    prefix, suffix = data[:at] + b"OB\0\0" + struct.pack("<I", declared), data[at + len(header) + 16:]
    with open(path, "wb") as f:
        f.write(prefix)
        if sparse:
            f.seek(declared, io.SEEK_CUR)  # a hole: reads as zeros, stored as nothing
        f.write(suffix)
    return path


def write_jpeg_frame_bomb(path: Path, claimed: int = 11000, header: int = 1024) -> Path:
    """An 8-bit JPEG-baseline DICOM, Rows x Columns `header`, whose JPEG frame header claims `claimed`^2."""

    buf = io.BytesIO()
    Image.fromarray(np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))).save(buf, format="JPEG")
    jpeg = bytearray(buf.getvalue())
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5:sof + 9] = struct.pack(">HH", claimed, claimed)
    ds = _chest_cr(path, JPEGBaseline8Bit, header, header, bits=8)
    ds.PixelData = encapsulate([bytes(jpeg)])
    ds["PixelData"].VR, ds["PixelData"].is_undefined_length = "OB", True
    ds.save_as(str(path), enforce_file_format=True)
    return path


def build_header_bombs(root: Path) -> dict[str, Path]:
    """One folder per header bomb, each measured in its own run."""
    made = {}
    for name in HEADER_BOMBS:
        (root / name).mkdir(parents=True, exist_ok=True)
        target = root / name / f"{name}.dcm"
        made[name] = (write_jpeg_frame_bomb(target) if name == "jpeg_frame"
                      else write_element_bomb(target, sparse=name == "sparse_element"))
    return made


def build_folders(root: Path, at_limit: int, bombs: int) -> dict:
    """Two folders, measured in separate runs: films at the limit (decoded) and bombs (refused)."""
    films, bomb_dir = root / "films", root / "bombs"
    films.mkdir(parents=True, exist_ok=True)
    bomb_dir.mkdir(parents=True, exist_ok=True)
    side = int(MAX_PIXELS ** 0.5)  # 8000 x 8000 = the limit exactly: accepted
    for i in range(at_limit):
        write_deflated_dicom(films / f"limit{i}.dcm", side, side)
    big = 16_000  # 256 Mpx declared; 512 MB of zeros deflate to about 0.5 MB
    zeros = bytes(big * big * 2)
    for i in range(bombs):
        write_deflated_dicom(bomb_dir / f"bomb{i}.dcm", big, big, zeros)
    del zeros
    sizes = [p.stat().st_size for d in (films, bomb_dir) for p in d.iterdir()]
    return {"files": len(sizes), "largest_file_mb": round(max(sizes) / 1e6, 2),
            "at_limit": {"n": at_limit, "pixels": side * side, "decoded_mb": round(side * side * 2 / 1e6)},
            "bombs": {"n": bombs, "declared_pixels": big * big, "would_decode_mb": round(big * big * 2 / 1e6)}}


def peak_rss_mb(args: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    """Run `pneumo-edge ARGS` in a fresh interpreter that reports its one child's peak resident memory."""
    probe = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
             "sys.stderr.write(r.stdout + r.stderr); sys.exit(r.returncode)")
    done = subprocess.run([sys.executable, "-c", probe, sys.executable, "-m", "pneumo_edge", *args],
                          capture_output=True, text=True)
    lines = done.stdout.split()
    if not lines:
        raise RuntimeError(f"the memory probe printed nothing: {done.stderr[-500:]}")
    return int(lines[-1]) / 1024, done  # ru_maxrss is in KiB on Linux


def measure_decode_memory(cfg: MemoryConfig) -> dict:
    model = cfg.model or str(default_model_path())
    with tempfile.TemporaryDirectory(prefix="pneumo-memory-") as tmp:
        tmp = Path(tmp)
        result = {"config": asdict(cfg), "folder": build_folders(tmp, cfg.at_limit, cfg.bombs),
                  "pixel_limit": MAX_PIXELS, "runs": []}
        small = tmp / "small"
        small.mkdir()
        write_deflated_dicom(small / "one.dcm", 256, 256)
        base, _ = peak_rss_mb(["infer", str(small), "--model", model, "--out", str(tmp / "base.csv"),
                               "--workers", "1"])
        result["baseline_mb"] = round(base)
        made = build_header_bombs(tmp)
        result["header_bombs"] = {k: {"bytes": p.stat().st_size, "on_disk_bytes": p.stat().st_blocks * 512}
                                  for k, p in made.items()}
        for name in ("films", "bombs", *HEADER_BOMBS):
            for workers in cfg.workers if name in ("films", "bombs") else (1,):
                out = tmp / f"{name}{workers}.csv"
                peak, done = peak_rss_mb(["infer", str(tmp / name), "--model", model, "--out", str(out),
                                          "--workers", str(workers), "--no-guard"])
                rows = list(csv.DictReader(out.open())) if out.exists() else []
                result["runs"].append({"set": name, "workers": workers, "peak_mb": round(peak),
                                       "over_baseline_mb": round(peak - base), "rows": len(rows),
                                       "classified": sum(r["status"] == "ok" for r in rows),
                                       "refused": sum(r["status"] == "error" for r in rows),
                                       "exit_code": done.returncode,
                                       "errors": sorted({r["error"] for r in rows if r["error"]})})
    write_json(Path(cfg.out) / "decode-memory.json", result)
    return result


def render(result: dict) -> str:
    f = result["folder"]
    lines = [f"{f['at_limit']['n']} DICOMs at the {result['pixel_limit'] / 1e6:.0f} Mpx limit "
             f"({f['at_limit']['decoded_mb']} MB of 16-bit pixels each) and {f['bombs']['n']} bombs declaring "
             f"{f['bombs']['declared_pixels'] / 1e6:.0f} Mpx ({f['bombs']['would_decode_mb']} MB each); "
             f"largest file {f['largest_file_mb']} MB on disk. Runtime alone: {result['baseline_mb']} MB."]
    for r in result["runs"]:
        lines.append(f"{r['set']}, workers {r['workers']}: peak {r['peak_mb']} MB (+{r['over_baseline_mb']} MB over "
                     f"the runtime), {r['rows']} rows, {r['classified']} classified, {r['refused']} refused"
                     + (f": {'; '.join(r['errors'])}" if r.get("errors") and r["set"] in HEADER_BOMBS else ""))
    return "\n".join(lines)
