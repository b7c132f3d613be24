"""Fixtures: a tiny synthetic chest-X-ray-shaped dataset and a tiny trained checkpoint.

The synthetic classes differ in a way a small network learns in one epoch
(PNEUMONIA images carry bright blotches in the "lungs"), file names carry
patient ids exactly like the real dataset.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Test modules share helpers across wing folders (`from test_imaging import write_dicom`): every folder is importable.
sys.path[:0] = sorted(str(d) for d in Path(__file__).resolve().parent.iterdir() if d.is_dir() and d.name[0] != "_")
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
REAL = SHARED / "chest_xray"
EXTERNAL = SHARED / "external_cxr"
TINY_MODEL = "test_efficientnet"
TINY_SIZE = 64


def xray_like(rng: np.random.Generator, pneumonia: bool, size=(96, 80)) -> np.ndarray:
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    img = 60 + 40 * np.exp(-((xx - w / 2) ** 2) / (2 * (w / 6) ** 2))  # mediastinum
    for cx in (w * 0.3, w * 0.7):  # dark lungs
        img -= 30 * np.exp(-(((xx - cx) / (w / 7)) ** 2 + ((yy - h / 2) / (h / 4)) ** 2))
    if pneumonia:
        for _ in range(3):
            cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.3, 0.7) * h
            img += 90 * np.exp(-(((xx - cx) / 6) ** 2 + ((yy - cy) / 6) ** 2))
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_dataset(root: Path, n_train: int = 24, n_val: int = 4, n_test: int = 10, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    counter = 0
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        for label in ("NORMAL", "PNEUMONIA"):
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                counter += 1
                patient = counter // 2  # two images per patient: the split must keep them together
                name = (f"IM-{patient:04d}-{counter % 2 + 1:04d}.jpeg" if label == "NORMAL"
                        else f"person{patient}_bacteria_{counter}.jpeg")
                Image.fromarray(xray_like(rng, label == "PNEUMONIA")).save(folder / name, quality=92)
    return root


def write_xrays(folder: Path, n: int = 2, seed: int = 0) -> list[str]:
    """n synthetic X-ray PNGs x0.png, x1.png, ... (alternating NORMAL-like and PNEUMONIA-like)."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        p = folder / f"x{i}.png"
        Image.fromarray(xray_like(rng, i % 2 == 1)).save(p)
        paths.append(str(p))
    return paths


def run_cli_without_torch(args: list[str], cwd: Path, also_block: tuple[str, ...] = ()):
    """`pneumo-edge ARGS` in a fresh interpreter where `import torch` (and each of `also_block`) fails;
    asserts they stayed out."""
    import subprocess
    import sys

    blocked = ["torch", *also_block]
    script = f"""
import sys
for name in {blocked!r}:
    sys.modules[name] = None  # any 'import NAME' now raises ImportError
import pneumo_edge.edge
from pneumo_edge.cli import main
sys.argv = ["pneumo-edge", *{list(map(str, args))!r}]
try:
    main()
except SystemExit:
    loaded = [m for m in sys.modules if sys.modules[m] is not None]
    assert not set({blocked!r}) & set(loaded), "a blocked module was imported"
    raise
"""
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data") / "chest_xray")


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_data, tmp_path_factory) -> Path:
    """One epoch of the tiny model on the tiny data, through the library API."""
    from pneumo_edge.train.fit import RunConfig, TrainConfig, fit

    out = tmp_path_factory.mktemp("run") / "ckpt"
    fit(TrainConfig(data=str(tiny_data), model=TINY_MODEL, pretrained="none", img_size=TINY_SIZE,
                    epochs=2, batch_size=8, lr=3e-3, warmup_steps=2, ema_decay=0, val_fraction=0.25),
        RunConfig(out=str(out), progress=False))
    return out


@pytest.fixture(scope="session")
def tiny_bundle(tiny_checkpoint, tiny_data, tmp_path_factory) -> Path:
    from pneumo_edge.bundle.export import GateConfig, export
    from pneumo_edge.bundle.report import write_model_card

    out = tmp_path_factory.mktemp("bundle") / "bundle"
    export(tiny_checkpoint, out, str(tiny_data), GateConfig(int8_min_agreement=0.0, int8_max_auroc_delta=1.0,
                                                                heatmap_int8_min_corr=0.0),
           calib_images=16, progress=False)
    write_model_card(out)  # as `pneumo-edge export` does after the gates
    return out


@pytest.fixture(scope="session")
def tiny_eval(tiny_checkpoint, tiny_data, tmp_path_factory) -> Path:
    """`pneumo-edge evaluate` of the tiny checkpoint (no ledger line), through the CLI."""
    from click.testing import CliRunner

    from pneumo_edge.cli import main

    out = tmp_path_factory.mktemp("eval") / "eval"
    r = CliRunner().invoke(main, ["evaluate", str(tiny_checkpoint), "--data", str(tiny_data), "--out", str(out),
                                  "--ledger", "", "--bootstrap", "20"])
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="session")
def stamped_bundle(tiny_bundle, tiny_data, tmp_path_factory):
    """A copy of the tiny bundle with drift-monitor references (`monitor-reference`), through the CLI."""
    import shutil

    from click.testing import CliRunner

    from pneumo_edge.cli import main

    out = tmp_path_factory.mktemp("monitored") / "bundle"
    shutil.copytree(tiny_bundle, out)
    refused = CliRunner().invoke(main, ["monitor-reference", str(out), "--data", str(tiny_data)])
    assert refused.exit_code == 2 and "--force" in refused.output
    r = CliRunner().invoke(main, ["monitor-reference", str(out), "--data", str(tiny_data), "--force", "-q"])
    assert r.exit_code == 0, r.output
    assert "graph bytes identical" in r.output and "model.int8.onnx" in r.output
    return out

needs_real = pytest.mark.skipif(not REAL.is_dir(), reason="../shared/data/chest_xray not present")
needs_external = pytest.mark.skipif(not EXTERNAL.is_dir(), reason="../shared/data/external_cxr not present")


@pytest.fixture
def node_processes():
    """Starts `pneumo-edge listen` processes (pneumo_edge.benchmarks.node_bounds.NodeProcesses); a test that fails does not
    leave one running."""
    from pneumo_edge.benchmarks.node_bounds import NodeProcesses

    nodes = NodeProcesses()
    yield nodes
    nodes.kill_running()
