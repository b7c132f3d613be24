"""Carry a bundle to a new site: a new classifier head fitted on the site's films, a guaranteed threshold.

    r = run_head_refit(AdaptConfig(folder="site_xrays", model="export", out="site_bundle", site="ward 3",
                                   data="../shared/data/chest_xray"))

The site's folder is laid out as `validate` reads it (NORMAL/, PNEUMONIA/), its patients named as
`edge.patients` says (a table beside the films, --patient-pattern, or the file names). Before anything is
scored, its patients are split with a fixed seed into three parts: `fit` (the head, and the guard's refit),
`calibrate` (the threshold, by calibrate's guarantee rule, and the drift reference) and `held-out` (the
report). The head refit runs on the edge install (numpy and onnxruntime): the embeddings come from the
ONNX files, a logistic head is fitted in numpy (`headfit`, its L2 chosen on an inner split of the fitting
part by patient) and written over the final layer of both ONNX files (`edge.head`): every other byte of
each graph is the parent's. With `data` (the home training data, as `train` takes it; needs the [train]
extra to rebuild the parent's split) home training films are replayed in the head's fit so the bundle
keeps working at home, and the home validation films measure that it does. `fine_tune` (the [train] extra)
fine-tunes the PyTorch twin instead (`adapt_tune`).
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from pneumo_edge.edge.api import resolve_model
from pneumo_edge.edge.atomic import prepare_out_dir, write_json, write_text, write_with
from pneumo_edge.edge.decision import PROB_DIGITS, positive
from pneumo_edge.edge.errors import DataError, ModelError
from pneumo_edge.edge.head import (
    Head,
    body_without_head,
    read_head,
    twin_with_head,
    with_head,
)
from pneumo_edge.edge.imaging import normalize, resize_gray
from pneumo_edge.edge.infer import decoded_batches
from pneumo_edge.edge.inputs import display_path
from pneumo_edge.edge.model import EdgeModel, prob_from_logits
from pneumo_edge.edge.monitor import fit_reference
from pneumo_edge.edge.patients import PatientSource
from pneumo_edge.edge.progress import stage
from pneumo_edge.edge.runtime import file_sha256
from pneumo_edge.edge.sitecal import guaranteed_threshold
from pneumo_edge.edge.stamp import restamped
from pneumo_edge.edge.targets import CONFIG, MODEL_FILES, WEIGHTS
from pneumo_edge.site.adaptreport import (
    CARD_SECTION,
    PARTS,
    REPORT,
    measure,
    render_card,
)
from pneumo_edge.site.calibrate import RULE
from pneumo_edge.site.headfit import L2_GRID, Logistic, choose_l2, fit_logistic
from pneumo_edge.site.probes import alterations, ood_images
from pneumo_edge.site.siteguard import REFITTED, GuardFit, refit_guard
from pneumo_edge.site.validate import labelled_files, resampling_groups
from pneumo_edge.train.data import rebuild_split

VIEW_COLUMNS, AGE_COLUMNS = ("view_position", "view"), ("patient_age", "age")
REPLAY_PER_FIT_FILM = 2  # home training films replayed per site fitting film ...
REPLAY_SHARE = 0.25  # ... weighing this fraction of the site's films, all together
BATCH = 32


@dataclass
class AdaptConfig:
    folder: str
    model: str | None = None  # a bundle folder holding model.onnx (and model.int8.onnx); None: the shipped one
    out: str = "site_bundle"
    site: str | None = None  # a label for the site; default: the folder's name
    data: str | None = None  # home data (as `train --data`): replay and home validation; needs [train]
    fine_tune: bool = False  # fine-tune the PyTorch twin (needs [train] and --data)
    seed: int = 0  # the patient split's seed
    fit_fraction: float = 0.5  # of the patients (in each stratum: with a PNEUMONIA film, without)
    calibrate_fraction: float = 0.3  # the rest is held out
    target_sensitivity: float = 0.95
    confidence: float = 0.90
    n_bootstrap: int = 1000
    patient_pattern: str | None = None
    batch_size: int = BATCH
    workers: int | None = None
    force: bool = False
    progress: bool = False

    def __post_init__(self) -> None:
        f, c = self.fit_fraction, self.calibrate_fraction
        if not (0 < f < 1 and 0 < c < 1 and f + c < 1):
            raise DataError(f"the fit and calibrate fractions must be in (0, 1) and leave patients held out, "
                            f"got {f:g} and {c:g}")


@dataclass
class Site:
    """The site's readable films in a fixed order, with what the split and the report need."""

    root: Path
    name: str
    paths: list[str]
    y: np.ndarray
    groups: np.ndarray  # patient per film ("film k" where none is named)
    views: np.ndarray  # AP / PA / ... from the site's table; "unknown" where absent
    ages: list[float]
    part: np.ndarray  # index into PARTS
    x: np.ndarray  # uint8 model views (N, S, S)
    chroma: np.ndarray
    unit: str  # what the split moved: "patients", or "films" when no film names its patient
    ids_from: str
    unreadable: list = field(default_factory=list)
    not_scored: list = field(default_factory=list)

    def mask(self, part: str) -> np.ndarray:
        return self.part == PARTS.index(part)

    def counts(self, mask: np.ndarray) -> dict:
        y, g = self.y[mask], self.groups[mask]
        return {"films": int(mask.sum()), "patients": len(set(g.tolist())), "pneumonia_films": int(y.sum()),
                "pneumonia_patients": len(set(g[y == 1].tolist()))}


