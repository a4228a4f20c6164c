"""The web page in headless Chromium (Debian's chromium + chromium-driver, driven by Selenium):
the page loads, a generation runs with live previews, the image appears in the gallery, and
a screenshot is saved to test-artifacts/ (or $UNDIFFUSE_TEST_ARTIFACTS)."""
import os
import time
from pathlib import Path

import pytest

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
if not os.path.exists(CHROMIUM) or not os.path.exists(DRIVER):
    pytest.skip(f"browser test needs Debian's Chromium ({CHROMIUM}) and its driver ({DRIVER}); to enable it run "
                "'sudo make browser' (apt-get install chromium chromium-driver), then 'make test'",
                allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="browser test needs the selenium package")
pytest.importorskip("uvicorn")

from _cli import TINY  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402

from undiffuse.cli import main  # noqa: E402
from undiffuse.io import provenance as prov  # noqa: E402
from undiffuse.serve import create_app  # noqa: E402
from undiffuse.serve.background import BackgroundServer  # noqa: E402

ARTIFACTS = Path(os.environ.get("UNDIFFUSE_TEST_ARTIFACTS", Path(__file__).resolve().parent.parent / "test-artifacts"))


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium look for drivers online
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage", "--window-size=1100,800",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def page_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("web") / "models"
    assert main(["train", "--data", "digits", "--max-steps", "2", "--conditioning", "class",
                 "--out", str(folder / "digits-cls"), *TINY]) == 0
    app = create_app(str(folder))
    with BackgroundServer(app) as srv:
        net = app.state.server.registry.get("digits-cls").denoiser.net
        net.register_forward_pre_hook(lambda module, args: time.sleep(0.03))  # slow enough to watch previews
        yield srv


def _open_page(browser, url: str) -> None:
    """Load the page and wait until it says it is ready (the models are listed)."""
    browser.get(url + "/")
    deadline = time.monotonic() + 20
    while browser.find_element(By.ID, "status").text != "ready":
        assert time.monotonic() < deadline, browser.find_element(By.ID, "status").text
        time.sleep(0.05)


def _type(browser, field: str, value: str) -> None:
    box = browser.find_element(By.ID, field)
    box.clear()
    box.send_keys(value)


def test_page_generates_with_previews_and_gallery(browser, page_server):
    _open_page(browser, page_server.url)
    deadline = time.monotonic() + 20
    assert [o.text for o in Select(browser.find_element(By.ID, "model")).options] == ["digits-cls (class)"]
    while not browser.find_element(By.ID, "mark").text:  # the page says what the PNGs carry (from /health)
        assert time.monotonic() < deadline, "the watermark note never appeared"
        time.sleep(0.05)
    footer = browser.find_element(By.ID, "provenance").text
    assert "undiffuse verify IMAGE" in footer and "invisible watermark in its pixels" in footer
    Select(browser.find_element(By.ID, "class")).select_by_visible_text("7")
    for field, value in (("steps", "12"), ("seed", "21"), ("count", "3"), ("guidance", "2")):
        _type(browser, field, value)
    browser.find_element(By.ID, "generate").click()
    previews_while_sampling = 0
    deadline = time.monotonic() + 60
    while not browser.find_elements(By.CSS_SELECTOR, "#gallery img.result"):
        assert time.monotonic() < deadline, browser.find_element(By.ID, "status").text
        if browser.find_element(By.ID, "preview").get_attribute("src"):
            previews_while_sampling += 1
        time.sleep(0.05)
    time.sleep(0.2)
    results = browser.find_elements(By.CSS_SELECTOR, "#gallery img.result")
    assert len(results) == 3 and previews_while_sampling > 0
    assert all(browser.execute_script("return arguments[0].naturalWidth", r) == 8 for r in results)
    assert browser.find_element(By.ID, "steps-done").text == "12 / 12"
    link = browser.find_elements(By.CSS_SELECTOR, "#gallery figcaption a")[0]
    assert link.get_attribute("download").startswith("digits-cls-seed")
    import base64

    png = base64.b64decode(link.get_attribute("href").split(",", 1)[1])
    rec = prov.read(png)["provenance"]  # the download carries its metadata
    assert rec["model"] == "digits-cls" and rec["class"] == "7" and rec["steps"] == 12 and rec["guidance"] == 2.0
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "web_page.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 1000


def test_page_shows_api_errors(browser, page_server):
    _open_page(browser, page_server.url)
    _type(browser, "steps", "100000")
    browser.find_element(By.ID, "generate").click()
    deadline = time.monotonic() + 20
    while "'steps' must be in 1..200" not in browser.find_element(By.ID, "status").text:
        assert time.monotonic() < deadline, browser.find_element(By.ID, "status").text
        time.sleep(0.05)
    assert "error" in browser.find_element(By.ID, "status").get_attribute("class")


