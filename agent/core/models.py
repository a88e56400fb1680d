"""Validated inputs of the actions; their JSON schemas are the validate-input.json files."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    RootModel,
    StrictBool,
    StrictInt,
    StringConstraints,
    model_validator,
)
from pydantic_core import PydanticCustomError

from agent.core.confidence_models import CheckSettings, DrillSettings
from agent.core.confidence_models import ListBackupsRequest as ListBackupsRequest
from agent.core.confidence_models import NodeRunCheckRequest as NodeRunCheckRequest
from agent.core.confidence_models import Request as Request
from agent.core.confidence_models import RunCheckRequest as RunCheckRequest

ModuleId = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]*[0-9]+$", max_length=64)]
Uuid = Annotated[
    str,
    StringConstraints(pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"),
]
ImageUrl = Annotated[
    str,
    StringConstraints(min_length=1, max_length=512, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]*$"),
]


NodeId = Annotated[int, Field(ge=1, le=100000)]
BackupId = Annotated[StrictInt, Field(ge=1, le=2**31)]


# A volume as podman names it, and as a module names it in state-include.conf ('pages'
# for minwiki1-pages): taken literally by restic (no pattern characters), never a path.
VolumeName = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
]


def _no_dot_dot(path: str) -> str:
    if ".." in path.split("/"):
        raise PydanticCustomError("path_has_dot_dot", "{path} climbs with '..'", {"path": path})
    return path


# Where a volume goes (NS8's add-module/restore-module `volumes`, another disk): an
# absolute host directory, one line; the node checks it exists and is no system directory.
PlacementPath = Annotated[
    str,
    StringConstraints(min_length=2, max_length=4096, pattern=r"^/[^\x00\n\r]*$"),
    AfterValidator(_no_dot_dot),
]
# NS8's `volumes`: volume name → the directory that volume is created on before the module
# is (every volume is restored as usual; these ones land on that directory).
VolumePlacement = Annotated[dict[VolumeName, PlacementPath], Field(max_length=100)]


class AddModuleRequest(Request):
    image: ImageUrl
    node: NodeId
    module_uuid: Uuid | None = None
    volumes: VolumePlacement = Field(default_factory=dict)


class NodeAddModuleRequest(Request):
    module_id: ModuleId
    module_uuid: Uuid
    image_url: ImageUrl
    volumes: VolumePlacement = Field(default_factory=dict)


class RemoveModuleRequest(Request):
    module_id: ModuleId
    preserve_data: bool = False


# --- backup destinations and backups (issue #3) ------------------------------------------
PROVIDERS = ("backblaze", "aws", "generic-s3", "azure", "smb", "rclone", "cluster", "local", "rest")
Provider = Literal[
    "backblaze", "aws", "generic-s3", "azure", "smb", "rclone", "cluster", "local", "rest"
]
OneLine = Annotated[str, StringConstraints(max_length=1024, pattern=r"^[^\n\r\t\x00]*$")]
# Parameter values are checked per provider (agent.adapters.destinations); rclone's may span lines.
ParameterValue = Annotated[str, StringConstraints(max_length=100000)]
ParameterName = Annotated[str, StringConstraints(max_length=64, pattern=r"^[a-z][a-z0-9_]*$")]
Parameters = Annotated[dict[ParameterName, ParameterValue], Field(max_length=16)]
# The UI's own record of how it built a schedule ({interval, minute, time, weekDay, …}).
HintValue = Annotated[str, StringConstraints(max_length=256)] | int | float | bool | None
ScheduleHint = Annotated[
    dict[Annotated[str, StringConstraints(max_length=64)], HintValue], Field(max_length=32)
]
DestinationName = Annotated[str, StringConstraints(max_length=128, pattern=r"^[^\n\r\t\x00]*$")]
KeepCount = Annotated[int, Field(ge=1, le=100000)]


class AddBackupRepositoryRequest(Request):
    provider: Provider
    name: DestinationName
    url: OneLine
    password: Annotated[str, StringConstraints(max_length=4096, pattern=r"^[^\n\r\x00]*$")]
    parameters: Parameters


class AlterBackupRepositoryRequest(Request):
    id: Uuid
    provider: Provider
    name: DestinationName = ""
    url: OneLine = ""
    parameters: Parameters = Field(default_factory=dict)


class DestinationIdRequest(Request):
    id: Uuid


class ValidateDestinationRequest(Request):
    id: Uuid
    candidate: Annotated[str, StringConstraints(max_length=64, pattern=r"^[0-9a-f]*$")] = ""


class NoInput(Request):
    """Actions without input (no validate-input.json) accept nothing, null or {}."""

    @model_validator(mode="before")
    @classmethod
    def _null_is_empty(cls, data: object) -> object:
        return {} if data is None else data


# healthchecks.io-style ping URL; "" on alter removes it, absent keeps it.
PingUrl = Annotated[str, StringConstraints(max_length=2048, pattern=r"^(https?://[^\x00-\x20]+)?$")]


class BackupRequest(Request):
    name: DestinationName
    instances: Annotated[list[ModuleId], Field(max_length=1000)]
    schedule: Annotated[
        str, StringConstraints(min_length=1, max_length=64, pattern=r"^[^\n\r\t\x00]+$")
    ]
    retention: KeepCount
    enabled: StrictBool
    schedule_hint: ScheduleHint = Field(default_factory=dict)
    keep_daily: KeepCount | None = None
    keep_weekly: KeepCount | None = None
    keep_monthly: KeepCount | None = None
    keep_yearly: KeepCount | None = None
    # restic's duration: years, months, days, hours, e.g. "1y6m", "14d".
    keep_within: (
        Annotated[str, StringConstraints(max_length=32, pattern=r"^([0-9]{1,6}[ymdh])+$")] | None
    ) = None
    ping_url: PingUrl | None = None
    # Issue #18. Left out of an alter: the stored value stays (null / [] removes it).
    check: CheckSettings | None = None
    drill: DrillSettings | None = None
    mirrors: Annotated[list[Uuid], Field(max_length=8)] | None = None
    mirror_retention: KeepCount | None = None


class RunDrillRequest(Request):
    """A drill now: every module of backup id (or those of modules) on node (default: the
    backup's drill node, else the leader)."""

    id: BackupId
    node: NodeId | None = None
    modules: Annotated[list[ModuleId], Field(max_length=1000)] | None = None


class VerifyDrillRequest(Request):
    """node/N/verify-drill: run module-verify-restore in the scratch instance module_id."""

    module_id: ModuleId
    backup_id: BackupId


class AddBackupRequest(BackupRequest):
    repository: Uuid


class AlterBackupRequest(BackupRequest):
    id: BackupId


class BackupIdRequest(Request):
    id: BackupId


class RunBackupRequest(Request):
    id: int = Field(ge=1, le=2**31)


# --- restore (issue #5) ---------------------------------------------------------------
# '<image>/<uuid>' or the legacy '<image>/<module_id>@<uuid>'.
RepoPath = Annotated[
    str,
    StringConstraints(
        max_length=200,
        pattern=r"^[a-z][a-z0-9_-]*/([a-z][a-z0-9_-]*[0-9]+@)?"
        r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
    ),
]
SnapshotId = Annotated[str, StringConstraints(max_length=64, pattern=r"^([0-9a-f]*|latest)$")]
# The restored instance's own identity and credentials (NS8: written by the node at
# add-module): a restore never writes them from a snapshot, whole or in part.
INSTANCE_FILES = ("state/environment", "state/agent.env", "state/apitoken.cache")
# One path component, taken literally by restic: no '.' or '..', no control characters,
# nothing restic reads as a pattern (glob *?[], escapes \, environment variables $).
_CHAR = r"[^\x00-\x1f\x7f/*?\[\]\\$]"
_NOT_DOT = r"[^\x00-\x1f\x7f/*?\[\]\\$.]"
_COMPONENT = rf"(?:{_NOT_DOT}{_CHAR}*|\.{_NOT_DOT}{_CHAR}*|\.\.{_CHAR}+)"


def _not_instance_file(path: str) -> str:
    if path.strip("/") in INSTANCE_FILES:
        raise PydanticCustomError(
            "path_is_instance_file",
            "{path} belongs to the restored instance, never to a snapshot",
            {"path": path},
        )
    return path


# A path inside a snapshot, from its root: 'volumes/pages/a.md', '/state/wiki.env'.
SnapshotPath = Annotated[
    str,
    StringConstraints(max_length=4096, pattern=rf"^/?(?:state|volumes)(?:/{_COMPONENT})*/?$"),
    AfterValidator(_not_instance_file),
]
EnvName = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"^[^=]+$")]