def split_patients(groups: np.ndarray, y: np.ndarray, fractions: tuple[float, float], seed: int) -> np.ndarray:
    """The part (index into PARTS) of each film: patients shuffled with `seed` within two strata (those with a
    PNEUMONIA film, the others) and dealt by `fractions` (fit, calibrate), the rest held out. Labels and
    names only: nothing has been scored."""
    part_of: dict[str, int] = {}
    positive = set(groups[y == 1].tolist())
    rng = np.random.default_rng(seed)
    for stratum in (sorted(positive), sorted(set(groups.tolist()) - positive)):
        order = rng.permutation(len(stratum))
        a = round(fractions[0] * len(stratum))
        b = a + round(fractions[1] * len(stratum))
        for rank, i in enumerate(order):
            part_of[stratum[i]] = 0 if rank < a else 1 if rank < b else 2
    return np.array([part_of[g] for g in groups.tolist()], int)


def _decode(paths: list[str], model: EdgeModel, cfg: AdaptConfig) -> tuple[list[str], np.ndarray, np.ndarray, list]:
    kept, x, chroma, bad = [], [], [], []
    for batch in decoded_batches(paths, model, cfg.batch_size, cfg.workers):
        for path, dec, err in batch:
            if err is None:
                kept.append(path)
                x.append(dec[0])
                chroma.append(dec[1])
            else:
                bad.append({"path": display_path(path), "error": err})
    size = model.spec.size
    return kept, np.stack(x) if x else np.zeros((0, size, size), np.uint8), np.array(chroma, np.float64), bad


def load_site(cfg: AdaptConfig, model: EdgeModel) -> Site:
    """The site's films, patients, views and ages, split by patient, decoded to model views."""
    root, files, truth, skipped = labelled_files(cfg.folder, None, model.labels)
    source = PatientSource.for_folder(root, cfg.patient_pattern)
    label_of = dict(zip(files, truth))
    paths, x, chroma, bad = _decode(files, model, cfg)
    ids = [source.patient(p) for p in paths]
    groups = np.array([i if i is not None else f"film {k}" for k, i in enumerate(ids)])
    y = np.array([label_of[p] for p in paths], int)
    table = source.table
    views = np.array([(table.value(p, VIEW_COLUMNS) if table else None) or "unknown" for p in paths])
    ages = []
    for p in paths:
        v = table.value(p, AGE_COLUMNS) if table else None
        try:
            ages.append(float(v))
        except (TypeError, ValueError):
            pass
    unit = "films" if all(i is None for i in ids) else "patients"
    part = split_patients(groups, y, (cfg.fit_fraction, cfg.calibrate_fraction), cfg.seed)
    return Site(root=root, name=cfg.site or root.resolve().name, paths=paths, y=y, groups=groups, views=views,
                ages=ages, part=part, x=x, chroma=chroma, unit=unit, ids_from=source.describe(), unreadable=bad,
                not_scored=skipped)


