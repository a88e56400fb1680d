"""add/alter-backup-repository input → a checked Destination and its Redis fields (pure)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import uuid
from dataclasses import dataclass, replace
from typing import Annotated, Any

import pydantic
from pydantic import StringConstraints

from agent.adapters import rclone
from agent.adapters.destinations import Destination, check_destination
from agent.core.destination_rules import DestinationNotAllowed, LocalPolicy
from agent.core.errors import ValidationFailed, validation_error
from agent.core.models import AddBackupRepositoryRequest, AlterBackupRepositoryRequest, Request
from agent.runtime.steps import pydantic_errors

Line = Annotated[str, StringConstraints(max_length=1024, pattern=r"^[^\n\r\t\x00]*$")]
Needed = Annotated[str, StringConstraints(min_length=1, max_length=1024, pattern=r"^[^\s\x00]+$")]
Host = Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9.:-]+$")]
Region = Annotated[str, StringConstraints(max_length=64, pattern=r"^[A-Za-z0-9-]*$")]


class BackblazeParameters(Request):
    b2_account_id: Needed
    b2_account_key: Line


class S3Parameters(Request):
    aws_access_key_id: Needed
    aws_secret_access_key: Line
    aws_default_region: Region = ""


class AzureParameters(Request):
    azure_account_name: Needed
    azure_account_key: Line


class SmbParameters(Request):
    smb_host: Host
    smb_user: Needed
    smb_pass: Line
    smb_domain: Line


class RcloneParameters(Request):
    rclone_conf_secret: Annotated[str, StringConstraints(max_length=100000)] | None = ""
    rclone_conf_b64_secret: Annotated[str, StringConstraints(max_length=140000)] = ""
    basepath: Annotated[
        str, StringConstraints(max_length=512, pattern=r"^[A-Za-z0-9._~@+/-]*$")
    ] = ""


class RestParameters(Request):
    rest_user: Annotated[str, StringConstraints(max_length=256, pattern=r"^[^\s:\x00]*$")] = ""
    rest_password: Line = ""


class NoParameters(Request):
    pass


_PATH = r"(/[A-Za-z0-9._~@+-]+)*/?"
_HOST = r"[A-Za-z0-9.-]+(:[0-9]{1,5})?"
PROVIDERS: dict[str, tuple[type[Request], str | None]] = {
    "backblaze": (BackblazeParameters, rf"^b2:[A-Za-z0-9][A-Za-z0-9-]{{0,62}}{_PATH}$"),
    "aws": (S3Parameters, rf"^s3:(https?://)?{_HOST}/[A-Za-z0-9][A-Za-z0-9.-]{{0,62}}{_PATH}$"),
    "generic-s3": (
        S3Parameters,
        rf"^s3:(https?://)?{_HOST}/[A-Za-z0-9][A-Za-z0-9.-]{{0,62}}{_PATH}$",
    ),
    "azure": (AzureParameters, rf"^azure:[a-z0-9][a-z0-9-]{{1,62}}{_PATH}$"),
    "smb": (SmbParameters, rf"^smb:[A-Za-z0-9._$-]+{_PATH}$"),
    "cluster": (NoParameters, rf"^webdav:https?://{_HOST}{_PATH}$"),
    "local": (NoParameters, r"^local:(/[A-Za-z0-9._~@+-]+)+/?$"),
    "rest": (RestParameters, rf"^rest:https?://{_HOST}{_PATH}$"),
    "rclone": (RcloneParameters, None),  # the URL is derived from the config
}
SECRETS: tuple[str, ...] = (
    "b2_account_key",
    "aws_secret_access_key",
    "azure_account_key",
    "smb_pass",
    "rest_password",
    "rclone_conf",
)


@dataclass(frozen=True)
class Prepared:
    """A destination ready to be probed and saved."""

    destination: Destination

    @property
    def public(self) -> dict[str, str]:
        return self.destination.public_fields()

    @property
    def private(self) -> dict[str, str]:
        return self.destination.private_fields()


def stable_uuid(request: dict[str, Any]) -> str:
    """NS8's id: uuid5(URL namespace, canonical JSON of the request minus name/password)."""
    blanked = {**request, "password": "", "name": ""}
    text = json.dumps(blanked, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return str(uuid.uuid5(uuid.NAMESPACE_URL, text))


def random_password() -> str:
    return hashlib.sha256(uuid.uuid4().bytes).hexdigest()


def default_name(provider: str, url: str, destination_id: str) -> str:
    if provider == "aws" and "/" in url:
        return "AWS " + url.split("/", 1)[1]
    if provider == "backblaze" and ":" in url:
        return "Backblaze " + url.split(":", 1)[1]
    return f"{provider} {destination_id[:4]}"


def check_parameters(provider: str, parameters: dict[str, str]) -> dict[str, str]:
    model, _ = PROVIDERS[provider]
    try:
        checked = model.model_validate(parameters)
    except pydantic.ValidationError as exc:
        rows = pydantic_errors(exc)
        for row in rows:
            row["field"] = f"parameters.{row['field']}"
        raise ValidationFailed(rows) from None
    return {k: v for k, v in checked.model_dump().items() if v is not None}


def check_url(provider: str, url: str) -> None:
    pattern = PROVIDERS[provider][1]
    parts = re.split(r"[/:]", url)
    if pattern is not None and (not re.match(pattern, url) or ".." in parts or "." in parts):
        raise validation_error("url", "url_bad_format", url, exit_code=10)


def rclone_conf(parameters: dict[str, str], stored: str) -> str:
    """The pasted section (or its base64), normalized to `key = value` lines."""
    text = parameters.get("rclone_conf_secret")
    if text is None:
        try:
            raw = base64.b64decode(parameters.get("rclone_conf_b64_secret", ""), validate=True)
            text = raw.decode()
        except (binascii.Error, UnicodeDecodeError):
            text = "\x00"
    if not text:
        if not stored:
            raise validation_error("parameters", "rclone_conf_error", "***")
        return stored
    try:
        options = rclone.parse_config_section(text)
    except ValueError:
        raise validation_error("parameters", "rclone_conf_error", "***") from None
    return "".join(f"{key} = {value}\n" for key, value in options.items())


def rclone_display_url(conf: str, basepath: str) -> str:
    options = rclone.parse_config_section(conf)
    location = options.get("host") or options.get("endpoint") or options.get("url", "")
    host = re.sub(r"^[a-z]+://", "", location).split("/")[0].split(":")[0]
    host = host or str(uuid.uuid5(uuid.NAMESPACE_URL, conf))[:5]
    return f"rclone:{options['type']}:{host}:{basepath.strip('/')}"


def prepare(
    request: AddBackupRepositoryRequest | AlterBackupRepositoryRequest,
    destination_id: str,
    stored: Destination | None,
    policy: LocalPolicy,
) -> Prepared:
    """Check provider parameters and URL, and what the destination may reach (policy:
    this node's local roots); on alter, empty secrets keep the stored ones."""
    provider = request.provider
    parameters = check_parameters(provider, dict(request.parameters))
    old = dict(stored.parameters) if stored else {}
    url = request.url or (stored.url if stored else "")
    basepath = ""
    if provider == "rclone":
        private = {"rclone_conf": rclone_conf(parameters, old.get("rclone_conf", ""))}
        basepath = parameters.get("basepath") or (stored.basepath if stored else "")
        url = rclone_display_url(private["rclone_conf"], basepath)
    else:
        check_url(provider, url)
        private = dict(parameters)
        for key in SECRETS:
            if key in private and not private[key] and old.get(key):
                private[key] = old[key]
    name = (
        request.name
        or (stored.name if stored else "")
        or default_name(provider, url, destination_id)
    )
    password = stored.password if stored else getattr(request, "password", "")
    destination = Destination(
        id=destination_id,
        name=name,
        provider=provider,
        url=url,
        password=password or random_password(),
        parameters=private,
        basepath=basepath,
    )
    try:
        check_destination(destination, policy)
    except DestinationNotAllowed as exc:
        field = "url" if provider == "local" else "parameters"
        shown = url if provider == "local" else str(exc)
        raise validation_error(field, exc.code, shown) from None
    return Prepared(destination)


def with_password(prepared: Prepared, password: str) -> Prepared:
    return Prepared(replace(prepared.destination, password=password))
