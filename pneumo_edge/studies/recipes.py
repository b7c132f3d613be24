"""Recipe study: train a declared list of candidates, score each on validation under shift, pick one.

    pneumo-edge study bench/study/recipes.json

Validation carved from train saturates (AUROC ~0.998 for every recipe), so each candidate is
scored with signals that do not: negative log-likelihood and specificity at the validation
operating point, on clean validation films and under the declared perturbations
(`perturb.PERTURBATIONS`). The selection rule lives in `pick` and in the study file; it reads
validation only. The test split is never touched here.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from pneumo_edge.edge.atomic import write_json, write_text
from pneumo_edge.edge.errors import DataError
from pneumo_edge.edge.imaging import PreprocessSpec
from pneumo_edge.site.metrics import (
    binary_metrics,
    calibrate,
    prob_from_logits,
    threshold_for_sensitivity,
)
from pneumo_edge.train.augment import AugmentConfig
from pneumo_edge.train.data import decode_all, rebuild_split, split_seed
from pneumo_edge.train.perturb import perturbed_views

# The selection rule, in words; `pick` implements it. Fixed before any test read of the study.
# Specificity at the target sensitivity is re-thresholded per perturbation: a model whose scores merely
# drift toward NORMAL under a shift cannot buy specificity with lost sensitivity; NLL catches the drift.
RULE = ("highest mean specificity at the target sensitivity (0.95, threshold set per perturbation) over the "
        "declared perturbations, clean included; candidates within 0.01 of the best go to the lowest mean "
        "validation NLL over the same set; a remaining tie goes to the shorter training time")
TIE_MARGIN = 0.01


@dataclass
class Candidate:
    name: str
    why: str
    train: dict = field(default_factory=dict)  # TrainConfig fields that differ from the defaults
    checkpoint: str | None = None  # score an existing checkpoint instead of training
    # a weight soup: {"recipe": another candidate's name, "seeds": [...]}: that recipe trained again with each
    # seed on the study's validation split, averaged with the recipe's own run (`soup.average_checkpoints`)
    soup: dict | None = None


@dataclass
class StudyConfig:
    candidates: list[Candidate]
    data: str = "../shared/data/chest_xray"
    runs: str = "runs/study"  # checkpoints (large, not committed)
    results: str = "bench/study"  # the table and scores (committed)
    seed: int = 42

    @classmethod
    def load(cls, path: str | Path) -> "StudyConfig":
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"cannot read study file '{path}': {e}") from None
        cands = [Candidate(**c) for c in raw.pop("candidates", [])]
        if not cands:
            raise DataError(f"study file '{path}' declares no candidates")
        names = [c.name for c in cands]
        if len(set(names)) != len(names):
            raise DataError(f"study file '{path}' repeats a candidate name")
        known = {f.name for f in fields(cls)} - {"candidates"}
        return cls(candidates=cands, **{k: v for k, v in raw.items() if k in known})


def train_config(cand: Candidate, study: StudyConfig):
    """The TrainConfig a candidate declares (nested `augment` included)."""
    from pneumo_edge.train.fit import (
        TrainConfig,  # torch: training side only, kept off the light install
    )

    over = dict(cand.train)
    aug = over.pop("augment", {})
    aug = {k: tuple(v) if isinstance(v, list) else v for k, v in aug.items()}
    return TrainConfig(data=study.data, seed=over.pop("seed", study.seed), augment=AugmentConfig(**aug), **over)


def run_folder(name: str, study: StudyConfig) -> Path:
    """Where a candidate's run lives."""
    return Path(study.runs) / name


