"""What a destination may reach: local directories under the node's roots only, rclone
backends and options from an allow-list, no '..' in a base path (pure)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from agent.core.errors import AgentError

# Remote storage only: no local disk, no wrapper that could point at one ('alias',
# 'union', 'combine', 'chunker', 'crypt', 'hasher', 'compress', 'cache' take a remote or
# a path), no backend that runs a program.
_COMMON = frozenset({"type", "description"})
_S3 = frozenset(
    [
        "provider",
        "env_auth",
        "access_key_id",
        "secret_access_key",
        "session_token",
        "region",
        "endpoint",
        "location_constraint",
        "acl",
        "bucket_acl",
        "requester_pays",
        "server_side_encryption",
        "sse_kms_key_id",
        "sse_customer_algorithm",
        "sse_customer_key",
        "sse_customer_key_base64",
        "sse_customer_key_md5",
        "storage_class",
        "upload_cutoff",
        "chunk_size",
        "max_upload_parts",
        "copy_cutoff",
        "disable_checksum",
        "force_path_style",
        "v2_auth",
        "use_accelerate_endpoint",
        "use_dual_stack",
        "leave_parts_on_error",
        "list_chunk",
        "list_version",
        "list_url_encode",
        "no_check_bucket",
        "no_head",
        "no_head_object",
        "encoding",
        "disable_http2",
        "download_url",
        "directory_markers",
        "use_multipart_etag",
        "use_presigned_request",
        "versions",
        "version_at",
        "decompress",
        "might_gzip",
        "use_accept_encoding_gzip",
        "no_system_metadata",
        "sts_endpoint",
        "use_already_exists",
        "use_multipart_uploads",
        "upload_concurrency",
        "use_unsigned_payload",
        "ibm_api_key",
        "ibm_resource_instance_id",
    ]
)
_B2 = frozenset(
    [
        "account",
        "key",
        "endpoint",
        "hard_delete",
        "upload_cutoff",
        "chunk_size",
        "copy_cutoff",
        "disable_checksum",
        "download_url",
        "download_auth_duration",
        "upload_concurrency",
        "versions",
        "version_at",
        "lifecycle",
        "encoding",
    ]
)
_AZUREBLOB = frozenset(
    [
        "account",
        "key",
        "sas_url",
        "tenant",
        "client_id",
        "client_secret",
        "endpoint",
        "upload_cutoff",
        "chunk_size",
        "upload_concurrency",
        "list_chunk",
        "access_tier",
        "archive_tier_delete",
        "disable_checksum",
        "encoding",
        "public_access",
        "no_check_container",
        "no_head_object",
        "directory_markers",
    ]
)
_SMB = frozenset(
    [
        "host",
        "user",
        "port",
        "pass",
        "domain",
        "spn",
        "idle_timeout",
        "hide_special_share",
        "case_insensitive",
        "encoding",
    ]
)
_WEBDAV = frozenset(
    [
        "url",
        "vendor",
        "user",
        "pass",
        "bearer_token",
        "headers",
        "pacer_min_sleep",
        "nextcloud_chunk_size",
        "owncloud_exclude_shares",
        "encoding",
    ]
)
_SFTP = frozenset(
    [
        "host",
        "user",
        "port",
        "pass",
        "key_pem",
        "key_file_pass",
        "pubkey",
        "use_insecure_cipher",
        "disable_hashcheck",
        "path_override",
        "set_modtime",
        "shell_type",
        "skip_links",
        "use_fstat",
        "disable_concurrent_reads",
        "disable_concurrent_writes",
        "idle_timeout",
        "chunk_size",
        "concurrency",
        "ciphers",
        "key_exchange",
        "macs",
        "host_key_algorithms",
        "copy_is_hardlink",
    ]
)
_FTP = frozenset(
    [
        "host",
        "user",
        "port",
        "pass",
        "tls",
        "explicit_tls",
        "concurrency",
        "no_check_certificate",
        "disable_epsv",
        "disable_mlsd",
        "disable_utf8",
        "writing_mdtm",
        "force_list_hidden",
        "idle_timeout",
        "close_timeout",
        "tls_cache_size",
        "disable_tls13",
        "shut_timeout",
        "encoding",
    ]
)
_SWIFT = frozenset(
    [
        "env_auth",
        "user",
        "key",
        "auth",
        "user_id",
        "domain",
        "tenant",
        "tenant_id",
        "tenant_domain",
        "region",
        "storage_url",
        "auth_token",
        "application_credential_id",
        "application_credential_name",
        "application_credential_secret",
        "auth_version",
        "endpoint_type",
        "leave_parts_on_error",
        "storage_policy",
        "chunk_size",
        "no_chunk",
        "no_large_objects",
        "encoding",
    ]
)
_GCS = frozenset(
    [
        "project_number",
        "user_project",
        "service_account_credentials",
        "anonymous",
        "object_acl",
        "bucket_acl",
        "bucket_policy_only",
        "location",
        "storage_class",
        "directory_markers",
        "no_check_bucket",
        "decompress",
        "endpoint",
        "encoding",
        "env_auth",
        "client_id",
        "client_secret",
        "token",
        "auth_url",
        "token_url",
    ]
)
RCLONE_BACKENDS: Mapping[str, frozenset[str]] = {
    "s3": _S3,
    "b2": _B2,
    "azureblob": _AZUREBLOB,
    "smb": _SMB,
    "webdav": _WEBDAV,
    "sftp": _SFTP,
    "ftp": _FTP,
    "swift": _SWIFT,
    "google cloud storage": _GCS,
}


class DestinationNotAllowed(AgentError):
    """A destination reaching what the node does not allow (a host path, a command)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code  # the NS8-style error name shown to the operator


