"""The page at /ui in a real browser (headless Chromium from Debian's packages, driven by selenium):
a real photo uploaded, the overlay drawn at the photo's size, the legend listing the model's classes,
the mask downloadable; a bad upload shows the server's message; a sample image works in one click."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from PIL import Image

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="Chromium not installed (CI installs it: apt-get install chromium chromium-driver)",
)


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="chromium-")
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1280,900",
    ):
        opts.add_argument(arg)
    drv = webdriver.Chrome(service=Service(DRIVER), options=opts)
    drv.set_script_timeout(60)
    yield drv
    drv.quit()
    shutil.rmtree(profile, ignore_errors=True)


def wait(drv, condition, seconds=60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(drv, seconds, poll_frequency=0.1).until(condition)


def test_the_page_segments_a_real_photo(browser, request, tmp_path):
    """UI_MODEL (a model folder) and UI_SCREENSHOT (a PNG path) let the README's screenshot be taken
    with the default model; by default the tiny test model and a temporary file."""
    import requests
    import skimage.data
    from selenium.webdriver.common.by import By

    from loadtest.server import served

    model = os.environ.get("UI_MODEL") or request.getfixturevalue("tiny_export")

    photo = tmp_path / "chelsea.jpg"
    Image.fromarray(skimage.data.chelsea()).save(photo, quality=92)  # 451 x 300
    bad = tmp_path / "notes.png"
    bad.write_text("this is not a picture")
    with served(model) as proc:
        drv = browser
        samples = requests.get(proc.url + "/ui/samples", timeout=10).json()
        drv.get(proc.url + "/ui")
        wait(drv, lambda d: "classes (background, butterfly, leaf)" in d.find_element(By.ID, "model").text)
        assert samples  # the export kept some held-out images beside the model
        wait(drv, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#samples button.sample")) == len(samples))
        drv.find_element(By.ID, "file").send_keys(str(photo))
        wait(drv, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-done"))
        size = drv.execute_script(
            "const i = document.getElementById('overlay'); return [i.naturalWidth, i.naturalHeight, i.complete];"
        )
        assert size == [451, 300, True]
        sure = drv.execute_script(
            "const i = document.getElementById('confidence'); return [i.naturalWidth, i.naturalHeight, i.complete, "
            "document.getElementById('sure').hidden];"
        )
        assert sure == [451, 300, True, False]  # the confidence map, at the photo's size
        status = drv.find_element(By.ID, "status").text
        assert "mean confidence 0." in status and "% of the pixels uncertain" in status and "(model tiny@" in status
        names = [e.text for e in drv.find_elements(By.CSS_SELECTOR, "#legend li .name")]
        fractions = [float(e.text.rstrip(" %")) for e in drv.find_elements(By.CSS_SELECTOR, "#legend li .fraction")]
        assert names == ["background", "butterfly", "leaf"] and abs(sum(fractions) - 100) < 0.5
        link = drv.find_element(By.ID, "download")
        assert link.get_attribute("aria-disabled") == "false" and link.get_attribute("download") == "chelsea.mask.png"
        mask_size = drv.execute_async_script(
            "const done = arguments[0]; fetch(document.getElementById('download').href).then(r => r.blob())"
            ".then(b => createImageBitmap(b)).then(i => done([i.width, i.height]));"
        )
        assert mask_size == [451, 300]
        first = drv.find_element(By.TAG_NAME, "body").get_attribute("data-done")
        drv.find_element(By.ID, "file").send_keys(str(bad))
        wait(drv, lambda d: d.find_element(By.ID, "error").is_displayed())
        assert (
            "415" in drv.find_element(By.ID, "error").text and "not an image" in drv.find_element(By.ID, "error").text
        )
        drv.find_element(By.CSS_SELECTOR, "#samples button.sample").click()
        wait(drv, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-done") != first)
        assert not drv.find_element(By.ID, "error").is_displayed()
        drv.save_screenshot(os.environ.get("UI_SCREENSHOT") or str(tmp_path / "ui.png"))  # a held-out sample, segmented
    assert Path(os.environ.get("UI_SCREENSHOT") or tmp_path / "ui.png").stat().st_size > 10_000
