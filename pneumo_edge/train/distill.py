"""Knowledge distillation: an ensemble of trained checkpoints teaches one student while it trains.

    teacher = Teacher.load(["runs/a", "runs/b"], student_config)
    loss = distill_loss(student_logits, labels_loss, teacher.soft_targets(x, T), T, weight)

The teachers see the student's augmented batch itself (the same crop, the same grey-level shift), so
the student learns the ensemble's function over the views it trains on, not only on clean films. The
student stays one network: inference costs what one member costs.

A teacher must share the student's preprocessing (its input is the student's tensor) and must have
been validated on the student's validation split: a teacher trained on those images would leak them
into the student's best-epoch choice and operating point.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pneumo_edge.edge.errors import ModelError
from pneumo_edge.train.checkpoint import load_checkpoint, read_config
from pneumo_edge.train.data import check_same_split

SAME_SPLIT = "train the student with the teachers' split_seed"


def check_settings(teachers: Sequence[str | Path], weight: float, temperature: float,
                   student_train_config: dict) -> None:
    """Before anything is decoded or overwritten: refuse bad numbers, a missing or repeated teacher and
    a teacher validated on another split (read from its config alone)."""
    if not 0.0 <= weight <= 1.0:
        raise ModelError(f"distill_weight must be within [0, 1], not {weight}")
    if not temperature > 0:
        raise ModelError(f"distill_temperature must be positive, not {temperature}")
    if len({Path(t).resolve() for t in teachers}) != len(teachers):
        raise ModelError("a teacher is named twice: it would count twice in the ensemble")
    for t in teachers:
        if not Path(t).exists():
            raise ModelError(f"teacher '{t}' not found: train it first")
        check_same_split(read_config(t), {"train_config": student_train_config}, (), f"teacher '{t}'",
                         "the student", SAME_SPLIT)


def check_teacher(teacher: dict, student: dict, name: str) -> None:
    """Refuse a teacher whose labels, input, data or validation split differ from the student's."""
    check_same_split(teacher, student, ("labels", "preprocess", "data_fingerprint"), f"teacher '{name}'",
                     "the student", SAME_SPLIT)


class Teacher:
    """The mean tempered class probabilities of several frozen checkpoints."""

    def __init__(self, members: list[nn.Module], names: list[str], sha256: list[str | None]):
        self.members, self.names, self.sha256 = members, names, sha256

    @classmethod
    def load(cls, paths: Sequence[str | Path], student: dict) -> "Teacher":
        members, names, sha = [], [], []
        for p in paths:
            model, config = load_checkpoint(p)
            check_teacher(config, student, str(p))
            model.eval().requires_grad_(False)
            members.append(model.to(memory_format=torch.channels_last))
            names.append(str(p))
            sha.append(config.get("weights_sha256"))
        if not members:
            raise ModelError("distillation needs at least one teacher")
        return cls(members, names, sha)

    @torch.no_grad()
    def soft_targets(self, x: torch.Tensor, temperature: float) -> torch.Tensor:
        """Mean of the members' class probabilities at `temperature` for the batch `x`."""
        return torch.stack([F.softmax(m(x).float() / temperature, dim=1) for m in self.members]).mean(0)

    def describe(self) -> dict:
        return {"teachers": self.names, "teacher_weights_sha256": self.sha256}


def distill_loss(student_logits: torch.Tensor, hard_loss: torch.Tensor, soft_targets: torch.Tensor,
                 temperature: float, weight: float) -> torch.Tensor:
    """(1 - weight) * the label loss + weight * T^2 * KL(teacher || student) at temperature T (Hinton et al. 2015)."""
    log_p = F.log_softmax(student_logits / temperature, dim=1)
    kd = F.kl_div(log_p, soft_targets, reduction="batchmean") * temperature ** 2
    return (1.0 - weight) * hard_loss + weight * kd
