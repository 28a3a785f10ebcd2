"""Render an HTML page of `dvc plots` in headless Chromium through Selenium."""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
)
WIDTH = 1400

# Every DVC Vega plot is a <div id=...> with an inline script that calls
# vegaEmbed('#id', spec); vega-embed replaces the script with a <canvas> (or
# <svg>) once the spec renders. arguments[0] is the list of those ids.
PAGE_STATE = """
const plots = arguments[0].map(id => document.getElementById(id)).filter(d => d);
return {
  drawn: plots.filter(d => d.querySelector("canvas, svg")).map(d => d.id),
  images: [...document.images].map(i => ({src: i.src, width: i.complete ? i.naturalWidth : 0})),
  resources: performance.getEntriesByType("resource").map(r => r.name),
  height: document.documentElement.scrollHeight,
};
"""


@dataclass
class RenderedPage:
    plots: list[str]  # ids of the Vega plot divs
    drawn: list[str]  # ids of those that vega-embed drew
    images: list[dict]  # src and natural width of each <img>; width 0 if it failed to load
    resources: list[str]  # every URL the page loaded after the document itself
    console_errors: list[str]


def find_chromium() -> tuple[str, str] | None:
    """Return the paths of chromium and chromedriver, or None if either is missing."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


def render_page(html: Path, screenshot: Path, *, timeout: float = 120) -> RenderedPage:
    """Open `html` in headless Chromium, wait until every plot is drawn, save a screenshot."""
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    plots = re.findall(r"vegaEmbed\('#([^']+)'", html.read_text(encoding="utf-8"))
    chromium, driver_path = find_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--window-size={WIDTH},1000")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})

    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.get(html.resolve().as_uri())

        def all_drawn(driver) -> bool:
            return len(driver.execute_script(PAGE_STATE, plots)["drawn"]) == len(plots)

        try:
            WebDriverWait(driver, timeout, poll_frequency=0.5).until(all_drawn)
        except TimeoutException:
            pass  # the returned state shows which plots were not drawn
        state = driver.execute_script(PAGE_STATE, plots)

        driver.set_window_size(WIDTH, state["height"] + 200)
        driver.save_screenshot(str(screenshot))
        errors = [
            entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"
        ]
    finally:
        driver.quit()

    return RenderedPage(
        plots=plots,
        drawn=state["drawn"],
        images=state["images"],
        resources=state["resources"],
        console_errors=errors,
    )
