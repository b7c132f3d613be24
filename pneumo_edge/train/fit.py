"""Fine-tune a classifier on the CPU and keep the best epoch by validation AUROC.

    result = fit(TrainConfig(data="../shared/data/chest_xray"), RunConfig(out="runs/lite0"))

`TrainConfig` is the recipe (published with the checkpoint's config); `RunConfig` is how one run is
carried out (where it writes, resume, threads, progress) and is never part of a published config.

Images are decoded once into RAM at the model's input size, and augmentation
runs batched in torch, so two cores spend their time on the network, not JPEG.
Each epoch ends with a resumable snapshot; the best epoch (EMA weights) is the
checkpoint, with temperature and operating point fitted on validation.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pneumo_edge import __version__
from pneumo_edge.edge.atomic import prepare_out_dir, write_json, write_with
from pneumo_edge.edge.errors import DataError, ModelError
from pneumo_edge.edge.imaging import PreprocessSpec, normalize, standardize, to_unit
from pneumo_edge.edge.progress import Progress, stage
from pneumo_edge.site.metrics import binary_metrics, calibrate, prob_from_logits
from pneumo_edge.train.augment import AugmentConfig, augment, crop_batch
from pneumo_edge.train.checkpoint import save_checkpoint
from pneumo_edge.train.data import (
    DEFAULT_HUB_DATASET,
    LABELS,
    carve_validation,
    decode_all,
    fingerprint,
    load_splits,
    split_seed,
)
from pneumo_edge.train.models import DEFAULT_MODEL, create_model


@dataclass
class TrainConfig:
    data: str = DEFAULT_HUB_DATASET  # local folder or hub dataset id
    model: str = DEFAULT_MODEL
    pretrained: str = "auto"  # auto | package | hub | none
    weights: str | None = None  # local state dict to start from
    img_size: int | None = None  # None: the model's native size
    resize: str = "center-crop-bilinear"  # or squash-bilinear (keeps the aspect-ratio shortcut)
    epochs: int = 3
    batch_size: int = 16
    lr: float = 3e-4  # peak of a warm-up + cosine schedule
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    label_smoothing: float = 0.1
    ema_decay: float = 0.998  # weight averaging; 0 disables
    sampler: bool = True  # class-balanced sampling of each epoch
    weighted_loss: bool = False  # inverse-frequency CE weights (the sampler already balances)
    val_fraction: float = 0.1
    target_sensitivity: float = 0.95
    seed: int = 42
    split_seed: int | None = None  # carves validation (default: seed); fixed across the members of a soup
    max_train_images: int | None = None  # subsample for smoke runs
    deterministic: bool = False  # strict deterministic kernels cost ~20% speed on CPU
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    freeze_bn: bool = False  # keep the ImageNet BatchNorm statistics (fine-tuning moves the affine part only)
    probe_epochs: int = 0  # LP-FT: epochs that train the classifier alone before the full fine-tune
    probe_lr: float = 3e-3
    teachers: tuple[str, ...] = ()  # checkpoints whose mean prediction on each augmented batch teaches (distill.py)
    distill_weight: float = 0.5  # share of the loss that follows the teachers; the rest follows the labels
    distill_temperature: float = 2.0


@dataclass
class RunConfig:
    out: str = "runs/default"  # the run's folder: checkpoint, snapshots, results
    resume: bool = False  # continue from the last epoch's snapshot in `out`
    force: bool = False  # start again in a non-empty `out`
    threads: int | None = None  # torch threads; None: all cores
    progress: bool = True


# ---------------------------------------------------------------- batches

def to_model_input(x01: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    return standardize(x01, spec).contiguous(memory_format=torch.channels_last)


def uint8_batch(images: np.ndarray, idx: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(to_unit(images[idx])).unsqueeze(1)


# ---------------------------------------------------------------- evaluation

@torch.no_grad()
def predict_logits(model: nn.Module, images: np.ndarray, spec: PreprocessSpec,
                   batch_size: int = 64) -> np.ndarray:
    """Logits for pre-resized uint8 images, through the same normalisation as imaging.normalize."""
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(normalize(images[i:i + batch_size], spec))
        out.append(model(x.contiguous(memory_format=torch.channels_last)).float().numpy())
    return np.concatenate(out) if out else np.zeros((0, 2), np.float32)


class EMA:
    """Exponential moving average of weights and buffers (BN statistics included)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))  # short warm-up so early steps count
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.state[k].mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                self.state[k].copy_(v)


