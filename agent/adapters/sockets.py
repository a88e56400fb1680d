"""Which TCP ports a process listens on, as the kernel says (/proc): a child told to bind
port 0 is reached on the port it holds, never on one picked for it that another process
could have taken first."""

from __future__ import annotations

import os
import socket
import sys

LOOPBACK = "127.0.0.1"
_LISTEN = "0A"  # TCP state in /proc/net/tcp


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    fd_dir = f"/proc/{pid}/fd"
    for name in os.listdir(fd_dir):
        try:
            target = os.readlink(os.path.join(fd_dir, name))
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def _address(field: str) -> tuple[str, int]:
    """'0100007F:1F90' (host byte order) → ('127.0.0.1', 8080)."""
    hex_ip, _, hex_port = field.partition(":")
    raw = bytes.fromhex(hex_ip)
    return socket.inet_ntoa(raw[::-1] if sys.byteorder == "little" else raw), int(hex_port, 16)


def parse_listening(table: str, inodes: set[str], host: str) -> list[int]:
    """The ports of the IPv4 sockets in table (/proc/<pid>/net/tcp's text) that listen on
    host and are among inodes."""
    ports = []
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or fields[3] != _LISTEN or fields[9] not in inodes:
            continue
        address, port = _address(fields[1])
        if address == host:
            ports.append(port)
    return sorted(ports)


def listening_ports(pid: int, host: str = LOOPBACK) -> list[int]:
    """The TCP ports process pid listens on at host (IPv4); [] while it listens on none.
    Raises OSError when the process is gone."""
    inodes = _socket_inodes(pid)
    if not inodes:
        return []
    with open(f"/proc/{pid}/net/tcp") as handle:
        return parse_listening(handle.read(), inodes, host)


def bound_port(pid: int, host: str = LOOPBACK) -> int | None:
    """The one port process pid listens on at host, None while it listens on none (or is
    gone: its caller sees that from its exit)."""
    try:
        ports = listening_ports(pid, host)
    except OSError:
        return None
    return ports[0] if ports else None