class RepositoryPathRequest(Request):
    repository: Uuid
    path: RepoPath


class SnapshotRequest(RepositoryPathRequest):
    snapshot: SnapshotId


class RestoreModuleRequest(SnapshotRequest):
    """Whole restore: node (+ replace, volumes: where some of them are placed). Partial:
    module_id + paths into that instance."""

    node: int | None = Field(default=None, ge=1)
    replace: bool = False
    volumes: VolumePlacement = Field(default_factory=dict)
    module_id: ModuleId | None = None
    paths: Annotated[list[SnapshotPath], Field(max_length=1000)] = Field(default_factory=list)

    @model_validator(mode="after")
    def _whole_or_partial(self) -> RestoreModuleRequest:
        if self.paths or self.module_id:
            if not (self.paths and self.module_id):
                raise ValueError("a partial restore needs both module_id and paths")
            if self.replace:
                raise ValueError("a partial restore cannot replace")
            if self.volumes:
                raise ValueError("a partial restore writes into existing volumes: no volumes")
        elif self.node is None:
            raise ValueError("node is required")
        return self


class RestoreModulesItem(Request):
    repository: Uuid
    path: RepoPath
    snapshot: SnapshotId = ""
    node: int = Field(default=1, ge=1)


class RestoreModulesRequest(RootModel[Annotated[list[RestoreModulesItem], Field(max_length=100)]]):
    model_config = ConfigDict(frozen=True)


