"""Command-line edges: agent, api-cli, runagent. Errors become one line and an exit code."""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from agent.adapters import proc
from agent.adapters.module_users import module_user_of
from agent.apicli import guarded
from agent.core import redis_keys
from agent.core.errors import AgentError, ConfigError
from agent.core.settings import Settings, load_settings
from agent.core.settings_file import default_root
from agent.runtime.agentenv import agent_environment

RootOption = Annotated[
    Path | None, typer.Option("--root", help="node data directory (default: AGENT_ROOT)")
]


# --- agent ---------------------------------------------------------------------------
agent_app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Run and manage the cluster backup agent on this node.",
)
cluster_app = typer.Typer(no_args_is_help=True, help="The embedded default cluster.")
agent_app.add_typer(cluster_app, name="cluster")
web_app = typer.Typer(invoke_without_command=True, help="The web console (admin only).")
agent_app.add_typer(web_app, name="web")


@agent_app.command()
def serve(
    root: RootOption = None,
    shutdown_timeout: Annotated[
        float, typer.Option(help="seconds running tasks get at stop")
    ] = 60.0,
) -> None:
    """Serve this node's task queues until SIGTERM."""
    from agent.core import filemodes
    from agent.runtime.daemon import Daemon

    os.umask(filemodes.PRIVATE_UMASK)  # however it was started: logs, Redis dumps, records
    level = os.environ.get("AGENT_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    _stacks_on_sigusr1()
    Daemon(load_settings(root), shutdown_timeout).serve()


@cluster_app.command("init")
def cluster_init(
    root: RootOption = None,
    node: Annotated[int, typer.Option(min=1, help="this node's id")] = 1,
    redis_url: Annotated[
        str | None, typer.Option(help="join this Redis instead of a private one")
    ] = None,
    join: Annotated[
        Path | None, typer.Option(help="data dir of a node whose Redis to join")
    ] = None,
    private_storage: Annotated[
        bool, typer.Option(help="own podman volumes under the data dir (images shared)")
    ] = False,
    local_root: Annotated[
        list[Path] | None,
        typer.Option(help="a host directory local: destinations may be under (repeatable)"),
    ] = None,
) -> None:
    """Create a node's data directory (node 1 alone: a private Redis too)."""
    from agent.core import filemodes
    from agent.operations import cluster_setup

    os.umask(filemodes.PRIVATE_UMASK)

    url = redis_url or (cluster_setup.join_url(join) if join else None)
    roots = tuple(str(path.absolute()) for path in local_root or [])
    settings = cluster_setup.init(root or default_root(), node, url, private_storage, roots)
    kind = "private Redis" if settings.embedded_redis else "shared Redis"
    print(f"node {settings.node_id} initialised in {settings.root} ({kind})")
    if settings.web_listen:
        from agent.web.auth import initial_password_file

        print(f"web console password: {initial_password_file(settings.root)} (0600)")


@cluster_app.command("up")
def cluster_up(root: RootOption = None) -> None:
    """Start the private Redis (if any) and the node daemon in the background."""
    from agent.core import filemodes
    from agent.operations import cluster_setup

    os.umask(filemodes.PRIVATE_UMASK)  # pid files and the log it creates are root's alone
    result = cluster_setup.up(load_settings(root))
    for line in result.report():
        print(f"node {result.settings.node_id} {line}")
    if result.web_url:
        print(f"web console on {result.web_url}")
    print(f"logs in {result.settings.log_dir}")


@cluster_app.command("down")
def cluster_down(root: RootOption = None) -> None:
    """Stop the node daemon (running tasks may finish) and the private Redis."""
    from agent.operations import cluster_setup

    stopped = cluster_setup.down(load_settings(root))
    print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


@cluster_app.command("env")
def cluster_env(root: RootOption = None) -> None:
    """Print shell exports that point api-cli, runagent and podman at this node."""
    settings = load_settings(root)
    exports = {"AGENT_ROOT": str(settings.root)}
    if settings.storage_conf:  # the node's own podman store: plain podman must see it too
        exports |= settings.podman_env()
    for name, value in exports.items():
        print(f"export {name}={shlex.quote(value)}")


@agent_app.command("run-backup")
def run_backup_command(
    backup: Annotated[int, typer.Option("--backup", min=1, help="backup id")],
    root: RootOption = None,
) -> None:
    """Back up this node's modules of a backup now (what the timers run)."""
    from agent.adapters.redis_store import Context
    from agent.operations.backup_actions import command_run_backup

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
    sys.exit(command_run_backup(Context.open(load_settings(root)), backup))


@agent_app.command("run-check")
def run_check_command(
    backup: Annotated[int, typer.Option("--backup", min=1, help="backup id")],
    root: RootOption = None,
) -> None:
    """Check this node's module repositories of a backup now (what the check timers run)."""
    from agent.adapters.redis_store import Context
    from agent.operations.check_actions import command_run_check

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
    sys.exit(command_run_check(Context.open(load_settings(root)), backup))


@agent_app.command("timers")
def timers(
    root: RootOption = None,
    sync: Annotated[bool, typer.Option(help="re-render the timer units first")] = False,
) -> None:
    """Show the next and last run of this node's backup timers, from systemd."""
    from agent.adapters.redis_store import Context
    from agent.runtime.timers import format_timer_table, sync_timers, timer_rows

    ctx = Context.open(load_settings(root))
    if sync:
        sync_timers(ctx.redis, ctx.settings, start_all=True)
    print(format_timer_table(timer_rows(ctx.redis, ctx.settings)))


@agent_app.command("gateway")
def gateway_command(
    root: RootOption = None,
    watch_pid: Annotated[
        int | None, typer.Option(help="stop once this process (the daemon) is gone")
    ] = None,
) -> None:
    """Serve this node's storage gateway in the foreground (the daemon starts it)."""
    from agent.gateway.server import serve as serve_gateway

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    _stacks_on_sigusr1()
    serve_gateway(load_settings(root), watch_pid)


def _stacks_on_sigusr1() -> None:
    """`kill -USR1 <pid>` writes every thread's stack to the log (stderr): what a daemon
    or gateway that stopped answering is waiting on, without stopping it."""
    import faulthandler
    import signal

    faulthandler.register(signal.SIGUSR1, all_threads=True)


@agent_app.command("verify-restore")
def verify_restore_command(
    source: Annotated[str, typer.Option(help="module id of the original")],
    restored: Annotated[str, typer.Option(help="module id of the restored copy")],
    root: Annotated[
        list[Path] | None, typer.Option("--root", help="a node's data dir (repeat per node)")
    ] = None,
) -> None:
    """Compare a restored module with its original: files, metadata, Redis keys."""
    from agent.operations.verify_restore import main

    main(
        [
            "--source",
            source,
            "--restored",
            restored,
            *[arg for path in root or [] for arg in ("--root", str(path))],
        ]
    )


@web_app.callback()
def web(
    ctx: typer.Context,
    root: RootOption = None,
    listen: Annotated[
        str | None, typer.Option(help="host:port (default: web_listen in agent.json)")
    ] = None,
    certfile: Annotated[Path | None, typer.Option(help="TLS certificate (PEM)")] = None,
    keyfile: Annotated[Path | None, typer.Option(help="TLS private key (PEM)")] = None,
) -> None:
    """Serve the web console in the foreground (a subcommand: manage it instead)."""
    if ctx.invoked_subcommand is not None:
        return
    from agent.web.server import serve as serve_web

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    serve_web(load_settings(root), listen, certfile, keyfile)


@web_app.command("passwd")
def web_passwd(
    root: RootOption = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="read the new password from stdin")
    ] = False,
) -> None:
    """Change the console's admin password; sessions opened with the old one end."""
    import getpass

    from agent.web.auth import set_password

    settings = load_settings(root)
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("new console password: ")
        if getpass.getpass("again: ") != password:
            raise ConfigError("the two passwords differ; nothing changed")
    set_password(settings.root, password)
    print("console password changed")


