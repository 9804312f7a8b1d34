"""A real browser against a real gunicorn: upload a real CT slice and see the answer on the page.

Needs Debian's chromium and chromium-driver (`.ci/run` installs them); skips with the reason otherwise.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO, shared_path

pytestmark = pytest.mark.slow
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/ready", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{url}/ready did not answer 200 within {seconds} s")


@pytest.fixture(scope="module")
def server(trained_project):
    """gunicorn, as in production, serving the tiny trained project on loopback."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env |= {"HOST": "127.0.0.1", "PORT": str(port), "WEB_CONCURRENCY": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--pythonpath", str(REPO), "-c", str(REPO / "gunicorn.conf.py"), "app:app"],
        cwd=trained_project.root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, 120)
        yield url
    finally:
        process.terminate()
        process.wait(30)


@pytest.fixture
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("Chromium or chromedriver not installed (Debian: apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--window-size=1100,1300"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_upload_a_ct_slice_and_see_label_probabilities_and_heatmap(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    slice_png = next(iter(sorted(shared_path("data/chest-ct/valid").glob("adenocarcinoma*/*.png"))))
    browser.get(server)
    assert "not for clinical use" in browser.page_source.lower()
    browser.find_element(By.ID, "file-input").send_keys(str(slice_png))
    WebDriverWait(browser, 10).until(ready.element_to_be_clickable((By.ID, "submit"))).click()
    wait = WebDriverWait(browser, 120)
    wait.until(ready.visibility_of_element_located((By.ID, "result")))
    label = browser.find_element(By.ID, "label").text
    assert label in ("adenocarcinoma", "normal")
    bars = browser.find_elements(By.CSS_SELECTOR, "#bars li")
    assert len(bars) == 2 and all("%" in bar.text for bar in bars)
    heatmap = wait.until(ready.visibility_of_element_located((By.ID, "gradcam-img")))
    assert heatmap.get_attribute("src").startswith("data:image/png;base64,")
    assert browser.execute_script("return arguments[0].naturalWidth", heatmap) > 0
    screenshot = Path(os.environ.get("UI_SCREENSHOT_DIR", tmp_path)) / "upload_result.png"
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(screenshot))
    print(f"\nscreenshot: {screenshot}")
    assert screenshot.stat().st_size > 10_000


def test_a_non_image_shows_an_inline_error(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    fake = tmp_path / "notes.png"
    fake.write_text("this is not an image")
    browser.get(server)
    browser.find_element(By.ID, "file-input").send_keys(str(fake))
    WebDriverWait(browser, 10).until(ready.element_to_be_clickable((By.ID, "submit"))).click()
    error = WebDriverWait(browser, 30).until(ready.visibility_of_element_located((By.ID, "error")))
    assert "unsupported file type" in error.text.lower()
