"""Batch inference over files and folders: one row per input, written as it is produced.

    model = EdgeModel("export/model.onnx")
    summary = predict_paths(["./xrays"], model, out_csv="predictions.csv")

Nothing is skipped silently: every input named, and every entry found under a folder, ends as a
row ("ok", "rejected" by the guard with label REJECTED_OOD, "skipped" with a reason, or "error" with a
reason); the same file reached twice is classified once and counted as a duplicate.

What a crash can cost: rows are flushed after every batch and fsynced at least every SYNC_ROWS rows
or SYNC_SECONDS seconds and at exit, so a crash, a power cut included, loses at most the rows since
the last sync and never leaves a corrupt file: `resume` drops a torn last record and re-does that
input, as it re-does every input whose row is an error. Outputs are held under an exclusive lock, so
a second run writing the same file is refused instead of interleaving its rows.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import stat
import sys
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np

from .atomic import CREATE, REPLACE, UPDATE, open_locked, replace_locked
from .errors import ImageError, OutputError
from .imaging import IMAGE_SUFFIXES, load_image, normalize, resize_gray
from .model import EdgeModel

EXIT_SOME_FAILED = 1  # infer: some files could not be classified; all others were
COLUMNS = ("path", "probability", "label", "status", "error", "ood_score", "threshold", "ood")
SCORED = ("ok", "rejected")  # statuses of rows that carry a probability
DONE_STATUSES = (*SCORED, "skipped")  # rows that resume keeps; "error" rows are re-tried
STDOUT = "-"  # as the CSV path: write the rows to standard output
SYNC_ROWS, SYNC_SECONDS = 256, 2.0


# ---------------------------------------------------------------- names

def display_path(p: str) -> str:
    """A printable path even when the file name is not valid UTF-8."""
    return os.fsencode(p).decode("utf-8", "backslashreplace")


def printable(text: str) -> str:
    """Control characters escaped (\\n, \\x1b, ...) so that a file name cannot rewrite the terminal."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def identity(path: str) -> str:
    """One key per file however it is spelled (./x, /abs/x, through a symlink)."""
    return os.path.realpath(path) if os.path.exists(path) else os.path.abspath(path)


# ---------------------------------------------------------------- finding the inputs

@dataclass
class Found:
    files: list[str] = field(default_factory=list)  # to classify
    problems: list[tuple[str, str, str]] = field(default_factory=list)  # (path, status, message)
    n_duplicates: int = 0  # files or folders reached a second time: classified once


class _Finder:
    def __init__(self, exclude: set[str]):
        self.found = Found()
        self.exclude = exclude  # this run's own outputs
        self.seen: set[str] = set()  # identities of every file and folder already listed

    def _first_time(self, path: str) -> bool:
        key = identity(path)
        if key in self.seen:
            self.found.n_duplicates += 1
            return False
        self.seen.add(key)
        return True

    def _n_listed(self) -> int:
        return len(self.found.files) + len(self.found.problems) + self.found.n_duplicates

    def add(self, raw: str) -> None:
        if os.path.isdir(raw):
            self.folder(raw)
        elif os.path.lexists(raw):
            self.file(raw, walked=False)
        elif self._first_time(raw):
            self.found.problems.append((raw, "error", "path does not exist"))

    def folder(self, top: str) -> None:
        if identity(top) in self.seen:
            self.found.n_duplicates += 1
            return
        n_before = self._n_listed()
        for root, dirs, names in os.walk(top, followlinks=True, onerror=self._unlistable):
            if root != top and not self._first_time(root):  # a symlink loop, or a folder reached twice
                dirs[:] = []
                continue
            if root == top:
                self.seen.add(identity(top))
            for d in sorted(dirs):
                if d.startswith("."):
                    self.found.problems.append((os.path.join(root, d), "skipped", "hidden folder, not searched"))
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(names):
                self.file(os.path.join(root, name), walked=True)
        if self._n_listed() == n_before:
            self.found.problems.append((top, "error", "folder contains no files"))

    def _unlistable(self, e: OSError) -> None:
        reason = (e.strerror or str(e)).lower()
        self.found.problems.append((e.filename, "error", f"cannot list folder: {reason}"))

    def file(self, path: str, walked: bool) -> None:
        if not self._first_time(path):
            return
        reason = self._skip_reason(path, walked)
        if reason:
            self.found.problems.append((path, *reason))
        else:
            self.found.files.append(path)

    def _skip_reason(self, path: str, walked: bool) -> tuple[str, str] | None:
        if identity(path) in self.exclude:
            return "skipped", "an output of this run"
        try:
            mode = os.stat(path).st_mode
        except OSError:
            return None  # broken link, no permission...: decoding names the reason
        if not stat.S_ISREG(mode):  # a FIFO would block the decoder for ever
            return "error", "not a regular file"
        name = os.path.basename(path)
        if walked and name.startswith("."):
            return "skipped", "hidden file"
        if walked and Path(name).suffix.lower() not in IMAGE_SUFFIXES:
            return "skipped", "not an image file extension"
        return None


