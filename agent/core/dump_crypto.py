"""Passphrase encryption of the cluster dump: scrypt for the key, AES-256-GCM for the data.

The `cryptography` package (already a dependency) does both; no process, no keyring, no
agent to talk to. GCM authenticates the header and the whole ciphertext, so a changed
byte anywhere is refused. A second key from the same scrypt run checks the passphrase
first, so a wrong passphrase and a damaged file get different, clear errors.

Layout: MAGIC, 3 bytes of scrypt cost (log2 N, r, p), 16 bytes salt, 12 bytes nonce,
32 bytes passphrase check, then ciphertext with its 16-byte tag. The header is the
associated data of the encryption.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from agent.core.errors import AgentError

MAGIC = b"BAGDUMP1"
HEADER_SIZE = len(MAGIC) + 3 + 16 + 12 + 32
TAG_SIZE = 16
DEFAULT_COST = (15, 8, 1)  # 32 MiB and about 0.1 s per derivation
# A hostile header must not make us spend gigabytes or minutes: cap what we accept.
MAX_LOG_N, MAX_R, MAX_P = 20, 16, 4
CHECK_LABEL = b"backup-agent cluster dump passphrase check"


class NotADump(AgentError):
    """The bytes are not an encrypted cluster dump (wrong magic, truncated, bad header)."""


class WrongPassphrase(AgentError):
    """The passphrase does not open this dump."""


class TamperedDump(AgentError):
    """The passphrase is right but the content was changed or damaged."""


@dataclass(frozen=True)
class Header:
    log_n: int
    r: int
    p: int
    salt: bytes
    nonce: bytes
    check: bytes

    def to_bytes(self) -> bytes:
        return MAGIC + bytes((self.log_n, self.r, self.p)) + self.salt + self.nonce + self.check


def parse_header(data: bytes) -> Header:
    """The header of an encrypted dump; raises NotADump for anything else."""
    if len(data) < HEADER_SIZE + TAG_SIZE or not data.startswith(MAGIC):
        raise NotADump("not an encrypted cluster backup file")
    offset = len(MAGIC)
    log_n, r, p = data[offset], data[offset + 1], data[offset + 2]
    if not (10 <= log_n <= MAX_LOG_N and 1 <= r <= MAX_R and 1 <= p <= MAX_P):
        raise NotADump("cluster backup file with unsupported key parameters")
    offset += 3
    salt, nonce = data[offset : offset + 16], data[offset + 16 : offset + 28]
    check = data[offset + 28 : offset + 60]
    return Header(log_n, r, p, salt, nonce, check)


def derive_keys(passphrase: str, header: Header) -> tuple[bytes, bytes]:
    """(encryption key, check key) from one scrypt run."""
    kdf = Scrypt(salt=header.salt, length=64, n=2**header.log_n, r=header.r, p=header.p)
    material = kdf.derive(passphrase.encode())
    return material[:32], material[32:]


def passphrase_check(check_key: bytes) -> bytes:
    return hmac.new(check_key, CHECK_LABEL, hashlib.sha256).digest()


def seal(plaintext: bytes, passphrase: str, cost: tuple[int, int, int] = DEFAULT_COST) -> bytes:
    """plaintext encrypted and authenticated under passphrase (fresh salt and nonce)."""
    if not passphrase:
        raise AgentError("an empty passphrase encrypts nothing")
    draft = Header(*cost, salt=os.urandom(16), nonce=os.urandom(12), check=b"")
    key, check_key = derive_keys(passphrase, draft)
    header = Header(*cost, salt=draft.salt, nonce=draft.nonce, check=passphrase_check(check_key))
    head = header.to_bytes()
    return head + AESGCM(key).encrypt(header.nonce, plaintext, head)


def unseal(data: bytes, passphrase: str) -> bytes:
    """The plaintext; raises NotADump, WrongPassphrase or TamperedDump."""
    header = parse_header(data)
    key, check_key = derive_keys(passphrase, header)
    if not hmac.compare_digest(passphrase_check(check_key), header.check):
        raise WrongPassphrase("the passphrase does not open this cluster backup")
    head = data[:HEADER_SIZE]
    try:
        return AESGCM(key).decrypt(header.nonce, data[HEADER_SIZE:], head)
    except InvalidTag:
        raise TamperedDump("the cluster backup file was changed or damaged") from None