@agent_app.command("schema")
def schema(check: Annotated[bool, typer.Option(help="fail if a file differs")] = False) -> None:
    """Write (or --check) the validate-input.json files generated from the models."""
    from agent.schemas import check_schemas, write_schemas

    if check:
        stale = check_schemas()
        if stale:
            raise AgentError("stale schema files: " + ", ".join(stale))
        print("schemas up to date")
    else:
        for path in write_schemas():
            print(path)


def agent_main() -> None:
    guarded("agent", lambda: agent_app(prog_name="agent"))


# --- runagent ------------------------------------------------------------------------
RUNAGENT_USAGE = (
    "usage: runagent [-m AGENT | -l] [-c] [COMMAND [ARGS...]]\n"
    "  -m, --module AGENT  run as AGENT: cluster (default), node, node/N, a module id\n"
    "  -l, --list-modules  list the agents with an environment on this node\n"
    "  -c, --current-dir   stay in the current directory (default: the agent's state dir)\n"
    "  no COMMAND: an interactive login shell (bash -l), on a terminal only"
)
# What a step has and a runagent command must not inherit (NS8 gives it neither).
# AGENT_TASK_ID stays: crash recovery finds a dead task's processes by it.
STEP_ONLY_VARIABLES = ("AGENT_COMFD", "AGENT_TASK_STEP")