def find_inputs(paths: list[str], exclude: set[str] = frozenset()) -> Found:
    """Expand folders (recursively, sorted, following symlinks once) and files; odd paths become rows."""
    finder = _Finder(set(exclude))
    for raw in paths:
        finder.add(raw)
    return finder.found


# ---------------------------------------------------------------- output formats

NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def spreadsheet_safe(cell: str) -> str:
    """Prefix a quote to text a spreadsheet would run as a formula (=, +, -, @, tab, CR); numbers stay numbers."""
    if cell and cell[0] in "=+-@\t\r" and not NUMBER.fullmatch(cell):
        return "'" + cell
    return cell


def _valid_row(row: dict) -> bool:
    status = row.get("status")
    if not isinstance(row.get("path"), str) or not row["path"] or status not in (*DONE_STATUSES, "error"):
        return False
    return status not in SCORED or (bool(row.get("label")) and bool(NUMBER.fullmatch(str(row.get("probability")))))


def _physical_lines(text: str) -> list[str]:
    return re.findall(r"[^\n]*\n|[^\n]+", text)


class Record(NamedTuple):
    key: str  # the path as the file stores it
    status: str
    text: str  # the whole record, line end included


class CsvFormat:
    name = "predictions CSV"
    header = ",".join(COLUMNS) + "\r\n"  # csv.writer's line end

    @staticmethod
    def key(display: str) -> str:
        return spreadsheet_safe(display)

    @staticmethod
    def encode(rows: list[dict]) -> str:
        buf = io.StringIO()
        w = csv.writer(buf)
        for r in rows:
            w.writerow([spreadsheet_safe("" if r.get(c) is None else str(r[c])) for c in COLUMNS])
        return buf.getvalue()

    def parse(self, text: str) -> tuple[list[Record], int]:
        """(complete records after the header, number of incomplete or malformed ones)."""
        lines = _physical_lines(text)
        reader = csv.reader(iter(lines))
        records, bad, used = [], 0, 0
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                break
            except csv.Error:
                fields = []
            chunk, used = "".join(lines[used:reader.line_num]), reader.line_num
            complete = chunk.endswith("\n") and len(fields) == len(COLUMNS)
            if complete and not records and not bad and fields == list(COLUMNS):
                continue  # the header
            row = dict(zip(COLUMNS, fields))
            if complete and _valid_row(row):
                records.append(Record(row["path"], row["status"], chunk))
            else:
                bad += 1
        return records, bad


class JsonlFormat:
    name = "predictions JSON Lines"
    header = ""

    @staticmethod
    def key(display: str) -> str:
        return display

    @staticmethod
    def encode(rows: list[dict]) -> str:
        return "".join(json.dumps({c: r.get(c) for c in COLUMNS}) + "\n" for r in rows)

    def parse(self, text: str) -> tuple[list[Record], int]:
        records, bad = [], 0
        for line in _physical_lines(text):
            row = self._row(line)
            if row is None:
                bad += 1
            else:
                records.append(Record(row["path"], row["status"], line))
        return records, bad

    @staticmethod
    def _row(line: str) -> dict | None:
        if not line.endswith("\n"):
            return None  # torn: the crash came before its end
        try:
            row = json.loads(line)
        except ValueError:
            return None
        return row if isinstance(row, dict) and _valid_row(row) else None


