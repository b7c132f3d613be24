"""The drift monitor's reference in a bundle, and the monitor replayed offline over `infer` rows.

    stamp_references("export", data="../shared/data/chest_xray", force=True)   # pneumo-edge monitor-reference
    report = monitor_rows("rows.csv", model="export/model.onnx", out="monitor.png")  # pneumo-edge monitor

`stamp_references` scores the bundle's validation films (carved from train as the checkpoint was) with each
ONNX file, fits that file's reference and alarm band (`edge.monitor.fit_reference`, validation only) and
restamps the file's metadata with it (`edge.stamp`: the graph bytes are copied, not re-serialised). Before a
file is replaced it checks that the graph bytes are identical and that both files give bit-identical
outputs on validation films. It is re-runnable: run it again after anything rewrites export/*.onnx.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from pneumo_edge.edge.api import MODEL_FILES, resolve_model
from pneumo_edge.edge.atomic import refuse_existing, write_json, write_with
from pneumo_edge.edge.errors import DataError, ModelError
from pneumo_edge.edge.model import EdgeModel
from pneumo_edge.edge.monitor import Monitor, fit_reference, replay
from pneumo_edge.edge.outputs import SCORED, upgrade
from pneumo_edge.edge.progress import stage
from pneumo_edge.edge.stamp import stamp_checked
from pneumo_edge.site.validate import score_files
from pneumo_edge.train.data import Sample, decode_all, rebuild_split

CHECK_IMAGES = 64  # validation films both files must score bit for bit the same


@dataclass
class _Cfg:  # what validate.score_files reads
    batch_size: int = 16
    workers: int | None = None
    progress: bool = True


def validation_paths(bundle: Path, data: str) -> list[str]:
    """The files of the validation split the bundle's checkpoint was carved with."""
    from pneumo_edge.train.checkpoint import (
        parse_config,  # torch: training side only, kept off the light install
    )

    config_file = bundle / "config.json"
    if not config_file.is_file():
        raise ModelError(f"'{bundle}' has no config.json: its validation split cannot be rebuilt")
    config = parse_config(json.loads(config_file.read_text()), str(config_file))
    _, _, val, _ = rebuild_split(config, data)
    if any(s.path is None for s in val):
        raise DataError("the validation films must be local files (give --data a local folder)")
    return [s.path for s in val]


def score_paths(model: EdgeModel, paths: list[str], progress: bool = True) -> dict[str, np.ndarray]:
    """Probability, guard score, decided label and refusal of each readable file, through the edge path."""
    use_guard = model.guard is not None
    scored, _ = score_files(paths, model, use_guard, _Cfg(progress=progress))
    records = [scored[f] for f in paths if f in scored]
    return {"paths": [f for f in paths if f in scored], "probability": np.array([r.probability for r in records]),
            "guard_score": np.array([r.guard_score for r in records]) if use_guard else None,
            "label": np.array([r.label for r in records]), "rejected": np.array([r.rejected for r in records], bool)}


def _check_films(paths: list[str], spec) -> np.ndarray:
    x, _, _ = decode_all([Sample(name=Path(p).name, label=0, path=p) for p in paths], spec.size,
                         progress=False, rule=spec.resize)
    return np.asarray(x)


def stamp_references(bundle: str | Path, data: str, out: str | Path | None = None, force: bool = False,
                     progress: bool = True) -> dict:
    """Fit and stamp each ONNX file's monitoring reference; in place (needs force) or into `out`."""

    bundle = Path(bundle)
    target = Path(out) if out else bundle
    files = [bundle / n for n in MODEL_FILES if (bundle / n).is_file()]
    if not files:
        raise ModelError(f"'{bundle}' holds none of {', '.join(MODEL_FILES)}")
    if target == bundle and not force:
        raise DataError(f"this rewrites the metadata of the ONNX files in '{bundle}' in place: add --force "
                        "(or give --out)")
    if target != bundle:
        for f in files:
            refuse_existing(target / f.name, force)
    paths = validation_paths(bundle, data)
    report = {"bundle": str(bundle), "validation_films": len(paths), "files": {}}
    for f in files:
        stage("monitor-reference", f"{f.name}: scoring {len(paths)} validation films")
        model = EdgeModel(f)
        s = score_paths(model, paths, progress)
        positive = s["label"] == model.meta.labels[1]
        ref = fit_reference(s["probability"], s["guard_score"], positive, s["rejected"],
                            fitted_on=f"validation carved from train ({len(s['paths'])} films)")
        stamp_checked(f, target / f.name, replace(model.meta, monitor=ref.to_meta()),
                      _check_films(paths[:CHECK_IMAGES], model.spec))
        report["files"][f.name] = {"graph_bytes_identical": True, "outputs_bit_identical_on": CHECK_IMAGES,
                                   **ref.to_meta()}
    return report