def outputs(model: EdgeModel, x: np.ndarray, batch: int = BATCH) -> dict[str, np.ndarray]:
    """The file's logits and embedding of uint8 model views."""
    runs = [model.run(normalize(np.ascontiguousarray(x[i:i + batch]), model.spec), ["logits", "embedding"])
            for i in range(0, len(x), batch)]
    if not runs:
        return {"logits": np.zeros((0, len(model.labels)), np.float32), "embedding": np.zeros((0, 0), np.float32)}
    return {k: np.concatenate([r[k] for r in runs]) for k in ("logits", "embedding")}


def embedder(model: EdgeModel):
    return lambda x: outputs(model, x)["embedding"]


def onnx_head(h: Logistic) -> Head:
    """Two-class logits whose difference is the head's log-odds: softmax(logits / 1)[1] = sigmoid(margin)."""
    w = np.asarray(h.weights, np.float64) / 2
    return Head(weight=np.stack([-w, w]).astype(np.float32), bias=np.array([-h.bias / 2, h.bias / 2], np.float32))


def probability(logits: np.ndarray) -> np.ndarray:
    """As the edge decides with temperature 1: rounded to PROB_DIGITS."""
    return np.round(prob_from_logits(logits, 1.0), PROB_DIGITS)


def bundle_files(source: str | None) -> list[Path]:
    """The ONNX files of the parent bundle, the fp32 reference first."""
    folder = Path(source) if source is not None and Path(source).is_dir() else resolve_model(source).parent
    found = [folder / n for n in MODEL_FILES if (folder / n).is_file()]
    if not found or found[0].name != MODEL_FILES[0]:
        raise ModelError(f"'{folder}' holds no {MODEL_FILES[0]}: adapt needs a bundle folder")
    return found


@dataclass
class Home:
    """Home films (carved from train as the parent's checkpoint was): replayed in the fit, and validation."""

    replay_x: np.ndarray
    replay_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    val_groups: np.ndarray
    n_train: int
    samples: dict = field(default_factory=dict)  # "train", "replay", "val": the data.Sample lists


def load_home(bundle: Path, data: str, n_replay: int, model: EdgeModel, cfg: AdaptConfig) -> Home:
    """A random `n_replay` of the parent's training films and all its validation films, decoded."""
    from pneumo_edge.train.checkpoint import (
        parse_config,  # torch: training side only, kept off the light install
    )

    config_file = bundle / "config.json"
    if not config_file.is_file():
        raise ModelError(f"'{bundle}' has no config.json: its home training and validation films cannot be rebuilt")
    _, train, val, _ = rebuild_split(parse_config(json.loads(config_file.read_text()), str(config_file)), data)
    if any(s.path is None for s in [*train, *val]):
        raise DataError("the home films must be local files (give --data a local folder)")
    rng = np.random.default_rng(cfg.seed)
    replay = [train[i] for i in sorted(rng.choice(len(train), min(n_replay, len(train)), replace=False).tolist())]
    label_of = {s.path: s.label for s in [*replay, *val]}
    rp, rx, _, _ = _decode([s.path for s in replay], model, cfg)
    vp, vx, _, _ = _decode([s.path for s in val], model, cfg)
    return Home(replay_x=rx, replay_y=np.array([label_of[q] for q in rp], int), val_x=vx,
                val_y=np.array([label_of[q] for q in vp], int), val_groups=resampling_groups(vp)[0],
                n_train=len(train), samples={"train": train, "replay": replay, "val": val})


def fit_head(emb: np.ndarray, site: Site, home_emb: np.ndarray | None, home_y: np.ndarray | None) -> tuple:
    """The site's head on the fitting part's embeddings (and replayed home films): (Logistic, choice)."""
    fit = site.mask("fit")
    x, y, groups = emb[fit].astype(np.float64), site.y[fit], site.groups[fit]
    if len(np.unique(y)) < 2:
        raise DataError("the fitting part holds films of one class only: the site needs more patients of each")
    extra = None
    if home_emb is not None and len(home_emb):
        w = np.full(len(home_emb), REPLAY_SHARE * len(y) / len(home_emb))
        extra = (home_emb.astype(np.float64), home_y, w)
    l2, scores = choose_l2(x, y, groups, L2_GRID, seed=0, extra=extra)
    xs, ys, ws = x, y, np.ones(len(y))
    if extra is not None:
        xs, ys, ws = np.r_[xs, extra[0]], np.r_[ys, extra[1]], np.r_[ws, extra[2]]
    head = fit_logistic(xs, ys, l2, ws)
    return head, {"l2": l2, "grid": list(L2_GRID), "inner_auc": {str(k): v for k, v in scores.items()},
                  "inner_split": "5 folds of the fitting part's patients (seed 0)",
                  "replayed_home_films": 0 if extra is None else len(home_emb),
                  "replay_weight_share": REPLAY_SHARE if extra is not None else 0.0}


