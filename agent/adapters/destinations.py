"""Backup destinations: loaded from Redis and mapped to restic and rclone targets.

Secrets live only in `private/backup_repository/<id>`; here they go into the `env` of a
target, which reaches the container by variable name only (see agent.adapters.restic).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from agent.adapters import rclone
from agent.adapters.redis_store import Redis
from agent.adapters.restic import ResticTarget
from agent.core.destination_rules import (
    DestinationNotAllowed,
    LocalPolicy,
    check_basepath,
    check_local_directory,
    check_rclone_options,
)
from agent.core.errors import AgentError, DestinationNotFound
from agent.records.destinations import Destination as Destination  # re-exported: its old home

LOCAL_MOUNT = "/srv/destination"  # where a `local` destination's directory is mounted
RCLONE_PROVIDERS = ("smb", "rclone", "cluster")  # reached through restic's rclone: backend

# generic-s3 vendor quirks (rclone `provider` and friends), keyed by a part of the host.
# region "label N": default region is the Nth dot-separated label of the host.
_S3_VENDORS: tuple[tuple[str, dict[str, str], int | None], ...] = (
    ("digitalocean", {"provider": "DigitalOcean"}, None),
    ("ovh.net", {"provider": "Other"}, 1),
    ("wasabi", {"provider": "Wasabi"}, 1),
    ("synology", {"provider": "Synology", "no_check_bucket": "true"}, 0),
    ("your-objectstorage.com", {"provider": "Other"}, 0),
    ("idrivee2", {"provider": "IDrive", "no_check_bucket": "true"}, None),
    ("cubbit.eu", {"provider": "Other", "region": "eu-west-1"}, None),
    ("scalablestorage.it", {"provider": "Other", "no_check_bucket": "true"}, None),
)


def load_destination(redis: Redis, destination_id: str) -> Destination:
    destination = Destination.from_redis(redis, destination_id)
    if destination is None:
        raise DestinationNotFound(f"no backup destination {destination_id}")
    return destination


def check_destination(destination: Destination, policy: LocalPolicy) -> None:
    """Raise DestinationNotAllowed when destination would reach what this node forbids:
    a host directory outside its local roots, an rclone backend or option off the list."""
    if destination.provider == "local":
        check_local_directory(local_directory(destination), policy)
    elif destination.provider == "rclone":
        try:
            options = rclone.parse_config_section(destination.parameters.get("rclone_conf", ""))
        except ValueError as exc:
            raise DestinationNotAllowed(str(exc), "rclone_conf_error") from None
        check_rclone_options(options)
        check_basepath(destination.basepath)


def url_body(url: str) -> str:
    """'b2:bucket/path' → 'bucket/path'."""
    return url.split(":", 1)[1] if ":" in url else url


def s3_parts(url: str) -> tuple[str, str]:
    """'s3:host/bucket/path' → ('https://host', 'bucket/path'); an http:// endpoint is kept."""
    body = url_body(url)
    scheme = "https"
    for prefix in ("http://", "https://"):
        if body.startswith(prefix):
            scheme, body = prefix[:-3], body[len(prefix) :]
    host, _, path = body.partition("/")
    return f"{scheme}://{host}", path.strip("/")


def s3_options(destination: Destination) -> dict[str, str]:
    """rclone s3 options with the vendor quirks of NS8's generic-s3 mapping."""
    endpoint, _ = s3_parts(destination.url)
    params = destination.parameters
    region = params.get("aws_default_region", "")
    options = {
        "type": "s3",
        "env_auth": "false",
        "access_key_id": params.get("aws_access_key_id", ""),
        "secret_access_key": params.get("aws_secret_access_key", ""),
    }
    host = urlsplit(endpoint).hostname or ""
    if destination.provider == "aws":
        return {**options, "provider": "AWS", "region": region}
    options["endpoint"] = endpoint
    for marker, quirks, region_label in _S3_VENDORS:
        if marker in host:
            labels = host.split(".")
            if region_label is not None and not region and len(labels) > region_label:
                region = labels[region_label]
            options.update(quirks)
            break
    else:
        options["provider"] = "Other"
    if region:
        options["region"] = region
        if "ovh.net" in host:
            options["location_constraint"] = region
    return options


def local_directory(destination: Destination) -> str:
    return "/" + url_body(destination.url).strip("/")


def local_snapshot_names(destination: Destination, path: str) -> list[str] | None:
    """The files in the `snapshots/` directory of the local repository at path (one per
    snapshot, named by its id; none when the repository does not exist yet); None for a
    destination the host cannot read."""
    if destination.provider != "local":
        return None
    snapshots = Path(local_directory(destination), path, "snapshots")
    try:
        return sorted(entry.name for entry in os.scandir(snapshots) if entry.is_file())
    except FileNotFoundError:
        return []
    except OSError:
        return None


