"""A Redis connection for one-shot commands: RESP2 over TCP or a Unix socket, no redis-py.

redis-dump and redis-restore run in every module's backup and restore and send two or
three commands each. Importing redis-py costs them about 0.1 s (it imports asyncio) for
a job that takes a millisecond, so they speak the protocol themselves. Everything else
in the agent uses redis-py.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

CONNECT_TIMEOUT = 30.0
REPLY_TIMEOUT = 300.0

Reply = bytes | int | None | list["Reply"]


class RespError(Exception):
    """Redis answered with an error, could not be reached, or broke the protocol."""


@dataclass(frozen=True)
class Address:
    host: str = "127.0.0.1"
    port: int = 6379
    unix_path: str = ""
    username: str = ""
    password: str = ""
    db: int = 0

    @property
    def where(self) -> str:
        return self.unix_path or f"{self.host}:{self.port}"


def parse_url(url: str) -> Address:
    """redis://[user[:password]@]host[:port][/db] or unix://[user[:password]@]/path[?db=N]
    (a password may also come as ?password=, as redis-py accepts)."""
    parts = urlsplit(url)
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    in_path = parts.path.strip("/") if parts.scheme == "redis" else ""
    try:
        db = int(query.get("db") or in_path or 0)
        port = parts.port or 6379
    except ValueError:
        raise RespError(f"bad Redis URL {_masked(url)!r}") from None
    username = unquote(parts.username or "")
    password = unquote(parts.password or "") or query.get("password", "")
    if parts.scheme == "redis":
        host = parts.hostname or "127.0.0.1"
        return Address(host, port, "", username, password, db)
    if parts.scheme == "unix" and parts.path:
        return Address(unix_path=parts.path, username=username, password=password, db=db)
    raise RespError(f"unsupported Redis URL {_masked(url)!r}: use redis:// or unix://")


def _masked(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


class Connection:
    """One socket, one command at a time."""

    def __init__(self, address: Address) -> None:
        try:
            if address.unix_path:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self._sock.settimeout(CONNECT_TIMEOUT)
                self._sock.connect(address.unix_path)
            else:
                self._sock = socket.create_connection(
                    (address.host, address.port), timeout=CONNECT_TIMEOUT
                )
        except OSError as exc:
            raise RespError(f"cannot connect to Redis at {address.where}: {exc}") from None
        self._sock.settimeout(REPLY_TIMEOUT)
        self._reader = self._sock.makefile("rb")
        self._where = address.where
        if address.password:
            credentials = [address.username] if address.username else []
            self.command("AUTH", *credentials, address.password)
        if address.db:
            self.command("SELECT", address.db)

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._reader.close()
        self._sock.close()

    def command(self, *args: str | bytes | int) -> Reply:
        request = [b"*%d\r\n" % len(args)]
        for arg in args:
            data = arg if isinstance(arg, bytes) else str(arg).encode()
            request += [b"$%d\r\n" % len(data), data, b"\r\n"]
        try:
            self._sock.sendall(b"".join(request))
            return self._reply()
        except OSError as exc:
            raise RespError(f"Redis at {self._where}: {exc}") from None

    def _line(self) -> bytes:
        line = self._reader.readline()
        if not line.endswith(b"\r\n"):
            raise RespError(f"Redis at {self._where} closed the connection")
        return line[:-2]

    def _reply(self) -> Reply:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest
        if kind == b"-":
            raise RespError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            data = self._reader.read(size + 2)
            if len(data) != size + 2:
                raise RespError(f"Redis at {self._where} closed the connection")
            return data[:-2]
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else [self._reply() for _ in range(count)]
        raise RespError(f"Redis at {self._where} sent an unknown reply {line[:20]!r}")


def connect(url: str) -> Connection:
    return Connection(parse_url(url))
