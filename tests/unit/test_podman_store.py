"""A node's own podman store: its configuration files and its runtime directory."""

from __future__ import annotations

import tomllib
from pathlib import Path

from agent.adapters import podman_store
from tests.conftest import CONTAINERS_CONF


def test_create_writes_a_private_store_with_file_locks_in_its_own_runtime_dir(
    tmp_path: Path,
) -> None:
    store = podman_store.create(tmp_path / "node", CONTAINERS_CONF)

    storage = tomllib.loads(store.storage_conf.read_text())["storage"]
    assert storage["graphroot"] == str(tmp_path / "node" / "containers" / "storage")
    assert storage["runroot"] == str(store.runroot)
    assert storage["options"]["additionalimagestores"] == [podman_store.SHARED_IMAGE_STORE]
    # unix socket paths under the runroot must stay far below the 108-byte limit
    assert len(str(store.runroot)) < 40

    shipped = tomllib.loads(CONTAINERS_CONF.read_text())
    conf = tomllib.loads(store.containers_conf.read_text())
    assert conf["engine"] == shipped["engine"] | {
        "lock_type": "file",
        "tmp_dir": str(store.runroot / "libpod"),
    }
    assert conf["containers"] == shipped["containers"]
    assert store.env() == {
        "CONTAINERS_CONF": str(store.containers_conf),
        "CONTAINERS_STORAGE_CONF": str(store.storage_conf),
    }


def test_engine_options_get_a_table_when_the_conf_has_none() -> None:
    text = podman_store.with_engine_options('[containers]\nlog_driver = "k8s-file"\n', {"a": "b"})
    assert tomllib.loads(text) == {"containers": {"log_driver": "k8s-file"}, "engine": {"a": "b"}}


def test_a_new_store_discards_the_runtime_state_a_removed_one_left(tmp_path: Path) -> None:
    store = podman_store.Store(tmp_path / "node")
    (store.tmp_dir / "locks").mkdir(parents=True)
    (store.tmp_dir / "locks" / "7").touch()
    try:
        podman_store.create(store.root, CONTAINERS_CONF)
        assert not store.runroot.exists()
    finally:
        podman_store.discard_runtime(store)
