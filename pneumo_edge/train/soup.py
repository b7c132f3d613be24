"""Weight soups: the uniform average of several fine-tunes of one recipe from the same ImageNet start
(Wortsman et al. 2022). One model, so inference costs what one member costs.

    average_checkpoints(["runs/a", "runs/b", "runs/c"], "runs/soup")

Members must share the architecture, the preprocessing and the validation split (`TrainConfig.split_seed`):
the soup is scored and calibrated on that split, which no member has trained on. Every floating-point
tensor is averaged, BatchNorm running statistics included; integer buffers (batch counters) are the
first member's.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pneumo_edge.edge.atomic import refuse_existing
from pneumo_edge.edge.errors import ModelError
from pneumo_edge.train.checkpoint import WEIGHTS, load_checkpoint, save_checkpoint
from pneumo_edge.train.data import check_same_split


def _check_members(configs: list[dict], names: list[str]) -> None:
    for c, name in zip(configs[1:], names[1:]):
        check_same_split(c, configs[0], ("model", "preprocess", "data_fingerprint"), f"soup member '{name}'",
                         f"'{names[0]}'", "train members with the same split_seed")


def average_checkpoints(members: list[str | Path], out: str | Path, force: bool = False) -> Path:
    """Write the uniform soup of `members` (checkpoint folders) to `out`; returns its weights file."""
    refuse_existing(Path(out) / WEIGHTS, force)
    if len(members) < 2:
        raise ModelError("a soup needs at least two members")
    loaded = [load_checkpoint(m) for m in members]
    names = [str(m) for m in members]
    _check_members([c for _, c in loaded], names)
    states = [model.state_dict() for model, _ in loaded]
    soup, config = loaded[0]
    averaged = {}
    for key, first in states[0].items():
        if torch.is_floating_point(first):
            averaged[key] = torch.stack([s[key].float() for s in states]).mean(0).to(first.dtype)
        else:
            averaged[key] = first.clone()
    soup.load_state_dict(averaged, strict=True)
    seeds = [c["train_config"]["seed"] for _, c in loaded]
    config = {k: v for k, v in config.items() if k not in ("threshold", "temperature", "val_metrics",
                                                            "temperature_check", "weights_sha256")}
    config["soup"] = {"members": names, "seeds": seeds, "member_weights_sha256": [c.get("weights_sha256")
                                                                                   for _, c in loaded]}
    return save_checkpoint(out, soup, config)
