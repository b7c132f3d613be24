"""Checkpoints: weights as safetensors plus a JSON config; no pickle anywhere.

    save_checkpoint(run_dir, model, config)
    model, config = load_checkpoint(run_dir)   # folder, .safetensors or config.json
    write_json("export/config.json", hub_config(config, model))   # a bundle's config, in timm's hub layout

A training run's config.json is flat (FORMAT) and carries the validation operating point. A bundle's
config.json (HUB_FORMAT) is what timm's `save_for_hf` writes (architecture, num_classes, label_names,
model_args, pretrained_cfg), so `timm.create_model("hf-hub:user/repo", pretrained=True)` builds the twin,
plus pneumo-edge's own keys (data fingerprint, training recipe); it holds no machine path and no decision
rule (threshold and temperature live in the ONNX files). Both load into the flat form.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from pathlib import Path

import torch
from torch import nn

from pneumo_edge.edge.atomic import write_json, write_with
from pneumo_edge.edge.errors import ModelError
from pneumo_edge.edge.targets import (  # a run's files carry the bundle's names
    CONFIG,
    WEIGHTS,
)

FORMAT = "pneumo-edge-checkpoint/1"
HUB_FORMAT = "pneumo-edge-checkpoint/2"
# resize rule <-> timm's (crop_mode, interpolation); crop_pct is 1.0 for both
TIMM_RESIZE = {"center-crop-bilinear": ("center", "bilinear"), "squash-bilinear": ("squash", "bilinear")}
FLAT_ONLY = ("model", "labels", "preprocess")  # stated by timm's own keys in the hub layout
NOT_IN_BUNDLE = ("threshold", "temperature", "data")  # the ONNX files own the rule; `data` is a local path
RUN_KEYS = ("out", "resume", "force", "progress", "threads")  # train.RunConfig: how a run went, not its recipe


def state_sha256(state: dict[str, torch.Tensor]) -> str:
    """Digest of tensor names and bytes: identifies weights independent of file layout."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().contiguous().cpu()
        h.update(k.encode())
        h.update(t.numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_checkpoint(folder: str | Path, model: nn.Module, config: dict) -> Path:
    from safetensors.torch import save_file  # the [train] extra

    folder = Path(folder)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    config = {**config, "format": FORMAT, "weights_sha256": state_sha256(state)}
    write_with(folder / WEIGHTS, lambda tmp: save_file(state, str(tmp)))
    write_json(folder / CONFIG, config)
    return folder / WEIGHTS


def resolve(path: str | Path) -> tuple[Path, Path]:
    """(weights file, config file) for a folder, a weights file or a config file."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"checkpoint '{path}' does not exist")
    folder = path if path.is_dir() else path.parent
    weights = path if path.suffix == ".safetensors" else folder / WEIGHTS
    config = folder / CONFIG
    for p in (weights, config):
        if not p.is_file():
            raise ModelError(f"'{path}' is not a pneumo-edge checkpoint: missing {p.name}")
    return weights, config


def _portable(value):
    """`value` with every absolute path reduced to its last component (relative paths are kept)."""
    if isinstance(value, dict):
        return {k: _portable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_portable(v) for v in value]
    if isinstance(value, str) and (value.startswith(("/", "~", "\\")) or re.match(r"[A-Za-z]:[\\/]", value)):
        return re.split(r"[\\/]", value.rstrip("/\\"))[-1]
    return value


def hub_config(config: dict, model: nn.Module) -> dict:
    """A checkpoint config (either layout) in timm's hub layout, as timm's `save_config_for_hf` writes it."""
    from timm.models._hub import save_config_for_hf  # torch: training side only

    config = parse_config(config, "config")
    p = config["preprocess"]
    mode, interpolation = TIMM_RESIZE[p["resize"]]
    data_config = {"input_size": (p["channels"], p["size"], p["size"]), "interpolation": interpolation,
                   "crop_pct": 1.0, "crop_mode": mode, "mean": (p["mean"],) * p["channels"],
                   "std": (p["std"],) * p["channels"]}
    extra = {k: v for k, v in config.items() if k not in FLAT_ONLY + NOT_IN_BUNDLE}
    if isinstance(extra.get("train_config"), dict):  # the published config holds the recipe only
        extra["train_config"] = {k: v for k, v in extra["train_config"].items() if k not in RUN_KEYS}
    with tempfile.TemporaryDirectory() as tmp:  # timm writes a file; it is read back and written atomically
        save_config_for_hf(model, f"{tmp}/config.json", data_config=data_config,
                           model_config={"label_names": list(config["labels"])})
        hub = json.loads(Path(f"{tmp}/config.json").read_text())
    return {**hub, **_portable(extra), "format": HUB_FORMAT}


def from_hub_config(hub: dict, source: str = "config") -> dict:
    """The flat form (FORMAT, without a decision rule) of a config.json in timm's hub layout."""
    try:
        cfg = hub["pretrained_cfg"]
        channels, size, width = cfg["input_size"]
        resize = {v: k for k, v in TIMM_RESIZE.items()}.get((cfg.get("crop_mode"), cfg.get("interpolation")))
        flat = {"model": hub["architecture"], "labels": list(hub["label_names"]),
                "preprocess": {"size": size, "mean": cfg["mean"][0], "std": cfg["std"][0], "channels": channels,
                               "resize": resize}}
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise ModelError(f"{source}: not a pneumo-edge hub config ({e.__class__.__name__}: {e})") from None
    if size != width or resize is None or cfg.get("crop_pct", 1.0) != 1.0:
        raise ModelError(f"{source}: input {cfg['input_size']}, crop {cfg.get('crop_mode')} "
                         f"{cfg.get('crop_pct')} / {cfg.get('interpolation')} is not a pneumo-edge preprocessing")
    timm_keys = ("architecture", "num_classes", "num_features", "global_pool", "label_names", "label_descriptions",
                 "model_args", "pretrained_cfg")
    return {**{k: v for k, v in hub.items() if k not in timm_keys}, **flat, "format": FORMAT}


def parse_config(config: dict, source: str) -> dict:
    """A checkpoint config in either layout, as the flat form every reader uses."""
    if not isinstance(config, dict) or config.get("format") not in (FORMAT, HUB_FORMAT):
        raise ModelError(f"'{source}' is not a pneumo-edge checkpoint config (format not {FORMAT} or {HUB_FORMAT})")
    return from_hub_config(config, source) if config["format"] == HUB_FORMAT else config


def read_config(path: str | Path) -> dict:
    _, config_path = resolve(path)
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"'{config_path}' is not valid JSON ({e})") from None
    return parse_config(config, str(config_path))


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict]:
    from safetensors import SafetensorError  # the [train] extra
    from safetensors.torch import load_file  # the [train] extra

    from pneumo_edge.train.models import (
        build_twin,  # torch: training side only, kept off the light install
    )

    weights, _ = resolve(path)
    config = read_config(path)
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelError(f"cannot read '{weights}' (truncated or not safetensors): {e}") from None
    model = build_twin(config["model"])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelError(f"weights in '{weights}' do not fit {config['model']}: {str(e)[:200]}") from None
    model.eval()
    return model, config