# How our files begin; anything else is someone else's file and is never rewritten.
SIGNATURES = {CsvFormat: (CsvFormat.header, CsvFormat.header.replace("\r\n", "\n")), JsonlFormat: ('{"path": ',)}


# ---------------------------------------------------------------- output files

class Output:
    """One output file, open and locked for the whole run; on resume, its complete records."""

    def __init__(self, path: Path, fmt: CsvFormat | JsonlFormat, how: str):
        self.path, self.fmt = path, fmt
        self.created = how == CREATE
        self.file = open_locked(path, how)
        self.records: list[Record] = []
        self.n_incomplete = 0
        try:
            if how == UPDATE:
                self._load()
            if self.file.tell() == 0:
                self.file.write(fmt.header.encode())
        except BaseException:
            self.file.close()
            raise

    def _load(self) -> None:
        text = self.file.read().decode("utf-8", "surrogateescape")  # a torn multi-byte tail must not stop us
        if not any(text.startswith(sig) or sig.startswith(text) for sig in SIGNATURES[type(self.fmt)]):
            raise OutputError(f"'{self.path}' is not a {self.fmt.name} file; "
                                  "choose another path or use --force to overwrite it")
        self.records, self.n_incomplete = self.fmt.parse(text)
        if self.n_incomplete:
            self._rewrite(self.records)

    def statuses(self) -> dict[str, str]:
        """The status of each path's first record, by the path as this format stores it."""
        first: dict[str, str] = {}
        for r in self.records:
            first.setdefault(r.key, r.status)
        return first

    def drop(self, displays: set[str]) -> None:
        """Remove the records of inputs about to be re-done (and repeated records): one atomic rewrite."""
        keys = {self.fmt.key(d) for d in displays}
        kept, seen = [], set()
        for r in self.records:
            if r.key not in keys and r.key not in seen:
                kept.append(r)
                seen.add(r.key)
        if len(kept) != len(self.records):
            self._rewrite(kept)

    def _rewrite(self, records: list[Record]) -> None:
        body = self.fmt.header + "".join(r.text for r in records)
        new = replace_locked(self.path, body.encode("utf-8", "surrogateescape"))
        self.file.close()  # the old file, now nameless: its lock goes with it
        self.file, self.records = new, records

    def write(self, text: str) -> None:
        self.file.write(text.encode("utf-8", "backslashreplace"))  # lone surrogates must not lose a row
        self.file.flush()

    def sync(self) -> None:
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()


class StreamOutput(Output):
    """The CSV on standard output (`--out -`): nothing to lock, resume, fsync or remove."""

    def __init__(self, stream: BinaryIO):
        self.path, self.fmt, self.file = Path(STDOUT), CsvFormat(), stream
        self.created, self.records, self.n_incomplete = False, [], 0
        self.write(self.fmt.header)

    def sync(self) -> None:
        self.file.flush()  # a pipe cannot be fsynced

    def close(self) -> None:
        self.file.flush()  # standard output stays open for whoever prints after us


