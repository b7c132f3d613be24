"""`adapt --fine-tune`: the PyTorch twin fine-tuned on the site's fitting films, home films replayed.

    r = fine_tune(AdaptConfig(folder="site_xrays", model="export", out="site_bundle", data="chest_xray",
                              fine_tune=True))

The site's patients are split exactly as the head refit splits them (`adapt.split_patients`, same seed), so
the calibration and held-out parts are the same films. The fitting part is split again by patient into
inner-train and inner-validation; every batch holds site films of inner-train and as many home training
films (replayed, carved from train as the parent's checkpoint was), so the network keeps its home
decisions while it learns the site's; the epoch kept is the one that ranks the inner-validation films best.
The tuned twin then goes through export's builders and every gate (fp32 parity, INT8 agreement and
ROC-AUC, CAM and shipped heat-map parity) on the calibration part's and home validation films (never the
test split), with a guard fitted afresh on home films (its embedding is new) and then refitted to the site
as the head refit does (`siteguard`); threshold, drift reference, population and provenance as `adapt`.
Needs the [train] extra (torch, timm, onnx, scikit-learn).
"""

from __future__ import annotations

import copy
import math
import os
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pneumo_edge.bundle.guardfit import fit_guard, guard_images, torch_embedder
from pneumo_edge.edge.atomic import prepare_out_dir, write_json, write_with
from pneumo_edge.edge.errors import DataError, ParityError
from pneumo_edge.edge.imaging import PreprocessSpec
from pneumo_edge.edge.model import EdgeModel
from pneumo_edge.edge.progress import stage
from pneumo_edge.edge.stats import roc_auc
from pneumo_edge.edge.targets import CONFIG, WEIGHTS
from pneumo_edge.site.adapt import (
    REPLAY_PER_FIT_FILM,
    AdaptConfig,
    Home,
    Scores,
    Site,
    _elapsed,
    adapted_population,
    bundle_files,
    load_home,
    load_site,
    outputs,
    parent_population,
    settle,
    split_patients,
    write_report,
)
from pneumo_edge.site.adaptreport import measure
from pneumo_edge.train.data import Sample


@dataclass
class TuneConfig:
    """The fine-tune's recipe, fixed before any site film was scored (inner validation picks the epoch only)."""

    epochs: int = 8
    lr: float = 1e-4  # peak: a tenth of the parent's, the network is trained already
    warmup_steps: int = 20
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1
    batch_size: int = 16  # half site films, half home films
    inner_validation: float = 0.2  # of the fitting part's patients
    guard_fit_films: int = 600  # home training films the fresh guard is fitted on
    guard_val_films: int = 260  # home validation films (and their shifted views) that set its threshold
    calib_images: int = 256  # INT8 calibration: home and site fitting films


def _lr(step: int, total: int, t: TuneConfig) -> float:
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    u = (step - t.warmup_steps) / max(1, total - t.warmup_steps)
    return t.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, u))))


