"""What `infer` prints: one line per input, the summary line, and the exit rule.

    printer = RowPrinter(say, verbose=False)    # say: a print function (stderr when rows go to stdout)
    ...predict_paths(..., echo=printer)...
    printer.flush(); for line, err in summary(s, ...): ...; code = exit_code(s, model.labels)
"""

from __future__ import annotations

from typing import Callable

from .infer import EXIT_SOME_FAILED
from .inputs import printable
from .outputs import SCORED

SHOW_ROWS = 20  # infer prints one line per input up to this many without -v


def row_line(row: dict) -> str:
    path = printable(row["path"])
    if row["status"] in SCORED:
        score = f"  guard {row['guard_score']:.4f}" if row.get("guard_score") is not None else ""
        why = row.get("guard_reason") or row.get("error")
        return f"{row['label']:<13} p={row['probability']:.4f}{score}  {path}" + (f"  ({printable(why)})" if why else "")
    return f"{row['status'].upper():<13} {printable(row['error'])}  {path}"


class RowPrinter:
    """Prints each row as it comes with verbose; else holds the first few and prints them at the end if few."""

    def __init__(self, say: Callable[[str], None], verbose: bool, limit: int = SHOW_ROWS):
        self.say, self.verbose, self.limit, self.held = say, verbose, limit, []

    def __call__(self, row: dict) -> None:
        if self.verbose:
            self.say(row_line(row))
        elif len(self.held) <= self.limit:
            self.held.append(row)

    def flush(self) -> None:
        for row in self.held if len(self.held) <= self.limit else ():
            self.say(row_line(row))


def summary(s, where: str, heatmaps: str | None, labels: tuple[str, ...]) -> list[tuple[str, bool]]:
    """The summary lines of a run, each with whether it belongs on stderr."""
    counts = ", ".join(f"{k} {v}" for k, v in sorted(s.counts.items())) or "nothing"
    notes = [f"{s.n_skipped_resume} already done" if s.n_skipped_resume else "",
             f"{s.n_duplicates} duplicate(s) ignored" if s.n_duplicates else "",
             f"{s.n_incomplete} incomplete row(s) re-done" if s.n_incomplete else ""]
    lines = [(f"{s.n_files} inputs: {counts}" + "".join(f"; {n}" for n in notes if n)
              + f"; {s.images_per_s:.1f} images/s. Rows in {where}"
              + (f"; heat maps in {printable(str(heatmaps))}" if heatmaps else ""), False)]
    if s.n_failed or s.n_old_errors:
        old = f" (and {s.n_old_errors} error row(s) from earlier runs)" if s.n_old_errors else ""
        lines.append((f"{s.n_failed} file(s) could not be classified{old}: see the 'error' column; "
                      "--resume re-tries them", True))
    if nothing_classified(s, labels):
        lines.append(("nothing was classified: every input was skipped, rejected by the guard or failed", True))
    return lines


def nothing_classified(s, labels: tuple[str, ...]) -> bool:
    return not any(s.counts[label] for label in labels) and not s.n_skipped_resume


def exit_code(s, labels: tuple[str, ...]) -> int:
    """0 when every input was classified; 1 when error rows remain or nothing at all was classified."""
    return EXIT_SOME_FAILED if (s.n_failed or s.n_old_errors or nothing_classified(s, labels)) else 0
