"""Batch inference on Ray Data: the same rows as `infer`, from one machine or a cluster.

    summary = predict_cluster(["./xrays"], "export/model.int8.onnx", "rows.parquet", ClusterConfig())

The pipeline is Ray Data's: a dataset of input paths, `map_batches` tasks that read each file's
bytes (local paths, or any URI pyarrow understands: s3://, gs://, hdfs://, file://) and decode
and resize them with `edge.imaging`, then an actor pool where each actor opens the ONNX file once
and scores batches with the same code as the local engine (`infer.classify_batch`, `decision.score_images`).
Rows come back to the driver as a stream and are written as they arrive: to a CSV through the
local engine's `Outputs` (same lock, resume and crash rules), or to a Parquet dataset of part
files (one every PART_ROWS rows or PART_SECONDS seconds), each written whole under a temporary
name and renamed, so a crash costs the rows since the last part and never leaves half a part.

Faults: a file that cannot be read or decoded is its row with the reason. An actor that dies is
restarted by Ray and its batch re-run (Ray Data's actor pools retry tasks); the driver writes each
input once, so a retried batch cannot duplicate rows. `resume` skips inputs that already have a
done row and re-tries error rows, as the local engine does.

Ray is an optional dependency (`pip install "pneumo-edge[cluster]"`), imported only here.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import UPDATE, atomic_path, open_locked
from .errors import ImageError, OutputError, PneumoEdgeError
from .infer import InferSummary, Run, classify_batch, decode_file
from .inputs import display_path, find_inputs, identity
from .model import EdgeModel
from .outputs import COLUMNS, DONE_STATUSES, Outputs
from .progress import Progress

PARTS_GLOB = "part-*.parquet"
BLOCK_ROWS = 256  # inputs per Ray block (one decode task each)
PART_ROWS = 2048  # rows per Parquet part file at most ...
PART_SECONDS = 30.0  # ... and a part at least this often: what a crash can cost the dataset


class ClusterError(PneumoEdgeError):
    exit_code = 2


@dataclass
class ClusterConfig:
    address: str | None = None  # None: a local Ray instance on this machine; "auto" or "ray://host:10001"
    actors: int | None = None  # classifier actors (default: CPUs / threads_per_actor)
    threads_per_actor: int = 1  # onnxruntime threads in each actor
    batch_size: int = 16  # images per decode task batch and per onnxruntime call
    guard: bool = True


def is_uri(path: str) -> bool:
    return "://" in path


# ---------------------------------------------------------------- inputs

def read_manifest(manifest: str) -> list[str]:
    """The `path` column of a CSV or Parquet file (local, or any URI pyarrow reads)."""
    import pyarrow.csv as pacsv  # pyarrow: only when this runs
    import pyarrow.parquet as pq  # pyarrow: only when this runs

    try:
        if manifest.lower().endswith(".parquet"):
            table = pq.read_table(manifest, columns=["path"])
        else:
            table = pacsv.read_csv(manifest, convert_options=pacsv.ConvertOptions(include_columns=["path"],
                                                                                  column_types={"path": "string"}))
    except (OSError, KeyError, ValueError) as e:
        raise ClusterError(f"cannot read manifest '{manifest}' (a CSV or Parquet file with a 'path' column): "
                           f"{str(e).splitlines()[0]}") from None
    return [p for p in table.column("path").to_pylist() if p]


def gather_inputs(paths: list[str], manifest: str | None, exclude: set[str]) -> tuple[list[str], list[tuple], int]:
    """(files to read, problem rows (path, status, reason), duplicates): local inputs through the local
    engine's finder (same skip and error rules), URIs as given, each input once."""
    named = list(paths) + (read_manifest(manifest) if manifest else [])
    local = [p for p in named if not is_uri(p)]
    found = find_inputs(local, exclude)
    uris, seen = [], set()
    for u in (p for p in named if is_uri(p)):
        if u not in seen:
            seen.add(u)
            uris.append(u)
    dupes = found.n_duplicates + sum(1 for p in named if is_uri(p)) - len(uris)
    return list(found.files) + uris, list(found.problems), dupes


# ---------------------------------------------------------------- the pipeline stages (run in Ray workers)