def lr_at(step: int, total: int, cfg: TrainConfig, probe_steps: int = 0) -> float:
    """Constant probe rate, then linear warm-up and cosine decay to 1% of the peak."""
    if step < probe_steps:
        return cfg.probe_lr
    step, total = step - probe_steps, total - probe_steps
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


# ---------------------------------------------------------------- resume snapshots

def _save_snapshot(out: Path, model, ema, opt, epoch: int, step: int, history: list, best: dict,
                   distill: dict | None = None) -> None:
    from safetensors.torch import save_file  # the [train] extra

    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v.contiguous() for k, v in ema.state.items()})
    opt_state = opt.state_dict()
    for pid, st in opt_state["state"].items():
        for k, v in st.items():
            tensors[f"opt.{pid}.{k}"] = v.detach().contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    write_with(out / "last.safetensors", lambda tmp: save_file(tensors, str(tmp)))
    write_json(out / "last.json", {"epoch": epoch, "step": step, "history": history, "best": best,
                                   "param_groups": opt_state["param_groups"], "distill": distill})


def _load_snapshot(out: Path, model, ema, opt, distill: dict | None = None) -> tuple[int, int, list, dict]:
    from safetensors.torch import load_file  # the [train] extra

    meta = json.loads((out / "last.json").read_text())
    def same(d: dict | None) -> dict | None:  # the teachers by their weights, not by how a path was typed
        return None if d is None else {k: v for k, v in d.items() if k != "teachers"}

    if same(meta.get("distill")) != same(distill):
        raise ModelError(f"'{out}' was trained with other distillation settings (teachers, weight, temperature): "
                         "resume with the same ones, or start again with --force")
    tensors = load_file(str(out / "last.safetensors"))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    if ema is not None:
        ema.state = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
    state: dict = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    return meta["epoch"], meta["step"], meta["history"], meta["best"]


# ---------------------------------------------------------------- the loop, step by step

@dataclass
class TrainData:
    x_train: np.ndarray  # decoded films (whole films when the recipe crops at random, else resized)
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    counts: np.ndarray  # training images per class
    origin: str
    fingerprint: str
    validation: object  # data.SplitInfo
    skipped: list[str]  # unreadable files
    decode_s: float


def _prepare(cfg: TrainConfig, run: RunConfig) -> Path:
    """Everything that can refuse the run, before anything is decoded or written."""
    out = Path(run.out)
    if cfg.teachers:
        from pneumo_edge.train.distill import check_settings

        check_settings(cfg.teachers, cfg.distill_weight, cfg.distill_temperature, asdict(cfg))
    if run.resume:
        if not (out / "last.json").is_file():
            raise ModelError(f"nothing to resume in '{out}' (no last.json)")
    else:
        prepare_out_dir(out, run.force)
    torch.manual_seed(cfg.seed)
    torch.use_deterministic_algorithms(cfg.deterministic, warn_only=True)
    torch.set_num_threads(run.threads or os.cpu_count() or 1)
    return out


def _load_data(cfg: TrainConfig, spec: PreprocessSpec, progress: bool) -> TrainData:
    """Carve validation by patient, subsample training if asked, decode both once into memory."""
    splits = load_splits(cfg.data)
    train_s, val_s, info = carve_validation(splits.train_pool, cfg.val_fraction, split_seed(asdict(cfg)))
    if cfg.max_train_images and len(train_s) > cfg.max_train_images:
        keep = np.random.default_rng(cfg.seed).choice(len(train_s), cfg.max_train_images, replace=False)
        train_s = [train_s[i] for i in sorted(keep)]
    stage("train", info.describe())
    t0 = time.perf_counter()
    framing = cfg.augment.crop_scale is not None  # random framing needs the whole film; the fixed view resizes once
    x_train, y_train, bad_train = decode_all(train_s, spec.size, progress=progress,
                                             rule=None if framing else spec.resize)
    x_val, y_val, bad_val = decode_all(val_s, spec.size, progress=progress, rule=spec.resize)
    decode_s = time.perf_counter() - t0
    stage("train", f"decoded {len(x_train) + len(x_val)} images at {spec.size}px in {decode_s:.1f}s"
          + (f"; skipped {len(bad_train) + len(bad_val)} unreadable" if bad_train or bad_val else ""))
    counts = np.bincount(y_train, minlength=len(LABELS)).astype(np.float64)
    if (counts == 0).any():
        raise DataError(f"training split has no {LABELS[int(np.argmin(counts))]} images")
    return TrainData(x_train, y_train, x_val, y_val, counts, splits.origin, fingerprint(splits.train_pool), info,
                     [n for n, _ in bad_train + bad_val], decode_s)


