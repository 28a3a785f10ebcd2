"""The web page at `/`, in headless Chromium driven by Selenium, against a real service."""

import shutil
from pathlib import Path

import pytest

from service import running_service
from tiny_model import CLASSES, IMAGE_SIZE, photo_bytes, save_tiny_model

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Chromium and chromedriver on PATH (Debian: apt-get install chromium chromium-driver)",
)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    root = tmp_path_factory.mktemp("web")
    model = save_tiny_model(root / "model")
    with running_service(model, root / "service.log") as url:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                     "--disable-component-update", "--no-first-run", "--disable-sync",
                     "--window-size=1000,900"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
        try:
            driver.get(url + "/")
            yield {"driver": driver, "root": root, "url": url}
        finally:
            driver.quit()


def wait_for(driver, condition, timeout_s=30):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout_s).until(condition)


def choose_file(page, path: Path) -> None:
    from selenium.webdriver.common.by import By

    page["driver"].find_element(By.ID, "file-input").send_keys(str(path))


def test_page_shows_metadata(page):
    from selenium.webdriver.common.by import By

    driver = page["driver"]
    summary = wait_for(driver, lambda d: d.find_element(By.ID, "model-summary").text
                       if "classes" in d.find_element(By.ID, "model-summary").text else None)
    assert "test_conv" in summary
    assert f"{IMAGE_SIZE}×{IMAGE_SIZE}" in summary
    metadata = driver.find_element(By.ID, "metadata").get_attribute("textContent")
    assert ", ".join(CLASSES) in metadata


def test_page_classifies_chosen_image(page):
    from selenium.webdriver.common.by import By

    import httpx

    image = page["root"] / "photo.jpg"
    image.write_bytes(photo_bytes(21))
    choose_file(page, image)

    driver = page["driver"]
    items = wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#predictions li.prediction") or None)
    assert len(items) == len(CLASSES)

    expected = httpx.post(f"{page['url']}/predict", files={"file": ("photo.jpg", image.read_bytes(), "image/jpeg")})
    top_class = expected.json()["predictions"][0]["top"][0]["class"]
    assert items[0].get_attribute("data-class") == top_class
    assert "photo.jpg" in driver.find_element(By.ID, "result-title").text

    screenshot = page["root"] / "page.png"
    driver.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 10_000


def test_page_shows_upload_error(page):
    from selenium.webdriver.common.by import By

    not_an_image = page["root"] / "notes.jpg"
    not_an_image.write_text("this is text")
    choose_file(page, not_an_image)

    driver = page["driver"]
    error = wait_for(driver, lambda d: d.find_element(By.ID, "error").text or None)
    assert error.startswith("415")
    assert driver.find_element(By.ID, "result").get_attribute("hidden") is not None