def score(checkpoint: str | Path, data: str, progress: bool = True) -> dict:
    """Validation metrics of a checkpoint on clean and perturbed films (validation carved as in training)."""
    from pneumo_edge.train.checkpoint import (
        load_checkpoint,  # torch: training side only, kept off the light install
    )
    from pneumo_edge.train.fit import (
        predict_logits,  # torch: training side only, kept off the light install
    )

    model, config = load_checkpoint(checkpoint)
    spec = PreprocessSpec.from_dict(config["preprocess"])
    target = config["target_sensitivity"]
    _, _, val_s, _ = rebuild_split(config, data)
    films, y, _ = decode_all(val_s, spec.size, progress=progress, rule=None)
    views = perturbed_views(films, spec.size)
    clean_logits = predict_logits(model, views["clean"], spec)
    cal = calibrate(clean_logits, y, target)
    out = {}
    for name, x in views.items():
        logits = clean_logits if name == "clean" else predict_logits(model, x, spec)
        p = prob_from_logits(logits, cal["temperature"])
        m = binary_metrics(y, p, cal["threshold"])
        eps = 1e-7
        nll = float(-np.mean(y * np.log(p + eps) + (1 - y) * np.log(1 - p + eps)))
        spec_at = binary_metrics(y, p, threshold_for_sensitivity(y, p, target))["specificity"]
        out[name] = {"nll": nll, "roc_auc": m["roc_auc"], "specificity_at_op": m["specificity"],
                     "sensitivity_at_op": m["recall"], "specificity_at_target": spec_at}
        if progress:
            print(f"  {name:>18}: NLL {nll:.4f}  AUROC {m['roc_auc']:.4f}  spec@op {m['specificity']:.3f}  "
                  f"sens@op {m['recall']:.3f}")
    mean = {k: float(np.mean([v[k] for v in out.values()])) for k in next(iter(out.values()))}
    worst = min(out, key=lambda n: out[n]["specificity_at_target"])
    return {"per_perturbation": out, "mean": mean, "worst": {"name": worst, **out[worst]},
            "temperature": cal["temperature"], "threshold": cal["threshold"], "n_val": int(len(y))}


def pick(scores: dict[str, dict]) -> tuple[str, str]:
    """Apply RULE to {candidate: score + wall time}; returns (winner, why)."""
    best = max(s["mean"]["specificity_at_target"] for s in scores.values())
    close = [n for n, s in scores.items() if s["mean"]["specificity_at_target"] >= best - TIE_MARGIN]
    close.sort(key=lambda n: (round(scores[n]["mean"]["nll"], 4), scores[n].get("train_minutes") or 0.0))
    win = close[0]
    why = (f"{win}: mean specificity at the target sensitivity {scores[win]['mean']['specificity_at_target']:.4f} "
           f"(best {best:.4f}; within {TIE_MARGIN}: {', '.join(close)}), mean NLL {scores[win]['mean']['nll']:.4f}")
    return win, why


def train_once(cfg, ckpt: Path, progress: bool) -> float | None:
    """Train `cfg` into `ckpt` unless that run is complete (resuming a stopped one); its wall time in minutes."""
    from pneumo_edge.train.fit import (  # torch: training side only, kept off the light install
        RunConfig,
        fit,
    )

    if not (ckpt / "train_results.json").exists():
        resume = (ckpt / "last.json").exists()
        fit(cfg, RunConfig(out=str(ckpt), resume=resume, force=not resume, progress=progress))
    minutes = wall_minutes(ckpt)
    return None if minutes is None else round(minutes, 1)


def wall_minutes(run: str | Path) -> float | None:
    """A training run's recorded wall time in minutes; None when it has none."""
    tr = Path(run) / "train_results.json"
    return json.loads(tr.read_text())["wall_time_s"] / 60.0 if tr.exists() else None


def with_teachers(minutes: float | None, teachers) -> float | None:
    """A distilled student's cost includes training its teachers, as a soup's includes its members."""
    for t in teachers:
        teacher = wall_minutes(t)
        if minutes is None or teacher is None:
            return None
        minutes += teacher
    return None if minutes is None else round(minutes, 1)


def make_soup(cand: Candidate, study: StudyConfig, progress: bool) -> tuple[Path, float | None]:
    """Train the soup's members (the recipe's own run, then one per extra seed), average them."""
    from pneumo_edge.train.soup import (
        average_checkpoints,  # torch: training side only, kept off the light install
    )

    recipe = next((c for c in study.candidates if c.name == cand.soup.get("recipe")), None)
    if recipe is None or recipe.soup or recipe.checkpoint:
        raise DataError(f"soup '{cand.name}': 'recipe' must name a trained candidate of the study")

    base = train_config(recipe, study)
    seeds = [int(s) for s in cand.soup.get("seeds", [])]
    if base.seed in seeds or len(set(seeds)) != len(seeds):
        raise DataError(f"soup '{cand.name}': seeds must differ from each other and from the recipe's own "
                        f"({base.seed}), or a member would count twice")
    home = run_folder(recipe.name, study)
    members = [(base, home)] + [(replace(base, seed=s, split_seed=split_seed(vars(base))), Path(f"{home}-seed{s}"))
                                for s in seeds]
    minutes = [train_once(cfg, folder, progress) for cfg, folder in members]
    out = run_folder(cand.name, study)
    average_checkpoints([str(folder) for _, folder in members], out, force=True)  # re-averaged on every run
    return out, (round(sum(minutes), 1) if None not in minutes else None)