def destination_volumes(destination: Destination) -> tuple[tuple[str, str], ...]:
    """Host directories the container needs for this destination (`local` only)."""
    if destination.provider == "local":
        return ((local_directory(destination), LOCAL_MOUNT),)
    return ()


def rclone_options(destination: Destination) -> tuple[dict[str, str], str]:
    """(options of the remote, path inside it) for every provider rclone can reach."""
    params = destination.parameters
    provider = destination.provider
    body = url_body(destination.url).strip("/")
    if provider == "backblaze":
        options = {"type": "b2", "account": params.get("b2_account_id", "")}
        return {**options, "key": params.get("b2_account_key", "")}, body
    if provider in ("aws", "generic-s3"):
        return s3_options(destination), s3_parts(destination.url)[1]
    if provider == "azure":
        options = {"type": "azureblob", "account": params.get("azure_account_name", "")}
        return {**options, "key": params.get("azure_account_key", "")}, body
    if provider == "smb":
        options = {"type": "smb", "host": params.get("smb_host", "")}
        options |= {"user": params.get("smb_user", ""), "domain": params.get("smb_domain", "")}
        return {**options, "pass": rclone.obscure(params.get("smb_pass", ""))}, body
    if provider == "cluster":
        parts = urlsplit(body)
        options = {"type": "webdav", "url": f"{parts.scheme}://{parts.netloc}", "vendor": "other"}
        return options, parts.path.strip("/")
    if provider == "rclone":
        options = rclone.parse_config_section(params.get("rclone_conf", ""))
        return options, destination.basepath.strip("/")
    raise AgentError(f"{provider} destinations are not reachable with rclone")


def rclone_target(destination: Destination, path: str = "") -> tuple[str, dict[str, str]]:
    """(rclone remote spec, environment defining the remote) for path in the destination.

    For `local` the spec is the mounted directory: mount destination_volumes() too.
    """
    if destination.provider == "local":
        return rclone.join(LOCAL_MOUNT, path), {}
    options, base = rclone_options(destination)
    return rclone.join(f"{rclone.REMOTE}:", base, path), rclone.config_env(options)


def restic_target(destination: Destination, repo_path: str) -> ResticTarget:
    """The restic repository at repo_path ('minwiki/<uuid>') inside the destination."""
    params = destination.parameters
    provider = destination.provider
    if provider == "local":
        return ResticTarget(
            rclone.join(LOCAL_MOUNT, repo_path), volumes=destination_volumes(destination)
        )
    if provider == "rest":
        env = {}
        if params.get("rest_user"):
            env["RESTIC_REST_USERNAME"] = params["rest_user"]
            env["RESTIC_REST_PASSWORD"] = params.get("rest_password", "")
        base = url_body(destination.url).rstrip("/")
        return ResticTarget(f"rest:{base}/{repo_path.strip('/')}", env=env)
    if provider == "backblaze":
        bucket, _, path = url_body(destination.url).partition("/")
        env = {"B2_ACCOUNT_ID": params["b2_account_id"], "B2_ACCOUNT_KEY": params["b2_account_key"]}
        return ResticTarget(f"b2:{bucket}:{rclone.join('', path, repo_path)}", env=env)
    if provider in ("aws", "generic-s3"):
        options = s3_options(destination)
        endpoint, path = s3_parts(destination.url)
        env = {
            "AWS_ACCESS_KEY_ID": options["access_key_id"],
            "AWS_SECRET_ACCESS_KEY": options["secret_access_key"],
        }
        if options.get("region"):
            env["AWS_DEFAULT_REGION"] = options["region"]
        host = endpoint if endpoint.startswith("http://") else endpoint[len("https://") :]
        return ResticTarget(f"s3:{rclone.join(host, path, repo_path)}", env=env)
    if provider == "azure":
        container, _, path = url_body(destination.url).partition("/")
        env = {
            "AZURE_ACCOUNT_NAME": params["azure_account_name"],
            "AZURE_ACCOUNT_KEY": params["azure_account_key"],
        }
        return ResticTarget(f"azure:{container}:/{rclone.join('', path, repo_path)}", env=env)
    if provider in RCLONE_PROVIDERS:
        spec, env = rclone_target(destination, repo_path)
        return ResticTarget(f"rclone:{spec}", env=env)
    raise AgentError(f"unknown destination provider {provider!r}")
