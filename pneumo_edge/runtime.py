"""Run an exported bundle with onnxruntime alone: no torch import on this path.

    model = EdgeModel("export/model.onnx")
    summary = predict_paths(["./xrays"], model, out_csv="predictions.csv")

Everything the model needs (labels, input size, normalisation, threshold,
temperature, guard statistics) is read from the ONNX file's metadata.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ImageError, ModelError, PneumoEdgeError
from .imaging import IMAGE_SUFFIXES, PreprocessSpec, load_image, normalize, resize_gray

META_KEY = "pneumo_edge"
REQUIRED_META = ("labels", "preprocess", "threshold", "temperature", "model", "pneumo_edge_version")
EXIT_SOME_FAILED = 1  # infer: some files could not be classified; all others were
COLUMNS = ("path", "probability", "label", "status", "error", "ood_score")


def default_model_path() -> Path:
    env = os.environ.get("PNEUMO_EDGE_MODEL")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "export" / "model.onnx"


def read_metadata(path: str | Path) -> dict:
    """The pneumo-edge metadata of an ONNX file, checked for completeness."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model '{path}' does not exist")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise ModelError(f"'{path}' is not a readable ONNX model ({e.__class__.__name__})") from None
    props = {p.key: p.value for p in proto.metadata_props}
    if META_KEY not in props:
        raise ModelError(f"'{path}' has no pneumo-edge metadata (missing key '{META_KEY}': "
                         f"{', '.join(REQUIRED_META)}); export it with `pneumo-edge export`")
    meta = json.loads(props[META_KEY])
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ModelError(f"'{path}' metadata is incomplete: missing {', '.join(missing)}")
    return meta