def parent_population(meta) -> dict | None:
    return meta.population


def site_source(site: Site) -> dict:
    views = sorted({v for v in site.views.tolist() if v != "unknown"})
    return {"name": site.name, "films": len(site.paths), "patients": len(set(site.groups.tolist())),
            "age_years": [min(site.ages), max(site.ages)] if site.ages else None, "views": views}


def adapted_population(parent: dict | None, site: Site, kept_home: bool) -> dict:
    """The parent's population plus the site's films, or the site's alone when home films were not replayed."""
    s = site_source(site)
    ages = f"ages {s['age_years'][0]:g}-{s['age_years'][1]:g} years" if s["age_years"] else "ages not stated"
    words = (f"{s['name']}: {s['films']} films of {s['patients']} patients, {ages}, "
             f"views {', '.join(s['views']) or 'not stated'}")
    sources = [{k: s[k] for k in ("name", "films", "patients")}]
    if not kept_home:
        return {"description": f"{words} (the head was refitted without home films: the parent's population is "
                               "not kept)", "age_years": s["age_years"], "views": s["views"], "sources": sources}
    parent = parent or {}
    spans = [a for a in (parent.get("age_years"), s["age_years"]) if a]
    return {"description": f"{parent.get('description', 'the parent bundle population')}; and {words}",
            "age_years": [min(a[0] for a in spans), max(a[1] for a in spans)] if spans else None,
            "views": sorted(set(parent.get("views", [])) | set(s["views"])),
            "sources": [*parent.get("sources", []), *sources]}


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _elapsed(t0: float) -> float:
    return round(time.perf_counter() - t0, 2)


def write_candidate(src: Path, head: Head, out: Path) -> Path:
    """`src` with the new head and its parent's metadata, beside the final file; checked byte for byte."""
    candidate = out / f".{src.name}.candidate"
    body = with_head(src, head)
    write_with(candidate, lambda tmp: Path(tmp).write_bytes(body))
    if body_without_head(candidate) != body_without_head(src):
        raise ModelError(f"{src.name}: writing the head changed other bytes of the graph; nothing written")
    return candidate


def finish_file(candidate: Path, final: Path, meta) -> None:
    """The candidate's bytes with the new metadata, written atomically to `final`."""
    body = restamped(candidate, meta)
    write_with(final, lambda tmp: Path(tmp).write_bytes(body))


def threshold_for(p: np.ndarray, site: Site, accepted: np.ndarray, cfg: AdaptConfig):
    """Calibrate's rule on the calibration part's films the new guard accepts: positive patients, each by its
    lowest film (films where no patient is named)."""
    cal = site.mask("calibrate") & accepted & (site.y == 1)
    t = guaranteed_threshold(p[cal], cfg.target_sensitivity, cfg.confidence, site.groups[cal])
    if not t.ok:
        raise DataError(f"the calibration part has {t.n_positive} PNEUMONIA {t.unit} the guard accepts; a "
                        f"sensitivity of {cfg.target_sensitivity:g} at {cfg.confidence:g} confidence needs at least "
                        f"{t.needed} (a larger site, or a larger --calibrate-fraction)")
    return t


def _ensure(cond: bool, why: str) -> None:
    if not cond:
        raise ModelError(why)


def parity_check(candidate: Path, parent_out: dict, new_logits: np.ndarray, head: Head) -> dict:
    """The written head computes what the numpy head computes on the same embeddings."""
    expect = parent_out["embedding"].astype(np.float64) @ head.weight.T.astype(np.float64) + head.bias
    diff = float(np.abs(new_logits - expect).max()) if len(expect) else 0.0
    _ensure(diff < 1e-3, f"{candidate.name}: the written head's logits differ from the fitted head's by {diff:.3g}")
    return {"max_abs_logit_difference": diff, "films": len(expect)}


