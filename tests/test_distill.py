import json

import torch
import torch.nn.functional as F
from click.testing import CliRunner

from conftest import TINY_MODEL, TINY_SIZE
from pneumo_edge.cli import main
from pneumo_edge.distill import Teacher, distill_loss

TINY = ["--arch", TINY_MODEL, "--pretrained", "none", "--img-size", str(TINY_SIZE), "--epochs", "1",
        "--batch-size", "8", "--lr", "3e-3", "--ema-decay", "0", "--val-fraction", "0.25"]


def test_distill_loss_mixes_the_label_loss_with_the_teachers_kl():
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.3]])
    hard = torch.tensor(0.7)
    own = F.softmax(logits / 3.0, dim=1)
    # a teacher that agrees with the student adds nothing; weight 0 is the label loss alone
    assert torch.isclose(distill_loss(logits, hard, own, 3.0, 0.4), 0.6 * hard)
    assert torch.isclose(distill_loss(logits, hard, torch.tensor([[0.0, 1.0], [1.0, 0.0]]), 3.0, 0.0), hard)
    flipped = distill_loss(logits, hard, own.flip(1), 3.0, 1.0)
    kl = (own.flip(1) * (own.flip(1).log() - F.log_softmax(logits / 3.0, 1))).sum(1).mean() * 9
    assert torch.isclose(flipped, kl)


def test_teacher_is_the_mean_of_its_members(tiny_checkpoint):
    from pneumo_edge.checkpoint import load_checkpoint

    model, config = load_checkpoint(tiny_checkpoint)
    one = Teacher.load([tiny_checkpoint], config)
    other = Teacher([model.eval(), torch.nn.Sequential(model, torch.nn.Flatten())], ["a", "b"], [None, None])
    x = torch.randn(3, config["preprocess"]["channels"], TINY_SIZE, TINY_SIZE)
    with torch.no_grad():
        want = F.softmax(model(x) / 2.0, dim=1)
    assert torch.allclose(one.soft_targets(x, 2.0), want, atol=1e-6)
    assert torch.allclose(other.soft_targets(x, 2.0), want, atol=1e-6)
    assert one.describe()["teacher_weights_sha256"] == [config["weights_sha256"]]


def test_train_cli_distils_from_a_teacher_on_the_same_split(tiny_checkpoint, tiny_data, tmp_path):
    out = tmp_path / "student"
    r = CliRunner().invoke(main, ["train", "--data", str(tiny_data), "--out", str(out), *TINY,
                                  "--teacher", str(tiny_checkpoint), "--distill-weight", "0.7", "-q"])
    assert r.exit_code == 0, r.output
    cfg = json.loads((out / "config.json").read_text())
    teacher_cfg = json.loads((tiny_checkpoint / "config.json").read_text())
    assert cfg["distill"] == {"teachers": [str(tiny_checkpoint)],
                              "teacher_weights_sha256": [teacher_cfg["weights_sha256"]]}
    assert cfg["train_config"]["distill_weight"] == 0.7 and cfg["validation"] == teacher_cfg["validation"]


def test_train_cli_refuses_a_teacher_validated_on_another_split(tiny_checkpoint, tiny_data, tmp_path):
    r = CliRunner().invoke(main, ["train", "--data", str(tiny_data), "--out", str(tmp_path / "s"), *TINY,
                                  "--seed", "7", "--teacher", str(tiny_checkpoint), "-q"])
    assert r.exit_code != 0 and "another split" in r.output
    assert "Traceback" not in r.output
