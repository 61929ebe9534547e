"""Real parts as a user meets them: `nerft serve` in a subprocess on a loopback port, and its web
page in a headless Chromium (Debian's `chromium` + `chromium-driver`). Used by the serve tests
and by `python -m bench.loop`."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m nerft serve RUN ARGS...`, ready once /health answers."""

    def __init__(self, run: Path, args: list[str], log: Path, env: dict | None = None,
                 ready_timeout: float = 180):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        environment = {**os.environ, **(env or {})}
        self._log_file = open(log, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nerft", "serve", str(run), "--port", str(self.port), *args],
            stdout=self._log_file, stderr=subprocess.STDOUT, env=environment)
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if requests.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"server not ready after {ready_timeout:.0f} s:\n{self.output()}")

    def output(self) -> str:
        self._log_file.flush()
        return self.log.read_text(encoding="utf-8", errors="replace")

    def metric(self, name: str, headers: dict | None = None) -> float:
        """Sum of all samples of one metric line name (e.g. nerft_batch_sentences_count)."""
        text = requests.get(self.url + "/metrics", headers=headers, timeout=10).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.split("{")[0].split(" ")[0] == name)

    def stop(self) -> int:
        """SIGTERM (the server answers what it accepted, then exits); the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()
        return self.proc.returncode


def chromium_driver():
    """A headless Chromium under Selenium; RuntimeError saying what to install when missing."""
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        raise RuntimeError("chromium and chromium-driver are needed: apt-get install chromium "
                           "chromium-driver fonts-wqy-microhei (.ci/run does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--window-size=1100,900"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


# Selects code points [start, end) of the sentence shown in #result (skipping the label
# superscripts), as a mouse drag would, and lets the page see the mouseup.
_SELECT_JS = """
const walker = document.createTreeWalker(document.getElementById('result'), NodeFilter.SHOW_TEXT);
let node = walker.nextNode(), at = 0, a = null, b = null;
for (; node; node = walker.nextNode()) {
  if (node.parentNode.tagName === 'SUP') continue;
  const n = node.textContent.length;
  if (a === null && arguments[0] < at + n) a = [node, arguments[0] - at];
  if (b === null && arguments[1] <= at + n) b = [node, arguments[1] - at];
  at += n;
}
const range = document.createRange();
range.setStart(a[0], a[1]); range.setEnd(b[0], b[1]);
const sel = window.getSelection(); sel.removeAllRanges(); sel.addRange(range);
document.getElementById('result').dispatchEvent(new MouseEvent('mouseup', {bubbles: true}));
"""


class Page:
    """The service's web page, driven the way a user drives it."""

    def __init__(self, driver, url: str, timeout: float = 120):
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver, self.url = driver, url
        self.wait = WebDriverWait(driver, timeout)

    def find(self, sentence: str) -> list[dict]:
        """Open the page, type `sentence`, press the button; the entities it shows."""
        from selenium.webdriver.common.by import By

        self.driver.get(self.url + "/")
        self.wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#legend span"))
        self.driver.execute_script("document.getElementById('text').value = arguments[0];", sentence)
        self.driver.find_element(By.ID, "run").click()
        self.wait.until(lambda d: d.find_element(By.ID, "send").is_displayed())
        return self.marks()

    def marks(self) -> list[dict]:
        from selenium.webdriver.common.by import By

        return [{"start": int(m.get_attribute("data-start")), "label": m.get_attribute("data-label")}
                for m in self.driver.find_elements(By.CSS_SELECTOR, "#result mark")]

    def choose(self, button_css: str) -> None:
        from selenium.webdriver.common.by import By

        self.wait.until(lambda d: d.find_element(By.ID, "fix").is_displayed())
        self.driver.find_element(By.CSS_SELECTOR, button_css).click()

    def click_mark(self, index: int) -> None:
        from selenium.webdriver.common.by import By

        self.driver.find_elements(By.CSS_SELECTOR, "#result mark")[index].click()

    def remove_all(self) -> None:
        while self.marks():
            self.click_mark(0)
            self.choose("#fix-remove")

    def select(self, start: int, end: int) -> None:
        self.driver.execute_script(_SELECT_JS, start, end)

    def add(self, start: int, end: int, label: str) -> None:
        self.select(start, end)
        self.choose(f'#fix-labels button[data-label="{label}"]')

    def send(self) -> str:
        """Send the correction; the page's status line once it says the correction is stored."""
        from selenium.webdriver.common.by import By

        self.driver.find_element(By.ID, "send").click()
        self.wait.until(lambda d: "correction stored" in d.find_element(By.ID, "status").text)
        return self.driver.find_element(By.ID, "status").text
