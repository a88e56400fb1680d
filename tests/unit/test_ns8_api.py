"""NS8's module-author API: the pure parts, and the file and descriptor effects a step
sees (no Redis, no podman: those are in tests/integration/test_ns8_api.py)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import agent
from agent.cli import parse_runagent_args
from agent.core import image_labels
from agent.core.errors import ConfigError
from agent.core.redis_address import parse_address, url_address
from agent.ns8api import comfd, helpers, redisconn, restic, shell
from agent.operations.module_ports import find_free_range, parse_range
from agent.runtime.agentenv import task_variables


# --- the package's top ------------------------------------------------------------------
def test_import_agent_loads_no_api_module_and_no_heavy_library() -> None:
    code = (
        "import sys, agent; "
        "print(sorted(m for m in sys.modules if m.startswith(('agent.', 'redis', 'pydantic', "
        "'typing'))))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_every_api_name_resolves_and_agent_agent_is_the_package() -> None:
    for name in agent.__all__:
        assert getattr(agent, name) is not None, name
    assert agent.agent is agent
    assert agent.tasks.run is not None and agent.tasks.exceptions.TaskError
    assert agent.SD_ERR == "<3>" and agent.SD_DEBUG == "<7>"
    with pytest.raises(AttributeError):
        _ = agent.get_env  # NS8 has none


# --- environment file -------------------------------------------------------------------
def test_read_envfile_follows_ns8s_rules(tmp_path: Path) -> None:
    path = tmp_path / "environment"
    path.write_text('A=1\n# comment\n\nB=x=y\nC="quoted"\nD=\nnoequals\n')
    with pytest.warns(UserWarning, match="noequals"):
        assert agent.read_envfile(path) == {"A": "1", "B": "x=y", "C": '"quoted"', "D": ""}
    with pytest.raises(FileNotFoundError):
        agent.read_envfile(tmp_path / "missing")


def test_write_envfile_sorts_and_refuses_what_would_split_a_line(tmp_path: Path) -> None:
    path = tmp_path / "environment"
    agent.write_envfile(path, {"B": 2, "A": "one"})
    assert path.read_text() == "A=one\nB=2\n"
    with pytest.raises(ValueError):
        agent.write_envfile(path, {"A": "x\nPATH=/evil"})
    with pytest.raises(ValueError):
        agent.write_envfile(path, {"A=B": "x"})
    assert path.read_text() == "A=one\nB=2\n"


def test_set_and_unset_env_change_only_the_state_dir_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    environment = state / "environment"
    environment.write_text("MODULE_ID=probe1\n")
    environment.chmod(0o644)
    monkeypatch.setenv("AGENT_STATE_DIR", str(state))
    agent.set_env("FOO", "bar")
    agent.mset_env({"X": 1, "Y": 2})
    agent.munset_env(["X", "ABSENT"])
    agent.unset_env("ABSENT")  # absent: nothing changes
    agent.mset_env({})
    assert environment.read_text() == "FOO=bar\nMODULE_ID=probe1\nY=2\n"
    assert stat.S_IMODE(environment.stat().st_mode) == 0o644  # kept
    assert (state / ".environment.lock").exists()
    assert "FOO" not in os.environ
    assert sorted(p.name for p in state.iterdir()) == [".environment.lock", "environment"]
    agent.dump_env()  # deprecated no-op


def test_env_setters_fail_as_ns8s_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AGENT_STATE_DIR", raising=False)
    with pytest.raises(KeyError):
        agent.set_env("A", "1")
    monkeypatch.setenv("AGENT_STATE_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError):
        agent.set_env("A", "1")


def test_safe_open_replaces_atomically_and_refuses_other_modes(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("old")
    target.chmod(0o600)
    with pytest.raises(RuntimeError), agent.safe_open(target) as handle:
        handle.write("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old" and sorted(os.listdir(tmp_path)) == ["file"]
    with agent.safe_open(target) as handle:
        handle.write("new")
    assert target.read_text() == "new" and stat.S_IMODE(target.stat().st_mode) == 0o600
    with agent.safe_open(tmp_path / "bin", "wb") as handle:
        handle.write(b"\x00")
    for mode in ("r", "a", "w+"):
        with pytest.raises(ValueError), agent.safe_open(target, mode):
            pass


def test_slurp_file_strips(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("  value\n\n")
    assert agent.slurp_file(tmp_path / "f") == "value"


# --- COMFD --------------------------------------------------------------------------------
def test_comfd_records_are_space_separated_csv_with_crlf() -> None:
    assert comfd.format_command("set-progress", 42) == b"set-progress 42\r\n"
    assert comfd.format_command("set-weight", "10restore", 4) == b"set-weight 10restore 4\r\n"
    assert comfd.format_command("set-status", "a b") == b'set-status "a b"\r\n'


def test_status_weight_and_progress_go_to_agent_comfd(monkeypatch: pytest.MonkeyPatch) -> None:
    read, write = os.pipe()
    monkeypatch.setenv("AGENT_COMFD", str(write))
    agent.set_status("validation-failed")
    agent.set_weight("10restore", 4)
    callback = agent.get_progress_callback(16, 99)
    for percent in (0, 50, 100):
        callback(percent)
    os.close(write)
    with os.fdopen(read, "rb") as handle:
        assert handle.read() == (
            b"set-status validation-failed\r\nset-weight 10restore 4\r\n"
            b"set-progress 16\r\nset-progress 57\r\nset-progress 99\r\n"
        )
    with pytest.raises(AssertionError):
        agent.get_progress_callback(5, 5)


def test_assert_exp_exits_2_with_the_message_and_the_callers_stack() -> None:
    code = "import agent\ndef check():\n    agent.assert_exp(1 == 2, 'one is not two')\ncheck()\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.startswith("one is not two\n") and "in check" in done.stderr
    assert agent.assert_exp(True) is None


# --- subprocesses and lookups -------------------------------------------------------------
def test_run_helper_passes_only_increasing_progress_and_ends_at_100() -> None:
    script = (
        'for p in 10 5 30 30 70; do echo "set-progress $p" >&$AGENT_COMFD; done; '
        'echo "set-status validation-failed" >&$AGENT_COMFD; echo out; exit 3'
    )
    seen: list[int] = []
    read, write = os.pipe()
    with os.fdopen(write, "w") as sink:
        done = agent.run_helper(
            "bash", "-c", script, progress_callback=seen.append, stdout=sink, log_command=False
        )
    with os.fdopen(read) as source:
        assert source.read() == "out\n"
    assert done.returncode == 3 and done.args == ["bash", "-c", script]
    assert seen == [10, 30, 70, 100]
    with pytest.raises(FileNotFoundError):
        agent.run_helper("/nonexistent/helper", log_command=False)


def test_progress_values_keep_increasing_figures_only() -> None:
    lines = ["set-progress 5\r\n", "set-weight x 2\r\n", "set-progress 3\r\n", "set-progress 9\r\n"]
    assert helpers.progress_values(lines) == [5, 9]


def test_resolve_agent_id_without_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODE_ID", "4")
    monkeypatch.setenv("AGENT_ID", "module/mail1")
    assert agent.resolve_agent_id("node") == "node/4"
    assert agent.resolve_agent_id("node", node_id=2) == "node/2"
    assert agent.resolve_agent_id("self") == "module/mail1"
    assert agent.resolve_agent_id("7") == "node/7"
    for unchanged in ("cluster", "module/samba1", "node/3"):
        assert agent.resolve_agent_id(unchanged) == unchanged
    assert agent.resolve_agent_id("traefik1") == "module/traefik1"


def test_image_name_and_module_seq() -> None:
    assert agent.get_image_name_from_url("ghcr.io/nethserver/mail:1.2.3") == "mail"
    assert agent.get_image_name_from_url("ghcr.io/nethserver/mail@sha256:ab") == "mail"
    assert agent.get_image_name_from_url("host:5000/x/samba:latest") == "samba"
    for bad in ("mail:1", "ghcr.io/nethserver/mail"):
        with pytest.raises(ValueError):
            agent.get_image_name_from_url(bad)
    assert agent.get_module_seq("mail12") == 12
    assert agent.get_module_seq("traefik") == -1


# --- Redis connection ---------------------------------------------------------------------
def test_redis_address_and_credentials_choices() -> None:
    assert redisconn.redis_address({}, False) == ("127.0.0.1", 6379)
    env = {"REDIS_ADDRESS": "leader:6380", "REDIS_REPLICA_ADDRESS": "127.0.0.1:6379"}
    assert redisconn.redis_address(env, False) == ("leader", 6380)
    assert redisconn.redis_address(env, True) == ("127.0.0.1", 6379)
    assert redisconn.redis_address({"REDIS_URL": "redis://:pw@10.1.2.3:7000/0"}, True) == (
        "10.1.2.3",
        7000,
    )
    module = {"REDIS_USER": "module/mail1", "REDIS_PASSWORD": "secret"}
    assert redisconn.redis_credentials(module, True) == ("module/mail1", "secret")
    # unprivileged too: the embedded Redis's `default` user reads nothing
    assert redisconn.redis_credentials(module, False) == ("module/mail1", "secret")
    node = {"REDIS_URL": "redis://:pw@127.0.0.1:7000/0"}
    assert redisconn.redis_credentials(node, True) == ("default", "pw")
    assert redisconn.redis_credentials({"REDIS_URL": "redis://h/0"}, True) == (None, None)
    with pytest.raises(KeyError):
        redisconn.redis_credentials({}, True)


def test_redis_connect_takes_kwargs_as_defaults_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_ADDRESS", "leader:6380")
    monkeypatch.setenv("REDIS_USER", "module/mail1")
    monkeypatch.setenv("REDIS_PASSWORD", "secret")
    client = agent.redis_connect(privileged=True, db=2, socket_timeout=3)
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("leader", 6380, 2)
    assert (kwargs["username"], kwargs["password"]) == ("module/mail1", "secret")
    assert kwargs["decode_responses"] is True and kwargs["socket_timeout"] == 3


def test_addresses() -> None:
    assert url_address("redis://:pw@127.0.0.1:7000/0") == "127.0.0.1:7000"
    assert url_address("redis://[::1]:7000/0") == "[::1]:7000"
    assert url_address("unix:///run/redis.sock") == ""
    assert parse_address("[::1]:7000") == ("::1", 7000)
    assert parse_address("leader") == ("leader", 6379)


# --- restic volumes -----------------------------------------------------------------------
def test_included_volume_names_read_as_ns8_reads_them() -> None:
    text = "state/x\nvolumes/data/sub\nvolumes/db\nvolumes/data\nvolumes/bad:name/x\nvolumes/last"
    assert restic.included_volume_names(text) == ["data", "db", "las"]  # NS8's lost last char


def test_state_volume_args_rootless_and_rootfull() -> None:
    text = "volumes/data/\n"
    assert restic.state_volume_args("/s", text, "mail1", rootfull=False) == [
        "--volume=/s:/srv/state",
        "--volume=data:/srv/volumes/data",
    ]
    assert restic.state_volume_args("/s", text, "mail1", rootfull=True)[1] == (
        "--volume=mail1-data:/srv/volumes/data"
    )
    names = ["mail1-data", "mail10-x", "restic-cache", "other"]
    assert restic.existing_volume_args("/s", names, "mail1", rootfull=True) == [
        "--volume=/s:/srv/state",
        "--volume=mail1-data:/srv/volumes/data",
    ]
    assert len(restic.existing_volume_args("/s", names, "mail1", rootfull=False)) == 5


# --- shell helpers, runagent, step variables ----------------------------------------------
def test_redis_exec_stdin_lines() -> None:
    lines = ['SET k "two words"', "", "  HSET h a 1", 'SET q ""']
    assert shell.parse_command_lines(lines) == [
        ["SET", "k", "two words"],
        ["HSET", "h", "a", "1"],
        ["SET", "q"],
    ]


def test_runagent_options_stop_at_the_command() -> None:
    args = parse_runagent_args(["-m", "node", "run-backup", "--backup=1"])
    assert (args.agent, args.command) == ("node", ("run-backup", "--backup=1"))
    args = parse_runagent_args(["-c", "--module=mail1", "-l"])
    assert args.keep_cwd and args.list_modules and args.agent == "mail1" and not args.command
    with pytest.raises(ConfigError):
        parse_runagent_args(["-x"])
    with pytest.raises(ConfigError):
        parse_runagent_args(["-m"])


def test_task_variables() -> None:
    assert task_variables("t1", "probe", None) == {
        "AGENT_TASK_ID": "t1",
        "AGENT_TASK_ACTION": "probe",
        "AGENT_TASK_USER": "",
    }
    assert task_variables("t1", "probe", "admin")["AGENT_TASK_USER"] == "admin"


# --- image labels and ports ---------------------------------------------------------------
def test_image_facts_from_labels() -> None:
    facts = image_labels.image_facts(
        {
            "Id": "abc",
            "Digest": "sha256:d",
            "RepoDigests": ["r@sha256:d"],
            "Labels": {
                "org.nethserver.tcp-ports-demand": "2",
                "org.nethserver.images": "docker.io/library/redis:7 quay.io/x/my-app.v2:1",
                "org.nethserver.authorizations": "node:fwadm self:selfadm",
                "org.nethserver.flags": "core_module",
            },
        }
    )
    assert not facts.rootfull and facts.tcp_ports_demand == 2 and facts.udp_ports_demand == 0
    assert facts.authorizations == ("self:selfadm", "node:fwadm")
    assert facts.flags == ("core_module", "rootless")
    assert image_labels.image_variables(facts.images) == {
        "REDIS_IMAGE": "docker.io/library/redis:7",
        "MY_APP_V2_IMAGE": "quay.io/x/my-app.v2:1",
    }
    rootfull = image_labels.image_facts({"Labels": {"org.nethserver.rootfull": "1"}})
    assert rootfull.rootfull and rootfull.flags == ("rootfull",)
    assert image_labels.image_variable("x/2fa:1") == "I2FA_IMAGE"


@pytest.mark.parametrize(
    "labels",
    [
        {"org.nethserver.tcp-ports-demand": "-1"},
        {"org.nethserver.tcp-ports-demand": "99999"},
        {"org.nethserver.authorizations": "node:fw adm;rm"},
        {"org.nethserver.flags": "a\nb=c"},
    ],
)
def test_bad_labels_are_refused(labels: dict[str, str]) -> None:
    with pytest.raises(image_labels.BadImageLabel):
        image_labels.image_facts({"Labels": labels})


def test_port_variables() -> None:
    assert image_labels.port_variables("TCP", 20001, 1) == {
        "TCP_PORT": "20001",
        "TCP_PORTS": "20001",
    }
    many = image_labels.port_variables("UDP", 20001, 9)
    assert many == {"UDP_PORT": "20001", "UDP_PORTS_RANGE": "20001-20009"}
    assert image_labels.port_variables("TCP", 20001, 0) == {}


def test_find_free_range() -> None:
    assert find_free_range([], 3) == 20001
    assert find_free_range([(20001, 20003)], 2) == 20004
    assert find_free_range([(20001, 20002), (20005, 20010)], 2) == 20003
    assert find_free_range([(20001, 20002), (20005, 20010)], 3) == 20011
    assert find_free_range([(20001, 29999)], 1) is None
    assert parse_range("20001-20003") == (20001, 20003)
    assert parse_range("3-1") is None and parse_range("x") is None


def test_redis_dump_and_restore_connect_as_ns8s_helpers_in_a_step() -> None:
    from agent.adapters.redisdump import client_url

    node = {"REDIS_URL": "redis://:pw@127.0.0.1:7000/3"}
    assert client_url(node, privileged=False) == "redis://:pw@127.0.0.1:7000/3"
    step = {
        "REDIS_ADDRESS": "leader:6379",
        "REDIS_REPLICA_ADDRESS": "127.0.0.1:6380",
        "REDIS_USER": "module/mail1",
        "REDIS_PASSWORD": "s/cret",
    }
    assert client_url(step, privileged=True) == "redis://module%2Fmail1:s%2Fcret@leader:6379/0"
    # from the replica address, with the module's own user (`default` reads nothing here)
    assert client_url(step, privileged=False) == "redis://module%2Fmail1:s%2Fcret@127.0.0.1:6380/0"


# --- restic options a module's step gets from its environment ---------------------------
def test_a_modules_restic_options_come_from_its_step_variables(tmp_path: Path) -> None:
    """A rootless module's user cannot read agent.json: the node's restic settings reach
    agent.run_restic through the step's environment, and its podman settings are its own."""
    from agent.core.settings import Settings
    from agent.runtime.agentenv import restic_variables

    settings = Settings(
        root=tmp_path,
        node_id=1,
        redis_url="redis://127.0.0.1:1/0",
        restic_podman_args=("--memory=512m", "--cpus=1"),
        storage_retry_seconds=7.5,
    )
    options = restic.module_restic_options(restic_variables(settings))
    assert options == restic.ResticOptions(("--memory=512m", "--cpus=1"), {}, 7.5)
    assert restic.module_restic_options({}) == restic.ResticOptions((), {}, 120.0)
    for bad in ({"AGENT_RESTIC_PODMAN_ARGS": '"--privileged"'}, {"AGENT_RESTIC_PODMAN_ARGS": "["},
                {"AGENT_STORAGE_RETRY_SECONDS": "soon"}):  # fmt: skip
        with pytest.raises(ConfigError):
            restic.module_restic_options(bad)