class ModuleRestoreRequest(SnapshotRequest):
    environment: dict[EnvName, str]
    replace: bool = False
    # A restore drill's scratch instance: a module's own steps start no service for it.
    drill: StrictBool = False
    paths: Annotated[list[SnapshotPath], Field(max_length=1000)] = Field(default_factory=list)


class RestoreFilesRequest(SnapshotRequest):
    target: Annotated[str, StringConstraints(max_length=4096, pattern=r"^/[^\x00\n\r]*$")]
    paths: Annotated[list[SnapshotPath], Field(max_length=1000)] = Field(default_factory=list)


# --- notifications (issue #17) ----------------------------------------------------------
NotificationEvent = Literal["failure", "partial", "success", "overdue", "report"]
NotificationName = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
]
# An apprise URL (mailto://, slack://, ntfy://, json://, …): a scheme and something after it.
AppriseUrl = Annotated[
    str,
    StringConstraints(
        min_length=4, max_length=2048, pattern=r"^[a-z][a-z0-9+.-]{0,31}://[^\x00-\x20]+$"
    ),
]
BackupIdList = Annotated[list[Annotated[StrictInt, Field(ge=1, le=2**31)]], Field(max_length=1000)]


class NotificationTargetRequest(Request):
    name: NotificationName
    url: AppriseUrl
    events: Annotated[list[NotificationEvent], Field(min_length=1, max_length=5)]
    backups: BackupIdList = Field(default_factory=list)


class AlterNotificationTargetRequest(Request):
    """As add; an empty url keeps the stored one (the listing never shows it)."""

    name: NotificationName
    url: AppriseUrl | Literal[""] = ""
    events: Annotated[list[NotificationEvent], Field(min_length=1, max_length=5)]
    backups: BackupIdList = Field(default_factory=list)


class NotificationNameRequest(Request):
    name: NotificationName


class BackupRunsRequest(Request):
    module_id: ModuleId
    limit: Annotated[StrictInt, Field(ge=1, le=200)] = 20


class NodeRunBackupRequest(RunBackupRequest):
    """notify=false: the cluster run that started this node run sends one report for all."""

    notify: StrictBool = True


# --- disaster recovery (issue #19) ---------------------------------------------------------
Passphrase = Annotated[str, StringConstraints(max_length=4096)]


class DownloadClusterBackupRequest(Request):
    """password sets (or changes) the cluster backup passphrase first (NS8)."""

    password: Annotated[str, StringConstraints(min_length=1, max_length=4096)] | None = None


class RetrieveClusterBackupRequest(Request):
    """The encrypted cluster backup as base64 (`file`) or from an http(s) `url` (NS8)."""

    type: Literal["file", "url"]
    password: Passphrase
    file: Annotated[str, StringConstraints(max_length=64 * 1024 * 1024)] | None = None
    url: Annotated[str, StringConstraints(max_length=4096, pattern=r"^https?://\S+$")] | None = None
    tls_verify: bool | None = None

    @model_validator(mode="after")
    def _source(self) -> RetrieveClusterBackupRequest:
        if self.type == "url" and (self.url is None or self.tls_verify is None):
            raise ValueError("type url needs url and tls_verify")
        if self.type == "file" and self.file is None:
            raise ValueError("type file needs file")
        return self


class ImportBackupDestinationsRequest(Request):
    backup_password: Passphrase
    backup_data: Annotated[str, StringConstraints(max_length=64 * 1024 * 1024)]


AbsolutePath = Annotated[str, StringConstraints(max_length=4096, pattern=r"^/[^\x00\n\r]*$")]
ScratchToken = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16}$")]


class ExportModuleBackupRequest(SnapshotRequest):
    """directory: where the archive goes on the leader (default <data dir>/exports)."""

    directory: AbsolutePath | None = None


class ImportModuleBackupRequest(Request):
    node: int = Field(ge=1)
    file: AbsolutePath


class ScratchRequest(Request):
    # The scratch directory's name: not a secret, and named so that output masking (which
    # blanks the values of …token keys) leaves the paths built from it alone.
    scratch: ScratchToken


class PrepareModuleArchiveRequest(ScratchRequest):
    file: AbsolutePath
    password: Annotated[str, StringConstraints(min_length=32, max_length=128)]