# ---------------------------------------------------------------- offline: infer rows

def read_infer_rows(path: str | Path) -> list[dict]:
    """`infer`'s rows from a CSV file or a Parquet file/dataset folder, in file order."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    if path.is_dir():  # the Ray engine's dataset: its own reader of part files
        from pneumo_edge.edge.cluster import read_rows

        return read_rows(path)
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    raise DataError(f"'{path}': give infer's CSV (.csv) or Parquet (.parquet) output")


def _scored(rows: list[dict]) -> list[tuple[float, float | None, str, bool]]:
    out = []
    for r in rows:
        r = upgrade(r) if "ood_score" in r else r  # a file written before the scored-image columns
        if r.get("status") not in SCORED:
            continue  # errors and skipped inputs carry no score
        g = r.get("guard_score")
        out.append((float(r["probability"]), None if g in (None, "") else float(g), str(r["label"]),
                    r["status"] == "rejected"))
    return out


def monitor_rows(rows_file: str | Path, model: str | None, out: str | Path, force: bool = False) -> dict:
    """Replay the monitor over infer rows in order; write the PNG (and a JSON beside it)."""

    out = Path(out)
    refuse_existing(out, force)
    refuse_existing(out.with_suffix(".json"), force)
    edge = EdgeModel(resolve_model(model), threads=1)
    rows = _scored(read_infer_rows(rows_file))
    if not rows:
        raise DataError(f"'{rows_file}' holds no scored rows (status ok or rejected)")
    mon = Monitor.for_model(edge)
    trace = replay(mon, rows)
    plot_trace(trace, mon, out, f"{Path(rows_file).name}, {edge.path.name}")
    summary = {"rows_file": str(rows_file), "model": str(edge.path), "images": len(rows), **mon.snapshot(),
               "first_alarm_at": next((i + 1 for i, t in enumerate(trace) if t["alarm"]), None),
               "plot": str(out)}
    summary.pop("bins", None)
    write_json(out.with_suffix(".json"), summary)
    return summary


def plot_trace(trace: list[dict], mon: Monitor, out: Path, title: str, marks: dict[str, int] | None = None) -> Path:
    """One PNG: positive and refusal rates over the window, and the drift statistic with its alarm band."""
    import matplotlib  # matplotlib: the [plots] extra, only when drawing

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # matplotlib: the [plots] extra, only when drawing

    x = np.arange(1, len(trace) + 1)
    fig, (rates, drift) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    rates.plot(x, [t["positive_rate"] for t in trace], label="positive rate (window)")
    rates.plot(x, [t["refusal_rate"] for t in trace], label="guard refusal rate (window)")
    ref = mon.reference
    if ref is not None:
        rates.axhline(ref.positive_rate, ls=":", c="C0", label="positive rate, validation")
        rates.axhline(ref.refusal_rate, ls=":", c="C1", label="refusal rate, validation")
        stat = np.array([np.nan if t["statistic"] is None else t["statistic"] for t in trace])
        drift.plot(x, stat, c="k", label="drift statistic (max PSI)")
        band = mon.band() or ref.alarm_threshold
        drift.axhspan(band, max(band * 1.05, np.nanmax(stat) if np.isfinite(stat).any() else band) * 1.05,
                      color="red", alpha=0.12, label=f"alarm band (> {band:.3f}; {ref.false_alarm_rate:.0%} false "
                                                     f"alarms per {ref.stream_images} images)")
        alarm = np.array([t["alarm"] for t in trace])
        if alarm.any():
            drift.scatter(x[alarm], stat[alarm], s=4, c="red", label="alarm on")
    else:
        drift.text(0.5, 0.5, "no monitoring reference in this model file: drift statistic unavailable",
                   ha="center", va="center", transform=drift.transAxes)
    for name, at in (marks or {}).items():
        for ax in (rates, drift):
            ax.axvline(at, c="grey", lw=0.8)
        rates.text(at, 1.02, name, fontsize=7, rotation=30, va="bottom")
    rates.set_ylim(0, 1)
    rates.set_ylabel("share of images")
    rates.legend(fontsize=7, loc="center right")
    drift.set_ylabel("PSI")
    drift.set_xlabel("images scored")
    drift.legend(fontsize=7, loc="upper left")
    fig.suptitle(f"drift monitor, window {mon.window}: {title}", fontsize=9)
    fig.tight_layout()
    write_with(out, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return out
