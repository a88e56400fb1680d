"""rclone in the restic image: obscured passwords, config sections as env, and the
argument lists the agent gives rclone (after `--entrypoint=/usr/bin/rclone`)."""

from __future__ import annotations

import base64
import configparser
import os
import re
from collections.abc import Mapping, Sequence

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

ENTRYPOINT = "/usr/bin/rclone"
REMOTE = "dest"  # the remote name every destination gets inside the container
EXIT_DIRECTORY_NOT_FOUND = 3  # rclone's own exit code

# rclone's fixed obscure key (fs/config/obscure/obscure.go): obscuring hides a password
# from a casual glance, it is not encryption. rclone wants some values (smb and webdav
# `pass`) in this form, also when they come from RCLONE_CONFIG_* variables.
_OBSCURE_KEY = bytes.fromhex("9c935b48730a554d6bfd7c63c886a92bd390198eb8128afbf4de162b8b95f638")

# Bounded time: a dead host must fail the probe in seconds, not minutes.
PROBE_FLAGS = (
    "--contimeout=5s",
    "--timeout=5s",
    "--retries=1",
    "--low-level-retries=1",
    "--retries-sleep=100ms",
)
_KEY = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_UNREACHABLE = re.compile(
    r"connection refused|no such host|i/o timeout|deadline exceeded|network is unreachable|"
    r"no route to host|connection reset|tls: |timeout awaiting|eof",
    re.IGNORECASE,
)


def obscure(secret: str) -> str:
    """rclone obscure: AES-256-CTR with rclone's key, random IV first, URL-safe base64."""
    iv = os.urandom(16)
    encryptor = Cipher(algorithms.AES(_OBSCURE_KEY), modes.CTR(iv)).encryptor()
    data = iv + encryptor.update(secret.encode()) + encryptor.finalize()
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def reveal(obscured: str) -> str:
    data = base64.urlsafe_b64decode(obscured + "=" * (-len(obscured) % 4))
    decryptor = Cipher(algorithms.AES(_OBSCURE_KEY), modes.CTR(data[:16])).decryptor()
    return (decryptor.update(data[16:]) + decryptor.finalize()).decode()


def config_env(options: Mapping[str, str], remote: str = REMOTE) -> dict[str, str]:
    """A remote defined only by environment variables (RCLONE_CONFIG_<REMOTE>_<KEY>)."""
    prefix = f"RCLONE_CONFIG_{remote.upper()}_"
    return {prefix + key.upper(): value for key, value in options.items()}


def parse_config_section(text: str) -> dict[str, str]:
    """The options of one pasted rclone config section (header optional).

    Raises ValueError when it is not one section of `key = value` lines with a `type`.
    """
    if not re.match(r"\s*\[", text):
        text = "[remote]\n" + text
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keep key case
    try:
        parser.read_string(text)
    except configparser.Error as exc:
        raise ValueError(f"not an rclone config section: {type(exc).__name__}") from None
    sections = parser.sections()
    if len(sections) != 1:
        raise ValueError("paste exactly one rclone config section")
    options = dict(parser.items(sections[0]))
    for key, value in options.items():
        if not _KEY.match(key) or any(c in value for c in "\n\r\x00"):
            raise ValueError("malformed option in the rclone config section")
    if not options.get("type"):
        raise ValueError("the rclone config section has no type")
    return options


# Bounded failures for a serving child: a dead storage answers an error in seconds, restic
# retries it.
SERVE_FLAGS = (
    "--contimeout=10s",
    "--timeout=60s",
    "--low-level-retries=2",
    "--log-level=NOTICE",
)
SERVE_KINDS = ("restic", "webdav")


def serve_restic_argv(address: str, remote: str) -> list[str]:
    """`rclone serve restic` of remote on address (host:port); secrets stay in the env."""
    return ["rclone", "serve", "restic", f"--addr={address}", *SERVE_FLAGS, remote]


def serve_webdav_argv(address: str, remote: str, base_url: str) -> list[str]:
    """`rclone serve webdav` of remote on address, answering under the path base_url (so the
    hrefs it answers are those the client asked)."""
    base = f"--baseurl={base_url}"
    return ["rclone", "serve", "webdav", f"--addr={address}", base, *SERVE_FLAGS, remote]


def is_serve_argv(argv: Sequence[bytes]) -> bool:
    """True when a process's argv (from /proc/<pid>/cmdline) is one of the serve builders'."""
    kinds = [kind.encode() for kind in SERVE_KINDS]
    return list(argv[:2]) == [b"rclone", b"serve"] and len(argv) > 2 and argv[2] in kinds


def probe_argv(command: str, remote_path: str) -> list[str]:
    """rclone args (no secrets: the remote is defined in the environment) for one probe step."""
    return [command, *PROBE_FLAGS, remote_path]


def copy_args(source: str, destination: str, filters: Sequence[str] = ()) -> list[str]:
    """`copy` of what filters select, with the probe's bounded time (for small listings)."""
    return ["copy", *PROBE_FLAGS, *filters, source, destination]


def rcat_args(remote_path: str) -> list[str]:
    """`rcat`: standard input into one file on the remote."""
    return ["rcat", remote_path]


def join(remote: str, *parts: str) -> str:
    """remote spec plus path parts, without doubled slashes."""
    path = "/".join(p.strip("/") for p in parts if p.strip("/"))
    if not remote:
        return path
    if not path:
        return remote
    if remote.endswith(":") or remote.endswith("/"):
        return remote + path
    return f"{remote}/{path}"


def is_unreachable(stderr: str) -> bool:
    """True when rclone's error says the storage could not be reached at all."""
    return bool(_UNREACHABLE.search(stderr))


def probe_plan(remote_path: str, probe_name: str) -> Sequence[tuple[str, list[str], str]]:
    """(step, rclone args, error code on failure) for read, create, delete of a probe."""
    probe = join(remote_path, probe_name)
    return (
        ("read", [*probe_argv("lsf", remote_path), "--max-depth=1"], "no_read_permission"),
        ("write", probe_argv("rcat", probe), "no_write_permission"),
        ("delete", probe_argv("deletefile", probe), "no_delete_permission"),
    )
