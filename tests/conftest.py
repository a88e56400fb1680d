"""Root test fixtures: podman's API service, a Redis server, the restic image.

Generic on purpose: tests/unit, tests/integration and tests/e2e may add their own conftest
files on top. Everything here works under pytest-xdist, where each worker is a separate
session: per-worker resources carry the worker id, shared ones (image builds) take a file
lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import uuid
import warnings
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
import redis

from agent.adapters import podman_store
from tests.support import leaks
from tests.support.processes import terminate

REPO_ROOT = Path(__file__).resolve().parent.parent
CONTAINERS_CONF = REPO_ROOT / "containers" / "containers.conf"
RESTIC_IMAGE = "localhost/backup-agent-restic:latest"
REDIS_IMAGE = "localhost/backup-agent-redis:latest"

RedisBackend = Literal["env", "container", "subprocess"]


def pytest_configure(config: pytest.Config) -> None:
    # A run started in the background by a shell without job control (nohup, CI runners,
    # `cmd &` in a script) inherits SIGINT ignored, and every process a test starts would
    # too: tests that press Ctrl-C on api-cli would then wait for nothing. Give this
    # process Python's own handler back, so what it starts gets the default, as from a
    # terminal.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    # Every podman this session starts (ours, the agent's, the build scripts') must use the
    # project's engine settings: runc, cgroupfs, no default ulimits.
    os.environ["CONTAINERS_CONF"] = str(CONTAINERS_CONF)
    redis_backend()  # a bad TEST_REDIS_BACKEND stops the run here, not in every test
    if not hasattr(config, "workerinput") and leaks.enabled():
        # The controller marks the environment that workers and every process they start
        # inherit; what still carries the mark at the end was left behind by a test.
        os.environ.setdefault(leaks.SESSION_VARIABLE, uuid.uuid4().hex)
        config.stash[_LEAK_BASELINE] = _machine_inventory()


_LEAK_BASELINE = pytest.StashKey[dict[str, set[str]]]()


def _machine_inventory() -> dict[str, set[str]]:
    inventory = {"users": leaks.users(), "mounts": leaks.temp_mounts()}
    if shutil.which("podman") is not None:
        env = host_podman_env()
        inventory["containers"] = leaks.podman_names("ps", env)
        inventory["volumes"] = leaks.podman_names("volume", env)
        inventory["images"] = leaks.podman_names("image", env)
    return inventory


@pytest.hookimpl(trylast=True)  # after the session's fixtures are torn down
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fails the run when a test left a process, container, volume, image or user behind."""
    config = session.config
    if hasattr(config, "workerinput") or _LEAK_BASELINE not in config.stash:
        return
    session_id = os.environ[leaks.SESSION_VARIABLE]
    exclude = {os.getpid(), os.getppid()}
    found: dict[str, object] = {}
    processes = leaks.wait_for_marked_processes(session_id, exclude, grace=20.0)
    if processes:
        found["processes"] = processes
    before = config.stash[_LEAK_BASELINE]
    notes: dict[str, object] = {}
    for kind, names in _machine_inventory().items():
        new = names - before.get(kind, set())
        if kind == "images":
            # Images under the documented tags are cached build artefacts (see
            # leaks.CACHED_IMAGES); an untagged one is what a rebuild from other sources
            # (another checkout's, say) left of the image it replaced: said, not failed,
            # since this session cannot tell whose rebuild it was.
            if replaced := sorted(leaks.untagged_images(new)):
                notes["machine images replaced by a rebuild (podman image prune)"] = replaced
            new = leaks.uncached_images(new)
        if new:
            found[f"machine {kind}"] = sorted(new)
    for worker, leftovers in leaks.read_reports(session_id).items():
        found[f"{worker} store"] = leftovers
    shutil.rmtree(leaks.report_dir(session_id), ignore_errors=True)
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if notes:
        text = "\n".join(f"  {k}: {v}" for k, v in notes.items())
        if reporter is not None:
            reporter.write_line(f"leak check, not failing:\n{text}", yellow=True)
        else:
            print(f"leak check, not failing:\n{text}", file=sys.stderr)
    if found:
        text = "tests left these behind:\n" + "\n".join(f"  {k}: {v}" for k, v in found.items())
        if reporter is not None:
            reporter.write_line("")
            reporter.write_sep("=", "leak check", red=True)
            reporter.write_line(text, red=True)
        else:
            print(text, file=sys.stderr)
        if session.exitstatus == 0:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Without podman the @pytest.mark.podman tests cannot run at all: skip, don't error.
    if shutil.which("podman") is None:
        skip = pytest.mark.skip(reason="podman is not installed")
        for item in items:
            if "podman" in item.keywords:
                item.add_marker(skip)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test that ran a cluster (the `cluster` fixture) reports the tails of its
    nodes' logs: a failure seen once under load is read from them, not guessed at."""
    report: pytest.TestReport = yield
    harness = getattr(item, "funcargs", {}).get("cluster")
    nodes = getattr(harness, "nodes", None)
    if report.failed and isinstance(nodes, dict):
        for node_id, node in sorted(nodes.items()):
            log_dir = node.settings.log_dir
            for name in ("agent.log", "gateway.log"):
                with contextlib.suppress(OSError):
                    lines = (log_dir / name).read_text(errors="replace").splitlines()[-60:]
                    report.sections.append((f"node {node_id} {name} (tail)", "\n".join(lines)))
    return report


