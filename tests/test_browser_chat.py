"""The chat box end to end, in a real browser: Voilà serves a notebook with a ChatBox, headless Chromium uses it.

Needs Chromium and its chromedriver (Debian: `apt-get install chromium chromium-driver`, which
`.ci/install-browser` does in CI); skipped with the reason where they are missing.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

PAGE = Path(__file__).parent / "data" / "chat_app.ipynb"
BROWSER = next((p for p in map(shutil.which, ["chromium", "chromium-browser", "google-chrome"]) if p), None)
DRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(not (BROWSER and DRIVER),
                                reason="no Chromium or chromedriver here: install chromium and chromium-driver "
                                       "(apt-get; .ci/install-browser does it in CI) to run the browser test")

WAIT = 180  # seconds: a cold kernel and a busy 2-core machine can be slow; nothing here asserts speed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def voila(engine, tmp_path):
    """Voilà serving the chat page on a free loopback port, talking to the test engine; stopped afterwards."""
    port = free_port()
    env = {**os.environ, "OLLAMA_HOST": engine.url, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}
    env.pop("LLM_MODEL", None)
    env.pop("OLLAMA_API_KEY", None)
    log = open(tmp_path / "voila.log", "w")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [sys.executable, "-m", "voila", "--no-browser", f"--port={port}", "--Voila.ip=127.0.0.1",
         "--Voila.port_retries=0", "--show_tracebacks=True", PAGE.name],
        cwd=PAGE.parent, env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)  # its own process group: the kernels it starts are stopped with it
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + WAIT
        while True:
            assert process.poll() is None, f"Voilà exited: {(tmp_path / 'voila.log').read_text()}"
            try:
                requests.get(url + "api/status", timeout=5)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "Voilà did not start"
                time.sleep(0.2)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        log.close()


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for argument in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,1000"]:
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=DRIVER))
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


def test_chat_in_the_browser_streams_and_stops(voila, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, WAIT, poll_frequency=0.2)

    def texts(selector: str) -> list[str]:
        return [e.text for e in browser.find_elements(By.CSS_SELECTOR, selector)]

    def status() -> str:
        return " ".join(texts(".chatbox-status"))

    try:
        browser.get(voila)
        box = wait.until(lambda b: b.find_element(By.CSS_SELECTOR, ".chatbox-input input"))
        assert "smollm2:135m" in browser.find_element(By.CSS_SELECTOR, ".chatbox select").text

        # A question, sent with Enter: the answer streams into the model's bubble, then the speed is shown.
        box.send_keys("What is 2 + 2?", Keys.ENTER)
        wait.until(lambda b: texts(".chatbox-user") == ["What is 2 + 2?"])
        wait.until(lambda b: "tokens/s" in status())
        first = texts(".chatbox-assistant")
        assert len(first) == 1 and first[0].strip() and "first token after" in status()

        # A long answer, stopped in the middle: the page says so, and the answer stops growing.
        box.send_keys("List 200 animals, one per line, numbered.", Keys.ENTER)
        wait.until(lambda b: len(texts(".chatbox-assistant")) == 2 and len(texts(".chatbox-assistant")[1]) > 20)
        browser.find_element(By.CSS_SELECTOR, "button.chatbox-stop").click()
        wait.until(lambda b: "Stopped" in status())
        stopped = texts(".chatbox-assistant")[1]
        time.sleep(2)
        assert texts(".chatbox-assistant")[1] == stopped and stopped.strip()
        assert not texts(".chatbox-error")
    finally:
        browser.save_screenshot(str(tmp_path / "chat.png"))  # also when it fails: what the page showed
    assert (tmp_path / "chat.png").stat().st_size > 1000
