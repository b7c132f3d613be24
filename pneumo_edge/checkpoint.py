"""Checkpoints: weights as safetensors plus a JSON config; no pickle anywhere.

    save_checkpoint(run_dir, model, config)
    model, config = load_checkpoint(run_dir)   # folder, .safetensors or config.json
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from .edge.atomic import write_json, write_with
from .edge.errors import ModelError

FORMAT = "pneumo-edge-checkpoint/1"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def state_sha256(state: dict[str, torch.Tensor]) -> str:
    """Digest of tensor names and bytes: identifies weights independent of file layout."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().contiguous().cpu()
        h.update(k.encode())
        h.update(t.numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_checkpoint(folder: str | Path, model: nn.Module, config: dict) -> Path:
    from safetensors.torch import save_file

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


def read_config(path: str | Path) -> dict:
    _, config_path = resolve(path)
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"'{config_path}' is not valid JSON ({e})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ModelError(f"'{config_path}' is not a pneumo-edge checkpoint config (format != {FORMAT})")
    return config


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .models import build_twin

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
