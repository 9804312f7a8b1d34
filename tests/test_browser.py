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
from tests.tabular_support import COLORECTAL, run_task, tabular_project

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
def tabular_models(trained_project, tmp_path_factory):
    """The tabular tasks trained into the tiny project's artifacts (colorectal on a sample, if the data is there)."""
    root = trained_project.root / "artifacts/tabular"
    manager = tabular_project(tmp_path_factory.mktemp("tabular-browser"), config={"tabular": {"root_dir": str(root)}})
    tasks = ["breast-cancer"] + (["colorectal-survival"] if COLORECTAL.is_file() else [])
    for task in tasks:
        run_task(manager, task)
    return manager


@pytest.fixture(scope="module")
def server(trained_project, tabular_models):
    """gunicorn, as in production, serving the tiny trained project (chest CT and tabular tasks) on loopback."""
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


def fill(browser, values: dict) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    for name, value in values.items():
        field = browser.find_element(By.NAME, name)
        if field.tag_name == "select":
            Select(field).select_by_value(str(value))
        else:
            field.clear()
            field.send_keys(str(value))


def submit_and_wait(browser, element_id: str, seconds: float = 30):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    browser.find_element(By.ID, "submit").click()
    return WebDriverWait(browser, seconds).until(ready.visibility_of_element_located((By.ID, element_id)))


def breast_test_row(tabular_models) -> dict:
    from cancer_classifier.tabular.components.data import load_split

    test, _ = load_split(tabular_models.tabular().ingestion("breast-cancer").root_dir, "test")
    return test.iloc[0].to_dict()


def test_breast_cancer_form_shows_label_probability_and_version(server, browser, tabular_models, tmp_path):
    from selenium.webdriver.common.by import By

    browser.get(f"{server}/tabular/breast-cancer")
    assert "not for clinical use" in browser.page_source.lower()
    assert browser.find_element(By.NAME, "mean radius").get_attribute("max") == "50"
    fill(browser, breast_test_row(tabular_models))
    submit_and_wait(browser, "result")
    assert browser.find_element(By.ID, "label").text in ("benign", "malignant")
    assert "%" in browser.find_element(By.ID, "probability").text
    assert len(browser.find_elements(By.CSS_SELECTOR, "#bars li")) == 2
    assert "breast-cancer-classifier version 1" in browser.find_element(By.ID, "answered-by").text
    screenshot = Path(os.environ.get("UI_SCREENSHOT_DIR", tmp_path)) / "tabular_breast_cancer.png"
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(screenshot))


def test_the_form_refuses_an_out_of_range_value_before_sending(server, browser, tabular_models):
    from selenium.webdriver.common.by import By

    browser.get(f"{server}/tabular/breast-cancer")
    fill(browser, breast_test_row(tabular_models) | {"mean radius": 999})
    error = submit_and_wait(browser, "error", 10)
    assert "mean radius" in error.text
    assert not browser.find_element(By.ID, "result").is_displayed()


def test_colorectal_form_is_labelled_prognostic_and_predicts(server, browser):
    from selenium.webdriver.common.by import By

    shared_path("data/colorectal/colorectal_cancer_dataset.csv")
    browser.get(f"{server}/tabular/colorectal-survival")
    assert "PROGNOSTIC" in browser.find_element(By.CSS_SELECTOR, "header").text
    fill(browser, {
        "Country": "Japan", "Age": 70, "Gender": "M", "Cancer_Stage": "Localized", "Tumor_Size_mm": 25,
        "Family_History": "No", "Smoking_History": "No", "Alcohol_Consumption": "No", "Obesity_BMI": "Normal",
        "Diet_Risk": "Low", "Physical_Activity": "High", "Diabetes": "No", "Inflammatory_Bowel_Disease": "No",
        "Genetic_Mutation": "No", "Screening_History": "Regular", "Early_Detection": "Yes",
        "Treatment_Type": "Surgery", "Incidence_Rate_per_100K": 30, "Mortality_Rate_per_100K": 10,
        "Urban_or_Rural": "Urban", "Economic_Classification": "Developed", "Healthcare_Access": "High",
        "Insurance_Status": "Insured",
    })
    submit_and_wait(browser, "result")
    assert browser.find_element(By.ID, "label").text in ("Yes", "No")
    assert "(prognostic)" in browser.find_element(By.ID, "answered-by").text
