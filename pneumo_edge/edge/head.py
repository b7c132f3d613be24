"""The classifier head of an ONNX file, read and rewritten in place: no `onnx` package needed.

    head = read_head("export/model.onnx")          # weight (C, K) and bias (C,) of the layer making 'logits'
    body = with_head("export/model.onnx", w, b)    # the file's bytes with only those numbers changed

The head is the last layer: a Gemm (or MatMul + Add) from the graph's `embedding` output to `logits`,
its weight and bias stored as float32 initializers. A new head of the same shape has the same byte length,
so `with_head` overwrites the two tensors' data where they lie and every other byte of the file (graph,
other weights, metadata) is copied: a file with a new head computes exactly what its parent computed up to
the embedding. The INT8 file keeps its head in float (its QDQ quantization stops at the embedding); a head
stored quantized (fed by a DequantizeLinear) is refused rather than guessed at.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ModelError
from .stamp import FIXED32, GRAPH, LEN, VARINT, _varint, fields, graph_bytes

# onnx.proto field numbers
NODE, INITIALIZER = 1, 5  # GraphProto
N_INPUT, N_OUTPUT, N_OP_TYPE, N_ATTRIBUTE = 1, 2, 4, 5  # NodeProto
A_NAME, A_F, A_I = 1, 2, 3  # AttributeProto
T_DIMS, T_DATA_TYPE, T_FLOAT_DATA, T_NAME, T_RAW_DATA, T_DATA_LOCATION = 1, 2, 4, 8, 9, 14  # TensorProto
FLOAT = 1  # TensorProto.DataType
LOGITS, EMBEDDING = "logits", "embedding"


def _walk(data: memoryview, base: int = 0):
    """(field number, wire type, payload, absolute offset of the payload) of each top-level field."""
    at = base
    for number, raw, payload in fields(data):
        key, _ = _varint(raw, 0)
        yield number, key & 7, payload, at + len(raw) - len(payload)
        at += len(raw)


@dataclass(frozen=True)
class Tensor:
    """Where a float32 initializer's numbers lie in the file."""

    name: str
    dims: tuple[int, ...]
    start: int  # absolute byte offsets of its data (raw_data, or packed float_data)
    end: int


@dataclass(frozen=True)
class Node:
    op: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    ints: dict[str, int]
    floats: dict[str, float]


def _varint_value(raw: memoryview) -> int:
    """The value of a varint field, from its raw bytes (tag included)."""
    _, j = _varint(raw, 0)
    return _varint(raw, j)[0]


def _attribute(payload: memoryview) -> tuple[str, int | None, float | None]:
    name, i, f = "", None, None
    for number, raw, p in fields(payload):
        wire = raw[0] & 7
        if number == A_NAME:
            name = bytes(p).decode()
        elif number == A_I and wire == VARINT:
            i = _varint_value(raw)
        elif number == A_F and wire == FIXED32:
            f = float(np.frombuffer(bytes(raw[-4:]), "<f4")[0])
    return name, i, f


def _node(payload: memoryview) -> Node:
    ins, outs, op, ints, floats = [], [], "", {}, {}
    for number, _, p, _ in _walk(payload):
        if number == N_INPUT:
            ins.append(bytes(p).decode())
        elif number == N_OUTPUT:
            outs.append(bytes(p).decode())
        elif number == N_OP_TYPE:
            op = bytes(p).decode()
        elif number == N_ATTRIBUTE:
            name, i, f = _attribute(p)
            if i is not None:
                ints[name] = i
            if f is not None:
                floats[name] = f
    return Node(op, tuple(ins), tuple(outs), ints, floats)


