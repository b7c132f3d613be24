"""The row files of a run: CSV and JSON Lines, written as rows arrive, locked, resumable, never corrupt.

    with Outputs("predictions.csv", json_path="rows.jsonl", resume=True) as out:
        done = out.begin(displays)      # inputs whose rows are kept; the rows of all others are dropped
        out.write(rows)                 # flushed now, fsynced every SYNC_ROWS rows or SYNC_SECONDS

What a crash can cost: at most the rows since the last sync, never a corrupt file: `resume` drops a
torn last record and re-does that input, as it re-does every input whose row is an error or does not
read back as one of ours. Outputs are held under an exclusive lock, so a second run writing the same
file is refused instead of interleaving its rows.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import BinaryIO, NamedTuple

from .atomic import CREATE, REPLACE, UPDATE, open_locked, replace_locked
from .decision import FIELDS, REJECTED, VERDICTS
from .errors import OutputError
from .inputs import identity
from .meta import LABELS

COLUMNS = ("path", *FIELDS, "error")  # a row: the input, its scored-image record, what went wrong
# The columns before the record had one vocabulary: read (and rewritten in COLUMNS) by --resume.
LEGACY_COLUMNS = ("path", "probability", "label", "status", "error", "ood_score", "threshold", "ood")
SCORED = ("ok", "rejected")  # statuses of rows that carry a probability
DONE_STATUSES = (*SCORED, "skipped")  # rows that resume keeps; "error" rows are re-tried
STDOUT = "-"  # as the CSV path: write the rows to standard output
SYNC_ROWS, SYNC_SECONDS = 256, 2.0

NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def spreadsheet_safe(cell: str) -> str:
    """Prefix a quote to text a spreadsheet would run as a formula (=, +, -, @, tab, CR); numbers stay numbers."""
    if cell and cell[0] in "=+-@\t\r" and not NUMBER.fullmatch(cell):
        return "'" + cell
    return cell


def _number(value) -> float | None:
    """A finite number from a cell (str in CSV, float in JSON), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    if isinstance(value, str) and not NUMBER.fullmatch(value):
        return None
    x = float(value)
    return x if math.isfinite(x) else None


def _valid_row(row: dict) -> bool:
    """A row as this project writes it: known status, and for a scored row a known label, a probability
    in [0, 1] and a known guard verdict. Anything else (a torn line, an edited cell) is re-done."""
    status = row.get("status")
    if not isinstance(row.get("path"), str) or not row["path"] or status not in (*DONE_STATUSES, "error"):
        return False
    if status not in SCORED:
        return True
    p = _number(row.get("probability"))
    label_ok = row.get("label") == REJECTED if status == "rejected" else row.get("label") in LABELS
    return label_ok and p is not None and 0.0 <= p <= 1.0 and row.get("guard_verdict") in VERDICTS


def upgrade(old: dict) -> dict:
    """A row in LEGACY_COLUMNS (ood_score, ood, the guard's reason in error) under today's names."""
    flag = old.get("ood")
    verdict = ("off" if flag in (None, "") or old.get("status") not in SCORED
               else "rejected" if flag in (True, "True") else "accepted")
    error = old.get("error") or None
    reason = None
    if old.get("status") == "rejected" and error and error.startswith("guard: "):
        reason, error = error[len("guard: "):], None
    label = old.get("label")
    return {"path": old.get("path"), "status": old.get("status"), "label": label,
            "model_label": label if label in LABELS else None, "probability": old.get("probability"),
            "threshold": old.get("threshold"), "guard_score": old.get("ood_score"), "guard_verdict": verdict,
            "guard_reason": reason, "model_sha256": None, "error": error}


def _physical_lines(text: str) -> list[str]:
    return re.findall(r"[^\n]*\n|[^\n]+", text)


