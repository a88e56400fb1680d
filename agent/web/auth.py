"""The console's one admin account: a scrypt hash on disk, sessions in Redis, CSRF checks."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from agent.adapters.redis_api import Redis
from agent.core import redis_keys
from agent.core.errors import ConfigError

ADMIN = "admin"
COOKIE = "agent_console"
SESSION_SECONDS = 12 * 3600
# scrypt at 16 MiB: a guess costs tens of milliseconds, the one login a day does not notice.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1


def web_dir(root: Path) -> Path:
    return root / "web"


def hash_file(root: Path) -> Path:
    return web_dir(root) / "admin.scrypt"


def initial_password_file(root: Path) -> Path:
    """Where `agent cluster init` leaves the first password for the operator to read."""
    return web_dir(root) / "admin-password"


def make_hash(password: str, salt: bytes | None = None) -> str:
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32
    )
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${digest.hex()}"


def check_hash(password: str, stored: str) -> bool:
    """True when password matches stored (make_hash's format); False for anything malformed."""
    try:
        kind, n, r, p, salt, digest = stored.strip().split("$")
        if kind != "scrypt":
            return False
        computed = hashlib.scrypt(
            password.encode(),
            salt=bytes.fromhex(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(digest) // 2,
        )
    except ValueError:
        return False
    return hmac.compare_digest(computed.hex(), digest)


def _write_private(path: Path, text: str) -> None:
    """Write text to a 0600 file, atomically, in a 0700 directory."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def set_password(root: Path, password: str) -> None:
    """Store password's hash; the first-password file, now stale, goes."""
    if len(password) < 8:
        raise ConfigError("the console password needs at least 8 characters")
    _write_private(hash_file(root), make_hash(password) + "\n")
    initial_password_file(root).unlink(missing_ok=True)


def create_first_password(root: Path) -> str:
    """Generate the first admin password (kept readable in a 0600 file) unless one exists."""
    if hash_file(root).exists():
        return ""
    password = secrets.token_urlsafe(18)
    set_password(root, password)
    _write_private(initial_password_file(root), password + "\n")
    return password


def read_hash(root: Path) -> str:
    try:
        return hash_file(root).read_text().strip()
    except FileNotFoundError:
        raise ConfigError(
            f"no console password in {web_dir(root)}: set one with 'agent web passwd'"
        ) from None


def password_generation(stored_hash: str) -> str:
    """Changes whenever the password does: a session from before a change is void."""
    return hashlib.sha256(stored_hash.encode()).hexdigest()[:16]


# --- sessions --------------------------------------------------------------------------
@dataclass(frozen=True)
class Session:
    csrf: str
    created: float
    generation: str


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def open_session(redis: Redis, generation: str) -> tuple[str, Session]:
    """A new session: (the cookie value, what the server keeps about it)."""
    token = secrets.token_urlsafe(32)
    session = Session(csrf=secrets.token_urlsafe(24), created=time.time(), generation=generation)
    redis.set(
        redis_keys.web_session(_digest(token)),
        json.dumps({"csrf": session.csrf, "created": session.created, "generation": generation}),
        ex=SESSION_SECONDS,
    )
    return token, session


def find_session(redis: Redis, token: str, generation: str) -> Session | None:
    """The live session of a cookie value, None when unknown, expired or from an old password."""
    if not token or len(token) > 128:
        return None
    raw = redis.get(redis_keys.web_session(_digest(token)))
    if raw is None:
        return None
    try:
        data = json.loads(raw)
        session = Session(str(data["csrf"]), float(data["created"]), str(data["generation"]))
    except (ValueError, KeyError, TypeError):
        return None
    if not hmac.compare_digest(session.generation, generation):
        return None
    return session


def close_session(redis: Redis, token: str) -> None:
    redis.delete(redis_keys.web_session(_digest(token)))


# --- cross-site requests ---------------------------------------------------------------
def same_origin(origin: str | None, referer: str | None, host: str | None, scheme: str) -> bool:
    """True when the browser says the request comes from this console's own pages.

    Browsers send Origin on every POST; an old one may send only Referer. A request
    naming neither is refused: the console's own pages always send one."""
    if not host:
        return False
    claimed = origin if origin and origin != "null" else referer
    if not claimed:
        return False
    parts = urlsplit(claimed)
    return parts.scheme == scheme and parts.netloc.lower() == host.lower()


def csrf_ok(session: Session, header: str | None) -> bool:
    return bool(header) and hmac.compare_digest(session.csrf, header or "")