class Outputs:
    """The CSV (and optional JSON Lines) of one run: opened, checked and locked before any model loads.

    Not resume: a new file (refused if it exists) or, with force, the old one emptied once locked.
    Resume: torn and repeated records dropped; `begin` drops the rows of inputs to re-do.
    A CSV path of "-" (STDOUT) writes the CSV to standard output instead.
    """

    def __init__(self, csv_path: str | Path, json_path: str | Path | None = None, resume: bool = False,
                 force: bool = False):
        csv_path = Path(csv_path)
        json_path = Path(json_path) if json_path else None
        if json_path and identity(str(json_path)) == identity(str(csv_path)):
            raise OutputError(f"--json and --out name the same file '{csv_path}'")
        how = UPDATE if resume else REPLACE if force else CREATE
        to_stdout = str(csv_path) == STDOUT
        if to_stdout and resume:
            raise OutputError("--resume needs the CSV in a file: it cannot re-read standard output ('--out -')")
        self.outputs: list[Output] = []
        self.n_rows = 0
        try:
            self.outputs.append(StreamOutput(sys.stdout.buffer) if to_stdout else Output(csv_path, CsvFormat(), how))
            if json_path:
                self.outputs.append(Output(json_path, JsonlFormat(), how))
        except BaseException:
            self.discard()
            raise
        self._unsynced, self._synced_at = 0, time.monotonic()

    @property
    def csv(self) -> Output:
        return self.outputs[0]

    @property
    def n_incomplete(self) -> int:
        return max(o.n_incomplete for o in self.outputs)

    def identities(self) -> set[str]:
        return {identity(str(o.path)) for o in self.outputs if not isinstance(o, StreamOutput)}

    def begin(self, displays: list[str]) -> set[str]:
        """Inputs already done (a done row in every output); the rows of all others are dropped."""
        statuses = [(o.fmt.key, o.statuses()) for o in self.outputs]
        done = {d for d in displays if all(st.get(key(d)) in DONE_STATUSES for key, st in statuses)}
        redo = set(displays) - done
        for o in self.outputs:
            o.drop(redo)
        return done

    def n_old_errors(self) -> int:
        """Error rows kept from earlier runs (inputs not named this time)."""
        return sum(r.status == "error" for r in self.csv.records)

    def write(self, rows: list[dict]) -> None:
        for o in self.outputs:
            o.write(o.fmt.encode(rows))
        self.n_rows += len(rows)
        self._unsynced += len(rows)
        if self._unsynced >= SYNC_ROWS or time.monotonic() - self._synced_at >= SYNC_SECONDS:
            self.sync()

    def sync(self) -> None:
        for o in self.outputs:
            o.sync()
        self._unsynced, self._synced_at = 0, time.monotonic()

    def discard(self) -> None:
        """Close, removing the files this run created: for a run that failed before its first row."""
        for o in self.outputs:
            if o.created:
                o.path.unlink(missing_ok=True)
            o.close()

    def close(self) -> None:
        try:
            self.sync()
        finally:
            for o in self.outputs:
                o.close()

    def __enter__(self) -> "Outputs":
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None or self.n_rows:
            self.close()
        else:
            self.discard()


# ---------------------------------------------------------------- batch inference over files

def _decode(path: str, size: int, rule: str, fetch: Callable[[str], bytes] | None = None):
    """((resized uint8, chroma), None) or (None, error message).

    fetch: reads the bytes of a path the local file system cannot open (a URI, for the Ray engine).
    """
    try:
        source = fetch(path) if fetch else path
        gray, colour = load_image(source, size=size, name=path.rsplit("/", 1)[-1] if fetch else None)
        return (resize_gray(gray, size, rule), colour), None
    except ImageError as e:
        return None, str(e)
    except Exception as e:  # one odd file must never end the batch
        return None, f"unexpected {e.__class__.__name__}: {e}"


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


def predict_paths(paths: list[str], model: EdgeModel, out_csv: str | Path | Outputs,
                  json_path: str | Path | None = None, resume: bool = False, batch_size: int = 16,
                  workers: int | None = None, guard: bool = True, progress: bool | None = None, echo=None,
                  force: bool = False, heatmaps: str | Path | None = None) -> InferSummary:
    """Classify every image under `paths`, one row per input, flushed as produced.

    `out_csv` is a path (opened here with `json_path`, `resume`, `force`) or an open `Outputs`.
    `heatmaps`: a folder that gets one overlay PNG per classified input (named by `edge.cam.heatmap_name`).
    """
    if isinstance(out_csv, Outputs):
        return _predict(paths, model, out_csv, batch_size, workers, guard, progress, echo, heatmaps)
    with Outputs(out_csv, json_path, resume, force) as outputs:
        return _predict(paths, model, outputs, batch_size, workers, guard, progress, echo, heatmaps)


def heatmap_folder(folder: str | Path, model: EdgeModel) -> Path:
    """The --heatmaps folder, created; refused before any row when the model cannot make heat maps."""
    model.require_cam()
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

    def __init__(self, outputs, files: list[str], problems: list[tuple], echo=None, n_duplicates: int = 0):
        done = outputs.begin([display_path(p) for p in (*files, *(pr[0] for pr in problems))])
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