@dataclass
class FileRun:
    """One ONNX file's scores of the site's films (and home validation), before and after."""

    file: str
    p_before: np.ndarray  # the parent file's probabilities (its own temperature)
    p_after: np.ndarray
    threshold: float
    parent_threshold: float
    accepted_before: np.ndarray  # the parent's guard
    accepted_after: np.ndarray  # the refitted guard
    guard: object  # the refitted edge.guard.Guard (None when the parent had none)
    embed: object  # uint8 views -> embeddings through the new file
    home: dict | None = None  # p_before, p_after, accepted_before, accepted_after on home validation
    link: dict = field(default_factory=dict)
    checks: dict = field(default_factory=dict)


def _guard_fit(model: EdgeModel, site: Site, emb: np.ndarray, home: Home | None, home_emb: dict):

    fit, cal = site.mask("fit"), site.mask("calibrate")
    threshold = emb[cal] if home is None else np.concatenate([emb[cal], home_emb["val"]])
    altered = np.concatenate([embedder(model)(np.ascontiguousarray(a)) for a in alterations(site.x[fit]).values()])
    return GuardFit(site=emb[fit], site_y=site.y[fit], altered=altered, threshold=threshold,
                    home=None if home is None else home_emb["replay"])


def _guarded(guard, x: np.ndarray, emb: np.ndarray, chroma: np.ndarray | None = None) -> np.ndarray:
    """Accepted (True) per film; every film when there is no guard."""
    if guard is None:
        return np.ones(len(x), bool)
    return ~guard.rejects(guard.scores(x, emb, chroma))


def non_xray_gate(guard, model: EdgeModel) -> dict:
    """Every non-X-ray of the offline evaluation set must still be refused; else nothing is written."""

    items = [it for cat in ood_images().values() for it in cat]
    x = np.stack([resize_gray(g, model.spec.size, model.spec.resize) for _, g, _ in items])
    accepted = _guarded(guard, x, embedder(model)(x), np.array([c for _, _, c in items]))
    if accepted.any():
        raise ModelError(f"{model.path.name.removeprefix('.').removesuffix('.candidate')}: the refitted guard "
                         f"accepts {int(accepted.sum())} of {len(items)} non-X-rays; nothing written")
    return {"non_xrays": len(items), "refused": len(items)}


@dataclass
class Scores:
    """A candidate file's outputs on the site's films (and home), with the parent's logits of the same films."""

    site: dict  # outputs(candidate, site.x)
    before: np.ndarray  # the parent file's logits of the site's films
    home: dict | None = None  # {"val": outputs, "replay": outputs} of the candidate
    home_before: np.ndarray | None = None  # the parent's logits of the home validation films
    # the parent's embeddings (its guard's view), when they are not the candidate's (a fine-tuned candidate)
    before_embedding: np.ndarray | None = None
    home_before_embedding: np.ndarray | None = None


def head_scores(src: Path, candidate: Path, site: Site, home: Home | None) -> Scores:
    """One pass of the candidate (its embeddings are the parent's, bit for bit): the parent's logits are its
    head on them."""
    model = EdgeModel(candidate)
    old = read_head(src)

    def parent_logits(emb: np.ndarray) -> np.ndarray:
        return emb.astype(np.float64) @ old.weight.T.astype(np.float64) + old.bias

    so = outputs(model, site.x)
    if home is None:
        return Scores(so, parent_logits(so["embedding"]))
    ho = {k: outputs(model, x) for k, x in (("val", home.val_x), ("replay", home.replay_x))}
    return Scores(so, parent_logits(so["embedding"]), ho, parent_logits(ho["val"]["embedding"]))


def adapt_file(src: Path, parent: EdgeModel, head: Head, site: Site, home: Home | None, cfg: AdaptConfig,
               out: Path, common: dict) -> FileRun:
    """Write one ONNX file of the new bundle: the head, then `settle`."""
    candidate = write_candidate(src, head, out)
    sc = head_scores(src, candidate, site, home)
    checks = {"graph_bytes_identical_but_head": True,
              "head_parity": parity_check(candidate, sc.site, sc.site["logits"], head)}
    return settle(candidate, src, parent, parent.guard, sc, site, home, cfg, out, common, checks)