def run_study(study_file: str | Path, only: list[str] | None = None, progress: bool = True) -> dict:
    """Train (or resume) every candidate, score it, write the table and the pick."""
    study = StudyConfig.load(study_file)
    results_dir = Path(study.results)
    scores_path = results_dir / "scores.json"
    scores = json.loads(scores_path.read_text()) if scores_path.exists() else {}
    for cand in study.candidates:
        if only and cand.name not in only:
            continue
        if cand.name in scores and scores[cand.name].get("config") == cand.train and \
                scores[cand.name].get("checkpoint_source") == cand.checkpoint and \
                scores[cand.name].get("soup") == cand.soup:
            print(f"[{cand.name}] already scored")
            continue
        print(f"[{cand.name}] {cand.why}")
        if cand.soup:
            ckpt, minutes = make_soup(cand, study, progress)
        elif cand.checkpoint:
            ckpt = Path(cand.checkpoint)
            minutes = wall_minutes(ckpt)
            minutes = None if minutes is None else round(minutes, 1)
        else:
            cfg, ckpt = train_config(cand, study), run_folder(cand.name, study)
            minutes = train_once(cfg, ckpt, progress)
            minutes = with_teachers(minutes, cfg.teachers)
        t0 = time.perf_counter()
        s = score(ckpt, study.data, progress=progress)
        s.update(config=cand.train, checkpoint_source=cand.checkpoint, checkpoint=str(ckpt), why=cand.why,
                 train_minutes=minutes, score_s=round(time.perf_counter() - t0, 1), soup=cand.soup)
        scores[cand.name] = s
        write_json(scores_path, scores)  # after each candidate: a stopped study loses one run at most
    done = {c.name: scores[c.name] for c in study.candidates if c.name in scores}
    winner, why = pick(done) if len(done) == len(study.candidates) else (None, "not all candidates scored yet")
    summary = {"rule": RULE, "tie_margin": TIE_MARGIN, "winner": winner, "why": why, "candidates": list(done)}
    write_json(results_dir / "pick.json", summary)
    write_text(results_dir / "results.md", render_table(done, winner, why))
    print(f"pick: {why}")
    return summary


def render_table(scores: dict[str, dict], winner: str | None, why: str) -> str:
    lines = ["# Recipe study (validation only)", "",
             f"Selection rule: {RULE}.", "", f"**Pick: {why}**", "",
             "| candidate | train min | clean NLL | clean spec@target | mean spec@target | worst spec@target "
             "(perturbation) | mean spec@op | mean NLL | mean AUROC |", "|---|---|---|---|---|---|---|---|---|"]
    for name, s in scores.items():
        c, m, w = s["per_perturbation"]["clean"], s["mean"], s["worst"]
        mark = "**" if name == winner else ""
        lines.append(f"| {mark}{name}{mark} | {s.get('train_minutes') or '-'} | {c['nll']:.4f} | "
                     f"{c['specificity_at_target']:.3f} | {m['specificity_at_target']:.4f} | "
                     f"{w['specificity_at_target']:.3f} ({w['name']}) | {m['specificity_at_op']:.4f} | "
                     f"{m['nll']:.4f} | {m['roc_auc']:.4f} |")
    lines += ["", "Why each candidate:", ""] + [f"- **{n}**: {s['why']}" for n, s in scores.items()]
    names = list(next(iter(scores.values()))["per_perturbation"]) if scores else []
    lines += ["", "Specificity at the target sensitivity, per perturbation:", "",
              "| candidate | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for name, s in scores.items():
        lines.append(f"| {name} | " + " | ".join(f"{s['per_perturbation'][k]['specificity_at_target']:.3f}"
                                                   for k in names) + " |")
    return "\n".join(lines) + "\n"
