"""The web page in a real browser: Debian's chromium driven by Playwright, against `pneumo-edge serve`.

Uploads a real NORMAL and a real PNEUMONIA X-ray (the committed examples) and a colour photo, with the
keyboard, and reads what the page says about each.
"""

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


pytest.importorskip("fastapi", reason="the [serve] extra (fastapi) is not installed")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (apt-get install chromium)")]  # slow: starts a server or a browser

ROOT = Path(__file__).resolve().parents[2]
MODEL = Path(os.environ.get("PNEUMO_EDGE_MODEL") or ROOT / "export" / "model.onnx")  # as `serve` picks it
EXAMPLES = ROOT / "examples" / "xrays"


def photo(path: Path) -> Path:
    """A colour photograph (scikit-image's cat), else a colourful synthetic picture."""
    try:
        from skimage import data

        arr = data.chelsea()
    except ImportError:
        yy, xx = np.mgrid[0:300, 0:400]
        arr = np.stack([xx % 256, yy % 256, (xx + yy) % 256], -1).astype(np.uint8)
    Image.fromarray(arr).save(path, quality=90)
    return path


@pytest.fixture(scope="module")
def server():
    import httpx

    from test_serve import start_server

    if not MODEL.is_file():
        pytest.skip("needs the shipped model export/model.onnx")
    proc, base = start_server(MODEL)
    yield base, httpx.get(f"{base}/v1/model").json()
    proc.terminate()
    proc.communicate(timeout=30)


def accepted_example(base: str, label: str) -> Path:
    """The first committed X-ray that the served model gives `label` (the page test checks the page, not the model)."""
    import httpx

    for f in sorted((EXAMPLES / label).iterdir()):
        if httpx.post(f"{base}/v1/predict", files={"file": (f.name, f.read_bytes())}, timeout=60).json()["label"] == label:
            return f
    pytest.fail(f"the served model labels none of the committed {label} examples {label}")


def test_page_classifies_xrays_and_refuses_a_photo(server, tmp_path):
    base, model = server
    normal, pneumonia = (accepted_example(base, label) for label in ("NORMAL", "PNEUMONIA"))
    cat = photo(tmp_path / "cat.jpeg")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.set_default_timeout(60_000)  # a loaded 2-core CI box is slow; the checks, not the clock, decide
            sync_api.expect.set_options(timeout=60_000)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(base + "/")
            sync_api.expect(page.locator("#model")).to_contain_text(model["file"])
            # keyboard only: Tab to the drop zone, Enter opens the file chooser
            for _ in range(10):
                page.keyboard.press("Tab")
                if page.evaluate("document.activeElement.id") == "drop":
                    break
            assert page.evaluate("document.activeElement.id") == "drop"
            chooser = None
            for key in ("Enter", "Space", "Enter"):  # keyboard only; a loaded box sometimes drops the first press
                try:
                    with page.expect_file_chooser(timeout=15_000) as info:
                        page.keyboard.press(key)
                    chooser = info.value
                    break
                except sync_api.TimeoutError:
                    page.locator("#drop").focus()
            assert chooser is not None, "the drop zone opened no file chooser from the keyboard"
            chooser.set_files([str(normal), str(pneumonia), str(cat)])
            sync_api.expect(page.locator("#status")).to_contain_text("all analysed", timeout=60_000)
            cards = {page.locator(".card .name").nth(i).inner_text(): page.locator(".card").nth(i)
                     for i in range(page.locator(".card").count())}
            assert set(cards) == {normal.name, pneumonia.name, cat.name}
            assert "NORMAL" in cards[normal.name].locator(".label").inner_text()
            assert "PNEUMONIA" in cards[pneumonia.name].locator(".label").inner_text()
            assert "not a chest X-ray" in cards[cat.name].locator(".label").inner_text()
            assert "rejected" in cards[cat.name].locator(".guard").inner_text()
            for name in (normal.name, pneumonia.name):
                card = cards[name]
                assert "threshold" in card.locator(".prob").inner_text()
                assert "accepted" in card.locator(".guard").inner_text()
                src = card.locator("img.picture").get_attribute("src") or ""
                if model["heatmaps"]:
                    assert src.startswith("data:image/png;base64,")
                    assert "Heat map" in card.locator(".caption").inner_text()
                    png = __import__("base64").b64decode(src.split(",", 1)[1])
                    assert Image.open(io.BytesIO(png)).format == "PNG"
                else:
                    assert src.startswith("blob:")  # the X-ray itself when the model has no heat maps
            assert not errors, errors
        finally:
            browser.close()


def test_page_asks_for_the_token_once(tmp_path):
    from test_serve import start_server

    from pneumo_edge.edge.tokens import TokenStore

    if not MODEL.is_file():
        pytest.skip("needs the shipped model export/model.onnx")
    tokens = tmp_path / "tokens.json"
    secret = TokenStore(tokens).create("browser")
    proc, base = start_server(MODEL, "--tokens", str(tokens))
    xray = sorted((EXAMPLES / "NORMAL").iterdir())[0]
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            try:
                page = browser.new_page()
                page.set_default_timeout(60_000)
                sync_api.expect.set_options(timeout=60_000)
                page.goto(base + "/")
                sync_api.expect(page.locator("#signin")).to_be_visible()
                sync_api.expect(page.locator("#model")).to_contain_text("needs an API token")
                page.locator("#token").fill(secret)
                page.keyboard.press("Enter")
                sync_api.expect(page.locator("#signin")).to_be_hidden()
                sync_api.expect(page.locator("#model")).to_contain_text(MODEL.name)
                page.locator("#files").set_input_files(str(xray))
                sync_api.expect(page.locator("#status")).to_contain_text("all analysed")
                assert "Not analysed" not in page.locator(".card .label").inner_text()
                page.reload()  # the same tab: not asked again
                sync_api.expect(page.locator("#model")).to_contain_text(MODEL.name)
                assert page.locator("#signin").is_hidden()
                page.locator("#local").check()  # in-browser mode: the model file is fetched with the token too
                sync_api.expect(page.locator("#local-status")).to_contain_text(f"Model {MODEL.name} loaded")
                page.locator("#clear").click()
                page.locator("#files").set_input_files(str(xray))
                sync_api.expect(page.locator('.card[data-where="browser"][data-label]')).to_have_count(1)
            finally:
                browser.close()
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
    assert secret not in out
