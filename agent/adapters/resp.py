"""A Redis client for short-lived commands: RESP2 over TCP or a Unix socket, no redis-py.

api-cli, redis-dump and redis-restore start once per call and send a handful of commands.
Importing redis-py costs them 50–110 ms (it imports asyncio and importlib.metadata), more
than the rest of their work, so they speak the protocol themselves. The daemon and the
steps use redis-py. `Client` offers the few redis-py methods the task protocol's client
side calls (agent/tasks.py, agent/lease.py), with the same names and str replies.
"""

from __future__ import annotations

import select
import socket
from types import TracebackType
from typing import Any, NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

CONNECT_TIMEOUT = 30.0
REPLY_TIMEOUT = 300.0

Reply = bytes | int | None | list["Reply"]


class RespError(Exception):
    """Redis answered with an error, could not be reached, or broke the protocol."""


class RespConnectionError(RespError):
    """Redis could not be reached, or the connection broke."""


class Address(NamedTuple):
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
    """One socket, one command at a time (or a subscription's stream of messages)."""

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
            raise RespConnectionError(
                f"cannot connect to Redis at {address.where}: {exc}"
            ) from None
        self._sock.settimeout(REPLY_TIMEOUT)
        self._buffer = bytearray()
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
        self._sock.close()

    def command(self, *args: str | bytes | int) -> Reply:
        self.send(*args)
        return self.reply()

    def send(self, *args: str | bytes | int) -> None:
        request = [b"*%d\r\n" % len(args)]
        for arg in args:
            data = arg if isinstance(arg, bytes) else str(arg).encode()
            request += [b"$%d\r\n" % len(data), data, b"\r\n"]
        try:
            self._sock.sendall(b"".join(request))
        except OSError as exc:
            raise RespConnectionError(f"Redis at {self._where}: {exc}") from None

    def readable(self, timeout: float) -> bool:
        """Whether a reply has (started to) come within timeout seconds."""
        if self._buffer:
            return True
        try:
            ready, _, _ = select.select([self._sock], [], [], timeout)
        except (OSError, ValueError) as exc:
            raise RespConnectionError(f"Redis at {self._where}: {exc}") from None
        return bool(ready)

    def reply(self) -> Reply:
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
            return None if size < 0 else self._exactly(size + 2)[:-2]
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else [self.reply() for _ in range(count)]
        raise RespError(f"Redis at {self._where} sent an unknown reply {line[:20]!r}")

    def _fill(self) -> None:
        try:
            chunk = self._sock.recv(65536)
        except OSError as exc:
            raise RespConnectionError(f"Redis at {self._where}: {exc}") from None
        if not chunk:
            raise RespConnectionError(f"Redis at {self._where} closed the connection")
        self._buffer += chunk

    def _line(self) -> bytes:
        while (end := self._buffer.find(b"\r\n")) < 0:
            self._fill()
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 2]
        return line

    def _exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            self._fill()
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data


def connect(url: str) -> Connection:
    return Connection(parse_url(url))


def _text(reply: Reply) -> Any:
    if isinstance(reply, bytes):
        return reply.decode()
    if isinstance(reply, list):
        return [_text(item) for item in reply]
    return reply


class Client:
    """The redis-py methods (decode_responses=True) that the task protocol's client uses.

    After a broken connection the next command connects again; reads (and pipelines,
    which hold only GETs) are tried once more on a new connection, writes are not: an
    LPUSH that may have landed must not queue the task twice.
    """

    def __init__(self, address: Address) -> None:
        self.address = address
        self._connection: Connection | None = Connection(address)

    def _connected(self) -> Connection:
        if self._connection is None:
            self._connection = Connection(self.address)
        return self._connection

    def _call(self, *args: str | bytes | int, read: bool = True) -> Any:
        try:
            return _text(self._connected().command(*args))
        except RespConnectionError:
            self.close()
            if not read:
                raise
        return _text(self._connected().command(*args))

    def ping(self) -> bool:
        return bool(self._call("PING") == "PONG")

    def get(self, key: str) -> str | None:
        return self._call("GET", key)  # type: ignore[no-any-return]

    def hget(self, key: str, field: str) -> str | None:
        return self._call("HGET", key, field)  # type: ignore[no-any-return]

    def sismember(self, key: str, member: str | int) -> bool:
        return bool(self._call("SISMEMBER", key, member))

    def exists(self, *keys: str) -> int:
        return int(self._call("EXISTS", *keys))

    def lpush(self, key: str, *values: str) -> int:
        return int(self._call("LPUSH", key, *values, read=False))

    def rpush(self, key: str, *values: str) -> int:
        return int(self._call("RPUSH", key, *values, read=False))

    def lrem(self, key: str, count: int, value: str) -> int:
        return int(self._call("LREM", key, count, value, read=False))

    def pipeline(self, transaction: bool = True) -> Pipeline:
        if transaction:
            raise RespError("this client sends no transactions")
        return Pipeline(self)

    def pubsub(self, ignore_subscribe_messages: bool = False) -> PubSub:
        return PubSub(self.address, ignore_subscribe_messages)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


class Pipeline:
    """GETs sent in one write, their replies read after (no MULTI)."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._keys: list[str] = []

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._keys.clear()

    def get(self, key: str) -> Pipeline:
        self._keys.append(key)
        return self

    def execute(self) -> list[Any]:
        keys, self._keys = self._keys, []
        try:
            return self._send(keys)
        except RespConnectionError:
            self._client.close()
        return self._send(keys)

    def _send(self, keys: list[str]) -> list[Any]:
        connection = self._client._connected()
        for key in keys:
            connection.send("GET", key)
        return [_text(connection.reply()) for _ in keys]


class PubSub:
    """A subscription on its own connection, read with a timeout like redis-py's. After a
    broken connection the next get_message subscribes again (what was published in
    between is lost: callers read the stored result when they hear nothing)."""

    def __init__(self, address: Address, ignore_subscribe_messages: bool) -> None:
        self._address = address
        self._ignore = ignore_subscribe_messages
        self._channels: list[str] = []
        self._connection: Connection | None = None

    def subscribe(self, channel: str) -> None:
        """Returns once Redis confirms: what is published after it is heard. (Messages of
        channels subscribed before, arriving meanwhile, are dropped.)"""
        connection = self._connected()
        self._channels.append(channel)
        connection.send("SUBSCRIBE", channel)
        try:
            while _text(connection.reply())[:2] != ["subscribe", channel]:
                pass
        except RespConnectionError:
            self.close()
            raise

    def _connected(self) -> Connection:
        if self._connection is None:
            connection = Connection(self._address)
            for channel in self._channels:
                connection.send("SUBSCRIBE", channel)
            self._connection = connection
        return self._connection

    def get_message(self, timeout: float = 0.0) -> dict[str, Any] | None:
        if not self._channels:
            return None
        try:
            connection = self._connected()
            if not connection.readable(timeout):
                return None
            reply = _text(connection.reply())
        except RespConnectionError:
            self.close()
            raise
        if not isinstance(reply, list) or len(reply) != 3:
            raise RespError(f"unexpected message on a subscription: {reply!r}")
        kind, channel, data = reply
        if kind != "message" and self._ignore:
            return None
        return {"type": kind, "channel": channel, "data": data}

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def client(url: str) -> Client:
    """A Client on url, checked with PING (raises RespError when Redis is unreachable)."""
    made = Client(parse_url(url))
    if not made.ping():
        raise RespError(f"Redis at {made.address.where} did not answer PING")
    return made