def fetch(uri: str) -> bytes:
    """A remote file's bytes, with the local engine's reasons for what is not a readable file."""
    import pyarrow.fs as pafs  # pyarrow: only when this runs

    try:
        fs, inner = pafs.FileSystem.from_uri(uri)
        info = fs.get_file_info(inner)
    except (OSError, ValueError) as e:
        raise ImageError(f"cannot read file ({str(e).splitlines()[0]})") from e
    if info.type == pafs.FileType.NotFound:
        raise ImageError("file does not exist")
    if info.type == pafs.FileType.Directory:
        raise ImageError("is a folder, not a file")
    if info.size == 0:
        raise ImageError("empty file (0 bytes)")
    try:
        with fs.open_input_stream(inner) as f:
            return f.read()
    except OSError as e:
        raise ImageError(f"cannot read file ({str(e).splitlines()[0]})") from e


def decode_batch(batch: dict, size: int, rule: str) -> dict:
    """Ray `map_batches` task: paths in, resized uint8 images (zeros where decoding failed), header ages (NaN
    where none) and reasons out, through the local engine's decoder."""
    out = [decode_file(str(s), size, rule, fetch if is_uri(str(s)) else None) for s in batch["source"]]
    blank = np.zeros((size, size), np.uint8)
    return {"path": batch["path"], "image": np.stack([dec[0] if dec else blank for dec, _ in out]),
            "chroma": np.array([dec[1] if dec else 0.0 for dec, _ in out], np.float64),
            "age_years": np.array([dec[2] if dec and dec[2] is not None else np.nan for dec, _ in out], np.float64),
            "error": np.array([err or "" for _, err in out], object)}


class Classify:
    """Ray actor: opens the ONNX file once, then scores batches with the local engine's `classify_batch`;
    rows leave as JSON text (exact floats).

    Configured through class attributes (`classifier`), not constructor arguments: Ray keeps those in
    the object store, where an actor restarted after a crash may no longer find them.
    """

    model_path: str = ""
    threads: int = 1
    use_guard: bool = True

    def __init__(self):
        self.model = EdgeModel(self.model_path, threads=self.threads)
        self.guard = self.use_guard and self.model.guard is not None

    def __call__(self, batch: dict) -> dict:
        items = [(str(p), None if e else (img, float(c), None if np.isnan(a) else float(a)), str(e) or None)
                 for p, img, c, a, e in zip(batch["path"], batch["image"], batch["chroma"], batch["age_years"],
                                            batch["error"])]
        return {"row": np.array([json.dumps(r) for r in classify_batch(items, self.model, self.guard)], object)}


def classifier(model: str, threads: int, guard: bool) -> type:
    """A Classify class bound to one model file (the class travels to the workers by value)."""
    return type("Classify", (Classify,), {"model_path": model, "threads": threads, "use_guard": guard})


# ---------------------------------------------------------------- Parquet output

def _columns(part: Path) -> list[str]:
    import pyarrow.parquet as pq  # pyarrow: only when this runs

    try:
        return list(pq.read_schema(part).names)
    except (OSError, ValueError):
        return []


def _schema():
    """The row columns (outputs.COLUMNS) with Parquet types: numbers typed, the rest text."""
    import pyarrow as pa  # pyarrow: only when this runs

    typed = {"probability": pa.float64(), "guard_score": pa.float64(), "threshold": pa.float64()}
    return pa.schema([(c, typed.get(c, pa.string())) for c in COLUMNS])


def _read_part(part: Path) -> list[dict]:
    import pyarrow.parquet as pq  # pyarrow: only when this runs

    return pq.read_table(part).to_pylist()


