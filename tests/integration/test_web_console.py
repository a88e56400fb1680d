"""The web console against a real cluster: every route behind the session, CSRF and origin
checks, paths validated like restore paths, and an operator's session in headless Chromium
(log in, watch a backup run, browse a snapshot, download, restore)."""

from __future__ import annotations

import io
import os
import re
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import redis

from agent.adapters.redis_store import connect
from agent.core import redis_keys
from agent.runtime import locks
from agent.web.app import Console, make_app
from tests.conftest import free_port
from tests.support import backups
from tests.support.cluster import ClusterHarness
from tests.support.web import HttpClient, chromium, running_console, wait_for_file

pytestmark = pytest.mark.podman
PAGE = "topic-0/section-0/sub-0/page-0.md"
PAGE_PATH = f"volumes/pages/{PAGE}"
# Set to a directory (docs/) to keep the screenshots the browser test takes.
SCREENSHOT_DIR = os.environ.get("CONSOLE_SCREENSHOTS", "")


@pytest.fixture
def console(cluster: ClusterHarness) -> Iterator[Any]:
    with running_console(cluster.nodes[1], free_port()) as process:
        yield process


def example_path(path: str) -> str:
    """A concrete URL for a route's path template."""
    return re.sub(r"\{[^}]+\}", "x1", path.replace("{name:path}", "cluster/list-backups"))


def test_every_route_refuses_requests_without_a_session(
    cluster: ClusterHarness, console: Any
) -> None:
    settings = cluster.nodes[1].settings
    app = make_app(Console(settings, connect(settings.redis_url)))
    anonymous = HttpClient(console.port)
    checked = 0
    for route in app.routes:
        path = getattr(route, "path", "")
        methods = sorted(getattr(route, "methods", None) or {"GET"})
        if path == "/login":
            continue  # the one public route
        url = example_path(path) if path != "/static" else "/static/console.js"
        for method in methods:
            if method == "HEAD":
                continue
            headers = {"Origin": anonymous.origin} if method == "POST" else {}
            reply = anonymous.request(method, url, b"{}" if method == "POST" else None, headers)
            if url.startswith("/api/"):
                assert reply.status == 401, (method, url, reply)
            else:
                assert reply.status == 303 and reply.headers["location"] == "/login", (method, url)
            assert b"csrf-token" not in reply.body and b"console.js" not in reply.body
            checked += 1
    assert checked >= 12
    # A forged cookie is no session either.
    forged = HttpClient(console.port, cookie="agent_console=forged-value")
    assert forged.request("GET", "/api/dashboard").status == 401


