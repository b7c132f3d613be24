import json

from click.testing import CliRunner

from conftest import TINY_MODEL, TINY_SIZE
from pneumo_edge.cli import main
from pneumo_edge.train.perturb import PERTURBATIONS
from pneumo_edge.studies.recipes import RULE


def test_study_cli_trains_scores_and_picks_by_the_rule(tiny_data, tmp_path):
    tiny = {"model": TINY_MODEL, "pretrained": "none", "img_size": TINY_SIZE, "epochs": 1, "batch_size": 8,
            "lr": 3e-3, "warmup_steps": 2, "ema_decay": 0, "val_fraction": 0.25}
    study = {"data": str(tiny_data), "runs": str(tmp_path / "runs"), "results": str(tmp_path / "results"),
             "candidates": [{"name": "plain", "why": "reference", "train": tiny},
                            {"name": "crops", "why": "framing", "train": {**tiny, "augment": {"crop_scale": [0.5, 1.0]}}},
                            {"name": "plain-soup", "why": "weights of two seeds averaged",
                             "soup": {"recipe": "plain", "seeds": [7]}},
                            {"name": "plain-distilled", "why": "taught by plain",
                             "train": {**tiny, "teachers": [str(tmp_path / "runs" / "plain")]}}]}
    f = tmp_path / "study.json"
    f.write_text(json.dumps(study))
    r = CliRunner().invoke(main, ["study", str(f)])
    assert r.exit_code == 0, r.output
    scores = json.loads((tmp_path / "results" / "scores.json").read_text())
    assert set(scores) == {"plain", "crops", "plain-soup", "plain-distilled"}
    student = json.loads((tmp_path / "runs" / "plain-distilled" / "config.json").read_text())
    assert student["distill"]["teachers"] == [str(tmp_path / "runs" / "plain")]
    own = json.loads((tmp_path / "runs" / "plain-distilled" / "train_results.json").read_text())["wall_time_s"]
    teacher = json.loads((tmp_path / "runs" / "plain" / "train_results.json").read_text())["wall_time_s"]
    assert scores["plain-distilled"]["train_minutes"] == round(round(own / 60, 1) + teacher / 60, 1)
    soup = json.loads((tmp_path / "runs" / "plain-soup" / "config.json").read_text())
    member = json.loads((tmp_path / "runs" / "plain-seed7" / "config.json").read_text())
    assert soup["soup"]["seeds"] == [42, 7] and member["train_config"]["split_seed"] == 42
    assert member["validation"] == soup["validation"]  # one validation split, untouched by every member
    for s in scores.values():
        assert list(s["per_perturbation"]) == list(PERTURBATIONS)
        assert 0 <= s["mean"]["specificity_at_target"] <= 1 and s["mean"]["nll"] > 0
    pick = json.loads((tmp_path / "results" / "pick.json").read_text())
    assert pick["rule"] == RULE and pick["winner"] in scores
    assert f"**{pick['winner']}**" in (tmp_path / "results" / "results.md").read_text()
    again = CliRunner().invoke(main, ["study", str(f)])  # everything scored: nothing retrained
    assert again.exit_code == 0 and again.output.count("already scored") == 4


def test_study_cli_refuses_a_file_without_candidates(tmp_path):
    f = tmp_path / "empty.json"
    f.write_text(json.dumps({"candidates": []}))
    r = CliRunner().invoke(main, ["study", str(f)])
    assert r.exit_code == 2 and "no candidates" in r.output


def test_soup_is_the_mean_of_its_members_and_refuses_other_splits(tiny_checkpoint, tmp_path):
    import shutil

    import pytest
    import torch

    from pneumo_edge.train.checkpoint import load_checkpoint
    from pneumo_edge.edge.errors import ModelError
    from pneumo_edge.train.soup import average_checkpoints

    other = tmp_path / "other"
    shutil.copytree(tiny_checkpoint, other)
    model, config = load_checkpoint(other)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    from pneumo_edge.train.checkpoint import save_checkpoint

    save_checkpoint(other, model, config)
    average_checkpoints([tiny_checkpoint, other], tmp_path / "soup")
    a, _ = load_checkpoint(tiny_checkpoint)
    s, cfg = load_checkpoint(tmp_path / "soup")
    for (name, pa), ps in zip(a.named_parameters(), s.parameters()):
        torch.testing.assert_close(ps, pa + 0.5, msg=name)
    assert cfg["soup"]["members"] == [str(tiny_checkpoint), str(other)] and "threshold" not in cfg
    config["train_config"] = {**config["train_config"], "split_seed": 99}
    save_checkpoint(other, model, config)
    with pytest.raises(ModelError, match="another split"):
        average_checkpoints([tiny_checkpoint, other], tmp_path / "soup2")


def test_soup_cli_writes_once_and_refuses_to_overwrite(tiny_checkpoint, tmp_path):
    out = tmp_path / "soup"
    r = CliRunner().invoke(main, ["soup", str(tiny_checkpoint), str(tiny_checkpoint), "--out", str(out)])
    assert r.exit_code == 0 and (out / "model.safetensors").is_file(), r.output
    again = CliRunner().invoke(main, ["soup", str(tiny_checkpoint), str(tiny_checkpoint), "--out", str(out)])
    assert again.exit_code == 2 and "--force" in again.output
    one = CliRunner().invoke(main, ["soup", str(tiny_checkpoint), "--out", str(tmp_path / "one")])
    assert one.exit_code != 0 and "at least two" in one.output


def test_soup_refuses_a_seed_that_would_count_twice(tmp_path):
    import pytest

    from pneumo_edge.edge.errors import DataError
    from pneumo_edge.studies.recipes import Candidate, StudyConfig, make_soup

    recipe = Candidate(name="r", why="", train={"epochs": 1})
    study = StudyConfig(candidates=[recipe], runs=str(tmp_path), seed=42)
    for seeds in ([42, 43], [43, 43]):
        with pytest.raises(DataError, match="count twice"):
            make_soup(Candidate(name="s", why="", soup={"recipe": "r", "seeds": seeds}), study, progress=False)