def check_rclone_options(options: Mapping[str, str]) -> None:
    """Raise DestinationNotAllowed unless the backend type and every option are allowed."""
    backend = options.get("type", "")
    allowed = RCLONE_BACKENDS.get(backend)
    if allowed is None:
        raise DestinationNotAllowed(
            f"rclone backend {backend!r} is not allowed (allowed: {', '.join(RCLONE_BACKENDS)})",
            "rclone_backend_not_allowed",
        )
    for name in options:
        if name not in allowed and name not in _COMMON:
            raise DestinationNotAllowed(
                f"rclone option {name!r} is not allowed for {backend}", "rclone_option_not_allowed"
            )


def check_basepath(basepath: str) -> None:
    if any(part in (".", "..") for part in basepath.split("/")):
        raise DestinationNotAllowed(f"basepath {basepath!r} climbs out", "basepath_bad_format")


@dataclass(frozen=True)
class LocalPolicy:
    """Where `local:` destinations may be on a node: below one of roots, and never in or
    around the node's own data directory."""

    roots: tuple[str, ...]
    data_dir: str
    # The one place inside the data directory a destination may be: the scratch
    # repositories import-module-backup makes there itself (<data dir>/imports).
    scratch: str = ""


def _inside(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def local_directory_allowed(directory: str, policy: LocalPolicy) -> bool:
    """True when directory (as the host resolves it, links followed) is below a root."""
    if not directory.startswith("/") or any(p in (".", "..") for p in directory.split("/")):
        return False
    real = os.path.realpath(directory)
    if policy.scratch and _inside(real, os.path.realpath(policy.scratch)):
        return real != os.path.realpath(policy.scratch)
    data_dir = os.path.realpath(policy.data_dir)
    if _inside(real, data_dir) or _inside(data_dir, real):
        return False
    return any(
        _inside(real, os.path.realpath(root)) for root in policy.roots if root.startswith("/")
    )


def check_local_directory(directory: str, policy: LocalPolicy) -> None:
    if not local_directory_allowed(directory, policy):
        roots = ", ".join(policy.roots) or "none configured"
        raise DestinationNotAllowed(
            f"local destination {directory} is outside this node's local_roots ({roots})",
            "local_path_not_allowed",
        )
