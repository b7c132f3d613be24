import json

import torch
import torch.nn.functional as F
from click.testing import CliRunner

from conftest import TINY_MODEL, TINY_SIZE
from pneumo_edge.cli import main
from pneumo_edge.train.distill import Teacher, distill_loss

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


class Scaled(torch.nn.Module):
    def __init__(self, model, factor):
        super().__init__()
        self.model, self.factor = model, factor

    def forward(self, x):
        return self.model(x) * self.factor


def test_teacher_is_the_mean_of_its_members(tiny_checkpoint):
    from pneumo_edge.train.checkpoint import load_checkpoint

    model, config = load_checkpoint(tiny_checkpoint)
    one = Teacher.load([tiny_checkpoint], config)
    pair = Teacher([model.eval(), Scaled(model, 3.0).eval()], ["a", "b"], [None, None])
    x = torch.randn(3, config["preprocess"]["channels"], TINY_SIZE, TINY_SIZE)
    with torch.no_grad():
        logits = model(x)
    assert torch.allclose(one.soft_targets(x, 2.0), F.softmax(logits / 2.0, dim=1), atol=1e-6)
    want = (F.softmax(logits / 2.0, dim=1) + F.softmax(logits * 3.0 / 2.0, dim=1)) / 2
    assert torch.allclose(pair.soft_targets(x, 2.0), want, atol=1e-6)
    assert one.describe()["teacher_weights_sha256"] == [config["weights_sha256"]]


def test_train_cli_distils_from_a_teacher_on_the_same_split(tiny_checkpoint, tiny_data, tmp_path, monkeypatch):
    import pneumo_edge.train.distill as distill

    calls = []

    def counted(*args):
        calls.append(args[3:])
        return distill_loss(*args)

    monkeypatch.setattr(distill, "distill_loss", counted)
    out = tmp_path / "student"
    r = CliRunner().invoke(main, ["train", "--data", str(tiny_data), "--out", str(out), *TINY,
                                  "--teacher", str(tiny_checkpoint), "--distill-weight", "0.7", "-q"])
    assert r.exit_code == 0, r.output
    assert calls and set(calls) == {(2.0, 0.7)}  # every batch: temperature 2 (default), weight 0.7
    cfg = json.loads((out / "config.json").read_text())
    teacher_cfg = json.loads((tiny_checkpoint / "config.json").read_text())
    assert cfg["distill"] == {"teachers": [str(tiny_checkpoint)], "weight": 0.7, "temperature": 2.0,
                              "teacher_weights_sha256": [teacher_cfg["weights_sha256"]]}
    assert cfg["validation"] == teacher_cfg["validation"]
    # a resumed run must keep its teachers: without them it would finish as another recipe
    again = CliRunner().invoke(main, ["train", "--data", str(tiny_data), "--out", str(out), *TINY, "--resume", "-q"])
    assert again.exit_code != 0 and "other distillation settings" in again.output


def test_train_cli_refuses_bad_distillation_settings_before_touching_the_output(tiny_checkpoint, tiny_data,
                                                                                 tmp_path):
    out = tmp_path / "kept"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    base = ["train", "--data", str(tiny_data), "--out", str(out), *TINY, "--force", "-q"]
    t = str(tiny_checkpoint)
    for extra, words in ((["--teacher", t, "--teacher", t], "named twice"),
                         (["--teacher", t, "--distill-weight", "1.5"], "within [0, 1]"),
                         (["--teacher", t, "--distill-temperature", "0"], "positive"),
                         (["--seed", "7", "--teacher", t], "another split"),
                         (["--distill-weight", "0.3"], "go with --teacher")):
        r = CliRunner().invoke(main, base + extra)
        assert r.exit_code != 0 and words in r.output, (extra, r.output)
        assert "Traceback" not in r.output
    assert (out / "mine.txt").read_text() == "keep"


def test_a_distilled_candidate_costs_its_teachers_training_too(tmp_path):
    from pneumo_edge.studies.recipes import with_teachers

    for name, seconds in (("a", 600), ("b", 900)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "train_results.json").write_text(json.dumps({"wall_time_s": seconds}))
    assert with_teachers(20.0, [tmp_path / "a", tmp_path / "b"]) == 45.0
    assert with_teachers(20.0, []) == 20.0
    assert with_teachers(20.0, [tmp_path / "missing"]) is None  # unknown, not understated