def test_login_sessions_csrf_and_path_checks(
    cluster: ClusterHarness, console: Any, redis_client: redis.Redis, subtests: pytest.Subtests
) -> None:
    """Each group of checks reports on its own (subtests)."""
    client = HttpClient(console.port)
    started = time.monotonic()
    assert client.login("not the password").status == 401
    with subtests.test("a wrong password is refused, slowly"):
        assert time.monotonic() - started >= 0.9  # a wrong guess costs a second
    assert client.login(console.password).status == 303
    cookie = client.cookie
    reply = client.request("GET", "/")
    assert reply.status == 200
    login = HttpClient(console.port)
    raw = login.request(
        "POST",
        "/login",
        urlencode({"username": "admin", "password": console.password}).encode(),
        {"Origin": login.origin},
    )
    set_cookie = raw.headers["set-cookie"].lower()
    with subtests.test("the session cookie's flags"):
        assert "httponly" in set_cookie and "samesite=strict" in set_cookie
        assert "secure" not in set_cookie  # plain HTTP here; over TLS the flag is set

    # State-changing requests: the session's token and this console's origin, both.
    with subtests.test("csrf token and origin"):
        assert client.post_json("/api/actions/cluster/list-backups", {}).status == 200
        assert client.post_json("/api/actions/cluster/list-backups", {}, csrf=False).status == 403
        assert client.post_json("/api/actions/cluster/list-backups", {}, origin=False).status == 403
        cross = client.request(
            "POST",
            "/api/actions/cluster/list-backups",
            b"{}",
            {"Origin": "http://evil.example", "X-CSRF-Token": client.csrf},
        )
        assert cross.status == 403

    # The same validation as the action: refused before anything is queued.
    with subtests.test("invalid input is refused before anything is queued"):
        bad = client.post_json("/api/actions/cluster/add-backup", {"name": "x"})
        assert bad.status == 422
        assert {row["parameter"] for row in bad.json()["errors"]} >= {"repository", "schedule"}
        assert not redis_client.llen("cluster/tasks")

    # Paths from the browser are checked as restore paths are.
    repository = backups.add_destination(redis_client, "local", "local:/nonexistent")
    query = {"repository": repository, "path": "minwiki/" + "0" * 8, "snapshot": ""}
    with subtests.test("browser paths are checked as restore paths"):
        for directory in ("../etc", "volumes/../../etc", "volumes/./x"):
            listed = client.request(
                "GET", "/api/snapshots/ls?" + urlencode({**query, "dir": directory})
            )
            assert listed.status == 422, directory
        dumped = client.request(
            "GET", "/api/snapshots/download?" + urlencode({**query, "item": "../../etc/passwd"})
        )
        assert dumped.status == 422
    with subtests.test("every page and api answers"):
        for page in ("/", "/destinations", "/browse", "/modules/minwiki1"):
            shown = client.request("GET", page)
            assert shown.status == 200 and b'name="csrf-token"' in shown.body, page
        assert repository.encode() in client.request("GET", "/destinations").body
        history = client.request("GET", "/api/modules/minwiki1/history").json()
        assert history == {"module_id": "minwiki1", "backups": [], "runs": []}
        events = client.request("GET", "/api/events")
        assert events.status == 200 and events.headers["content-type"].startswith(
            "text/event-stream"
        )

    # A new password ends every session opened with the old one.
    import subprocess
    import sys

    subprocess.run(
        [sys.executable, "-m", "agent.cli", "web", "passwd", "--password-stdin"],
        input="another-password-123\n",
        text=True,
        env=cluster.nodes[1].env(),
        check=True,
        capture_output=True,
    )
    assert not (cluster.nodes[1].root / "web" / "admin-password").exists()
    assert HttpClient(console.port, cookie=cookie).request("GET", "/api/dashboard").status == 401
    assert client.login(console.password).status == 401
    assert client.login("another-password-123").status == 303


def wait_until(condition: Callable[[], Any], timeout: float = 180, what: str = "") -> Any:
    """condition's first true value; an element the live page re-rendered meanwhile (stale)
    counts as not yet."""
    from selenium.common.exceptions import StaleElementReferenceException

    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        except StaleElementReferenceException:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        time.sleep(0.2)


def click_fresh(find: Callable[[], Any], what: str) -> None:
    """Click what find() returns; found again when the live page replaced it meanwhile."""

    def clicked() -> bool:
        find().click()
        return True

    wait_until(clicked, timeout=30, what=what)