def _predict(paths: list[str], model: EdgeModel, outputs: Outputs, batch_size: int, workers: int | None,
             guard: bool, progress: bool | None, echo: Callable[[dict], None] | None,
             heatmaps: str | Path | None = None) -> InferSummary:
    from .progress import Progress

    heat_dir = heatmap_folder(heatmaps, model) if heatmaps is not None else None
    found = find_inputs(paths, outputs.identities())
    run = Run(outputs, found.files, found.problems, echo, found.n_duplicates)
    use_guard = guard and model.guard is not None
    with Progress(len(run.todo), "infer", enabled=True if progress is None else progress) as bar:
        for batch in decoded_batches(run.todo, model, batch_size, workers):
            run.write(_classify(batch, model, use_guard, heat_dir))
            bar.update(len(batch))
    return run.summary()


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
                window.append((path, pool.submit(_decode, path, size, rule)))
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


def score_decoded(model: EdgeModel, decoded: list[tuple[np.ndarray, float]], use_guard: bool,
                  keep: dict | None = None) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """Calibrated P(positive), guard scores (None without the guard) and the guard's reasons ('' when
    accepted) for (resized uint8, chroma) pairs.

    keep: a dict that receives all raw outputs (heat maps read 'features'); else the feature map is not fetched.
    """
    images, chroma = np.stack([d[0] for d in decoded]), np.array([d[1] for d in decoded])
    outs = model.run(normalize(images, model.spec), None if keep is not None else model.predict_outputs)
    if keep is not None:
        keep.update(outs)
    scores, reasons = (model.guard.assess(images, outs["embedding"], chroma) if use_guard
                       else (None, [""] * len(images)))
    return model.probability(outs["logits"]), scores, reasons


def _scored_row(model: EdgeModel, prob: float, score: float | None, reason: str = "") -> dict:
    """Numbers stay numbers (JSON Lines); a guard refusal is its own status with its reason in `error`,
    the probability still shown."""
    rejected = score is not None and bool(model.guard.rejects(score))
    return {"status": "rejected" if rejected else "ok", "probability": round(prob, 6),
            "label": "REJECTED_OOD" if rejected else model.meta.decide(prob), "threshold": model.threshold,
            "ood_score": None if score is None else round(score, 4), "ood": None if score is None else rejected,
            **({"error": f"guard: {reason}"} if rejected else {})}


def _write_heatmaps(folder: Path, model: EdgeModel, ok, features: np.ndarray, probs, result: dict) -> None:
    """One overlay PNG per accepted input, of the class the model decides; none for a guard-rejected input
    (a map of an image the model should not judge would look like evidence); a failed write is an error row."""
    from .cam import caption_for, heatmap_path, overlay_png, write_png

    labels = list(model.labels)
    decided = [model.meta.decide(float(p)) for p in probs]
    maps = model.cam.maps(features, [labels.index(d) for d in decided], model.spec.size)
    for (p, dec), heat, prob, label in zip(ok, maps, probs, decided):
        if result[p]["status"] == "rejected":
            result[p]["error"] += "; no heat map drawn"
            continue
        try:
            png = overlay_png(dec[0], heat, caption_for(label, float(prob), model.threshold, label))
            write_png(heatmap_path(folder, p), png)
        except OSError as e:
            result[p] = {"status": "error",
                         "error": f"classified, but the heat map was not written: {(e.strerror or str(e)).lower()}"}


def _classify(batch, model: EdgeModel, use_guard: bool, heatmaps: Path | None = None) -> list[dict]:
    ok = [(p, dec) for p, dec, err in batch if err is None]
    result: dict[str, dict] = {}
    if ok:
        outs: dict | None = {} if heatmaps is not None else None
        try:
            probs, scores, reasons = score_decoded(model, [dec for _, dec in ok], use_guard, outs)
        except Exception as e:  # noqa: BLE001 - report the whole batch, keep going
            for p, _ in ok:
                result[p] = {"status": "error", "error": f"inference failed: {e}"}
        else:
            for i, (p, _) in enumerate(ok):
                result[p] = _scored_row(model, float(probs[i]), None if scores is None else float(scores[i]),
                                        reasons[i])
            if heatmaps is not None:
                _write_heatmaps(heatmaps, model, ok, outs["features"], probs, result)
    rows = []
    for p, _, err in batch:
        r = result.get(p) or {"status": "error", "error": err}
        rows.append({"path": display_path(p), **r})
    return rows
