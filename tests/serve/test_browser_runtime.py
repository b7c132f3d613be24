"""The whole model in the browser (edge/static/local/): `pneumo-edge page`, and the page in Debian's chromium
(Playwright) against the Python runtime: as static files, offline, and under `pneumo-edge serve` in both modes.

The full comparison (200 test films + the demo examples, and ms per film) is `pneumo-edge bench-browser`.
"""

import os
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from pneumo_edge.cli import main


ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "export" / "model.int8.onnx"
FP32 = ROOT / "export" / "model.onnx"
EXAMPLES = sorted((ROOT / "examples" / "xrays").rglob("*.jpeg"))
TEST_FILMS = ROOT.parent / "shared" / "data" / "chest_xray" / "test"
PER_CLASS = 10  # test films of each class here; the bench uses 100
HEAT_FILMS = 3  # films whose heat map (~50 model runs each in WebAssembly) is compared here; the bench uses 8
# .ci/run sets this: there a missing browser is a failure, not a skip
REQUIRED = bool(os.environ.get("PNEUMO_EDGE_REQUIRE_BROWSER"))

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not MODEL.is_file(), reason="needs the shipped model export/model.int8.onnx")]  # slow: starts a server or a browser


def need_browser():
    """Playwright and chromium, or a skip that says which is missing (a failure where CI requires them)."""
    from pneumo_edge.benchmarks.browser import chromium_path

    missing = []
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("playwright (pip install playwright)")
    if chromium_path() is None:
        missing.append("chromium (apt-get install chromium)")
    if missing:
        (pytest.fail if REQUIRED else pytest.skip)("not installed: " + ", ".join(missing))


def test_page_command_writes_a_self_contained_folder_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "site"
    r = CliRunner().invoke(main, ["page", "--out", str(out), "--model", str(MODEL)])
    assert r.exit_code == 0, r.output
    assert "wrote" in r.output
    for name in ("index.html", "page.json", "model.int8.onnx", "static/app.js", "static/local/runtime.js",
                 "static/ort/ort.wasm.min.mjs", "static/ort/ort-wasm-simd-threaded.wasm", "static/ort/LICENSE",
                 "static/dicom/dicomParser.min.js", "static/dicom/LICENSE"):
        assert (out / name).is_file(), name
    assert (out / "model.int8.onnx").read_bytes() == MODEL.read_bytes()  # the very file Python uses
    assert '"model": "model.int8.onnx"' in (out / "page.json").read_text()
    html = (out / "index.html").read_text()
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', html).group(1)
    script = next(d for d in csp.split("; ") if d.startswith("script-src"))
    assert script == "script-src 'self' 'wasm-unsafe-eval'" and "default-src 'none'" in csp
    for f in out.rglob("*.*js"):  # nothing is loaded from elsewhere
        assert not re.search(r"https?://(?!web\.dev/|github\.com/cornerstonejs/)", f.read_text("utf-8")), f
    assert "MIT License" in (out / "static/ort/LICENSE").read_text()
    assert "MIT License" in (out / "static/dicom/LICENSE").read_text()

    again = CliRunner().invoke(main, ["page", "--out", str(out), "--model", str(MODEL)])
    assert again.exit_code == 2 and "--force" in again.output
    (out / "stale.txt").write_text("from before")
    forced = CliRunner().invoke(main, ["page", "--out", str(out), "--model", str(MODEL), "--force"])
    assert forced.exit_code == 0, forced.output
    assert not (out / "stale.txt").exists() and (out / "index.html").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["site"]  # no temporary folder left behind


