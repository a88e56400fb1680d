"""The web console as tests meet it: `agent web` as a process, plain HTTP, and headless
Chromium from Debian driven by Selenium."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from tests.support.cluster import NodeHarness

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@dataclass
class ConsoleProcess:
    port: int
    process: subprocess.Popen[bytes]
    password: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.contextmanager
def running_console(node: NodeHarness, port: int) -> Iterator[ConsoleProcess]:
    """`agent web` for node on 127.0.0.1:port, stopped (and waited for) at the end."""
    log = open(node.root / "log" / "web.log", "ab")  # noqa: SIM115 - closed right after the start
    process = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "web", "--listen", f"127.0.0.1:{port}"],
        env=node.env(),
        stdout=log,
        stderr=log,
        stdin=subprocess.DEVNULL,
    )
    log.close()
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                tail = (node.root / "log" / "web.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"agent web did not start:\n{tail}")
            time.sleep(0.1)
        password = (node.root / "web" / "admin-password").read_text().strip()
        yield ConsoleProcess(port, process, password)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class HttpClient:
    """Requests as a browser's would be, without following redirects."""

    port: int
    cookie: str = ""
    csrf: str = ""
    extra_headers: dict[str, str] = field(default_factory=dict)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        sent = {"Host": f"127.0.0.1:{self.port}", **self.extra_headers, **(headers or {})}
        if self.cookie:
            sent["Cookie"] = self.cookie
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            connection.request(method, path, body=body, headers=sent)
            response = connection.getresponse()
            # An event stream never ends: its first bytes tell enough.
            streaming = response.getheader("content-type", "").startswith("text/event-stream")
            data = response.read(64) if streaming else response.read()
            return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
        finally:
            connection.close()

    def login(self, password: str) -> Reply:
        reply = self.request(
            "POST",
            "/login",
            urlencode({"username": "admin", "password": password}).encode(),
            {"Origin": self.origin, "Content-Type": "application/x-www-form-urlencoded"},
        )
        if reply.status == 303:
            self.cookie = reply.headers["set-cookie"].split(";", 1)[0]
            page = self.request("GET", "/")
            marker = b'name="csrf-token" content="'
            start = page.body.index(marker) + len(marker)
            self.csrf = page.body[start : page.body.index(b'"', start)].decode()
        return reply

    def post_json(self, path: str, data: Any, *, csrf: bool = True, origin: bool = True) -> Reply:
        headers = {"Content-Type": "application/json"}
        if csrf:
            headers["X-CSRF-Token"] = self.csrf
        if origin:
            headers["Origin"] = self.origin
        return self.request("POST", path, json.dumps(data).encode(), headers)


def chromium(download_dir: Path) -> Any:
    """Headless Chromium (Debian's, with its chromedriver): nothing is downloaded."""
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in a container: Chromium's own sandbox cannot start
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1000",
        "--no-first-run",
        "--password-store=basic",
    ):
        options.add_argument(argument)
    options.add_experimental_option(
        "prefs",
        {
            "download.default_directory": str(download_dir),
            "download.prompt_for_download": False,
            "safebrowsing.enabled": False,
        },
    )
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(CHROMEDRIVER))


def wait_for_file(directory: Path, name: str, timeout: float = 120) -> Path:
    """A finished download (Chromium writes .crdownload first, then renames it)."""
    path = directory / name
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} not downloaded; have {sorted(directory.iterdir())}")
        time.sleep(0.2)
    return path