def test_operator_watches_a_backup_then_downloads_and_restores_a_file(
    cluster: ClusterHarness,
    wiki: str,
    console: Any,
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    destination = backups.add_destination(redis_client, "local", f"local:{tmp_path / 'dest'}")
    (tmp_path / "dest").mkdir()
    backups.add_backup(redis_client, 1, destination, [wiki])
    live = cluster.volume_dir(1, wiki, "pages")
    original = (live / PAGE).read_bytes()
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    shots = Path(SCREENSHOT_DIR) if SCREENSHOT_DIR else tmp_path
    browser = chromium(downloads)
    try:
        browser.get(console.url + "/")
        assert browser.current_url.endswith("/login")
        browser.find_element(By.ID, "password").send_keys(console.password)
        browser.find_element(By.ID, "login").click()
        wait_until(lambda: browser.find_elements(By.CSS_SELECTOR, f'tr[data-module="{wiki}"]'))
        wait_until(lambda: browser.find_element(By.ID, "live-status").text == "live")

        # The module's backup lock held here keeps the run waiting in plain sight; the page
        # learns of it (and of its end) from the event stream alone.
        holder = locks.acquire(redis_client, redis_keys.module_backup_lock(wiki))
        try:
            # The live dashboard may re-render the button between finding and clicking it.
            click_fresh(
                lambda: browser.find_element(By.CSS_SELECTOR, 'button.run-backup[data-backup="1"]'),
                "the run-backup button",
            )
            running = wait_until(
                lambda: [
                    row
                    for row in browser.find_elements(By.CSS_SELECTOR, "#running tbody tr")
                    if "run-backup" in row.text
                ],
                what="the running backup on the dashboard",
            )
            assert running[0].find_elements(By.TAG_NAME, "progress")
            browser.save_screenshot(str(shots / "console-dashboard-running.png"))
        finally:
            holder.release()

        def outcome() -> str:
            cells = browser.find_elements(By.CSS_SELECTOR, f'tr[data-module="{wiki}"] td.outcome')
            return cells[0].text if cells else ""

        wait_until(lambda: outcome().startswith("ok"), what="the backup's outcome")
        wait_until(lambda: not browser.find_elements(By.CSS_SELECTOR, "#running tbody tr"))
        browser.save_screenshot(str(shots / "console-dashboard.png"))
        browser.get(f"{console.url}/modules/{wiki}")
        assert browser.find_element(By.CSS_SELECTOR, "#backups td.outcome-ok").text == "ok"
        assert browser.find_element(By.CSS_SELECTOR, "#runs td.outcome-ok").text == "ok"
        assert "log line(s)" in browser.find_element(By.CSS_SELECTOR, "#runs summary").text

        # The snapshot browser: the module's repository, its snapshot, down to one page.
        (live / PAGE).write_text("# changed after the backup\n")
        browser.get(console.url + "/browse")
        repository = Select(browser.find_element(By.ID, "repository"))
        wait_until(lambda: len(repository.options) > 1, what="repositories")
        option = next(o for o in repository.options if wiki in o.text)
        repository.select_by_value(option.get_attribute("value"))
        for directory in ["volumes", "volumes/pages", *_parents(PAGE_PATH)]:
            try:
                row = wait_until(
                    lambda d=directory: browser.find_elements(
                        By.CSS_SELECTOR, f'#tree tr[data-path="{d}"] a.dir'
                    ),
                    what=directory,
                )
            except AssertionError as exc:  # what the page said instead
                status = browser.find_element(By.ID, "browse-status").text
                raise AssertionError(f"{exc}; the page says {status!r}") from None
            row[0].click()
        page_row = wait_until(
            lambda: browser.find_elements(By.CSS_SELECTOR, f'#tree tr[data-path="{PAGE_PATH}"]')
        )[0]
        browser.save_screenshot(str(shots / "console-snapshot-browser.png"))

        # Download the file: the bytes the backup saw.
        page_row.find_element(By.CSS_SELECTOR, "a.download-raw").click()
        assert wait_for_file(downloads, "page-0.md").read_bytes() == original
        # And its folder, as a zip.
        section = "volumes/pages/topic-0/section-0"
        browser.find_element(By.CSS_SELECTOR, f"#breadcrumbs a[data-dir='{section}']").click()
        folder = wait_until(
            lambda: browser.find_elements(
                By.CSS_SELECTOR, '#tree tr[data-path="volumes/pages/topic-0/section-0/sub-0"]'
            )
        )[0]
        folder.find_element(By.CSS_SELECTOR, "a.download-zip").click()
        archive = zipfile.ZipFile(io.BytesIO(wait_for_file(downloads, "sub-0.zip").read_bytes()))
        member = next(n for n in archive.namelist() if n.endswith("sub-0/page-0.md"))
        assert archive.read(member) == original

        # Restore the page into the running module, after the confirmation.
        folder.find_element(By.CSS_SELECTOR, "a.dir").click()  # into sub-0
        box = wait_until(
            lambda: browser.find_elements(
                By.CSS_SELECTOR, f'#tree tr[data-path="{PAGE_PATH}"] input[type=checkbox]'
            )
        )[0]
        box.click()
        target = Select(browser.find_element(By.ID, "restore-module"))
        assert target.first_selected_option.text == wiki
        browser.find_element(By.ID, "restore").click()
        alert = browser.switch_to.alert
        assert PAGE_PATH in alert.text
        alert.accept()
        status = wait_until(
            lambda: (
                browser.find_element(By.ID, "restore-status").text.startswith("Restored")
                and browser.find_element(By.ID, "restore-status").text
            ),
            what="the restore",
        )
        assert wiki in status
        assert (live / PAGE).read_bytes() == original
    finally:
        browser.quit()
    for name in ("console-dashboard.png", "console-snapshot-browser.png"):
        assert (shots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _parents(path: str) -> list[str]:
    """volumes/pages/a/b/c.md → the folders below volumes/pages on the way to it."""
    parts = path.split("/")
    return ["/".join(parts[:index]) for index in range(3, len(parts))]


def test_cluster_up_starts_the_console_on_the_leader_and_down_stops_it(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    agent = [sys.executable, "-m", "agent.cli"]
    root = tmp_path / "node"
    env = {**os.environ, "AGENT_ROOT": str(root)}
    env.pop("REDIS_URL", None)
    printed = subprocess.run(
        [*agent, "cluster", "init"], env=env, check=True, capture_output=True, text=True
    ).stdout
    password_file = root / "web" / "admin-password"
    assert str(password_file) in printed
    assert password_file.stat().st_mode & 0o777 == 0o600
    config = json.loads((root / "agent.json").read_text())
    assert config["web_listen"].startswith("127.0.0.1:")  # loopback unless told otherwise
    port = free_port()
    config["web_listen"] = f"127.0.0.1:{port}"
    (root / "agent.json").write_text(json.dumps(config))
    try:
        up = subprocess.run(
            [*agent, "cluster", "up"], env=env, capture_output=True, text=True, timeout=120
        )
        assert up.returncode == 0, up.stderr
        assert f"web console on http://127.0.0.1:{port}/" in up.stdout
        client = HttpClient(port)
        assert client.request("GET", "/login").status == 200
        assert client.login(password_file.read_text().strip()).status == 303
        assert client.request("GET", "/api/dashboard").json()["backups"] == []
    finally:
        down = subprocess.run(
            [*agent, "cluster", "down"], env=env, capture_output=True, text=True, timeout=120
        )
    assert "web console" in down.stdout
    with pytest.raises(OSError):
        client.request("GET", "/login")


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_a_large_download_streams_with_flat_memory(
    cluster: ClusterHarness, wiki: str, console: Any, redis_client: redis.Redis, tmp_path: Path
) -> None:
    import hashlib
    import http.client

    (tmp_path / "dest").mkdir()
    destination = backups.add_destination(redis_client, "local", f"local:{tmp_path / 'dest'}")
    backups.add_backup(redis_client, 1, destination, [wiki])
    size = 48 * 1024 * 1024
    big = cluster.volume_dir(1, wiki, "pages") / "big.bin"
    with big.open("wb") as handle:
        for _ in range(size // (1024 * 1024)):
            handle.write(os.urandom(1024 * 1024))
    expected = hashlib.sha256(big.read_bytes()).hexdigest()
    cluster.api_ok("run-backup", {"id": 1})
    client = HttpClient(console.port)
    assert client.login(console.password).status == 303
    path = f"minwiki/{redis_client.hget('cluster/module_uuid', wiki)}"
    query = {"repository": destination, "path": path, "snapshot": ""}
    listed = client.request(
        "GET", "/api/snapshots/ls?" + urlencode({**query, "dir": "volumes/pages"})
    )
    assert listed.status == 200 and "volumes/pages/big.bin" in {
        e["path"] for e in listed.json()["entries"]
    }
    before = peak_rss_kib(console.process.pid)

    connection = http.client.HTTPConnection("127.0.0.1", console.port, timeout=300)
    try:
        item = {"item": "volumes/pages/big.bin", "format": "raw"}
        connection.request(
            "GET",
            "/api/snapshots/download?" + urlencode({**query, **item}),
            headers={"Cookie": client.cookie},
        )
        response = connection.getresponse()
        assert response.status == 200
        assert response.getheader("content-disposition", "").startswith(
            'attachment; filename="big.bin"'
        )
        digest, received = hashlib.sha256(), 0
        while chunk := response.read(256 * 1024):
            digest.update(chunk)
            received += len(chunk)
    finally:
        connection.close()
    assert received == size and digest.hexdigest() == expected
    # The whole file through the server moved its peak memory by far less than its size.
    assert peak_rss_kib(console.process.pid) - before < 16 * 1024
