from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import REAL, write_xrays
from pneumo_edge.cli import main
from pneumo_edge.bundle.gradcam import GradCAM
from pneumo_edge.train.models import build_twin

SHIPPED = Path(__file__).resolve().parents[2] / "export"


def test_explain_cli_writes_overlays_and_contact_sheet(tiny_bundle, tmp_path):
    paths = write_xrays(tmp_path)
    out = tmp_path / "cams"
    r = CliRunner().invoke(main, ["explain", *paths, "--bundle", str(tiny_bundle), "--out", str(out),
                                  "--target", "pneumonia"])
    assert r.exit_code == 0, r.output
    assert (out / "x0.gradcam.png").stat().st_size > 0 and (out / "contact_sheet.png").stat().st_size > 0
    assert "P(pneumonia)" in r.output
    bad = CliRunner().invoke(main, ["explain", paths[0], "--bundle", str(tiny_bundle), "--out", str(tmp_path / "c2"),
                                    "--layer", "nope"])
    assert bad.exit_code == 2 and "no layer 'nope'" in bad.output


def test_hooks_are_removed_even_on_error():
    model = build_twin("test_efficientnet")
    layer = model.conv_head
    with pytest.raises(RuntimeError, match="boom"):
        with GradCAM(model, "conv_head"):
            assert len(layer._forward_hooks) == 1
            raise RuntimeError("boom")
    assert len(layer._forward_hooks) == 0


def test_map_has_input_size_and_unit_range():
    model = build_twin("test_efficientnet")
    with GradCAM(model) as cam:
        heat, probs = cam(torch.randn(2, 1, 64, 48))
    assert heat.shape == (2, 64, 48) and probs.shape == (2, 2)
    assert heat.min() >= 0 and heat.max() <= 1 + 1e-6


def _spearman(a, b):
    ra, rb = a.ravel().argsort().argsort(), b.ravel().argsort().argsort()
    return float(np.corrcoef(ra, rb)[0, 1])


@pytest.mark.skipif(not (SHIPPED / "model.safetensors").is_file() or not REAL.is_dir(),
                    reason="needs the shipped twin and the dataset")
def test_randomised_weights_change_the_map():
    """Model-parameter randomisation test (Adebayo et al. 2018) on the shipped model and real X-rays."""
    from pneumo_edge.train.checkpoint import load_checkpoint
    from pneumo_edge.edge.imaging import PreprocessSpec, load_gray, normalize, resize_gray

    trained, config = load_checkpoint(SHIPPED)
    spec = PreprocessSpec.from_dict(config["preprocess"])
    torch.manual_seed(0)
    random = build_twin(config["model"]).eval()
    files = sorted((REAL / "test" / "PNEUMONIA").iterdir())[:4]
    x = torch.from_numpy(normalize(np.stack([resize_gray(load_gray(f), spec.size, spec.resize) for f in files]), spec))
    with GradCAM(trained) as cam:
        h_trained, _ = cam(x, target=1)
    with GradCAM(random) as cam:
        h_random, _ = cam(x, target=1)
    assert h_trained.shape == (4, spec.size, spec.size)
    rho = [_spearman(a, b) for a, b in zip(h_trained, h_random)]
    assert np.mean(rho) < 0.5, rho


def test_picked_cases_cover_every_outcome_from_distinct_patients_and_are_seeded():
    from pneumo_edge.bundle.build import pick_cam_cases
    from pneumo_edge.train.data import patient_id
    from pneumo_edge.site.metrics import outcome

    rng = np.random.default_rng(0)
    labels = np.array([0] * 30 + [1] * 30)
    names = [f"IM-{i // 3:04d}-0001.jpeg" for i in range(30)] + [f"person{i // 3}_bacteria_{i}.jpeg" for i in range(30)]
    probs = np.where(labels == 1, rng.uniform(0.6, 1, 60), rng.uniform(0, 0.4, 60))
    probs[[4, 40]] = [0.9, 0.1]  # one false positive, one false negative, in the middle of the folders
    picks = pick_cam_cases(names, labels, probs, 0.5)
    kinds = [outcome(labels[i], int(probs[i] >= 0.5)) for i in picks]
    assert kinds == ["true positive", "true negative", "false positive", "false negative",
                     "true positive", "true negative"] and picks[2:4] == [4, 40]
    assert len({patient_id(names[i]) for i in picks}) == len(picks)
    assert pick_cam_cases(names, labels, probs, 0.5) == picks  # seed-fixed
    assert pick_cam_cases(names, labels, probs, 0.5, seed=1) != picks
    right = pick_cam_cases(names, labels, np.where(labels == 1, 0.9, 0.1), 0.5)  # no mistakes to show
    assert len(right) == 6 and all(outcome(labels[i], labels[i]).startswith("true") for i in right)


def test_sheet_panels_show_the_full_film_the_outcome_and_a_colour_bar(tiny_bundle, tmp_path, monkeypatch):
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    import pneumo_edge.bundle.gradcam as gc

    closed = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig: closed.append(fig) or close(fig))
    paths = write_xrays(tmp_path, n=2)  # 96 x 80 films: the model sees the centre 80 x 80
    records = gc.explain(paths, tiny_bundle, tmp_path / "cams", truth=["NORMAL", "PNEUMONIA"], guard=False)
    for r, truth in zip(records, ["NORMAL", "PNEUMONIA"]):
        right = (r["label"] == truth)
        assert r["true_label"] == truth and r["outcome"].startswith("true" if right else "false")
    sheet = closed[-1]
    film_axes = [ax for ax in sheet.axes if ax.images]
    assert len(film_axes) == 4 and sheet.axes[-1].get_ylabel().startswith("map: evidence for PNEUMONIA")  # colour bar
    plain, mapped = film_axes[:2]
    assert plain.images[0].get_array().shape == (96, 80)  # the whole film, not the crop
    assert mapped.images[1].get_extent() == [-0.5, 79.5, 87.5, 7.5]  # the map back over the crop it came from
    assert any(isinstance(p, Rectangle) for p in mapped.patches)
    assert plain.get_title(loc="left").startswith(records[0]["outcome"].upper() + ": true NORMAL, predicted ")
    from pneumo_edge.edge.imaging import input_box

    assert input_box((96, 80), "squash-bilinear") == (0, 0, 80, 96)


def test_bundle_sheet_is_picked_from_stored_predictions_without_a_test_read(tiny_bundle, tiny_eval, tiny_data, tmp_path,
                                                                             monkeypatch):
    import pneumo_edge.train.evaluate as ev
    from pneumo_edge.bundle.build import gradcam_examples

    def refuse(*args, **kwargs):
        raise AssertionError("picking the sheet's films scored the test split or wrote the ledger")

    monkeypatch.setattr(ev, "evaluate", refuse)
    monkeypatch.setattr(ev, "append_ledger", refuse)
    out = tmp_path / "gradcam"
    records = gradcam_examples(tiny_bundle, tiny_eval, str(tiny_data), out)
    assert [p.name for p in out.iterdir()] == ["contact_sheet.png"] and (out / "contact_sheet.png").stat().st_size > 0
    _, y, logits, names = ev.stored_predictions(tiny_eval)
    shown = [Path(r["path"]).name for r in records]
    assert len(shown) == min(6, len(names)) and set(shown) <= set(names)
    assert all(r["status"] == "ok" and r["true_label"] == Path(r["path"]).parent.name for r in records)
