"""Names parsed in one place (agent/redis_keys.py): agent ids, event channels, key ids."""

from __future__ import annotations

import pytest

from agent.adapters import proc
from agent.core import redis_keys
from agent.core.redis_keys import AgentId, Event, NotAnAgentId


@pytest.mark.parametrize(
    ("text", "kind", "name"),
    [
        ("cluster", "cluster", ""),
        ("node/1", "node", "1"),
        ("node/12", "node", "12"),
        ("module/minwiki1", "module", "minwiki1"),
        ("module/dokuwiki-2", "module", "dokuwiki-2"),
    ],
)
def test_agent_ids_parse_and_print_back(text: str, kind: str, name: str) -> None:
    agent = AgentId.parse(text)
    assert (agent.kind, agent.name) == (kind, name)
    assert AgentId.parse(str(agent)) == agent


@pytest.mark.parametrize(
    "text",
    [
        "",
        "node",
        "node/",
        "node/x",
        "node/01",
        "node/0",
        "node/1/tasks",
        "module/",
        "module/a/b",
        "module/../x",
        "module/-x",
        "cluster/1",
        "modules/x",
        "module/x y",
    ],
)
def test_what_is_no_agent_id_is_refused(text: str) -> None:
    with pytest.raises(NotAnAgentId):
        AgentId.parse(text)


def test_an_agent_id_answers_only_for_its_kind() -> None:
    assert AgentId.of_node(3).node_id == 3
    assert AgentId.of_module("wiki1").module_id == "wiki1"
    assert str(AgentId.of_node(3)) == redis_keys.node_agent(3)
    with pytest.raises(ValueError):
        _ = AgentId.of_node(3).module_id
    with pytest.raises(ValueError):
        _ = AgentId.parse("cluster").node_id


def test_event_channels_are_built_and_parsed_by_one_module() -> None:
    channel = redis_keys.cluster_event(Event.BACKUP_SCHEDULE_CHANGED)
    assert channel == "cluster/event/backup-schedule-changed"
    node_channel = redis_keys.node_event(2, Event.BACKUP_STATUS_CHANGED)
    assert redis_keys.parse_event_channel(node_channel) == ("node/2", "backup-status-changed")
    assert redis_keys.parse_event_channel("progress/cluster/task/1") == ("", "")
    progress = redis_keys.task_progress_channel("module/wiki1", "abc")
    assert redis_keys.parse_progress_channel(progress) == ("module/wiki1", "abc")
    assert redis_keys.parse_progress_channel(channel) is None


def test_ids_come_back_out_of_their_keys() -> None:
    assert redis_keys.backup_id_of(redis_keys.backup(12)) == 12
    assert redis_keys.backup_id_of("cluster/backup/x") is None
    assert redis_keys.id_in_key(redis_keys.backup_repository("d-1")) == "d-1"
    assert redis_keys.id_in_key(redis_keys.notification_target("ops")) == "ops"
    assert redis_keys.agent_of_processing(redis_keys.task_processing("node/1")) == "node/1"


@pytest.mark.parametrize(
    ("text", "line"),
    [("a\n  b  \n\n", "b"), ("", "no error output"), ("\n \n", "no error output")],
)
def test_last_line_of_error_output(text: str, line: str) -> None:
    assert proc.last_line(text) == line
