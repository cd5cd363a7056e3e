"""`globallocal serve` in a real headless browser: upload, type, Segment, see the overlay and the ranking.

Needs Debian's chromium and chromium-driver (.ci/run installs them; `make browser` too).
Set GLOBALLOCAL_SCREENSHOT=docs/serve.png to refresh the README's screenshot.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import REPO

pytest.importorskip("gradio", reason="the [demo] extra (Gradio) is not installed")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (make install)")

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER):
    reason = "Debian's chromium and chromium-driver are not installed (make browser installs them)"
    if os.environ.get("CI"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason, allow_module_level=True)

from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

START_SECONDS = 240  # models, spaCy and Gradio load on a busy 2-core machine
ANSWER_SECONDS = 120


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def server(tmp_path, tiny_config_paths, tiny_checkpoints):
    """`globallocal serve` on a free port with tiny random weights; stopped at the end whatever happens."""
    port = _free_port()
    log = tmp_path / "serve.log"
    command = [sys.executable, "-m", "globallocal", "serve", "--port", str(port), "--proposals", "masks",
               "--clip-model", str(tiny_config_paths["vit"]), "--clip-weights", str(tiny_checkpoints["vit"])]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    with log.open("w") as output:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + START_SECONDS
        while True:
            if process.poll() is not None:
                pytest.fail(f"serve exited with {process.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(url, timeout=5) as page:
                    if page.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"serve did not answer within {START_SECONDS} s:\n{log.read_text()}")
            time.sleep(1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--no-first-run", f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1400,1400"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _wait_for(driver, condition, seconds, what):
    def check(_):
        try:
            return condition()
        except Exception:  # an element re-rendered between finding and reading it
            return False

    try:
        return WebDriverWait(driver, seconds, poll_frequency=0.5).until(check)
    except Exception:
        status = driver.find_element(By.CSS_SELECTOR, "#status").text
        pytest.fail(f"timed out waiting for {what}; the page's status line says: {status!r}")


def test_upload_type_segment_and_rerank_in_a_browser(server, browser, example, tmp_path):
    browser.get(server)
    _wait_for(browser, lambda: browser.find_element(By.CSS_SELECTOR, "#segment").is_displayed(), 60, "the page")
    browser.find_element(By.CSS_SELECTOR, "#photo input[type=file]").send_keys(str(example["image"]))
    _wait_for(browser, lambda: browser.find_element(By.CSS_SELECTOR, "#overlay img").get_attribute("src"), 60,
              "the photo's preview")
    masks = sorted(example["mask_dir"].iterdir())
    browser.find_element(By.CSS_SELECTOR, "#masks input[type=file]").send_keys("\n".join(map(str, masks)))
    _wait_for(browser, lambda: masks[-1].stem in browser.find_element(By.CSS_SELECTOR, "#masks").text, 60,
              "the mask uploads")
    browser.find_element(By.CSS_SELECTOR, "#phrases textarea").send_keys("the wooden chair")
    browser.find_element(By.CSS_SELECTOR, "#segment").click()

    _wait_for(browser, lambda: "image features" in browser.find_element(By.CSS_SELECTOR, "#timing").text,
              ANSWER_SECONDS, "the answer")
    thumbnails = browser.find_elements(By.CSS_SELECTOR, "#ranked .grid-container .thumbnail-item")
    assert len(thumbnails) == len(masks)  # top 8 of 3 proposals
    captions = [item.find_element(By.TAG_NAME, "img").get_attribute("alt") for item in thumbnails]
    assert [caption.split(" · ")[0] for caption in captions] == ["#1", "#2", "#3"]
    assert all(" = global " in caption and " + local " in caption for caption in captions)
    assert browser.find_element(By.CSS_SELECTOR, "#overlay img").get_attribute("src")
    assert "noun phrase the wooden chair" in browser.find_element(By.CSS_SELECTOR, "#summary").text
    downloads = browser.find_element(By.CSS_SELECTOR, "#downloads").text.replace("\n", "")  # name and suffix apart
    assert "img_44266_mask.png" in downloads and "img_44266.json" in downloads
    assert browser.find_element(By.CSS_SELECTOR, "#status").text == ""

    # Moving alpha re-ranks from the cached features, and the timing line says so.
    alpha = browser.find_element(By.CSS_SELECTOR, "#weight0 input[type=number]")
    alpha.send_keys(Keys.CONTROL, "a")
    alpha.send_keys("0.5", Keys.ENTER)
    _wait_for(browser, lambda: "image tower not run" in browser.find_element(By.CSS_SELECTOR, "#timing").text,
              ANSWER_SECONDS, "the re-ranking")

    shot = tmp_path / "serve.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    if os.environ.get("GLOBALLOCAL_SCREENSHOT"):
        from PIL import Image

        target = Path(os.environ["GLOBALLOCAL_SCREENSHOT"])
        target.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(shot) as picture:  # smaller and a palette PNG: a fraction of the bytes, still legible
            small = picture.convert("RGB").resize((picture.width * 3 // 4, picture.height * 3 // 4), Image.LANCZOS)
            small.quantize(colors=96).save(target, optimize=True)