def _tensor(payload: memoryview, offset: int) -> tuple[str, Tensor | str]:
    """(name, Tensor) for a float32 initializer with its data in the file, else (name, why not)."""
    name, dims, dtype, data, external = "", [], None, None, False
    for (number, wire, p, at), (_, raw, _) in zip(_walk(payload, offset), fields(payload)):
        if number == T_NAME:
            name = bytes(p).decode()
        elif number == T_DIMS and wire == VARINT:
            dims.append(_varint_value(raw))
        elif number == T_DIMS and wire == LEN:  # packed
            k = 0
            while k < len(p):
                v, k = _varint(p, k)
                dims.append(v)
        elif number == T_DATA_TYPE:
            dtype = _varint_value(raw)
        elif number in (T_RAW_DATA, T_FLOAT_DATA) and wire == LEN:
            data = (at, at + len(p))
        elif number == T_DATA_LOCATION:
            external = _varint_value(raw) != 0
    if dtype != FLOAT or external or data is None:
        return name, "not a float32 tensor stored in the file"
    if data[1] - data[0] != 4 * int(np.prod(dims)):
        return name, f"holds {data[1] - data[0]} bytes for shape {dims}"
    return name, Tensor(name, tuple(dims), *data)


def _graph(data: memoryview) -> tuple[list[Node], dict[str, Tensor | str]]:
    graph = [(p, at) for number, wire, p, at in _walk(data) if number == GRAPH and wire == LEN]
    if len(graph) != 1:
        raise ModelError("not an ONNX model with one graph")
    payload, offset = graph[0]
    nodes, inits = [], {}
    for number, wire, p, at in _walk(payload, offset):
        if number == NODE:
            nodes.append(_node(p))
        elif number == INITIALIZER:
            name, t = _tensor(p, at)
            inits[name] = t
    return nodes, inits


@dataclass(frozen=True)
class HeadLayout:
    """The head's two tensors and how the weight is laid out: (C, K) for Gemm transB=1, else (K, C)."""

    weight: Tensor
    bias: Tensor
    transposed: bool  # stored (K, C)

    @property
    def shape(self) -> tuple[int, int]:
        """(classes, features)."""
        k, c = self.weight.dims if self.transposed else self.weight.dims[::-1]
        return c, k

    def spans(self) -> list[tuple[int, int]]:
        return [(self.weight.start, self.weight.end), (self.bias.start, self.bias.end)]


def _initializer(inits: dict, name: str, what: str, source: str) -> Tensor:
    t = inits.get(name)
    if t is None:
        raise ModelError(f"'{source}': the head's {what} '{name}' is not an initializer (a quantized head, or "
                         "computed in the graph): only a float32 head can be rewritten")
    if isinstance(t, str):
        raise ModelError(f"'{source}': the head's {what} '{name}' is {t}")
    return t


def _layout(nodes: list[Node], inits: dict, source: str) -> HeadLayout:
    by_output = {o: n for n in nodes for o in n.outputs}
    last = by_output.get(LOGITS)
    if last is None:
        raise ModelError(f"'{source}': no node makes the '{LOGITS}' output")
    if last.op == "Gemm":
        if last.ints.get("transA", 0) or last.floats.get("alpha", 1.0) != 1.0 or last.floats.get("beta", 1.0) != 1.0 \
                or len(last.inputs) < 3:
            raise ModelError(f"'{source}': the head's Gemm has transA, alpha, beta or a missing bias: not a plain "
                             "linear layer")
        x, w, b = last.inputs[:3]
        transposed = not last.ints.get("transB", 0)
    elif last.op == "Add" and any(i in by_output and by_output[i].op == "MatMul" for i in last.inputs):
        mm_out = next(i for i in last.inputs if i in by_output and by_output[i].op == "MatMul")
        b = next(i for i in last.inputs if i != mm_out)
        x, w = by_output[mm_out].inputs
        transposed = True
    else:
        raise ModelError(f"'{source}': '{LOGITS}' comes from a {last.op} node, not a linear head (Gemm or MatMul+Add)")
    if x != EMBEDDING:
        raise ModelError(f"'{source}': the head reads '{x}', not the '{EMBEDDING}' output")
    layout = HeadLayout(_initializer(inits, w, "weight", source), _initializer(inits, b, "bias", source), transposed)
    if len(layout.weight.dims) != 2 or layout.bias.dims not in ((layout.shape[0],), (1, layout.shape[0])):
        raise ModelError(f"'{source}': head weight {layout.weight.dims} and bias {layout.bias.dims} do not match")
    return layout


