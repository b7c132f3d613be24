"""Batch inference over files and folders: one row per input, written as it is produced.

    model = EdgeModel("export/model.onnx")
    with Outputs("predictions.csv") as out:
        summary = predict_paths(["./xrays"], model, out, InferConfig(batch_size=16))

Nothing is skipped silently: every input named, and every entry found under a folder, ends as a
row ("ok", "rejected" by the guard with label REJECTED_OOD, "skipped" with a reason, or "error" with a
reason); the same file reached twice is classified once and counted as a duplicate. Inputs are found by
`inputs.find_inputs`, rows kept by `outputs.Outputs`, each image decided by `decision.score_images`.
Decoding runs on a thread pool ahead of the batch being scored, so decode and inference overlap.
"""

from __future__ import annotations

import os
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .cam import caption_for, heatmap_path, overlay_png, write_png
from .decision import Scored, score_images
from .errors import ImageError, OutputError
from .heatmap import FOLDER, caption, explain_film, method_for
from .imaging import read_film, resize_gray, scrub
from .inputs import display_path, find_inputs
from .model import EdgeModel
from .outputs import Outputs
from .progress import Progress

EXIT_SOME_FAILED = 1  # infer: some files could not be classified; all others were


def decode_file(path: str, size: int, rule: str, fetch: Callable[[str], bytes] | None = None):
    """((resized uint8, chroma, patient age in years or None), None) or (None, error message).

    fetch: reads the bytes of a path the local file system cannot open (a URI, for the Ray engine).
    """
    try:
        source = fetch(path) if fetch else path
        film = read_film(source, size=size, name=path.rsplit("/", 1)[-1] if fetch else None)
        return (resize_gray(film.gray, size, rule), film.chroma, film.age_years), None
    except ImageError as e:
        return None, str(e)
    except Exception as e:  # one odd file must never end the batch
        return None, f"unexpected {e.__class__.__name__}: {scrub(str(e))}"  # its text may quote header values


@dataclass
class InferSummary:
    counts: Counter
    n_files: int
    n_failed: int  # error rows written by this run
    n_skipped_resume: int
    seconds: float
    n_duplicates: int = 0  # inputs reached twice, classified once
    n_incomplete: int = 0  # torn or incomplete rows that resume dropped and re-did
    n_old_errors: int = 0  # error rows kept from earlier runs for inputs not named this time
    first_result_seconds: float | None = None  # --engine ray: start-up until the first batch of rows

    @property
    def images_per_s(self) -> float:
        classified = sum(v for k, v in self.counts.items() if k not in ("error", "skipped"))
        return classified / self.seconds if self.seconds > 0 else 0.0


@dataclass
class InferConfig:
    batch_size: int = 16
    workers: int | None = None  # decode threads; None: one per core
    guard: bool = True  # apply the model's guard (when the file has one)
    heatmaps: str | Path | None = None  # a folder for one overlay PNG per classified input
    progress: bool | None = None  # None: a bar on a terminal, heartbeat lines otherwise


def predict_paths(paths: list[str], model: EdgeModel, outputs: Outputs, cfg: InferConfig = InferConfig(),
                  echo: Callable[[dict], None] | None = None) -> InferSummary:
    """Classify every image under `paths` into the open `outputs`, one row per input, flushed as produced.

    echo: called with each row after it is written (the terminal view).
    """
    heat_dir = heatmap_folder(cfg.heatmaps, model) if cfg.heatmaps is not None else None
    found = find_inputs(paths, outputs.identities())
    run = Run(outputs, found.files, found.problems, model, echo, found.n_duplicates)
    use_guard = cfg.guard and model.guard is not None
    with Progress(len(run.todo), "infer", enabled=True if cfg.progress is None else cfg.progress) as bar:
        for batch in decoded_batches(run.todo, model, cfg.batch_size, cfg.workers):
            run.write(classify_batch(batch, model, use_guard, heat_dir))
            bar.update(len(batch))
    return run.summary()


def heatmap_folder(folder: str | Path, model: EdgeModel) -> Path:
    """The --heatmaps folder, created; refused before any row when the model cannot make heat maps."""
    method_for(model, FOLDER)
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"--heatmaps '{folder}' exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create --heatmaps folder '{folder}': {e.strerror or e}") from None
    return folder