@dataclass(frozen=True)
class RunagentArgs:
    agent: str = "cluster"
    list_modules: bool = False
    keep_cwd: bool = False
    command: tuple[str, ...] = ()


def parse_runagent_args(argv: list[str]) -> RunagentArgs:
    """runagent's options, up to the first word that is not one (the command's own
    options, like run-backup's --backup=1, are the command's)."""
    agent, list_modules, keep_cwd = "cluster", False, False
    rest = list(argv)
    while rest and rest[0].startswith("-"):
        option = rest.pop(0)
        if option in ("-m", "--module"):
            if not rest:
                raise ConfigError(RUNAGENT_USAGE)
            agent = rest.pop(0)
        elif option.startswith("--module="):
            agent = option.split("=", 1)[1]
        elif option in ("-l", "--list-modules"):
            list_modules = True
        elif option in ("-c", "--current-dir"):
            keep_cwd = True
        elif option == "--":
            break
        else:  # -h, --help and anything unknown
            raise ConfigError(RUNAGENT_USAGE)
    return RunagentArgs(agent, list_modules, keep_cwd, tuple(rest))


def node_agents(settings: Settings) -> list[str]:
    """cluster, node and each module with an install dir on this node."""
    modules = settings.root / "modules"
    found = sorted(p.name for p in modules.iterdir() if p.is_dir()) if modules.is_dir() else []
    return ["cluster", "node", *found]


def resolve_agent(name: str, node_id: int) -> str:
    if name in ("cluster", ""):
        return redis_keys.CLUSTER
    if name == "node":
        return redis_keys.node_agent(node_id)
    with contextlib.suppress(redis_keys.NotAnAgentId):
        return str(redis_keys.AgentId.parse(name))
    return redis_keys.module_agent(name)


def runagent(argv: list[str]) -> None:
    args = parse_runagent_args(argv)
    root = os.environ.get("AGENT_ROOT")
    settings = load_settings(Path(root) if root else None)
    if args.list_modules:
        print("\n".join(node_agents(settings)))
        return
    command = list(args.command)
    if not command:
        if not sys.stdin.isatty():
            print(RUNAGENT_USAGE, file=sys.stderr)
            sys.exit(2)
        command = ["bash", "-l"]
    agent_id = resolve_agent(args.agent, settings.node_id)
    home = settings.agent_home(agent_id)
    if redis_keys.AgentId.parse(agent_id).kind == "module" and not home.is_dir():
        raise ConfigError(f"no module {args.agent!r} on node {settings.node_id}")
    state = settings.state_dir(agent_id)
    # NS8's runagent runs a rootless module's command as the module's user.
    run_as = module_user_of(settings, agent_id) if os.geteuid() == 0 else None
    if run_as is None:
        state.mkdir(parents=True, exist_ok=True)
    env = agent_environment(settings, agent_id)
    for name in STEP_ONLY_VARIABLES:
        env.pop(name, None)
    try:
        proc.exec_replace(command, env, Path.cwd() if args.keep_cwd else state, run_as)
    except FileNotFoundError:
        raise AgentError(f"command not found: {command[0]}") from None


def runagent_main() -> None:
    guarded("runagent", lambda: runagent(sys.argv[1:]))


if __name__ == "__main__":
    agent_main()