def test_page_sends_a_control_image(browser, tmp_path):
    """A control run: the page shows the control inputs and sends the chosen file; the
    result records the image's checksum and the scale."""
    import base64
    import hashlib

    import numpy as np
    from PIL import Image

    folder = tmp_path / "models"
    assert main(["train", "--data", "digits", "--max-steps", "2", "--out", str(tmp_path / "base"), *TINY]) == 0
    assert main(["train-control", "--base", str(tmp_path / "base"), "--control", "edges", "--max-steps", "2",
                 "--out", str(folder / "ctrl"), "--no-progress", "--set", "train.sample_count=4"]) == 0
    picture = tmp_path / "square.png"
    square = np.zeros((8, 8), np.uint8)
    square[2:6, 2:6] = 255
    Image.fromarray(square).save(picture)
    with BackgroundServer(create_app(str(folder))) as srv:
        _open_page(browser, srv.url)
        assert browser.find_element(By.ID, "control").is_displayed()
        browser.find_element(By.ID, "control").send_keys(str(picture))
        box = browser.find_element(By.ID, "control-scale")
        box.clear()
        box.send_keys("0.5")
        browser.find_element(By.ID, "generate").click()
        deadline = time.monotonic() + 60
        while not browser.find_elements(By.CSS_SELECTOR, "#gallery img.result"):
            assert time.monotonic() < deadline, browser.find_element(By.ID, "status").text
            time.sleep(0.05)
        link = browser.find_elements(By.CSS_SELECTOR, "#gallery figcaption a")[0]
        rec = prov.read(base64.b64decode(link.get_attribute("href").split(",", 1)[1]))["provenance"]
    assert rec["control_image_sha256"] == hashlib.sha256(picture.read_bytes()).hexdigest()
    assert rec["control_scale"] == 0.5


def test_page_plays_generated_sound(browser, tmp_path):
    """A sound run: the gallery gets an <audio> player whose WAV the browser decodes (its
    duration is the clip's), and a WAV download link."""
    folder = tmp_path / "models"
    assert main(["train", "--data", "notes", "--max-steps", "2", "--conditioning", "class", "--out",
                 str(folder / "notes"), *TINY, "--set", "model.patch_size=2"]) == 0
    with BackgroundServer(create_app(str(folder))) as srv:
        _open_page(browser, srv.url)
        _type(browser, "steps", "3")
        browser.find_element(By.ID, "generate").click()
        deadline = time.monotonic() + 60
        while not browser.find_elements(By.CSS_SELECTOR, "#gallery audio.result"):
            assert time.monotonic() < deadline, browser.find_element(By.ID, "status").text
            time.sleep(0.05)
        player = browser.find_element(By.CSS_SELECTOR, "#gallery audio.result")
        while not browser.execute_script("return arguments[0].readyState >= 1", player):  # metadata decoded
            assert time.monotonic() < deadline, "the browser never decoded the WAV"
            time.sleep(0.05)
        assert abs(browser.execute_script("return arguments[0].duration", player) - 8192 / 8000) < 0.01
        link = browser.find_element(By.CSS_SELECTOR, "#gallery figcaption a")
        assert link.get_attribute("download").endswith(".wav") and link.get_attribute("href").startswith("data:audio/wav")


def test_page_shows_generated_clips(browser, tmp_path):
    """A video run: the gallery gets an animated GIF that the browser decodes at the clip's
    frame size, and a GIF download link."""
    folder = tmp_path / "models"
    assert main(["train", "--data", "moving-digits", "--frames", "4", "--no-latent", "--max-steps", "2", "--out",
                 str(folder / "clips"), "--set", "model.channels=8", "--set", "model.channel_mult=[1,2]",
                 "--set", "model.attention_levels=[1]", "--set", "model.temporal_attention_levels=[1]",
                 "--set", "model.head_channels=8", "--set", "model.groups=8", "--set", "optim.batch_size=2",
                 "--set", "train.sample_count=2", "--set", "sample.steps=2", "--no-progress"]) == 0
    with BackgroundServer(create_app(str(folder))) as srv:
        _open_page(browser, srv.url)
        _type(browser, "steps", "2")
        browser.find_element(By.ID, "generate").click()
        deadline = time.monotonic() + 60
        while not browser.find_elements(By.CSS_SELECTOR, "#gallery img.result"):
            assert time.monotonic() < deadline, browser.find_element(By.ID, "status").text
            time.sleep(0.05)
        clip = browser.find_element(By.CSS_SELECTOR, "#gallery img.result")
        while not browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", clip):
            assert time.monotonic() < deadline, "the browser never decoded the GIF"
            time.sleep(0.05)
        assert browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", clip) == [32, 32]
        assert clip.get_attribute("src").startswith("data:image/gif;base64,")
        link = browser.find_element(By.CSS_SELECTOR, "#gallery figcaption a")
        assert link.get_attribute("download").endswith(".gif")