class Run:
    """One run's bookkeeping, for either engine: what resume leaves to do, every row written (the file
    first: it is the record, the terminal only a view) and counted, and the summary."""

    def __init__(self, outputs, files: list[str], problems: list[tuple], model: EdgeModel, echo=None,
                 n_duplicates: int = 0):
        done = outputs.begin([display_path(p) for p in (*files, *(pr[0] for pr in problems))], model.sha256)
        self.outputs, self.echo, self.n_duplicates = outputs, echo, n_duplicates
        self.todo = [f for f in files if display_path(f) not in done]
        left = [pr for pr in problems if display_path(pr[0]) not in done]
        self.n_files = len(self.todo) + len(left)
        self.n_done_before = len(files) + len(problems) - self.n_files
        self.counts: Counter = Counter()
        self.t0 = time.perf_counter()
        self.write([{"path": display_path(p), "status": st, "error": msg} for p, st, msg in left])

    def write(self, rows: list[dict]) -> None:
        self.outputs.write(rows)
        for r in rows if self.echo else ():
            self.echo(r)
        self.counts.update(r["label"] if r["status"] == "ok" else r["status"] for r in rows)

    def summary(self, **extra) -> InferSummary:
        return InferSummary(counts=self.counts, n_files=self.n_files, n_failed=self.counts.get("error", 0),
                            n_skipped_resume=self.n_done_before, seconds=time.perf_counter() - self.t0,
                            n_duplicates=self.n_duplicates, n_incomplete=self.outputs.n_incomplete,
                            n_old_errors=self.outputs.n_old_errors(), **extra)


def decoded_batches(todo: list[str], model: EdgeModel, batch_size: int, workers: int | None):
    """Batches of (path, decoded or None, error or None), decoding ahead on a thread pool."""
    size, rule = model.spec.size, model.spec.resize
    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        window: deque = deque()

        def take() -> tuple[str, tuple | None, str | None]:
            p, fut = window.popleft()
            return (p, *fut.result())

        def in_order():  # results in input order, a bounded number of decodes in flight
            for path in todo:
                window.append((path, pool.submit(decode_file, path, size, rule)))
                if len(window) >= 4 * batch_size:
                    yield take()
            while window:
                yield take()

        batch: list[tuple[str, tuple | None, str | None]] = []
        for item in in_order():
            batch.append(item)
            if len(batch) == batch_size:
                yield batch
                batch = []
        if batch:
            yield batch


def _write_heatmaps(folder: Path, model: EdgeModel, ok, scored: list[Scored], result: dict) -> None:
    """One overlay PNG (`edge.heatmap.FOLDER`: the evidence for PNEUMONIA) per input the record allows a map
    for; a failed write is an error row."""
    for (p, dec), s in zip(ok, scored):
        if not s.heatmap_allowed:
            continue
        try:
            heat = explain_film(model, dec[0], method=FOLDER)
            png = overlay_png(dec[0], heat, caption_for(s.label, s.probability, s.threshold, caption(FOLDER)))
            write_png(heatmap_path(folder, p), png)
        except OSError as e:
            result[p] = {"status": "error",
                         "error": f"classified, but the heat map was not written: {(e.strerror or str(e)).lower()}"}


def classify_batch(batch, model: EdgeModel, use_guard: bool, heatmaps: Path | None = None) -> list[dict]:
    """Rows for a batch of (path, decoded or None, error or None), as `decoded_batches` yields it."""
    ok = [(p, dec) for p, dec, err in batch if err is None]
    result: dict[str, dict] = {}
    if ok:
        try:
            scored = score_images(model, [dec for _, dec in ok], use_guard)
        except Exception as e:  # noqa: BLE001 - report the whole batch, keep going
            for p, _ in ok:
                result[p] = {"status": "error", "error": f"inference failed: {e}"}
        else:
            for (p, _), s in zip(ok, scored):
                result[p] = s.fields()
            if heatmaps is not None:
                _write_heatmaps(heatmaps, model, ok, scored, result)
    return [{"path": display_path(p), **(result.get(p) or {"status": "error", "error": err})} for p, _, err in batch]