def test_page_command_refuses_a_model_python_cannot_use(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    r = CliRunner().invoke(main, ["page", "--out", str(tmp_path / "site"), "--model", str(bad)])
    assert r.exit_code != 0 and r.output.startswith("error:")
    assert not (tmp_path / "site").exists()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    from pneumo_edge.edge.page import write_page

    return write_page(tmp_path_factory.mktemp("page") / "site", model=MODEL)["out"]


def in_page(folder, files):
    """(browser records, console errors) for `files` given to the static page in `folder`."""
    from pneumo_edge.benchmarks.browser import chromium, open_page, spaced, static_server, with_heatmaps

    with static_server(folder) as url, chromium() as browser:
        page, errors = open_page(browser, url)
        assert page.locator("#local").is_checked() and page.locator("#local").is_disabled()  # static: in-browser only
        got = with_heatmaps(page, files, spaced(files, HEAT_FILMS))
    assert all(r["where"] == "browser" for r in got.values())
    return got, errors


def heat_accepted(got, files) -> int:
    """Films with a compared heat map: those drawn that the guard accepted."""
    from pneumo_edge.benchmarks.browser import spaced

    drawn = {Path(f).name for f in spaced(files, HEAT_FILMS)}
    return sum(r["guard"] == "accepted" for n, r in got.items() if n in drawn)


def films() -> list[str]:
    from pneumo_edge.benchmarks.browser import pick_films

    test = pick_films(TEST_FILMS, PER_CLASS) if (TEST_FILMS / "NORMAL").is_dir() else []
    return [str(p) for p in EXAMPLES] + test


def test_static_page_computes_what_python_computes_fp32(tmp_path):
    """The fp32 file: the page's own code (decoding, grey levels, crop, resize, normalisation, probability,
    guard, heat map) against Python's, with float kernels that round alike: equal to 1e-4 on every film."""
    need_browser()
    if not FP32.is_file():
        pytest.skip("needs the shipped fp32 model export/model.onnx")
    from pneumo_edge.benchmarks.browser import compare, python_reference, spaced
    from pneumo_edge.edge.page import write_page

    files = films()
    got, errors = in_page(write_page(tmp_path / "site", model=FP32)["out"], files)
    s = compare(got, python_reference(files, FP32, spaced(files, HEAT_FILMS)))["summary"]
    assert s["films"] == len(files) >= 16 and s["same_input_pixels"] == len(files)
    assert s["label_agreement"] == 1.0 and s["guard_agreement"] == 1.0, s["disagreements"]
    assert s["max_abs_delta_probability"] <= 1e-4, s["worst_probability"][:2]
    assert s["heatmaps_compared"] == heat_accepted(got, files) >= 2 and s["min_heatmap_correlation"] >= 0.9999
    assert not errors, errors


def test_static_page_matches_python_runtime_int8(site):
    """The INT8 file (what the page ships): the same grey input pixels as Python on every film, the same label
    and guard verdict, heat maps correlated >= 0.90. Its probabilities differ by the INT8 kernels' rounding
    (WebAssembly against x86; the fp32 test above shows the page's own code exact): |delta p| <= 0.01 on at
    least 90% of films, and <= 0.05 on every film, a bound that a wrong normalisation, crop or resize breaks
    by far. The goal of 0.01 on every film is missed on a few films; bench/results/browser.json has the
    216-film numbers and native onnxruntime's own spread on the same films."""
    need_browser()
    from pneumo_edge.benchmarks.browser import compare, python_reference, spaced

    files = films()
    got, errors = in_page(site, files)
    s = compare(got, python_reference(files, MODEL, spaced(files, HEAT_FILMS)))["summary"]
    assert s["films"] == len(files) >= 16
    assert s["same_input_pixels"] == len(files)  # decoding, grey levels, crop and resize: bit for bit
    assert s["label_agreement"] == 1.0 and s["guard_agreement"] == 1.0, s["disagreements"]
    assert s["films_over_0.01"] <= 0.1 * len(files), s["worst_probability"]
    assert s["max_abs_delta_probability"] <= 0.05, s["worst_probability"][:2]
    # The occlusion map is 49 differences of INT8 margins, so the kernels' rounding shows: the goal 0.98 is missed
    # (0.97 on these films, min 0.936 over the bench's 8 in bench/results/browser.json), while the fp32 test above
    # gives >= 0.9999. 0.90 leaves room for another CPU's native INT8 kernels; a map with its cells misplaced
    # correlates about 0.3 (the study's correlation with the mean map).
    assert s["heatmaps_compared"] == heat_accepted(got, files) >= 2 and s["min_heatmap_correlation"] >= 0.90
    assert not errors, errors


def test_offline_in_browser_classification_of_a_demo_example(site):
    """With the network cut after the page loaded, a demo X-ray is still classified: nothing is fetched or sent."""
    need_browser()
    from pneumo_edge.benchmarks.browser import chromium, classify_in_page, open_page, python_reference, static_server

    example = str(EXAMPLES[0])
    with static_server(site) as url, chromium() as browser:
        page, errors = open_page(browser, url, offline=True)
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url) if r.url.startswith("http") else None)
        got = classify_in_page(page, [example])[Path(example).name]
    want = python_reference([example], MODEL)[Path(example).name]
    assert got["label"] == want["label"] and abs(got["probability"] - want["probability"]) <= 0.01
    assert requests == [] and not errors, (requests, errors)


RESIZE_JS = """async ([b64, w, h, size]) => {
  const px = await import("./static/local/pixels.js");
  const r = px.resizeGray(Uint8Array.from(atob(b64), c => c.charCodeAt(0)), w, h, size, "center-crop-bilinear");
  return btoa(String.fromCharCode(...r));
}"""