def settle(candidate: Path, src: Path, parent: EdgeModel, base_guard, sc: Scores, site: Site, home: Home | None,
           cfg: AdaptConfig, out: Path, common: dict, checks: dict) -> FileRun:
    """The candidate's guard refitted (from `base_guard`), its threshold, drift reference, population and
    provenance link written into `out / src.name`; what was measured on the way."""

    model = EdgeModel(candidate)
    emb = sc.site["embedding"]
    guard = None
    if base_guard is not None:
        home_emb = {k: v["embedding"] for k, v in (sc.home or {}).items()}
        guard = refit_guard(base_guard, _guard_fit(model, site, emb, home, home_emb))
        checks["non_xray_gate"] = non_xray_gate(guard, model)
    accepted = _guarded(guard, site.x, emb, site.chroma)
    p = probability(sc.site["logits"])
    t = threshold_for(p, site, accepted, cfg)
    cal = site.mask("calibrate")
    scores = guard.scores(site.x[cal], emb[cal], site.chroma[cal]) if guard is not None else None
    reference = fit_reference(p[cal], scores, positive(p[cal], t.threshold), ~accepted[cal],
                              fitted_on=f"site '{site.name}', calibration part ({int(cal.sum())} films)")
    link = provenance(src, parent, site, cfg, common, t, guard is not None)
    meta = replace(model.meta, threshold=t.threshold, temperature=1.0, target_sensitivity=cfg.target_sensitivity,
                   ood=None if guard is None else guard.to_meta(), monitor=reference.to_meta(),
                   weights_sha256=common["weights_sha256"], site_calibration=[*(parent.meta.site_calibration or []),
                                                                              link])
    if common.get("head") and parent.meta.cam is not None:  # head refit: the heat-map head is the new head's
        from pneumo_edge.edge.cam import CamHead

        meta = replace(meta, cam=CamHead.from_linear(*common["onnx_head"]).to_meta())
    finish_file(candidate, out / src.name, replace(meta, population=common["population"]))
    _ensure(EdgeModel(out / src.name, threads=1).threshold == t.threshold,
            f"{src.name}: the written file reads back differently")
    home_run = None
    if home is not None:
        hv = sc.home["val"]
        home_run = {"p_before": prob_from_logits(sc.home_before, parent.temperature),
                    "p_after": probability(hv["logits"]),
                    "accepted_before": _guarded(parent.guard, home.val_x, hv["embedding"]
                                                if sc.home_before_embedding is None else sc.home_before_embedding),
                    "accepted_after": _guarded(guard, home.val_x, hv["embedding"])}
    return FileRun(file=src.name, p_before=prob_from_logits(sc.before, parent.meta.temperature), p_after=p,
                   threshold=t.threshold, parent_threshold=parent.meta.threshold,
                   accepted_before=_guarded(parent.guard, site.x, emb if sc.before_embedding is None
                                            else sc.before_embedding, site.chroma),
                   accepted_after=accepted, guard=guard, embed=embedder(EdgeModel(out / src.name)), home=home_run,
                   link=link, checks=checks)


def provenance(src: Path, parent: EdgeModel, site: Site, cfg: AdaptConfig, common: dict, t, guarded: bool) -> dict:
    """The link `adapt` adds to the chain: site, split, what was refitted, the rule, the parent's digest."""

    cal = site.mask("calibrate")
    return {"kind": "adaptation", "method": common["method"], "site": site.name, "date": _now(),
            "n_images": len(site.paths), "n_patients": len(set(site.groups.tolist())),
            "n_positive": t.n_positive_films, "split": {
                "seed": cfg.seed, "unit": site.unit, "patient_ids_from": site.ids_from,
                "fractions": {"fit": cfg.fit_fraction, "calibrate": cfg.calibrate_fraction},
                "parts": {name: site.counts(site.mask(name)) for name in PARTS}},
            "refitted": [*common["refitted"], "threshold (calibration part)",
                         "temperature (1: the new logits' own scale)",
                         *((f"guard {r}" for r in REFITTED) if guarded else ()), "drift reference (calibration part)"],
            "calibration_films": int(cal.sum()), "head": common.get("head"),
            "fine_tune": common.get("fine_tune"), "rule": RULE[t.unit], "count": t.unit,
            "target_sensitivity": cfg.target_sensitivity, "confidence": cfg.confidence, "threshold": t.threshold,
            "positive_units": t.n_positive, "detected": t.detected, "sensitivity_lower_bound": t.lower_bound,
            "temperature": 1.0, "parent_file": src.name, "parent_sha256": file_sha256(src),
            "parent_threshold": parent.meta.threshold, "parent_temperature": parent.meta.temperature}


