"""Batch inference over files and folders: one row per input, written as it is produced.

    model = EdgeModel("export/model.onnx")
    summary = predict_paths(["./xrays"], model, out_csv="predictions.csv")
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
from .imaging import IMAGE_SUFFIXES, load_image, normalize, resize_gray
from .model import EdgeModel

EXIT_SOME_FAILED = 1  # infer: some files could not be classified; all others were
COLUMNS = ("path", "probability", "label", "status", "error", "ood_score")


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
                row = {"status": "ok", "probability": f"{prob:.6f}", "label": model.meta.decide(prob)}
                if score is not None:
                    row["ood_score"] = f"{score:.4f}"
                    if model.guard.rejects(score):
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