def test_resize_in_the_browser_is_pillows_bit_for_bit(site):
    """Wide, tall, square, barely larger, much larger: Pillow's coefficients, rounding and pass order."""
    need_browser()
    import base64

    import numpy as np

    from pneumo_edge.benchmarks.browser import chromium, open_page, static_server
    from pneumo_edge.edge.imaging import resize_gray

    rng = np.random.default_rng(0)
    with static_server(site) as url, chromium() as browser:
        page, _ = open_page(browser, url)
        for h, w in [(256, 321), (321, 256), (300, 260), (400, 256), (1000, 700), (224, 300), (300, 224),
                     (257, 900), (900, 257), (225, 225), (100, 80)]:
            grey = rng.integers(0, 256, (h, w), dtype=np.uint8)
            got = page.evaluate(RESIZE_JS, [base64.b64encode(grey.tobytes()).decode(), w, h, 224])
            want = resize_gray(grey, 224)
            assert np.array_equal(np.frombuffer(base64.b64decode(got), np.uint8).reshape(224, 224), want), (h, w)


def synthetic_dicom(path, **header):
    """A 12-bit uncompressed chest CR, MONOCHROME1 with a rescale: the high-bit-depth path of the decoder."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    yy, xx = np.mgrid[0:300, 0:260]
    noise = np.random.default_rng(1).normal(0, 40, (300, 260))
    arr = (1000 + 2500 * np.exp(-((xx - 130) ** 2 + (yy - 150) ** 2) / 8000) + noise).clip(0, 4095).astype(np.uint16)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.Modality, ds.BodyPartExamined, (ds.Rows, ds.Columns) = "CR", "CHEST", arr.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = "1.5", "-100"
    for k, v in header.items():
        setattr(ds, k, v)
    ds.PixelData = arr.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dicom_in_the_browser_decodes_as_python_does(site, tmp_path):
    """Real JPEG-baseline DICOMs (8-bit, MONOCHROME1 and 2) and a 12-bit uncompressed one: the same pixels,
    label and guard verdict as Python; what the browser cannot decode alike names the server mode."""
    need_browser()
    pytest.importorskip("pydicom")
    from pneumo_edge.benchmarks.browser import chromium, classify_in_page, compare, open_page, python_reference, static_server

    real = sorted((ROOT.parent / "shared" / "data" / "external_cxr").glob("*.dcm"))
    files = [str(p) for p in real] + [str(synthetic_dicom(tmp_path / "cr12.dcm"))]
    windowed = str(synthetic_dicom(tmp_path / "windowed.dcm", WindowCenter="2000", WindowWidth="3000"))
    gif = tmp_path / "anim.png"
    gif.write_bytes(b"GIF89a" + b"\0" * 64)
    with static_server(site) as url, chromium() as browser:
        page, errors = open_page(browser, url)
        got = classify_in_page(page, files + [windowed, str(gif)], heatmaps=False)
        texts = {n: page.locator(f'.card[data-file="{n}"] .prob').inner_text() for n in ("windowed.dcm", "anim.png")}
    s = compare({k: v for k, v in got.items() if k in {Path(f).name for f in files}},
                python_reference(files, MODEL))["summary"]
    assert s["same_input_pixels"] == len(files), s
    assert s["label_agreement"] == 1.0 and s["guard_agreement"] == 1.0, s["disagreements"]
    assert got["windowed.dcm"]["label"] == "ERROR" and "needs the server mode" in texts["windowed.dcm"]
    assert got["anim.png"]["label"] == "ERROR" and "unsupported format (GIF)" in texts["anim.png"]
    assert not errors, errors


def test_served_page_uploads_by_default_and_classifies_locally_when_switched(tmp_path):
    """Under `serve`: upload (the default) and in-browser give the same answers; the page is cross-origin
    isolated, so onnxruntime-web may use several threads."""
    need_browser()
    pytest.importorskip("fastapi", reason="the [serve] extra (fastapi) is not installed")
    from test_serve import start_server

    from pneumo_edge.benchmarks.browser import chromium, classify_in_page, open_page

    files = [str(p) for p in EXAMPLES[:2] + EXAMPLES[-2:]]
    proc, base = start_server(MODEL, "--threads", "1")
    try:
        with chromium() as browser:
            page, errors = open_page(browser, f"{base}/")
            assert page.evaluate("() => crossOriginIsolated")
            assert not page.locator("#local").is_checked()
            uploaded = classify_in_page(page, files)
            page.locator("#local").check()
            local = classify_in_page(page, files)
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    assert {r["where"] for r in uploaded.values()} == {"server"}
    assert {r["where"] for r in local.values()} == {"browser"}
    for name in uploaded:
        assert uploaded[name]["label"] == local[name]["label"]
        assert abs(uploaded[name]["probability"] - local[name]["probability"]) <= 0.01
        assert uploaded[name]["guard"] == local[name]["guard"] == "accepted"
    assert not errors, errors


def test_bench_browser_command_writes_its_result_file(tmp_path):
    """`pneumo-edge bench-browser` end to end on a few films (the full run is `make bench`)."""
    need_browser()
    import json

    data = tmp_path / "films"
    for cls in ("NORMAL", "PNEUMONIA"):
        (data / cls).mkdir(parents=True)
        shutil.copy(next(p for p in EXAMPLES if p.parent.name == cls), data / cls)
    examples = tmp_path / "examples"
    examples.mkdir()
    shutil.copy(EXAMPLES[-1], examples / "demo.jpeg")
    out = tmp_path / "browser.json"
    args = ["bench-browser", "--model", str(MODEL), "--images", str(data), "--per-class", "1", "--examples",
            str(examples), "--threads", "1", "--fp32-model", "", "--external", "", "--out", str(out), "-q"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "identical input pixels 3/3" in r.output and "wrote" in r.output
    result = json.loads(out.read_text())
    assert result["parity"]["films"] == 3 and result["films"] == {"test": 2, "examples": 1, "source": str(data)}
    assert result["timing"][0]["threads"] == 1 and result["timing"][0]["p50_ms"] > 0
    assert result["native_timing"]["p50_ms"] > 0 and result["fp32_parity"] is None and result["external"] is None
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 2 and "--force" in again.output  # a result file is not overwritten silently


def test_serve_offers_the_in_browser_mode():
    """What the page's in-browser mode needs from `serve`: the served ONNX file, the runtime's files with the
    right types, cross-origin isolation, and a policy that allows WebAssembly and nothing wider."""
    pytest.importorskip("fastapi", reason="the [serve] extra (fastapi) is not installed")
    from fastapi.testclient import TestClient

    from pneumo_edge.edge.serve import ServeConfig, create_app

    with TestClient(create_app(ServeConfig(model=str(MODEL), threads=1)), base_url="http://127.0.0.1") as client:
        assert client.get("/v1/model.onnx").content == MODEL.read_bytes()
        assert client.get("/page.json").json() == {"model": "v1/model.onnx", "file": MODEL.name, "server": True}
        page = client.get("/")
        assert page.headers["cross-origin-opener-policy"] == "same-origin"
        assert page.headers["cross-origin-embedder-policy"] == "require-corp"
        csp = page.headers["content-security-policy"]
        assert "script-src 'self' 'wasm-unsafe-eval';" in csp and "'unsafe-eval'" not in csp
        wasm = client.get("/static/ort/ort-wasm-simd-threaded.wasm")
        assert wasm.headers["content-type"] == "application/wasm" and wasm.content[:4] == b"\0asm"
        for name in ("local/runtime.js", "ort/ort.wasm.min.mjs", "dicom/dicomParser.min.js"):
            r = client.get(f"/static/{name}")
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript"), name
            assert r.headers["cross-origin-embedder-policy"] == "require-corp"  # module workers need it too


def test_browser_tools_are_installed_by_ci():
    text = (ROOT / ".ci" / "run").read_text()
    assert "chromium" in text and "playwright" in text and "PNEUMO_EDGE_REQUIRE_BROWSER" in text
    assert shutil.which("bash")


def test_the_pages_occlusion_constants_and_caption_are_pythons():
    """The in-browser map repeats edge/heatmap.py's grid, grey and floor, and its caption; they must not drift."""
    from pneumo_edge.edge.heatmap import FLOOR, GREY, SHIPPED, caption

    static = ROOT / "pneumo_edge" / "edge" / "static" / "local"
    m = re.search(r"OCCLUSION = \{ grid: (\d+), grey: (\d+), floor: ([\d.]+) \}", (static / "maths.js").read_text())
    assert m and (int(m[1]), int(m[2]), float(m[3])) == (7, GREY, FLOOR) and SHIPPED == "occlusion"
    js = re.search(r"HEATMAP_MEANING = target => `(.+)`;", (static / "runtime.js").read_text())[1]
    assert js.replace("${target}", "PNEUMONIA") == caption(SHIPPED, "PNEUMONIA")
