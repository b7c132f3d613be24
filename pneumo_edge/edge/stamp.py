"""Restamp an ONNX file's metadata without touching its graph: no `onnx` package needed.

    stamp_file("export/model.onnx", "site/model.onnx", new_meta)
    assert graph_bytes("export/model.onnx") == graph_bytes("site/model.onnx")

An ONNX file is one protobuf ModelProto. This reads its top-level fields as the wire format lays them
out and rewrites only `doc_string` (field 6) and `metadata_props` (field 14); every other field, the
graph (field 7) with its weights included, is copied byte for byte. So a restamped file computes
exactly what its parent computed, and the edge box can do it with what it has installed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .atomic import write_with
from .errors import ModelError
from .imaging import normalize
from .meta import META_KEY, BundleMeta, doc_string, flat_metadata
from .model import EdgeModel

DOC_STRING, GRAPH, METADATA_PROPS = 6, 7, 14  # ModelProto field numbers (onnx.proto)
VARINT, FIXED64, LEN, FIXED32 = 0, 1, 2, 5


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if i >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        b = data[i]
        value |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            return value, i
        shift += 7


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        out.append(b | (0x80 if value else 0))
        if not value:
            return bytes(out)


def fields(data: bytes) -> list[tuple[int, bytes, bytes]]:
    """Top-level (field number, raw field bytes tag included, payload) of a serialized message."""
    out, i = [], 0
    while i < len(data):
        start = i
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == VARINT:
            _, i = _varint(data, i)
            payload = b""
        elif wire == LEN:
            size, i = _varint(data, i)
            payload = data[i:i + size]
            if len(payload) != size:
                raise ValueError("truncated field")
            i += size
        elif wire in (FIXED64, FIXED32):
            i += 8 if wire == FIXED64 else 4
            payload = b""
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if i > len(data):
            raise ValueError("truncated field")
        out.append((number, data[start:i], payload))
    return out


def _len_field(number: int, payload: bytes) -> bytes:
    return _encode_varint(number << 3 | LEN) + _encode_varint(len(payload)) + payload


def _entry(key: str, value: str) -> bytes:
    """A StringStringEntryProto: key = 1, value = 2."""
    return _len_field(1, key.encode()) + _len_field(2, value.encode())


def _parse(path: str | Path, data: bytes | None = None) -> tuple[bytes, list[tuple[int, bytes, bytes]]]:
    data = Path(path).read_bytes() if data is None else data
    try:
        parsed = fields(data)
    except ValueError as e:
        raise ModelError(f"'{path}' is not a readable ONNX file ({e})") from None
    if not any(number == GRAPH for number, _, _ in parsed):
        raise ModelError(f"'{path}' holds no ONNX graph")
    return data, parsed


def restamped(path: str | Path, meta: BundleMeta, data: bytes | None = None) -> bytes:
    """The file's bytes (or `data`, read from `path` before) with its metadata (the META_KEY JSON, the flat
    keys, the doc_string) from `meta`."""
    _, parsed = _parse(path, data)
    kept = b"".join(raw for number, raw, _ in parsed if number not in (DOC_STRING, METADATA_PROPS))
    props = b"".join(_len_field(METADATA_PROPS, _entry(k, v))
                     for k, v in {META_KEY: meta.to_json(), **flat_metadata(meta)}.items())
    return kept + _len_field(DOC_STRING, doc_string(meta).encode()) + props


def stamp_file(src: str | Path, dst: str | Path, meta: BundleMeta) -> None:
    """Write `src` with `meta` to `dst` (atomically; `dst` may be `src`)."""
    body = restamped(src, meta)
    write_with(dst, lambda tmp: Path(tmp).write_bytes(body))


def graph_bytes(path: str | Path, data: bytes | None = None) -> bytes:
    """Every top-level field but the metadata and doc_string, in file order: what must not change."""
    _, parsed = _parse(path, data)
    return b"".join(raw for number, raw, _ in parsed if number not in (DOC_STRING, METADATA_PROPS))



def stamp_checked(src: str | Path, dst: str | Path, meta: BundleMeta, films) -> None:
    """`stamp_file`, replacing `dst` only once the candidate's graph bytes equal `src`'s and both files give
    bit-identical outputs on `films` (uint8 model views); otherwise nothing is replaced."""

    src, dst = Path(src), Path(dst)
    candidate = dst.parent / f".{dst.name}.candidate"
    body = restamped(src, meta)
    write_with(candidate, lambda tmp: Path(tmp).write_bytes(body))
    try:
        if graph_bytes(candidate) != graph_bytes(src):
            raise ModelError(f"{src.name}: restamping changed the graph bytes; nothing replaced")
        a, b = EdgeModel(src, threads=1), EdgeModel(candidate, threads=1)
        x = normalize(np.asarray(films), a.spec)
        oa, ob = a.run(x), b.run(x)
        if oa.keys() != ob.keys() or not all(np.array_equal(oa[k], ob[k]) for k in oa):
            raise ModelError(f"{src.name}: the restamped file's outputs differ; nothing replaced")
        candidate.replace(dst)
    finally:
        candidate.unlink(missing_ok=True)
