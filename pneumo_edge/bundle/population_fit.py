"""The population a bundle is for: the statement of its films, and the guard's image-based population check
fitted on films of another population and measured on patients it was not fitted on.

    r = stamp_population("export", data="../shared/data/chest_xray", others="../shared/data/site_nih", force=True)
    r["files"]["model.onnx"]["heldout"]["refused"]      # share of the held-out patients' films refused

The other population's folder (e.g. `site_nih`, adults) is split by patient with a fixed seed before any film
is scored: one part fits the check (`OTHERS_FIT`), the rest is only measured. The check's threshold lies half
way (in log-odds) between the bundle's own validation films (carved from train) and the fitting part's films
scored out of fold (`guardfit.fit_population`); the held-out patients' films never set it. The result
file (`population.json`) holds the split, each file's threshold, its validation refusal rates and its
refusal rate on the held-out patients.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from pneumo_edge.bundle.guardfit import (
    bundle_guard_images,
    fit_population,
    guarded_files,
    onnx_embedder,
    validation_rates,
)
from pneumo_edge.edge.atomic import write_json
from pneumo_edge.edge.errors import DataError
from pneumo_edge.edge.imaging import IMAGE_SUFFIXES
from pneumo_edge.edge.patients import PatientSource, patient_id
from pneumo_edge.edge.population import Population
from pneumo_edge.edge.progress import stage
from pneumo_edge.edge.sitecal import split_groups
from pneumo_edge.edge.stamp import stamp_checked
from pneumo_edge.train.data import Sample, decode_all

# What the Kermany films are. Kermany et al. (Cell 2018) selected the films "from retrospective cohorts of
# pediatric patients of one to five years old" at Guangzhou; no per-film age is published, so the range is the
# cohort's as stated, in completed years: 1 to 5 (a child of 5 years 11 months is inside; an infant under one
# year, or a child of six, is not: the model never saw one). Anterior-posterior views only.
HOME_DESCRIPTION = ("paediatric, anterior-posterior chest X-rays of children aged one to five years, "
                    "Guangzhou Women and Children's Medical Center, China (Kermany et al., Cell 2018)")
HOME_AGES = (1, 5)
HOME_VIEWS = ("AP",)
HOME_SOURCE = "Kermany et al. 2018 (Guangzhou Women and Children's Medical Center)"

SPLIT_SEED = 0  # the other population's patient split; fixed before any held-out film was scored
OTHERS_FIT = "the patients split_groups(ids, SPLIT_SEED) puts on its True side (half of them)"
RESULT = "population.json"
HELDOUT_GOAL = 0.95  # films of the held-out patients refused


def _patients(samples: list[Sample]) -> int | None:
    ids = [patient_id(s.name) for s in samples]
    return len(set(ids)) if ids and all(ids) else None


def home_statement(train: list[Sample], val: list[Sample]) -> dict:
    """The population statement of a bundle trained on the Kermany films (`BundleMeta.population`)."""
    return Population.from_meta({
        "description": HOME_DESCRIPTION, "age_years": list(HOME_AGES), "views": list(HOME_VIEWS),
        "sources": [{"name": f"{HOME_SOURCE}: training films", "films": len(train), "patients": _patients(train)},
                    {"name": f"{HOME_SOURCE}: validation films carved from train (threshold, guard)",
                     "films": len(val), "patients": _patients(val)}]}).to_meta()


@dataclass
class OthersSplit:
    folder: str
    fit: list[Sample]
    heldout: list[Sample]
    patients_fit: int
    patients_heldout: int
    views: dict[str, str]  # file name -> view (AP/PA) from a metadata.csv beside the films; {} without one
    fit_ids: list[str] = field(default_factory=list)  # the patient of each fitting film

    def fit_groups(self) -> np.ndarray:
        """The patient of each film `others_views` returns for fitting: the films, then their flips."""
        return np.array(self.fit_ids * 2)

    def about(self) -> str:
        return (f"inside: the model's training films; outside: {len(self.fit)} films of {self.patients_fit} "
                f"patients of {Path(self.folder).name} ({OTHERS_FIT}), and their left-right flips")

    def to_dict(self) -> dict:
        return {"folder": self.folder, "split_seed": SPLIT_SEED, "rule": f"by patient: fit = {OTHERS_FIT}",
                "fit": {"films": len(self.fit), "patients": self.patients_fit},
                "heldout": {"films": len(self.heldout), "patients": self.patients_heldout}}


def _views(source: PatientSource, files: list[Path]) -> dict[str, str]:
    """File name -> view (AP/PA) where the folder's table names it."""
    if source.table is None:
        return {}
    views = {p.name: source.table.value(p, ("view_position", "view")) for p in files}
    return {k: v for k, v in views.items() if v}


