"""Real servers for the serve tests: `nerft serve` in a subprocess on a free loopback port."""

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

API_KEY = "test-key-7f3a"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m nerft serve RUN ARGS...`, ready once /health answers."""

    def __init__(self, run: Path, args: list[str], log: Path, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        environment = {**os.environ, **(env or {})}
        environment.setdefault("OMP_NUM_THREADS", "1")  # a 2-layer model: threads only add overhead
        self._log_file = open(log, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nerft", "serve", str(run), "--port", str(self.port), *args],
            stdout=self._log_file, stderr=subprocess.STDOUT, env=environment)
        deadline = time.monotonic() + 180
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
        raise RuntimeError(f"server not ready after 180 s:\n{self.output()}")

    def output(self) -> str:
        self._log_file.flush()
        return self.log.read_text(encoding="utf-8", errors="replace")

    def metric(self, name: str, headers: dict | None = None) -> float:
        """Sum of all samples of one metric line name (e.g. nerft_batch_sentences_count)."""
        text = requests.get(self.url + "/metrics", headers=headers, timeout=10).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.split("{")[0].split(" ")[0] == name)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()
        return self.proc.returncode


@pytest.fixture(scope="session")
def start_server(tiny_lora_run, tmp_path_factory):
    started = []

    def start(args: list[str], env: dict | None = None) -> Server:
        log = tmp_path_factory.mktemp("server") / "server.log"
        server = Server(tiny_lora_run, args, log, env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def api_key() -> str:
    return API_KEY


@pytest.fixture(scope="session")
def server(start_server):
    """No API key; the oldest request waits up to 100 ms for others to share its batch."""
    return start_server(["--max-wait-ms", "100", "--max-batch", "8", "--max-text-chars", "200",
                         "--max-texts", "4"])


@pytest.fixture(scope="session")
def keyed_server(start_server):
    """API key from the environment; at most 2 sentences queued, one request per decode."""
    return start_server(["--max-queue", "2", "--no-batching"], env={"NERFT_API_KEY": API_KEY})


# The web page in a real headless Chromium (Debian's `chromium` + `chromium-driver`).
CHROMIUM, DRIVER = shutil.which("chromium") or "/usr/bin/chromium", shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture(scope="session")
def browser():
    if not (Path(CHROMIUM).exists() and Path(DRIVER).exists()):
        pytest.fail("chromium and chromium-driver are needed: apt-get install chromium "
                    "chromium-driver fonts-wqy-microhei (.ci/run does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--window-size=1100,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()
