"""The files of a bundle, listed in one place: what `export` and `bundle` write there, and the reports the
make targets add (guard-report for the INT8 file, seeds). `push` uploads these and nothing else it finds in
the folder (stray heat maps, predictions, notes).

A bundle trained on hospital data shows that hospital's patients wherever it shows films: those files are
marked `patient_images` and stay off the hub unless the uploader says otherwise. The model card's own pictures
go up with it (plots, and the heat-map sheet `make heatmap-sheet` draws on the demo films committed in
examples/xrays, public films that ship with the source), so the card on the hub shows no broken image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pneumo_edge.edge.targets import CARD, CONFIG, PARITY, RESULTS, TARGETS, WEIGHTS


@dataclass(frozen=True)
class BundleFile:
    name: str  # path inside the bundle folder
    written_by: str
    required: bool = False  # a bundle without it is incomplete
    patient_images: bool = False  # shows patients' films


BUNDLE_FILES = (
    *(BundleFile(t.file, "export", required=True) for t in TARGETS),
    BundleFile(WEIGHTS, "export", required=True),
    BundleFile(CONFIG, "export", required=True),
    BundleFile(RESULTS, "export", required=True),
    BundleFile(PARITY, "export", required=True),
    BundleFile("parity.md", "export"),
    BundleFile(CARD, "export, bundle (the model card)", required=True),
    BundleFile("report.md", "bundle"),
    BundleFile("confusion_matrix.png", "bundle"),
    BundleFile("roc.png", "bundle"),
    BundleFile("reliability.png", "bundle"),
    BundleFile("train_results.json", "bundle"),
    BundleFile("guard.json", "bundle"),
    BundleFile("guard.md", "bundle"),
    BundleFile("guard.int8.json", "guard-report (make guard-report)"),
    BundleFile("guard.int8.md", "guard-report (make guard-report)"),
    BundleFile("seeds.json", "seeds (make seeds)"),
    BundleFile("heatmaps/contact_sheet.png", "make heatmap-sheet (the card's picture: the shipped heat map on the "
                                             "committed demo films in examples/xrays)"),
    BundleFile("gradcam/contact_sheet.png", "bundle (test films with heat maps)", patient_images=True),
)
BY_NAME = {f.name: f for f in BUNDLE_FILES}


def required_names() -> list[str]:
    return [f.name for f in BUNDLE_FILES if f.required]


def present(bundle: Path) -> list[BundleFile]:
    """The manifest's files that this bundle holds (regular files only)."""
    return [f for f in BUNDLE_FILES if (bundle / f.name).is_file() and not (bundle / f.name).is_symlink()]