def inner_split(site: Site, seed: int, share: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the fitting part's films: (inner-train, inner-validation), by patient."""
    idx = np.where(site.mask("fit"))[0]
    part = split_patients(site.groups[idx], site.y[idx], (1 - share, share), seed)
    return idx[part == 0], idx[part == 1]


def tune(model: nn.Module, spec, site: Site, home: Home, cfg: AdaptConfig, t: TuneConfig, aug) -> tuple:
    """Fine-tune in place; returns (the kept state, history, selection)."""
    from pneumo_edge.train.augment import (
        augment,  # torch: training side only, kept off the light install
    )
    from pneumo_edge.train.fit import (  # torch: training side only, kept off the light install
        predict_logits,
        to_model_input,
        uint8_batch,
    )

    tr, va = inner_split(site, cfg.seed, t.inner_validation)
    half = t.batch_size // 2
    steps = max(1, math.ceil(len(tr) / half))
    total = steps * t.epochs
    opt = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=t.label_smoothing)
    rng, gen = np.random.default_rng(cfg.seed), torch.Generator().manual_seed(cfg.seed)
    best, history, step = None, [], 0
    for epoch in range(t.epochs):
        model.train()
        t0, order = time.perf_counter(), rng.permutation(np.resize(rng.permutation(tr), steps * half))
        for b in range(steps):
            s_idx, h_idx = order[b * half:(b + 1) * half], rng.integers(0, len(home.replay_y), half)
            x01 = torch.cat([uint8_batch(site.x, s_idx), uint8_batch(home.replay_x, h_idx)])
            y = torch.from_numpy(np.r_[site.y[s_idx], home.replay_y[h_idx]].astype(np.int64))
            for g in opt.param_groups:
                g["lr"] = _lr(step, total, t)
            loss = loss_fn(model(to_model_input(augment(x01, gen, aug), spec)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        z = predict_logits(model, site.x[va], spec)
        auc = roc_auc(site.y[va], z[:, 1] - z[:, 0])
        vloss = float(nn.functional.cross_entropy(torch.from_numpy(z), torch.from_numpy(site.y[va].astype(np.int64))))
        history.append({"epoch": epoch + 1, "inner_val_auc": auc, "inner_val_loss": vloss,
                        "seconds": round(time.perf_counter() - t0, 1)})
        stage("adapt", f"fine-tune epoch {epoch + 1}/{t.epochs}: inner-validation ROC-AUC {auc:.4f}, loss {vloss:.4f}")
        if best is None or (auc, -vloss) > (best[0], -best[1]):
            best = (auc, vloss, epoch + 1, copy.deepcopy(model.state_dict()))
    selection = {"rule": "the epoch with the highest inner-validation ROC-AUC (ties: lower loss)",
                 "epoch": best[2], "inner_val_auc": best[0], "inner_train_films": int(len(tr)),
                 "inner_val_films": int(len(va)), "replayed_home_films": int(len(home.replay_y))}
    return best[3], history, selection


def _gate_films(site: Site, home: Home) -> tuple[np.ndarray, np.ndarray]:
    """Export's gates run on the calibration part's films and home validation: no test film is read."""
    cal = site.mask("calibrate")
    return np.concatenate([site.x[cal], home.val_x]), np.r_[site.y[cal], home.val_y]


def export_tuned(model: nn.Module, config: dict, spec, site: Site, home: Home, t: TuneConfig, folder: Path,
                 progress: bool, gate=None) -> dict:
    """The tuned twin through export's builders and gates into `folder`; ParityError when a gate fails."""
    from pneumo_edge.bundle.export import (  # torch: training side only, kept off the light install
        EXPORTS,
        ExportContext,
        GateConfig,
        build_and_gate,
        bundle_metadata,
    )

    rng = np.random.default_rng(0)
    val = home.samples["val"]
    val_pick = [val[i] for i in sorted(rng.choice(len(val), min(t.guard_val_films, len(val)), replace=False))]
    stage("adapt", "fitting a fresh guard on home films (the embedding is new)")
    images = guard_images(spec, home.samples["train"], val_pick, n_fit=t.guard_fit_films, progress=progress)
    meta = replace(bundle_metadata(config, 0.5, 1.0, model), ood=fit_guard(torch_embedder(model, spec), images))
    fit = np.where(site.mask("fit"))[0]
    site_samples = [Sample(name=Path(site.paths[i]).name, label=int(site.y[i]), path=site.paths[i]) for i in fit]
    x, y = _gate_films(site, home)
    ctx = ExportContext(model.eval(), spec, meta, [*home.samples["replay"], *site_samples], images, x, y,
                        gate or GateConfig(), folder, t.calib_images, progress)
    report, failures = build_and_gate(ctx, EXPORTS)
    report |= {"sizes_mb": {e.target.file: round((folder / e.target.file).stat().st_size / 1e6, 2) for e in EXPORTS},
               "gate_films_words": "the site's calibration part and home validation films",
               "gate_films": {"site_calibration_part": int(site.mask("calibrate").sum()),
                              "home_validation": int(len(home.val_y))}, "failures": failures,
               "passed": not failures}
    if failures:
        raise ParityError(failures)
    return report


def write_twin(model: nn.Module, config: dict, out: Path) -> str:
    """The tuned twin (safetensors + config in timm's layout); returns its weights' digest."""
    from safetensors.torch import save_file  # the [train] extra

    from pneumo_edge.train.checkpoint import (  # torch: training side only, kept off the light install
        hub_config,
        state_sha256,
    )

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    digest = state_sha256(state)
    write_with(out / WEIGHTS, lambda tmp: save_file(state, str(tmp)))
    write_json(out / CONFIG, hub_config({**config, "weights_sha256": digest}, model))
    return digest


def _scores(candidate: Path, parent: EdgeModel, site: Site, home: Home) -> Scores:
    model = EdgeModel(candidate)
    so, po = outputs(model, site.x), outputs(parent, site.x)
    hv, hp = outputs(model, home.val_x), outputs(parent, home.val_x)
    return Scores(site=so, before=po["logits"], home={"val": hv, "replay": outputs(model, home.replay_x)},
                  home_before=hp["logits"], before_embedding=po["embedding"], home_before_embedding=hp["embedding"])


def fine_tune(cfg: AdaptConfig, t: TuneConfig = TuneConfig(), gate=None) -> dict:
    """Fine-tune the parent's twin for the site, export it through every gate (export's GateConfig unless
    `gate`), settle both files."""
    from pneumo_edge.train.augment import (
        AugmentConfig,  # torch: training side only, kept off the light install
    )
    from pneumo_edge.train.checkpoint import (
        load_checkpoint,  # torch: training side only, kept off the light install
    )

    if not cfg.data:
        raise DataError("--fine-tune needs --data (the home training films are replayed so that the bundle keeps "
                        "working at home, and its home validation is measured)")
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(os.cpu_count() or 1)
    sources = bundle_files(cfg.model)
    parents = {s.name: EdgeModel(s) for s in sources}
    model, config = load_checkpoint(sources[0].parent)
    spec = PreprocessSpec.from_dict(config["preprocess"])
    site = load_site(cfg, parents[sources[0].name])
    out = prepare_out_dir(cfg.out, cfg.force)
    home = load_home(sources[0].parent, cfg.data, REPLAY_PER_FIT_FILM * int(site.mask("fit").sum()),
                     parents[sources[0].name], cfg)
    seconds = {"load": _elapsed(t0)}
    aug = AugmentConfig(**{**config["train_config"].get("augment", {}), "crop_scale": None})  # the inference view
    state, history, selection = tune(model, spec, site, home, cfg, t, aug)
    model.load_state_dict(state)
    seconds["tuned"] = _elapsed(t0)
    common = {"method": "fine-tune", "fine_tune": {**selection, "recipe": t.__dict__, "history": history},
              "refitted": ["every weight of the twin (fine-tuned on the site's fitting films, home films replayed)",
                           "guard fitted afresh on home films, then to the site"],
              "population": adapted_population(parent_population(parents[sources[0].name].meta), site, True)}
    with tempfile.TemporaryDirectory(dir=out, prefix=".adapt-") as tmp:
        gates = export_tuned(model, config, spec, site, home, t, Path(tmp), cfg.progress, gate)
        seconds["exported"] = _elapsed(t0)
        common["weights_sha256"] = write_twin(model, config, out)
        runs = [settle(Path(tmp) / src.name, src, parents[src.name], EdgeModel(Path(tmp) / src.name).guard,
                       _scores(Path(tmp) / src.name, parents[src.name], site, home), site, home, cfg, out, common,
                       {"export_gates": {"passed": gates["passed"]}}) for src in sources]
    write_json(out / "parity.json", gates)
    report = measure(cfg, site, runs, home, common) | {"method": "fine-tune", "fine_tune": common["fine_tune"]}
    return write_report(out, report, seconds, t0)
