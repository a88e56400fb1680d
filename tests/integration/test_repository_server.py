"""The loopback restic REST server a rootless module's restic reaches a local destination
through: its own login, kept off its command line, on the port it bound itself."""

from __future__ import annotations

import base64
import os
import urllib.error
import urllib.request
from pathlib import Path

from agent.adapters import module_storage, sockets


def _listener(port: int) -> int:
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    owners = []
    for pid in pids:
        try:
            if port in sockets.listening_ports(pid):
                owners.append(pid)
        except OSError:
            continue
    assert len(owners) == 1, owners
    return owners[0]


def _status(url: str, login: tuple[str, str] | None) -> int:
    request = urllib.request.Request(url)
    if login:
        token = base64.b64encode(f"{login[0]}:{login[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_served_repository_has_its_own_login_off_its_command_line(tmp_path: Path) -> None:
    with module_storage.served_repository(tmp_path) as target:
        url = target.repository.removeprefix("rest:")
        port = int(url.rsplit(":", 1)[1].strip("/"))
        login = (target.env["RESTIC_REST_USERNAME"], target.env["RESTIC_REST_PASSWORD"])
        server = _listener(port)
        cmdline = Path(f"/proc/{server}/cmdline").read_bytes().decode()
        assert "rclone" in cmdline and str(tmp_path) in cmdline
        assert login[0] not in cmdline and login[1] not in cmdline
        assert _status(url + "config", None) == 401
        assert _status(url + "config", (login[0], "wrong")) == 401
        assert _status(url + "config", login) == 404  # no repository there yet
    assert not Path(f"/proc/{server}").exists()  # stopped and waited for