def others_split(folder: str | Path, seed: int = SPLIT_SEED) -> OthersSplit:
    """The other population's films, split by patient (every film must name its patient) before any is scored."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"'{root}' is not a folder")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"'{root}' holds no image files")
    source = PatientSource.for_folder(root)  # a patients.csv / metadata.csv beside the films, else the names
    ids = [source.patient(p) for p in files]
    if None in ids:
        raise DataError(f"'{files[ids.index(None)].name}' names no patient: the split must keep each patient's "
                        "films together")
    fit = split_groups(np.array(ids), seed)
    samples = [Sample(name=p.name, label=0, path=str(p)) for p in files]
    return OthersSplit(str(root), [s for s, k in zip(samples, fit) if k], [s for s, k in zip(samples, fit) if not k],
                       len({i for i, k in zip(ids, fit) if k}), len({i for i, k in zip(ids, fit) if not k}),
                       _views(source, files), [i for i, k in zip(ids, fit) if k])


def others_views(split: OthersSplit, spec, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(fitting films and their left-right flips, held-out films) as model views (uint8, N x S x S)."""
    fit, _, bad = decode_all(split.fit, spec.size, progress=progress, rule=spec.resize)
    heldout, _, bad_heldout = decode_all(split.heldout, spec.size, progress=progress, rule=spec.resize)
    if bad or bad_heldout:
        first = (bad or bad_heldout)[0]
        raise DataError(f"{len(bad) + len(bad_heldout)} film(s) of the other population could not be read, e.g. "
                        f"{first[0]}: {first[1]}")
    return np.concatenate([fit, np.ascontiguousarray(fit[:, :, ::-1])]), heldout


def heldout_rates(guard, embed, heldout: np.ndarray, split: OthersSplit) -> dict:
    """The held-out patients' films refused by the whole guard and by the population check alone, overall and
    per view where a metadata.csv names it. These films are read only after every threshold is fixed."""
    emb = embed(heldout)
    checks = guard.check_scores(heldout, emb)
    refused = guard.rejects(np.maximum.reduce(list(checks.values())))
    by_check = guard.rejects(checks["population"])
    views = np.array([split.views.get(s.name, "") for s in split.heldout])
    out = {"films": int(len(heldout)), "patients": split.patients_heldout, "refused": float(refused.mean()),
           "refused_by_population_check": float(by_check.mean()), "goal": HELDOUT_GOAL, "by_view": {}}
    for v in sorted(set(views.tolist()) - {""}):
        out["by_view"][v] = {"films": int((views == v).sum()), "refused": float(refused[views == v].mean())}
    return out


def population_report(split: OthersSplit, statement: dict) -> dict:
    return {"statement": statement, "others": split.to_dict(), "files": {}}


def stamp_population(bundle: str | Path, data: str, others: str | Path, force: bool = False,
                     progress: bool = True) -> dict:
    """State the bundle's population and fit the guard's population check into each ONNX file, in place
    (graph bytes and outputs checked unchanged first); measure it on the held-out patients; write RESULT.
    For bundles exported before the check existed; `export --population-others` fits it with the guard."""

    models = guarded_files(bundle, force, "population")
    spec = next(iter(models.values())).spec
    split = others_split(others)  # split before anything is scored
    images, train_s, val_s = bundle_guard_images(bundle, data, spec, "guard-population", progress)
    stage("guard-population", f"decoding {len(split.fit)} fitting and {len(split.heldout)} held-out films of "
                              f"{Path(split.folder).name}")
    outside, heldout = others_views(split, spec, progress)
    report = population_report(split, home_statement(train_s, val_s))
    for f, model in models.items():
        stage("guard-population", f"{f.name}: fitting the check, then validation and held-out refusal rates")
        embed = onnx_embedder(model)
        e_val = {"clean": embed(images.val)} | {k: embed(v) for k, v in images.val_shifted.items()}
        inside = np.concatenate([embed(images.train), embed(images.train_companion)])
        head = fit_population(inside, embed(outside), np.concatenate(list(e_val.values())), split.about(),
                              split.fit_groups())
        guard = replace(model.guard, population=head)
        rates = validation_rates(guard, embed, images, e_val)
        # the drift reference binned the old guard's scores: dropped, not left stale (monitor-reference refits it)
        stamp_checked(f, f, replace(model.meta, ood=guard.to_meta() | {"validation_rejected": rates}, monitor=None,
                                    population=report["statement"]), images.val[:64])
        report["files"][f.name] = {"threshold": head.threshold, "percentile": head.percentile, "rule": head.rule,
                                   "validation_rejected": rates, "heldout": heldout_rates(guard, embed, heldout, split)}
    write_json(Path(bundle) / RESULT, report)
    return report