def write_twin(bundle: Path, head: Head, out: Path) -> str | None:
    """The PyTorch twin with the new head (and its config, digest updated), when the parent ships one."""

    if not ((bundle / WEIGHTS).is_file() and (bundle / CONFIG).is_file()):
        return None
    config = json.loads((bundle / CONFIG).read_text())
    prefix = (config.get("pretrained_cfg") or {}).get("classifier", "classifier")
    body, digest = twin_with_head(bundle / WEIGHTS, head, prefix)
    write_with(out / WEIGHTS, lambda tmp: Path(tmp).write_bytes(body))
    write_json(out / CONFIG, {**config, "weights_sha256": digest})
    return digest


def run_head_refit(cfg: AdaptConfig) -> dict:
    """The head refit: split, embed, fit, write both files; measure on the held-out part (and home)."""
    t0 = time.perf_counter()
    sources = bundle_files(cfg.model)
    parents = {s.name: EdgeModel(s) for s in sources}
    ref = parents[sources[0].name]
    site = load_site(cfg, ref)  # split by patient before anything is scored
    out = prepare_out_dir(cfg.out, cfg.force)
    stage("adapt", f"{len(site.paths)} films of {len(set(site.groups.tolist()))} {site.unit} split "
                   + ", ".join(f"{k} {site.counts(site.mask(k))['films']}" for k in PARTS))
    home = load_home(sources[0].parent, cfg.data, REPLAY_PER_FIT_FILM * int(site.mask("fit").sum()), ref, cfg) \
        if cfg.data else None
    seconds = {"load": _elapsed(t0)}
    stage("adapt", "embedding the fitting films" + (" and replayed home films" if home else "") + ", fitting the head")
    fit_emb = outputs(ref, site.x[site.mask("fit")])["embedding"]
    emb = np.zeros((len(site.paths), fit_emb.shape[1]), np.float32)
    emb[site.mask("fit")] = fit_emb
    replay = outputs(ref, home.replay_x)["embedding"] if home else None
    lg, choice = fit_head(emb, site, replay, home.replay_y if home else None)
    head = onnx_head(lg)
    seconds["head"] = _elapsed(t0)
    common = {"method": "head refit", "head": choice, "onnx_head": (head.weight, head.bias),
              "refitted": ["classifier head (logistic regression on the embedding, numpy)"],
              "weights_sha256": write_twin(sources[0].parent, head, out),
              "population": adapted_population(parent_population(ref.meta), site, kept_home=home is not None)}
    runs = []
    try:
        for src in sources:
            stage("adapt", f"{src.name}: writing the head, refitting the guard, calibrating")
            runs.append(adapt_file(src, parents[src.name], head, site, home, cfg, out, common))
    except (DataError, ModelError):
        for src in sources:
            (out / src.name).unlink(missing_ok=True)
        raise
    finally:
        for src in sources:
            (out / f".{src.name}.candidate").unlink(missing_ok=True)
    seconds["adapted"] = _elapsed(t0)
    stage("adapt", "measuring on the held-out patients")
    return write_report(out, measure(cfg, site, runs, home, common), seconds, t0)


def write_report(out: Path, report: dict, seconds: dict, t0: float) -> dict:
    """adaptation.json and the card's section; the model card where its renderer can be imported ([train])."""
    report["seconds"] = {**seconds, "total": _elapsed(t0)}
    write_json(out / REPORT, report)
    write_text(out / CARD_SECTION, render_card(report))
    try:
        from pneumo_edge.bundle.report import write_model_card
    except ImportError:
        return report
    write_model_card(out)
    return report