class ParquetOutputs:
    """A Parquet dataset folder of part files, held under a lock; the same interface as `infer.Outputs`.

    New folder (refused if it holds parts, unless force empties it), or resume: parts are read back, the
    rows of inputs to re-do are dropped (the parts that held them rewritten), and new parts appended.
    """

    def __init__(self, folder: str | Path, resume: bool = False, force: bool = False):
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise OutputError(f"--out '{folder}' exists and is not a folder (a Parquet dataset is a folder)")
        self.created = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.lock_created = not (self.folder / ".lock").exists()
        self._lock = open_locked(self.folder / ".lock", UPDATE)  # a second writer is refused here
        parts = sorted(self.folder.glob(PARTS_GLOB))
        for part in parts:  # never delete or rewrite a dataset someone else wrote
            if _columns(part) != list(COLUMNS):
                self._lock.close()
                raise OutputError(f"--out '{folder}' holds '{part.name}', which is not a pneumo-edge row file "
                                  f"(columns {', '.join(_columns(part)) or 'unreadable'}): choose another folder")
        if parts and not (resume or force):
            self._lock.close()
            raise OutputError(f"--out '{folder}' already holds {len(parts)} part file(s): pass --resume to "
                              "continue it or --force to replace it")
        if force and not resume:
            for p in parts:
                p.unlink()
            parts = []
        for stale in self.folder.glob(".part-*.tmp"):  # a part whose writer died before its rename
            stale.unlink()
        self.parts = parts
        self.pending: list[dict] = []
        self.status: dict[str, str] = {}  # input -> status of its kept row, filled by begin
        self.n_rows = 0
        self.n_incomplete = 0
        self._synced_at = time.monotonic()

    def identities(self) -> set[str]:
        """This run's own files, which an input folder that contains --out must not classify."""
        return {identity(str(p)) for p in (self.folder / ".lock", *self.parts)}

    def begin(self, displays: list[str], model_sha256: str | None = None) -> set[str]:
        """Inputs already done; error rows of the named inputs are dropped so they are re-tried.
        Refused, before anything is dropped, when kept rows were scored by another model."""
        status: dict[str, str] = {}
        named = set(displays)
        read = {part: _read_part(part) for part in self.parts}
        other = next((r["model_sha256"] for rows in read.values() for r in rows
                      if r.get("model_sha256") and model_sha256 and r["model_sha256"] != model_sha256), None)
        if other:
            raise OutputError(f"--out '{self.folder}' holds rows scored by another model (sha256 {other[:12]}, this "
                              f"one {model_sha256[:12]}); choose another folder, or use --force to start it again")
        for part, rows in read.items():
            keep = [r for r in rows if r["status"] in DONE_STATUSES or r["path"] not in named]
            if len(keep) != len(rows):
                self._write_part(keep, part)
            status.update((r["path"], r["status"]) for r in keep)
        self.status = status
        return {d for d in displays if status.get(d) in DONE_STATUSES}

    def n_old_errors(self) -> int:
        return sum(s == "error" for s in self.status.values())

    def _write_part(self, rows: list[dict], part: Path | None = None) -> None:
        import pyarrow as pa  # pyarrow: only when this runs
        import pyarrow.parquet as pq  # pyarrow: only when this runs

        part = part or self.folder / f"part-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}.parquet"
        table = pa.Table.from_pylist([{c: r.get(c) for c in COLUMNS} for r in rows], schema=_schema())
        with atomic_path(part) as tmp:  # a reader or a crash never sees half a part
            pq.write_table(table, tmp)

    def write(self, rows: list[dict]) -> None:
        self.pending += rows
        self.n_rows += len(rows)
        if len(self.pending) >= PART_ROWS or time.monotonic() - self._synced_at >= PART_SECONDS:
            self.sync()

    def sync(self) -> None:
        if self.pending:
            self._write_part(self.pending)
            self.pending = []
        self._synced_at = time.monotonic()

    def close(self) -> None:
        try:
            self.sync()
        finally:
            self._lock.close()

    def __enter__(self) -> "ParquetOutputs":
        return self

    def __exit__(self, exc_type, *_) -> None:
        self.close()
        if exc_type is not None and not self.n_rows:  # failed before its first row: leave nothing of ours
            if self.lock_created:
                (self.folder / ".lock").unlink(missing_ok=True)
            if self.created and not any(self.folder.iterdir()):
                self.folder.rmdir()


def open_outputs(out: str, json_path: str | None, resume: bool, force: bool):
    """A CSV path (or '-') gets the local engine's Outputs; anything else is a Parquet dataset folder."""
    if is_uri(out):
        raise OutputError(f"--out '{out}': rows are written on this machine; give a local path or a mounted "
                          "shared folder")
    if out == "-" or out.lower().endswith(".csv"):
        return Outputs(out, json_path, resume, force)
    if json_path:
        raise OutputError("--json goes with a CSV --out; a Parquet dataset already holds every column")
    return ParquetOutputs(out, resume, force)


def read_rows(out: str | Path) -> list[dict]:
    """Every row of a Parquet dataset written by this engine."""
    return [r for p in sorted(Path(out).glob(PARTS_GLOB)) for r in _read_part(p)]


# ---------------------------------------------------------------- the driver

RAY_AUTH_LOGGER = "ray._private.authentication"  # whether the cluster's token auth is on: always shown
LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray's node address is loopback, as on a laptop


