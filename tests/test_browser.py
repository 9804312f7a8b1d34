"""A real browser against a real gunicorn: upload a real CT slice and see the answer on the page.

Needs Debian's chromium and chromium-driver (`.ci/run` installs them); skips with the reason otherwise.
"""

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from tests.conftest import shared_path
from tests.support import Gunicorn
from tests.tabular_support import COLORECTAL, run_task, tabular_project

pytestmark = pytest.mark.slow
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
DISPLAY_NAMES = ("Adenocarcinoma", "Normal")  # config.yaml's serving.class_names for the tiny model's classes


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
def server(trained_project, tabular_models, tmp_path_factory):
    """gunicorn, as in production, serving the tiny trained project (chest CT and tabular tasks) on loopback."""
    with Gunicorn(trained_project.root, log=tmp_path_factory.mktemp("browser-server") / "gunicorn.log") as gunicorn:
        gunicorn.wait_ready(120)
        yield gunicorn.url


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
    assert label in DISPLAY_NAMES  # serving.class_names; /predict answers with the class names
    names = [name.text for name in browser.find_elements(By.CSS_SELECTOR, "#bars .bar-name")]
    assert sorted(names) == sorted(DISPLAY_NAMES) and label in names
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


def upload_slice(browser, server):
    """The chest CT page with a real slice classified: the result panel shown."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    slice_png = next(iter(sorted(shared_path("data/chest-ct/valid").glob("adenocarcinoma*/*.png"))))
    browser.get(server)
    browser.find_element(By.ID, "file-input").send_keys(str(slice_png))
    WebDriverWait(browser, 10).until(ready.element_to_be_clickable((By.ID, "submit"))).click()
    WebDriverWait(browser, 120).until(ready.visibility_of_element_located((By.ID, "result")))


# Whatever the page shows in #label and each .bar-name, none of it may reach past its box or the screen.
OVERFLOW = """
const width = window.innerWidth;
const boxes = [document.getElementById("label"), ...document.querySelectorAll("#bars .bar-name")];
return {
  page: document.documentElement.scrollWidth - width,
  clipped: boxes.filter((box) => box.scrollWidth > box.clientWidth + 1 || box.getBoundingClientRect().right > width)
    .map((box) => box.textContent),
  lines: boxes.map((box) => box.getBoundingClientRect().height / parseFloat(getComputedStyle(box).lineHeight)),
};
"""


def test_long_class_names_wrap_on_a_phone(server, browser):
    from selenium.webdriver.common.by import By

    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": 360, "height": 780, "deviceScaleFactor": 2, "mobile": True})
    upload_slice(browser, server)
    assert browser.execute_script("return window.innerWidth") == 360
    assert browser.execute_script(OVERFLOW)["page"] <= 0
    # The tiny model has two short classes: show the project's longest names, one without spaces.
    long_names = [["Squamous cell carcinoma", 0.6], ["large.cell.carcinoma", 0.4]]
    browser.execute_script(
        "document.getElementById('label').textContent = arguments[0][0][0];"
        "probabilityBars.render(document.getElementById('bars'), arguments[0], arguments[0][0][0]);", long_names)
    assert [n.text for n in browser.find_elements(By.CSS_SELECTOR, "#bars .bar-name")] == [n for n, _ in long_names]
    layout = browser.execute_script(OVERFLOW)
    assert layout["page"] <= 0 and layout["clipped"] == [], layout
    assert all(lines >= 1.9 for lines in layout["lines"][1:]), layout  # both bar names wrapped, not squeezed


def test_the_model_card_page_from_the_chest_ct_page(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server)
    browser.find_element(By.LINK_TEXT, "model card").click()  # Chromium's own Accept header: the page
    WebDriverWait(browser, 10).until(ready.text_to_be_present_in_element((By.TAG_NAME, "h1"), "Model card"))
    assert browser.current_url == f"{server}/model-card"
    assert "not for clinical use" in browser.find_element(By.CSS_SELECTOR, "header.banner").text.lower()
    rows = browser.find_elements(By.CSS_SELECTOR, "#card-metrics tbody tr")
    assert "ROC-AUC" in [row.find_element(By.TAG_NAME, "td").text for row in rows]
    assert all(" – " in row.find_elements(By.TAG_NAME, "td")[2].text for row in rows)  # each with its interval
    assert [th.text for th in browser.find_elements(By.CSS_SELECTOR, "#card-counts th")][1:] == list(DISPLAY_NAMES)
    assert browser.find_elements(By.CSS_SELECTOR, "#card-limits li")


FETCH = """
const done = arguments[arguments.length - 1];
pageFetch.json(arguments[0]).then((body) => done({body: body}), (error) => done({error: error.message}));
"""


@pytest.mark.parametrize(("url", "expected"), [
    ("/nope", "The requested URL was not found on the server."),  # a JSON error reply: its message
    ("/model-card.md", "The server's reply was not JSON (status 200)."),
    ("http://127.0.0.1:9/", "Could not reach the server: "),  # blocked as the network would be
])
def test_the_fetch_helper_turns_each_failure_into_one_message(server, browser, url, expected):
    browser.get(server)
    answer = browser.execute_async_script(FETCH, url)
    assert expected.lower() in answer.get("error", "").lower(), answer
    assert browser.execute_async_script(FETCH, "/health")["body"]["status"] == "ok"


# window.fetch replaced by one that never answers: it only ends when the caller's signal aborts it.
SILENT_FETCH = """
window.fetch = function (url, init) {
  return new Promise(function (resolve, reject) {
    init.signal.addEventListener("abort", function () { reject(init.signal.reason); });
  });
};
"""


def test_the_fetch_helper_gives_up_on_a_server_that_never_answers(server, browser):
    """A server that says nothing (the page's CSP allows only its own origin, so the silence is played by
    fetch itself): one message once the timeout passes, not a spinner forever."""
    browser.get(server)
    browser.execute_script(SILENT_FETCH)
    started = time.monotonic()
    answer = browser.execute_async_script(FETCH.replace("(arguments[0])", "(arguments[0], {timeoutSeconds: 1})"), "/")
    assert answer == {"error": "The server did not answer within 1 s; try again."}
    assert 1 <= time.monotonic() - started < 10


# window.fetch replaced by one that holds each request until the test answers it with a Response.
HOLD_FETCH = """
window.heldFetch = [];
window.fetch = function () { return new Promise(function (resolve) { window.heldFetch.push(resolve); }); };
"""
ANSWER = """
const done = arguments[arguments.length - 1];
const [index, status, body, type] = arguments;
window.heldFetch[index](new Response(body, {status: status, headers: type ? {"Content-Type": type} : {}}));
setTimeout(done, 200);  // the page's handlers run
"""
PREDICTION = json.dumps({"label": "normal", "probabilities": {"normal": 0.9, "adenocarcinoma": 0.1},
                         "in_distribution": True, "ood_score": 0.2})


def tiny_png(path: Path) -> Path:
    from PIL import Image

    Image.new("L", (8, 8), 128).save(path)
    return path


def held_requests(browser) -> int:
    return browser.execute_script("return window.heldFetch.length")


@pytest.mark.parametrize(("status", "body", "content_type", "expected"), [
    (502, "<html><h1>502 Bad Gateway</h1></html>", "text/html", "unavailable; try again in a moment. (HTTP 502)"),
    (413, None, None, "The file is too large for the server. (HTTP 413)"),  # a proxy's limit, no body
    (504, "", "application/json", "took too long to answer; try again in a moment. (HTTP 504)"),
    (500, '{"error": 42}', "application/json", "The server could not answer. (HTTP 500)"),
])
def test_a_reply_without_an_error_message_is_said_by_its_status(server, browser, status, body, content_type, expected):
    browser.get(server)
    browser.execute_script(HOLD_FETCH)
    pending = browser.execute_async_script(
        "const done = arguments[0]; window.answer = pageFetch.json('/health')"
        ".then((b) => ({body: b}), (e) => ({error: e.message})); done(window.heldFetch.length);")
    assert pending == 1
    browser.execute_async_script(ANSWER, 0, status, body, content_type)
    answer = browser.execute_async_script("const done = arguments[0]; window.answer.then(done);")
    assert expected in answer.get("error", ""), answer


def test_a_failed_upload_hides_the_previous_result_and_a_success_the_error(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    browser.get(server)
    browser.execute_script(HOLD_FETCH)
    browser.find_element(By.ID, "file-input").send_keys(str(tiny_png(tmp_path / "slice.png")))
    submit, result, error = (browser.find_element(By.ID, name) for name in ("submit", "result", "error"))
    submit.click()
    browser.execute_async_script(ANSWER, 0, 200, PREDICTION, "application/json")
    assert result.is_displayed() and not error.is_displayed()
    assert browser.find_element(By.ID, "label").text == "Normal"
    submit.click()
    browser.execute_async_script(ANSWER, 1, 413, "<html>Request Entity Too Large</html>", "text/html")
    assert error.is_displayed() and "too large" in error.text and not result.is_displayed()
    assert submit.is_enabled() and submit.text == "Classify"
    submit.click()
    browser.execute_async_script(ANSWER, 2, 200, PREDICTION, "application/json")
    assert result.is_displayed() and not error.is_displayed()


def test_the_answer_for_a_file_replaced_meanwhile_is_not_shown(server, browser, tmp_path):
    """Pick another file while the first is being classified: the first one's label must not appear next to it."""
    from selenium.webdriver.common.by import By

    browser.get(server)
    browser.execute_script(HOLD_FETCH)
    picker = browser.find_element(By.ID, "file-input")
    picker.send_keys(str(tiny_png(tmp_path / "first.png")))
    submit = browser.find_element(By.ID, "submit")
    submit.click()
    assert held_requests(browser) == 1 and submit.text == "Classifying…"
    picker.send_keys(str(tiny_png(tmp_path / "second.png")))
    assert browser.find_element(By.ID, "preview-caption").text == "second.png"
    assert submit.is_enabled() and submit.text == "Classify"
    browser.execute_async_script(ANSWER, 0, 200, PREDICTION, "application/json")  # the first file's answer
    assert not browser.find_element(By.ID, "result").is_displayed()
    assert submit.is_enabled() and submit.text == "Classify"
    submit.click()  # the second file's own answer is shown
    browser.execute_async_script(ANSWER, 1, 200, PREDICTION, "application/json")
    assert browser.find_element(By.ID, "result").is_displayed()


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
