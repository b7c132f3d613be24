import json

from click.testing import CliRunner

from conftest import TINY_MODEL, TINY_SIZE
from pneumo_edge.cli import main
from pneumo_edge.perturb import PERTURBATIONS
from pneumo_edge.study import RULE


def test_study_cli_trains_scores_and_picks_by_the_rule(tiny_data, tmp_path):
    tiny = {"model": TINY_MODEL, "pretrained": "none", "img_size": TINY_SIZE, "epochs": 1, "batch_size": 8,
            "lr": 3e-3, "warmup_steps": 2, "ema_decay": 0, "val_fraction": 0.25}
    study = {"data": str(tiny_data), "runs": str(tmp_path / "runs"), "results": str(tmp_path / "results"),
             "candidates": [{"name": "plain", "why": "reference", "train": tiny},
                            {"name": "crops", "why": "framing", "train": {**tiny, "augment": {"crop_scale": [0.5, 1.0]}}}]}
    f = tmp_path / "study.json"
    f.write_text(json.dumps(study))
    r = CliRunner().invoke(main, ["study", str(f)])
    assert r.exit_code == 0, r.output
    scores = json.loads((tmp_path / "results" / "scores.json").read_text())
    assert set(scores) == {"plain", "crops"}
    for s in scores.values():
        assert list(s["per_perturbation"]) == list(PERTURBATIONS)
        assert 0 <= s["mean"]["specificity_at_target"] <= 1 and s["mean"]["nll"] > 0
    pick = json.loads((tmp_path / "results" / "pick.json").read_text())
    assert pick["rule"] == RULE and pick["winner"] in scores
    assert f"**{pick['winner']}**" in (tmp_path / "results" / "results.md").read_text()
    again = CliRunner().invoke(main, ["study", str(f)])  # everything scored: nothing retrained
    assert again.exit_code == 0 and again.output.count("already scored") == 2


def test_study_cli_refuses_a_file_without_candidates(tmp_path):
    f = tmp_path / "empty.json"
    f.write_text(json.dumps({"candidates": []}))
    r = CliRunner().invoke(main, ["study", str(f)])
    assert r.exit_code == 2 and "no candidates" in r.output
