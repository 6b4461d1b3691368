"""End to end: ``songflow ui`` in a subprocess, driven by headless Chromium (Selenium + Debian's
chromium/chromedriver; ``scripts/install_browser_deps.sh``). Fill tags and lyrics, generate, and check that
playable audio appears (the player decodes it, it plays, and the served file is real audio); a bad request
shows a message. Screenshots go to ``artifacts/`` (ui_text2music.png, ui_error.png).

Skipped, with a message, only when chromium or chromedriver is not installed.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO_ROOT / "artifacts"
DURATION_S = 3  # typed into the form: short, so the test runs in seconds on 2 CPU cores
SERVER_START_TIMEOUT_S = 120
GENERATE_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def studio_checkpoint() -> Path | None:
    """The model the studio runs in this test (the one place to change it): None = no --checkpoint, so
    the studio starts with its default, the shipped songflow-tiny model."""
    return None


def _browser_binaries() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip(
            "headless browser test: chromium and chromedriver are not installed "
            "(run scripts/install_browser_deps.sh, or `bash scripts/setup.sh --dev`)"
        )
    return chromium, driver


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_studio(args: list[str], out_dir: Path):
    """``songflow ui ARGS`` on a free loopback port in a subprocess (its log in ``out_dir/server.log``),
    yielding its URL once it answers; stopped on exit."""
    port = _free_port()
    cmd = [sys.executable, "-m", "songflow", "ui", "--port", str(port), "--output-dir", str(out_dir), *args]
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", OMP_WAIT_POLICY="PASSIVE")
    log_path = out_dir / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=out_dir)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"songflow ui exited with {proc.returncode}:\n{log_path.read_text()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"songflow ui did not answer in {SERVER_START_TIMEOUT_S} s:\n{log_path.read_text()}"
                )
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def studio_url(studio_checkpoint, tmp_path_factory):
    """``songflow ui`` on the test's model, in a subprocess; its URL."""
    _browser_binaries()
    args = ["--device", "cpu"] + (["--checkpoint", str(studio_checkpoint)] if studio_checkpoint else [])
    with serve_studio(args, tmp_path_factory.mktemp("studio")) as url:
        yield url


def chromium_driver(window: str = "1400,1400"):
    """A headless Chromium driven by Selenium (audio muted, autoplay allowed)."""
    chromium, driver_path = _browser_binaries()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={window}",
        "--autoplay-policy=no-user-gesture-required",
        "--mute-audio",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_script_timeout(30)
    return driver


@pytest.fixture(scope="module")
def browser():
    driver = chromium_driver()
    try:
        yield driver
    finally:
        driver.quit()


# records every progress text the page shows while generating
_WATCH_PROGRESS = """
window.__progress = [];
new MutationObserver(() => {
  for (const el of document.querySelectorAll('#output-audio [data-testid="status-tracker"]')) {
    const text = el.innerText.trim();
    if (text && window.__progress[window.__progress.length - 1] !== text) window.__progress.push(text);
  }
}).observe(document.body, {subtree: true, childList: true, characterData: true});
"""


def _wait(driver, what: str, predicate, timeout_s: float):
    """Poll ``predicate`` until truthy; elements Gradio re-renders between find and use are found again."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(
        driver, timeout_s, poll_frequency=0.2, ignored_exceptions=(StaleElementReferenceException,)
    )
    return wait.until(lambda d: predicate(d), message=f"timed out waiting for {what}")


def _fill(driver, selector: str, text: str) -> None:
    """Type ``text`` into the field at ``selector`` until it holds (the page may still be hydrating)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    for _ in range(10):
        element = driver.find_element(By.CSS_SELECTOR, selector)
        element.send_keys(Keys.CONTROL, "a")
        element.send_keys(Keys.DELETE)
        element.send_keys(text)
        time.sleep(0.3)
        if driver.find_element(By.CSS_SELECTOR, selector).get_attribute("value") == text:
            return
    raise AssertionError(f"could not type into {selector}")