def _teacher(cfg: TrainConfig, spec: PreprocessSpec, data: TrainData):
    """The distillation teacher and what a resumed run must repeat, or (None, None)."""
    if not cfg.teachers:
        return None, None
    from pneumo_edge.train.distill import (
        Teacher,  # torch: training side only, kept off the light install
    )

    # Loaded before a snapshot restores the RNG: building the teachers draws random initial weights.
    teacher = Teacher.load(cfg.teachers, {"labels": list(LABELS), "preprocess": spec.to_dict(),
                                          "data_fingerprint": data.fingerprint, "train_config": asdict(cfg)})
    stage("train", f"distilling from {len(teacher.members)} teacher(s), weight {cfg.distill_weight}, "
                   f"temperature {cfg.distill_temperature}")
    # Another teacher (or none) on resume would make one run of two recipes.
    return teacher, {**teacher.describe(), "weight": cfg.distill_weight, "temperature": cfg.distill_temperature}


def _train_epoch(model, opt, ema, criterion, teacher, cfg: TrainConfig, spec: PreprocessSpec, data: TrainData,
                 epoch: int, step: int, sched: tuple[int, int, int], sample_p: np.ndarray, gen,
                 progress: bool) -> tuple[int, float, int, float]:
    """One pass; returns (step, summed loss, images seen, seconds)."""
    from pneumo_edge.train.distill import (
        distill_loss,  # torch: training side only, kept off the light install
    )

    steps_per_epoch, total_steps, probe_steps = sched
    rng = np.random.default_rng(cfg.seed + epoch)  # per-epoch stream: resume replays exactly
    gen.manual_seed(cfg.seed * 1000 + epoch)
    order = rng.choice(len(data.y_train), steps_per_epoch * cfg.batch_size, replace=cfg.sampler, p=sample_p)
    crop_rng = np.random.default_rng([cfg.seed, epoch, 1])
    framing = cfg.augment.crop_scale is not None
    probing = epoch < cfg.probe_epochs
    head = set(id(p) for p in model.get_classifier().parameters())
    for p in model.parameters():
        p.requires_grad_(not probing or id(p) in head)
    model.train()
    if cfg.freeze_bn or probing:
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.eval()
    t_ep, seen, loss_sum = time.perf_counter(), 0, 0.0
    with Progress(steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", enabled=progress) as bar:
        for b in range(steps_per_epoch):
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            x01 = (crop_batch(data.x_train, idx, spec.size, crop_rng, cfg.augment) if framing
                   else uint8_batch(data.x_train, idx))
            x = to_model_input(augment(x01, gen, cfg.augment), spec)
            y = torch.from_numpy(data.y_train[idx])
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total_steps, cfg, probe_steps)
            logits = model(x)
            loss = criterion(logits, y)
            if teacher is not None:  # train_loss then logs the mixed loss, not comparable to val_loss
                loss = distill_loss(logits, loss, teacher.soft_targets(x, cfg.distill_temperature),
                                    cfg.distill_temperature, cfg.distill_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if ema is not None:
                ema.update(model, step)
            seen += len(idx)
            loss_sum += loss.item() * len(idx)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", img_s=f"{seen / (time.perf_counter() - t_ep):.1f}")
            bar.update()
    return step, loss_sum, seen, time.perf_counter() - t_ep


def _validate(eval_model, spec: PreprocessSpec, data: TrainData) -> tuple[np.ndarray, float, dict]:
    """(validation logits, loss, metrics at 0.5)."""
    val_logits = predict_logits(eval_model, data.x_val, spec)
    val_loss = float(F.cross_entropy(torch.from_numpy(val_logits), torch.from_numpy(data.y_val)))
    return val_logits, val_loss, binary_metrics(data.y_val, prob_from_logits(val_logits))


def fit(cfg: TrainConfig, run: RunConfig = RunConfig()) -> dict:
    """Train, validate every epoch, write the best checkpoint into `run.out`; returns the results dict."""
    t_start = time.perf_counter()
    out = _prepare(cfg, run)
    model, spec = create_model(cfg.model, cfg.pretrained, cfg.weights)
    spec = PreprocessSpec(size=cfg.img_size or spec.size, mean=spec.mean, std=spec.std, channels=spec.channels,
                          resize=cfg.resize)
    data = _load_data(cfg, spec, run.progress)

    class_w = torch.tensor(data.counts.sum() / (len(LABELS) * data.counts), dtype=torch.float32)
    criterion = nn.CrossEntropyLoss(weight=class_w if cfg.weighted_loss else None,
                                    label_smoothing=cfg.label_smoothing)
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = EMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    steps_per_epoch = max(1, len(data.x_train) // cfg.batch_size)
    sched = (steps_per_epoch, steps_per_epoch * cfg.epochs, steps_per_epoch * min(cfg.probe_epochs, cfg.epochs))
    teacher, distill = _teacher(cfg, spec, data)

    start_epoch, step, history, best = 0, 0, [], {}
    if run.resume:
        start_epoch, step, history, best = _load_snapshot(out, model, ema, opt, distill)
        stage("train", f"resuming after epoch {start_epoch}")
    gen = torch.Generator().manual_seed(cfg.seed)
    sample_p = (1.0 / data.counts)[data.y_train] if cfg.sampler else np.ones(len(data.y_train))
    sample_p /= sample_p.sum()
    base = {
        "pneumo_edge_version": __version__, "model": cfg.model, "labels": list(LABELS),
        "preprocess": spec.to_dict(), "data": data.origin, "data_fingerprint": data.fingerprint,
        "validation": asdict(data.validation), "train_config": asdict(cfg), "skipped_images": data.skipped,
        **({"distill": distill} if distill else {}),
    }
    for epoch in range(start_epoch, cfg.epochs):
        step, loss_sum, seen, seconds = _train_epoch(model, opt, ema, criterion, teacher, cfg, spec, data, epoch,
                                                     step, sched, sample_p, gen, run.progress)
        eval_model = _with_state(model, ema.state) if ema is not None else model
        val_logits, val_loss, m = _validate(eval_model, spec, data)
        row = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "val_loss": val_loss,
               "val_accuracy": m["accuracy"], "val_auroc": m["roc_auc"], "images_per_s": seen / seconds,
               "lr": lr_at(step - 1, sched[1], cfg, sched[2])}
        history.append(row)
        stage("train", f"epoch {epoch + 1}/{cfg.epochs}: train loss {row['train_loss']:.4f}  val loss {val_loss:.4f}  "
                       f"val acc {m['accuracy']:.4f}  val AUROC {m['roc_auc']:.4f}  ({row['images_per_s']:.1f} img/s)")
        # Best by AUROC; validation AUROC saturates near 1, so ties go to the lower loss.
        if not best or (m["roc_auc"], -val_loss) > (best["val_auroc"], -best["val_loss"]):
            best = dict(row)
            cal = calibrate(val_logits, data.y_val, cfg.target_sensitivity)
            save_checkpoint(out, eval_model, {**base, **cal, "epoch": epoch + 1, "val_metrics": row})
        _save_snapshot(out, model, ema, opt, epoch + 1, step, history, best, distill)

    wall = time.perf_counter() - t_start
    result = {"wall_time_s": round(wall, 1), "decode_s": round(data.decode_s, 1), "best_epoch": best["epoch"],
              "machine": {"cpus": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__},
              "best": best, "history": history, "validation": asdict(data.validation),
              "data_fingerprint": data.fingerprint, "config": asdict(cfg)}
    write_json(out / "train_results.json", result)
    stage("train", f"best epoch {best['epoch']} (val AUROC {best['val_auroc']:.4f}); wall time {wall / 60:.1f} min; "
                   f"checkpoint {out / 'model.safetensors'}")
    return result


def _with_state(model: nn.Module, state: dict) -> nn.Module:
    twin = copy.deepcopy(model)
    twin.load_state_dict(state)
    return twin