def head_layout(path: str | Path) -> HeadLayout:
    data = memoryview(Path(path).read_bytes())
    try:
        nodes, inits = _graph(data)
    except ValueError as e:
        raise ModelError(f"'{path}' is not a readable ONNX file ({e})") from None
    return _layout(nodes, inits, str(path))


@dataclass(frozen=True)
class Head:
    weight: np.ndarray  # (C, K) float32: logits = embedding @ weight.T + bias
    bias: np.ndarray  # (C,)


def read_head(path: str | Path) -> Head:
    data = Path(path).read_bytes()
    lay = head_layout(path)
    w = np.frombuffer(data[lay.weight.start:lay.weight.end], "<f4").reshape(lay.weight.dims)
    b = np.frombuffer(data[lay.bias.start:lay.bias.end], "<f4").reshape(-1)
    return Head((w.T if lay.transposed else w).copy(), b.copy())


def with_head(path: str | Path, head: Head) -> bytes:
    """The file's bytes with `head` written over its head's numbers; every other byte unchanged."""
    lay = head_layout(path)
    c, k = lay.shape
    w, b = np.asarray(head.weight, np.float32), np.asarray(head.bias, np.float32).reshape(-1)
    if w.shape != (c, k) or b.shape != (c,):
        raise ModelError(f"'{path}': a head of shape {w.shape}/{b.shape} cannot replace one of ({c}, {k})/({c},)")
    if not (np.isfinite(w).all() and np.isfinite(b).all()):
        raise ModelError("the new head has non-finite numbers")
    out = bytearray(Path(path).read_bytes())
    for t, a in ((lay.weight, w.T if lay.transposed else w), (lay.bias, b)):
        out[t.start:t.end] = np.ascontiguousarray(a, "<f4").tobytes()
    return bytes(out)


def body_without_head(path: str | Path) -> bytes:
    """The file's graph bytes (`stamp.graph_bytes`: all but its metadata) with the head's numbers zeroed:
    equal for two files exactly when they differ in nothing but their heads and metadata."""
    data = bytearray(Path(path).read_bytes())
    for lo, hi in head_layout(path).spans():
        data[lo:hi] = bytes(hi - lo)
    return graph_bytes(path, bytes(data))


# ---------------------------------------------------------------- the PyTorch twin's head (safetensors)

def _safetensors_header(data: bytes, source: str) -> tuple[int, dict]:
    if len(data) < 8:
        raise ModelError(f"'{source}' is not a safetensors file")
    n = int.from_bytes(data[:8], "little")
    try:
        header = json.loads(data[8:8 + n])
    except (ValueError, UnicodeDecodeError):
        raise ModelError(f"'{source}' is not a safetensors file (unreadable header)") from None
    return 8 + n, header


def twin_with_head(path: str | Path, head: Head, prefix: str = "classifier") -> tuple[bytes, str]:
    """The twin's safetensors bytes with `head` written over `{prefix}.weight` and `{prefix}.bias` (same
    shapes, float32), and the new weights' digest as `checkpoint.state_sha256` computes it (names sorted,
    each name then its tensor's bytes)."""
    data = bytearray(Path(path).read_bytes())
    start, header = _safetensors_header(bytes(data[:min(len(data), 8 + (100 << 20))]), str(path))
    for name, a in ((f"{prefix}.weight", head.weight), (f"{prefix}.bias", head.bias)):
        t = header.get(name)
        a = np.ascontiguousarray(a, "<f4")
        if not t or t.get("dtype") != "F32" or tuple(t.get("shape", ())) != a.shape:
            raise ModelError(f"'{path}': no float32 tensor '{name}' of shape {a.shape}")
        lo, hi = (start + o for o in t["data_offsets"])
        data[lo:hi] = a.tobytes()
    digest = hashlib.sha256()
    for name in sorted(k for k in header if k != "__metadata__"):
        lo, hi = (start + o for o in header[name]["data_offsets"])
        digest.update(name.encode())
        digest.update(bytes(data[lo:hi]))
    return bytes(data), digest.hexdigest()