def _texts(driver, selector: str) -> list[str]:
    """The non-empty texts of the elements at ``selector``, skipping any re-rendered while being read."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    texts = []
    for element in driver.find_elements(By.CSS_SELECTOR, selector):
        with contextlib.suppress(StaleElementReferenceException):
            if element.text:
                texts.append(element.text)
    return texts


def _toasts(driver) -> list[str]:
    """The texts of the messages (gr.Error toasts) on the page."""
    return _texts(driver, "[data-testid='toast-body']")


def _no_error(driver) -> None:
    if toasts := _toasts(driver):
        raise AssertionError(f"the page shows an error: {toasts}")


def test_text2music_in_the_browser(studio_url, browser):
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        _text2music_then_repaint(studio_url, browser)
    except BaseException:
        browser.save_screenshot(str(ARTIFACTS / "ui_failure.png"))
        raise


def _text2music_then_repaint(studio_url: str, driver) -> None:
    import soundfile as sf
    from selenium.webdriver.common.by import By

    started = time.monotonic()
    driver.get(studio_url)
    css = driver.find_element
    _wait(driver, "the form", lambda d: d.find_element(By.ID, "generate-text2music").is_displayed(), 60)

    # 1. fill tags and lyrics (and a short duration), generate
    _fill(driver, "#field-tags input", "funk, pop, 105 BPM, energetic, guitar, drums")
    _fill(driver, "#field-lyrics textarea", "[verse]\nneon lights on the river")
    _fill(driver, "#text2music-duration_s input", str(DURATION_S))
    driver.execute_script(_WATCH_PROGRESS)
    css(By.CSS_SELECTOR, "#generate-text2music").click()

    # 2. the player shows the song once the browser has decoded it
    link = _wait(
        driver,
        "the generated audio",
        lambda d: (
            _no_error(d) or d.find_elements(By.CSS_SELECTOR, "#output-audio a[data-testid='download-link']")
        ),
        GENERATE_TIMEOUT_S,
    )[0]
    shown = _wait(
        driver,
        "the player's duration",
        lambda d: (t := d.find_element(By.CSS_SELECTOR, "#output-audio time#duration").text) != "0:00" and t,
        30,
    )
    assert shown == f"0:{DURATION_S:02d}"
    progress = driver.execute_script("return window.__progress")
    assert any("sampling step" in text for text in progress), progress

    # 3. it plays: the play button turns into pause and the clock moves
    css(By.CSS_SELECTOR, "#output-audio button.play-pause-button").click()
    _wait(
        driver,
        "playback",
        lambda d: d.find_element(By.CSS_SELECTOR, "#output-audio time#time").text != "0:00",
        15,
    )

    # 4. the served file is real audio of the requested length; every format is offered for download
    with urllib.request.urlopen(link.get_attribute("href"), timeout=30) as response:
        data, rate = sf.read(io.BytesIO(response.read()), dtype="float32")
    assert abs(len(data) / rate - DURATION_S) < 0.2
    assert data.std() > 1e-4
    files = [e.get_attribute("href") for e in driver.find_elements(By.CSS_SELECTOR, "#output-files a")]
    for name in ("song.wav", "song.flac", "song.ogg", "song.json"):
        assert any(href.endswith("/" + name) for href in files), files
    assert len(_history_ids(driver)) == 1
    driver.save_screenshot(str(ARTIFACTS / "ui_text2music.png"))
    assert (ARTIFACTS / "ui_text2music.png").stat().st_size > 10_000

    # 5. bad input: repaint without an upload shows a message, not a traceback
    _click_tab(driver, "Repaint")
    _wait(driver, "the repaint tab", lambda d: d.find_element(By.ID, "generate-repaint").is_displayed(), 10)
    css(By.ID, "generate-repaint").click()
    toast = _wait(driver, "the error message", _toasts, 30)
    assert any("no audio uploaded" in text for text in toast), toast
    assert not any("Traceback" in text for text in toast)
    driver.save_screenshot(str(ARTIFACTS / "ui_error.png"))

    # 6. the song from the history as the source of a repaint: a second entry appears
    css(By.ID, "history-source").click()
    _wait(
        driver,
        "the source audio",
        lambda d: d.find_elements(By.CSS_SELECTOR, "#repaint-source_path time#duration"),
        30,
    )
    _fill(driver, "#repaint-end_s input", "1")
    for close in driver.find_elements(By.CSS_SELECTOR, "[data-testid='toast-close'], .toast-close"):
        close.click()  # dismiss the earlier message
    _wait(driver, "the message to close", lambda d: not _toasts(d), 15)
    css(By.ID, "generate-repaint").click()
    _wait(
        driver,
        "the repainted song in the history",
        lambda d: _no_error(d) or len(_history_ids(d)) == 2,
        GENERATE_TIMEOUT_S,
    )
    assert "Repaint" in css(By.ID, "output-info").text
    print(f"browser test: {time.monotonic() - started:.1f} s after the server was up")


def _history_ids(driver) -> list[str]:
    """The entry ids the history table shows (its last column)."""
    return _texts(driver, "#history-table td[data-col='4']")


def _click_tab(driver, label: str) -> None:
    from selenium.webdriver.common.by import By

    for button in driver.find_elements(By.CSS_SELECTOR, "button[role='tab']"):
        if button.text.strip() == label:
            button.click()
            return
    raise AssertionError(f"no tab {label!r}")
