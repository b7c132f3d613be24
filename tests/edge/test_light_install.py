"""The light install, as an edge box gets it: `pip install pneumo-edge` alone, in a fresh venv, no extras.

The wheel carries the shipped INT8 file, so `infer` classifies in an empty folder with no --model and
no network; `validate` gives its metrics and intervals with numpy alone and says how to get the plots.
"""

import csv
import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # starts a server, a browser, a venv or Ray

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "xrays"


def _run(cmd: list, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600, **kw)


@pytest.fixture(scope="module")
def light(tmp_path_factory) -> Path:
    """A venv holding the package's wheel and its base dependencies only."""
    root = tmp_path_factory.mktemp("light")
    wheels = root / "wheels"
    r = _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", wheels, REPO])
    assert r.returncode == 0, r.stderr[-2000:]
    env_dir = root / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    wheel = next(wheels.glob("pneumo_edge-*.whl"))
    r = _run([py, "-m", "pip", "install", "--quiet", wheel])
    assert r.returncode == 0, r.stderr[-2000:]
    return env_dir


def test_the_light_install_has_no_training_or_plotting_packages(light):
    r = _run([light / "bin" / "python", "-c",
              "import importlib.util as u; print([m for m in ('torch', 'sklearn', 'matplotlib', 'scipy', 'pandas') "
              "if u.find_spec(m)])"])
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_wheel_infer_classifies_in_an_empty_folder_with_the_packaged_int8_model(light, tmp_path):
    from pneumo_edge.edge.runtime import file_sha256

    film = next((EXAMPLES / "PNEUMONIA").iterdir())
    env = {**{k: v for k, v in os.environ.items() if k != "PNEUMO_EDGE_MODEL"}, "HF_HUB_OFFLINE": "1"}
    r = _run([light / "bin" / "pneumo-edge", "infer", film, "--out", "p.csv"], cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    (row,) = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert row["status"] == "ok" and row["label"] == "PNEUMONIA"
    assert row["model_sha256"] == file_sha256(REPO / "export" / "model.int8.onnx")


def test_validate_on_the_light_install_matches_the_full_one(light, tmp_path):
    from pneumo_edge.site.validate import ValidateConfig, validate

    model = REPO / "export" / "model.int8.onnx"
    r = _run([light / "bin" / "pneumo-edge", "validate", EXAMPLES, "--model", model, "--out", tmp_path / "light"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "pneumo-edge[plots]" in r.stdout  # one line saying how to get the figures
    light_m = json.loads((tmp_path / "light" / "metrics.json").read_text())
    full_m = validate(ValidateConfig(folder=str(EXAMPLES), model=str(model), out=str(tmp_path / "full")))
    assert light_m["plots"] == [] and full_m["plots"]  # here, with matplotlib: the figures
    assert light_m["metrics"] == full_m["metrics"] and light_m["ci95"] == full_m["ci95"]
    assert light_m["metrics"]["roc_auc"] is not None
