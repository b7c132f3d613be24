from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import REAL, write_xrays
from pneumo_edge.cli import main
from pneumo_edge.gradcam import GradCAM
from pneumo_edge.models import build_twin

SHIPPED = Path(__file__).resolve().parents[1] / "export"


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
    from pneumo_edge.checkpoint import load_checkpoint
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