def pytest_report_header(config: pytest.Config) -> str:
    return f"redis fixture: {_describe_backend(redis_backend())}"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (another process may still take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def xdist_worker_id() -> str:
    """The xdist worker id ("gw0", ...), or "main" without xdist."""
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


@contextlib.contextmanager
def file_lock(name: str) -> Iterator[None]:
    """Exclusive lock shared by all processes on the machine (xdist workers included)."""
    path = Path(tempfile.gettempdir()) / f"backup-agent-{name}.lock"
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def host_podman_env() -> dict[str, str]:
    """Environment for podman on the machine's own store, where images are built: every
    private store (this session's, each test node's) reads its images from there."""
    return dict(
        os.environ,
        CONTAINERS_CONF=str(CONTAINERS_CONF),
        CONTAINERS_STORAGE_CONF=str(_host_storage_conf()),
    )


def _host_storage_conf() -> Path:
    """The machine's store as the machine configures it, plus skip_mount_home.

    By default every podman on a store bind-mounts its overlay directory onto itself and
    detaches that mount when it exits. Private stores take their image layers from under
    that directory: a detach landing while one of them mounts a container makes the kernel
    refuse the mount ("failed to clone lowerpath", EINVAL). With skip_mount_home the
    builds a test session runs never mount it, so there is nothing to detach.
    """
    storage: dict[str, object] = {}
    machine = Path("/etc/containers/storage.conf")
    if machine.is_file():
        storage = dict(tomllib.loads(machine.read_text()).get("storage", {}))
    graphroot = storage.get("graphroot", podman_store.SHARED_IMAGE_STORE)
    runroot = storage.get("runroot", "/run/containers/storage")
    driver = storage.get("driver", "overlay")
    text = (
        f'[storage]\ndriver = "{driver}"\ngraphroot = "{graphroot}"\nrunroot = "{runroot}"\n'
        '[storage.options.overlay]\nskip_mount_home = "true"\n'
    )
    path = Path(tempfile.gettempdir()) / "backup-agent-host-storage.conf"
    if not path.is_file() or path.read_text() != text:
        partial = path.with_name(f"{path.name}.{os.getpid()}")
        partial.write_text(text)
        partial.replace(path)
    return path


def podman_build(tag: str, context: Path, lock: str, containerfile: Path | None = None) -> str:
    """`podman build` of context (its Containerfile, or containerfile) into tag, in the
    machine's store where every test store finds it; one build at a time per lock name."""
    argv = ["podman", "build", "--tag", tag]
    if containerfile is not None:
        argv += ["--file", str(containerfile)]
    with file_lock(lock):
        done = subprocess.run(
            [*argv, str(context)],
            env=host_podman_env(),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    if done.returncode != 0:
        pytest.fail(f"podman build of {tag} failed:\n{done.stderr[-2000:]}", pytrace=False)
    return tag


def build_image(name: str) -> str:
    """Run containers/<name>/build and return the tag it prints.

    The scripts skip the build when the image exists; the lock makes parallel workers wait
    for the first one instead of building the same image twice.
    """
    script = REPO_ROOT / "containers" / name / "build"
    with file_lock(f"build-{name}"):
        result = subprocess.run(
            [str(script)],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
            env=host_podman_env(),
        )
    if result.returncode != 0:
        pytest.fail(f"{script} failed ({result.returncode}):\n{result.stderr}", pytrace=False)
    return result.stdout.strip().splitlines()[-1]


# --- podman ------------------------------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def session_podman_store() -> Iterator[podman_store.Store | None]:
    """This worker's own podman store, for every container the tests start themselves
    (testcontainers' Redis, restic runs, the systemd node); test cluster nodes get stores
    of their own. Its file locks go away with it, so even a killed session leaves nothing
    in the machine-wide lock table that every other podman draws from."""
    if shutil.which("podman") is None:
        yield None
        return
    root = Path(tempfile.mkdtemp(prefix=f"backup-agent-podman-{xdist_worker_id()}-"))
    store = podman_store.create(root, CONTAINERS_CONF)
    with pytest.MonkeyPatch.context() as mp:
        for name, value in store.env().items():
            mp.setenv(name, value)
        try:
            yield store
        finally:
            _report_store_leftovers()
            if store.graphroot.exists():
                rm = ["podman", "rm", "--all", "--force", "--time", "0"]
                subprocess.run(rm, capture_output=True, timeout=120, check=False)
            podman_store.release(store)
            podman_store.discard_runtime(store)
            shutil.rmtree(root, ignore_errors=True)


def _report_store_leftovers() -> None:
    """What is still in this worker's store at its end (deleting the store would hide it)."""
    session_id = os.environ.get(leaks.SESSION_VARIABLE)
    if not session_id or not leaks.enabled():
        return
    leftovers = {kind: sorted(leaks.podman_names(kind)) for kind in ("ps", "volume")}
    leftovers = {("containers" if k == "ps" else "volumes"): v for k, v in leftovers.items() if v}
    if leftovers:
        leaks.write_report(session_id, xdist_worker_id(), leftovers)


class _UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a unix socket, enough for podman's /_ping."""

    def __init__(self, path: str, timeout: float = 2.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def _pings(path: Path) -> bool:
    conn = _UnixHTTPConnection(str(path))
    try:
        conn.request("GET", "/_ping")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


@pytest.fixture(scope="session")
def podman_service(session_podman_store: podman_store.Store | None) -> Iterator[str]:
    """A private `podman system service` for this worker; yields its unix:// URL.

    Points docker clients (testcontainers) at it for the session: DOCKER_HOST, no Ryuk
    (its image would have to be pulled; containers are removed by their fixtures instead),
    and the published ports on 127.0.0.1.
    """
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed")
    # mkdtemp in /tmp rather than tmp_path: unix socket paths must stay under ~100 bytes.
    run_dir = Path(tempfile.mkdtemp(prefix=f"podman-{xdist_worker_id()}-"))
    sock = run_dir / "podman.sock"
    url = f"unix://{sock}"
    log_path = run_dir / "service.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            ["podman", "system", "service", "--time=0", url],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C on pytest must not kill it before teardown
        )
    try:
        deadline = time.monotonic() + 30
        while not _pings(sock):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"podman system service did not answer on {url}:\n{log_path.read_text()}",
                    pytrace=False,
                )
            time.sleep(0.1)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("DOCKER_HOST", url)
            mp.setenv("TESTCONTAINERS_RYUK_DISABLED", "true")
            mp.setenv("TESTCONTAINERS_HOST_OVERRIDE", "127.0.0.1")
            mp.setenv("TESTCONTAINERS_CONNECTION_MODE", "docker_host")
            _configure_testcontainers(mp)
            yield url
    finally:
        terminate(proc, timeout=15)
        shutil.rmtree(run_dir, ignore_errors=True)


def _configure_testcontainers(mp: pytest.MonkeyPatch) -> None:
    # testcontainers reads TESTCONTAINERS_HOST_OVERRIDE and TESTCONTAINERS_CONNECTION_MODE
    # once, when it is first imported, which may have happened before the env was set.
    if importlib.util.find_spec("testcontainers") is None:
        return
    from testcontainers.core.config import ConnectionMode, testcontainers_config

    mp.setattr(testcontainers_config, "tc_host_override", "127.0.0.1")
    mp.setattr(testcontainers_config, "connection_mode_override", ConnectionMode.docker_host)
    mp.setattr(testcontainers_config, "ryuk_disabled", True)


# --- Redis ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RedisServer:
    url: str
    backend: RedisBackend
    container_id: str | None = None  # backend "container"
    pid: int | None = None  # backend "subprocess"


def redis_backend() -> RedisBackend:
    """Where the redis fixtures get a server: REDIS_URL, else a container, else a process.

    TEST_REDIS_BACKEND=container|subprocess forces one (CI forces the container path so
    a broken podman setup fails instead of quietly falling back).
    """
    forced = os.environ.get("TEST_REDIS_BACKEND", "")
    if forced in ("container", "subprocess"):
        return forced  # type: ignore[return-value]  # narrowed by the membership test
    if forced:
        raise pytest.UsageError(f"TEST_REDIS_BACKEND={forced!r}: use container or subprocess")
    if os.environ.get("REDIS_URL"):
        return "env"
    if shutil.which("podman") and importlib.util.find_spec("testcontainers"):
        return "container"
    return "subprocess"


def _describe_backend(backend: RedisBackend) -> str:
    return {
        "env": f"REDIS_URL ({os.environ.get('REDIS_URL')})",
        "container": f"testcontainers RedisContainer({REDIS_IMAGE}) on a podman service",
        "subprocess": "redis-server subprocess",
    }[backend]


@pytest.fixture(scope="session")
def redis_server(request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    """A Redis server for the whole session (one per xdist worker)."""
    backend = redis_backend()
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print(
            f"\n[{xdist_worker_id()}] redis fixture: {_describe_backend(backend)}", file=sys.stderr
        )
    if backend == "env":
        yield RedisServer(os.environ["REDIS_URL"], "env")
    elif backend == "container":
        # Started only now, so sessions without redis tests don't pay for the service.
        request.getfixturevalue("podman_service")
        yield from _redis_container()
    else:
        yield from _redis_subprocess()


def _redis_container() -> Iterator[RedisServer]:
    with warnings.catch_warnings():
        # testcontainers 4.13 warns about its own deprecated decorator on import.
        warnings.simplefilter("ignore", DeprecationWarning)
        from testcontainers.redis import RedisContainer

    build_image("redis")
    with RedisContainer(REDIS_IMAGE) as container:
        host = container.get_container_host_ip()
        port = container.get_exposed_port(container.port)
        yield RedisServer(
            f"redis://{host}:{port}/0",
            "container",
            container_id=container.get_wrapped_container().id,
        )


def _redis_subprocess() -> Iterator[RedisServer]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("neither podman nor redis-server is installed")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix=f"redis-{xdist_worker_id()}-") as data_dir:
        args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", data_dir]
        args += ["--save", "", "--appendonly", "no"]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"redis://127.0.0.1:{port}/0"
        try:
            client = redis.Redis.from_url(url)
            deadline = time.monotonic() + 10
            while True:
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        pytest.fail(f"redis-server did not start on port {port}", pytrace=False)
                    time.sleep(0.05)
            client.close()
            yield RedisServer(url, "subprocess", pid=proc.pid)
        finally:
            proc.terminate()
            proc.wait(timeout=10)


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    """URL of the session's Redis server, like redis://127.0.0.1:PORT/0."""
    return redis_server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client on an empty server: FLUSHALL first, so no test sees another's keys.

    Safe because the tests of one worker run one after the other and each worker has its
    own server (except with REDIS_URL, where parallel workers would share it).
    """
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushall()
    try:
        yield client
    finally:
        client.close()


# --- restic --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def restic_image() -> str:
    """The restic + rclone image, built on first use (seconds, offline)."""
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed")
    build_image("restic")
    return RESTIC_IMAGE