def quiet_ray_logs() -> None:
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)
    logging.getLogger(RAY_AUTH_LOGGER).setLevel(logging.WARNING)


def _loopback_only() -> None:
    """A Ray started here serves this machine alone: its node address, and so every service it starts
    (GCS, raylet, object manager, workers), is 127.0.0.1 instead of every interface."""
    os.environ[LOCAL_ONLY_ENV] = "0"  # for the processes it starts
    from ray._private import (
        ray_constants,  # the [cluster] extra, only with --engine ray
    )

    ray_constants.ENABLE_RAY_CLUSTER = False  # read when the node address is chosen, in this process


def start_ray(address: str | None):
    try:
        import ray
    except ImportError:
        raise ClusterError('--engine ray needs Ray: pip install "pneumo-edge[cluster]"') from None
    # Ray's progress notices are not the user's business; its errors, and whether the cluster uses token
    # authentication, still print. Set before and after start-up: Ray configures its loggers as it starts.
    quiet_ray_logs()
    if not ray.is_initialized():
        kwargs = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
        if not address:
            _loopback_only()
        try:
            ray.init(address=address, **kwargs) if address else ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ClusterError(f"cannot connect to Ray at '{address}': {str(e).splitlines()[0]}") from None
    ctx = ray.data.DataContext.get_current()
    quiet_ray_logs()
    ctx.enable_progress_bars = False  # the command shows its own progress
    return ray


def predict_cluster(paths: list[str], model, outputs, cfg: ClusterConfig = ClusterConfig(),
                    manifest: str | None = None, echo=None, progress: bool = True) -> InferSummary:
    """Classify every input on Ray, rows written to `outputs` (an `Outputs` or `ParquetOutputs`) as they come.

    `model` is an EdgeModel or the path of an .onnx file; each actor opens that file itself."""

    # Opened here first: a bad file is refused before any worker starts.
    local_model = model if isinstance(model, EdgeModel) else EdgeModel(model, threads=1)
    model = str(local_model.path)
    ray = start_ray(cfg.address)  # before any row: a cluster that cannot start leaves no half-written output
    spec = local_model.spec
    files, problems, dupes = gather_inputs(paths, manifest, outputs.identities())
    run = Run(outputs, files, problems, local_model, echo, dupes)
    todo, first_row = run.todo, None  # first_row: start-up (Ray, actors opening the model, the first batch)
    if todo:
        threads = max(1, cfg.threads_per_actor)
        cpus = ray.cluster_resources().get("CPU", 1)
        actors = cfg.actors or max(1, int(cpus // threads))
        # Blocks of a few hundred inputs: Ray's default (up to 200 tiny blocks) pays a task's overhead
        # for every handful of images; a few blocks per CPU still keeps every CPU busy.
        blocks = max(1, min(len(todo), max(int(2 * cpus), len(todo) // BLOCK_ROWS)))
        ds = ray.data.from_items([{"path": display_path(p), "source": p if is_uri(p) else os.path.abspath(p)}
                                  for p in todo],
                                 override_num_blocks=blocks)
        # Decode tasks reserve no CPU: actors hold theirs for the whole run, and a reservation here could
        # leave the decoders unschedulable; the task pool bounds them to one per CPU instead.
        ds = ds.map_batches(decode_batch, batch_size=cfg.batch_size, fn_kwargs={"size": spec.size, "rule": spec.resize},
                            num_cpus=0, compute=ray.data.TaskPoolStrategy(size=max(1, int(cpus))))
        # The pool may start smaller than `actors` when there are fewer blocks than actors to feed.
        ds = ds.map_batches(classifier(str(Path(model).resolve()), threads, cfg.guard), batch_size=cfg.batch_size,
                            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors), num_cpus=threads)
        written: set[str] = set()
        with Progress(len(todo), "infer (ray)", enabled=progress) as bar:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                if first_row is None:
                    first_row = time.perf_counter() - run.t0
                rows = [json.loads(text) for text in batch["row"]]
                fresh = [r for r in rows if r["path"] not in written]  # a retried batch cannot add a row twice
                written.update(r["path"] for r in fresh)
                run.write(fresh)
                bar.update(len(fresh))
        missing = [p for p in todo if display_path(p) not in written]
        if missing:  # never expected: Ray returns every row or raises; say so rather than lose an input
            run.write([{"path": display_path(p), "status": "error", "error": "no result from the cluster"}
                       for p in missing])
    return run.summary(first_result_seconds=first_row)