class Record(NamedTuple):
    key: str  # the path as the file stores it
    status: str
    text: str  # the whole record, line end included, in COLUMNS
    model: str  # the model_sha256 it names ("" when none: error and skipped rows, legacy files)


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

    def parse(self, text: str) -> tuple[list[Record], int, bool]:
        """(complete records after the header, number of incomplete or malformed ones, whether the file is
        in LEGACY_COLUMNS: its records come back re-encoded in COLUMNS)."""
        lines = _physical_lines(text)
        reader = csv.reader(iter(lines))
        records, bad, used, columns = [], 0, 0, COLUMNS
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                break
            except csv.Error:
                fields = []
            chunk, used = "".join(lines[used:reader.line_num]), reader.line_num
            if not records and not bad and chunk.endswith("\n") and tuple(fields) in (COLUMNS, LEGACY_COLUMNS):
                columns = tuple(fields)
                continue  # the header
            complete = chunk.endswith("\n") and len(fields) == len(columns)
            row = dict(zip(columns, fields))
            if columns == LEGACY_COLUMNS and complete:
                row = {k: v for k, v in upgrade(row).items() if v is not None}
                chunk = self.encode([row])
            if complete and _valid_row(row):
                records.append(Record(row["path"], row["status"], chunk, row.get("model_sha256") or ""))
            else:
                bad += 1
        return records, bad, columns == LEGACY_COLUMNS


class JsonlFormat:
    name = "predictions JSON Lines"
    header = ""

    @staticmethod
    def key(display: str) -> str:
        return display

    @staticmethod
    def encode(rows: list[dict]) -> str:
        return "".join(json.dumps({c: r.get(c) for c in COLUMNS}) + "\n" for r in rows)

    def parse(self, text: str) -> tuple[list[Record], int, bool]:
        records, bad, legacy = [], 0, False
        for line in _physical_lines(text):
            row = self._row(line)
            if row is None:
                bad += 1
                continue
            if "ood_score" in row:  # LEGACY_COLUMNS
                row, legacy = upgrade(row), True
                line = self.encode([row])
            if _valid_row(row):
                records.append(Record(row["path"], row["status"], line, row.get("model_sha256") or ""))
            else:
                bad += 1
        return records, bad, legacy

    @staticmethod
    def _row(line: str) -> dict | None:
        if not line.endswith("\n"):
            return None  # torn: the crash came before its end
        try:
            row = json.loads(line)
        except ValueError:
            return None
        return row if isinstance(row, dict) else None


# How our files begin; anything else is someone else's file and is never rewritten.
_LEGACY_HEADER = ",".join(LEGACY_COLUMNS) + "\r\n"
SIGNATURES = {CsvFormat: tuple(h.replace("\r\n", end) for h in (CsvFormat.header, _LEGACY_HEADER) for end in ("\r\n", "\n")),
              JsonlFormat: ('{"path": ',)}


# ---------------------------------------------------------------- output files

class Output:
    """One output file, open and locked for the whole run; on resume, its complete records."""

    def __init__(self, path: Path, fmt: CsvFormat | JsonlFormat, how: str):
        self.path, self.fmt = path, fmt
        self.created = how == CREATE
        # REPLACE: checked and locked here, emptied by `start_over` once every output of the run is.
        self.file = open_locked(path, how, ours=SIGNATURES[type(fmt)], empty=False)
        self.records: list[Record] = []
        self.n_incomplete = 0
        try:
            if how == UPDATE:
                self._load()
            if how != REPLACE and self.file.tell() == 0:
                self.file.write(fmt.header.encode())
        except BaseException:
            self.file.close()
            raise

    def start_over(self) -> None:
        """--force: empty the file (already locked and checked to be ours) and write the header."""
        self.file.seek(0)
        self.file.truncate(0)
        self.file.write(self.fmt.header.encode())

    def _load(self) -> None:
        text = self.file.read().decode("utf-8", "surrogateescape")  # a torn multi-byte tail must not stop us
        if not any(text.startswith(sig) or sig.startswith(text) for sig in SIGNATURES[type(self.fmt)]):
            raise OutputError(f"'{self.path}' is not a {self.fmt.name} file; choose another path")
        self.records, self.n_incomplete, legacy = self.fmt.parse(text)
        if self.n_incomplete or legacy:
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
            if how == REPLACE:  # only once every output is open, locked and checked: one refusal empties none
                for o in self.outputs:
                    if not isinstance(o, StreamOutput):
                        o.start_over()
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

    def begin(self, displays: list[str], model_sha256: str | None = None) -> set[str]:
        """Inputs already done (a done row in every output); the rows of all others are dropped.

        Refused before anything is dropped when kept rows were scored by another model than `model_sha256`.
        """
        for o in self.outputs:
            other = next((r.model for r in o.records if r.model and model_sha256 and r.model != model_sha256), None)
            if other:
                raise OutputError(f"'{o.path}' holds rows scored by another model (sha256 {other[:12]}, this one "
                                  f"{model_sha256[:12]}); choose another path, or use --force to start it again")
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