class EdgeModel:
    """An onnxruntime session plus the metadata that says how to feed it."""

    def __init__(self, path: str | Path, threads: int | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        self.meta = read_metadata(self.path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or os.cpu_count() or 1
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise ModelError(f"onnxruntime cannot load '{self.path}': {str(e)[:200]}") from None
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.spec = PreprocessSpec.from_dict(self.meta["preprocess"])
        self.labels = list(self.meta["labels"])
        self.threshold = float(self.meta["threshold"])
        self.temperature = float(self.meta["temperature"])
        self.guard = None
        if self.meta.get("ood") and "embedding" in self.output_names:
            from .ood import Guard

            self.guard = Guard.from_meta(self.meta["ood"])

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Raw outputs for normalised float32 input (N, C, S, S)."""
        if x.dtype != np.float32 or x.ndim != 4 or x.shape[1:] != (self.spec.channels, self.spec.size, self.spec.size):
            raise ValueError(f"expected float32 (N, {self.spec.channels}, {self.spec.size}, {self.spec.size}), "
                             f"got {x.dtype} {x.shape}")
        return dict(zip(self.output_names, self.session.run(None, {self.input_name: x})))

    def logits(self, resized: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Logits for pre-resized uint8 images (N, S, S), through imaging.normalize."""
        out = [self.run(normalize(resized[i:i + batch_size], self.spec))["logits"]
               for i in range(0, len(resized), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, len(self.labels)), np.float32)

    def probability(self, logits: np.ndarray) -> np.ndarray:
        from .metrics import prob_from_logits

        return prob_from_logits(logits, self.temperature)


# ---------------------------------------------------------------- batch inference over files

def display_path(p: str) -> str:
    """A printable path even when the file name is not valid UTF-8."""
    return os.fsencode(p).decode("utf-8", "backslashreplace")


@dataclass
class Found:
    files: list[str] = field(default_factory=list)  # to classify
    problems: list[tuple[str, str, str]] = field(default_factory=list)  # (path, status, message)


def find_inputs(paths: list[str], exclude: set[str] = frozenset()) -> Found:
    """Expand folders (recursively, sorted) and files; odd paths become rows, not exceptions."""
    found = Found()
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            n_before = len(found.files) + len(found.problems)
            for root, dirs, names in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(names):
                    if name.startswith("."):
                        continue
                    full = os.path.join(root, name)
                    if os.path.abspath(full) in exclude:
                        continue
                    if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                        found.files.append(full)
                    else:
                        found.problems.append((full, "skipped", "not an image file extension"))
            if len(found.files) + len(found.problems) == n_before:
                found.problems.append((str(p), "error", "folder contains no files"))
        elif p.exists() or p.is_symlink():
            found.files.append(str(p))
        else:
            found.problems.append((str(p), "error", "path does not exist"))
    return found


class RowWriter:
    """CSV (and optional JSON Lines) rows, flushed one batch at a time so an interruption loses nothing."""

    def __init__(self, csv_path: Path, json_path: Path | None, append: bool, echo=None):
        self.echo = echo
        mode = "a" if append else "w"
        new_csv = not append or not csv_path.exists() or csv_path.stat().st_size == 0
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        self._csv_f = open(csv_path, mode, newline="", encoding="utf-8")
        self._csv = csv.writer(self._csv_f)
        if new_csv:
            self._csv.writerow(COLUMNS)
        self._json_f = open(json_path, mode, encoding="utf-8") if json_path else None

    def write(self, rows: list[dict]) -> None:
        for r in rows:
            if self.echo:
                self.echo(r)
            self._csv.writerow([r.get(c, "") for c in COLUMNS])
            if self._json_f:
                self._json_f.write(json.dumps({c: r.get(c) for c in COLUMNS}) + "\n")
        self._csv_f.flush()
        if self._json_f:
            self._json_f.flush()

    def close(self) -> None:
        self._csv_f.close()
        if self._json_f:
            self._json_f.close()


def done_paths(csv_path: Path) -> set[str]:
    if not csv_path.exists():
        return set()
    with open(csv_path, newline="", encoding="utf-8") as f:
        return {row["path"] for row in csv.DictReader(f) if row.get("path")}


def _decode(path: str, size: int, rule: str):
    """((resized uint8, chroma), None) or (None, error message)."""
    try:
        gray, colour = load_image(path, size=size)
        return (resize_gray(gray, size, rule), colour), None
    except ImageError as e:
        return None, str(e)
    except Exception as e:  # one odd file must never end the batch
        return None, f"unexpected {e.__class__.__name__}: {e}"


@dataclass
class InferSummary:
    counts: Counter
    n_files: int
    n_failed: int
    n_skipped_resume: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        classified = sum(v for k, v in self.counts.items() if k not in ("error", "skipped"))
        return classified / self.seconds if self.seconds > 0 else 0.0


def predict_paths(paths: list[str], model: EdgeModel, out_csv: str | Path, json_path: str | Path | None = None,
                  resume: bool = False, batch_size: int = 16, workers: int | None = None,
                  guard: bool = True, progress: bool | None = None, echo=None) -> InferSummary:
    """Classify every image under `paths`, one row per input, flushed as produced."""
    from tqdm.auto import tqdm

    out_csv = Path(out_csv)
    json_path = Path(json_path) if json_path else None
    exclude = {os.path.abspath(out_csv)} | ({os.path.abspath(json_path)} if json_path else set())
    found = find_inputs(paths, exclude)
    already = done_paths(out_csv) if resume else set()
    todo = [f for f in found.files if display_path(f) not in already]
    problems = [pr for pr in found.problems if display_path(pr[0]) not in already]
    writer = RowWriter(out_csv, json_path, append=resume, echo=echo)
    counts: Counter = Counter()
    use_guard = guard and model.guard is not None
    size = model.spec.size
    t0 = time.perf_counter()
    try:
        rows = [{"path": display_path(p), "status": st, "error": msg} for p, st, msg in problems]
        writer.write(rows)
        counts.update(r["status"] for r in rows)
        bar = tqdm(total=len(todo), unit="img", desc="infer", leave=False,
                   disable=None if progress is None else not progress)
        with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
            window: deque = deque()
            it = iter(todo)
            batch: list[tuple[str, tuple | None, str | None]] = []

            def flush():
                rows = _classify(batch, model, use_guard)
                writer.write(rows)
                counts.update(r["label"] if r["status"] == "ok" else r["status"] for r in rows)
                bar.update(len(batch))
                batch.clear()

            for path in it:  # keep a bounded number of decodes in flight
                window.append((path, pool.submit(_decode, path, size, model.spec.resize)))
                if len(window) >= 4 * batch_size:
                    p, fut = window.popleft()
                    batch.append((p, *fut.result()))
                    if len(batch) == batch_size:
                        flush()
            while window:
                p, fut = window.popleft()
                batch.append((p, *fut.result()))
                if len(batch) == batch_size:
                    flush()
            if batch:
                flush()
        bar.close()
    finally:
        writer.close()
    n_failed = counts.get("error", 0)
    return InferSummary(counts=counts, n_files=len(todo) + len(problems), n_failed=n_failed,
                        n_skipped_resume=len(found.files) + len(found.problems) - len(todo) - len(problems),
                        seconds=time.perf_counter() - t0)


def _classify(batch, model: EdgeModel, use_guard: bool) -> list[dict]:
    ok = [(p, dec) for p, dec, err in batch if err is None]
    result: dict[str, dict] = {}
    if ok:
        images = np.stack([dec[0] for _, dec in ok])
        chroma = np.array([dec[1] for _, dec in ok])
        try:
            outs = model.run(normalize(images, model.spec))
        except Exception as e:  # noqa: BLE001 - report the whole batch, keep going
            for p, _ in ok:
                result[p] = {"status": "error", "error": f"inference failed: {e}"}
            outs = None
        if outs is not None:
            probs = model.probability(outs["logits"])
            scores = model.guard.scores(images, outs["embedding"], chroma) if use_guard else [None] * len(ok)
            for (p, _), prob, score in zip(ok, probs, scores):
                label = model.labels[int(prob >= model.threshold)]
                row = {"status": "ok", "probability": f"{prob:.6f}", "label": label}
                if score is not None:
                    row["ood_score"] = f"{score:.4f}"
                    if score > 1.0:
                        row["label"] = "REJECTED_OOD"
                result[p] = row
    rows = []
    for p, _, err in batch:
        r = result.get(p) or {"status": "error", "error": err}
        rows.append({"path": display_path(p), **r})
    return rows


def check_output(out_csv: Path, resume: bool, force: bool) -> None:
    if out_csv.exists() and not (resume or force):
        raise PneumoEdgeError(f"'{out_csv}' exists; use --resume to continue it or --force to overwrite")
