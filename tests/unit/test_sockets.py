"""What a process listens on, read from /proc: the gateway and the rootless repository
server reach their rclone children by it, never by a port picked for them."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from agent.adapters import sockets

# /proc/<pid>/net/tcp as a little-endian kernel writes it: a listener on 127.0.0.1:8080
# (inode 111), one on 0.0.0.0:22 (222), an established connection (333).
TABLE = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1
   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 222 1
   2: 0100007F:1F90 0100007F:A000 01 00000000:00000000 00:00000000 00000000     0        0 333 1
"""


@pytest.mark.skipif(sys.byteorder != "little", reason="the table above is little-endian")
def test_only_listeners_of_the_process_on_the_host_count() -> None:
    assert sockets.parse_listening(TABLE, {"111", "222", "333"}, "127.0.0.1") == [8080]
    assert sockets.parse_listening(TABLE, {"222"}, "0.0.0.0") == [22]
    assert sockets.parse_listening(TABLE, {"333"}, "127.0.0.1") == []  # not listening
    assert sockets.parse_listening(TABLE, {"999"}, "127.0.0.1") == []  # not its socket


def test_a_process_is_found_on_the_port_it_bound_and_not_on_another_s() -> None:
    with socket.socket() as other:  # this process's listener: not the child's
        other.bind(("127.0.0.1", 0))
        other.listen()
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import socket, sys; s = socket.socket(); s.bind(('127.0.0.1', 0)); "
                "s.listen(); print(s.getsockname()[1], flush=True); sys.stdin.read()",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None
            port = int(child.stdout.readline())
            assert sockets.listening_ports(child.pid) == [port]
            assert sockets.bound_port(child.pid) == port
            assert other.getsockname()[1] not in sockets.listening_ports(child.pid)
        finally:
            child.communicate("")
    assert sockets.bound_port(child.pid) is None  # gone
