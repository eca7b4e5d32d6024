"""The parts of persistent watching and role reading that need no server: the addWatch
request's bytes, which watchers a notified path reaches, ``srvr`` replies, the config."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from app import config
from app.config import ConfigError
from collectors.targets import ZkTarget
from collectors.zk_roles import parse
from collectors.zk_watch import AddWatch, AddWatchMode, PersistentWatchClient


def test_add_watch_is_opcode_106_with_the_path_and_the_mode() -> None:
    request = AddWatch("/locks", AddWatchMode.PERSISTENT_RECURSIVE)
    assert request.type == 106
    assert request.serialize() == struct.pack(">i", 6) + b"/locks" + struct.pack(">i", 1)


def test_a_recursive_watcher_gets_its_root_and_every_descendant_only() -> None:
    client = PersistentWatchClient(hosts="127.0.0.1:1")

    def on_locks(event: object) -> None: ...

    def on_exact(event: object) -> None: ...

    client._persistent = {
        ("/locks", AddWatchMode.PERSISTENT_RECURSIVE): {on_locks},
        ("/apps", AddWatchMode.PERSISTENT): {on_exact},
    }
    assert client._persistent_for("/locks") == [on_locks]
    assert client._persistent_for("/locks/a/b") == [on_locks]
    assert client._persistent_for("/locksmith") == []  # a sibling whose name starts alike
    assert client._persistent_for("/apps") == [on_exact]
    assert client._persistent_for("/apps/x") == []  # not recursive
    client.remove_persistent("/locks", AddWatchMode.PERSISTENT_RECURSIVE)
    assert client._persistent_for("/locks/a") == []


def test_a_chrooted_client_watches_below_its_chroot() -> None:
    client = PersistentWatchClient(hosts="127.0.0.1:1/app")
    assert client._full_path("/") == "/app" and client._full_path("/x") == "/app/x"


@pytest.mark.parametrize(
    ("reply", "up", "role"),
    [
        (
            "Zookeeper version: 3.8.0\nLatency min/avg/max: 0/0.0/0\nMode: leader\nNode count: 5\n",
            True,
            "leader",
        ),
        ("Zookeeper version: 3.8.0\nMode: follower\n", True, "follower"),
        ("srvr is not executed because it is not in the whitelist.\n", True, "role unknown (4lw disabled)"),
        ("This ZooKeeper instance is not currently serving requests\n", True, "no role (not serving)"),
    ],
)
def test_the_role_is_the_mode_line_of_srvr(reply: str, up: bool, role: str) -> None:
    found = parse("127.0.0.1", 2181, reply)
    assert (found.up, found.role, found.address) == (up, role, "127.0.0.1:2181")


def test_a_connect_string_names_its_servers() -> None:
    target = ZkTarget(id="zk", hosts="127.0.0.1:2181,127.0.0.1:2182/chroot")
    assert target.servers == (("127.0.0.1", 2181), ("127.0.0.1", 2182))


def test_persistent_watches_can_be_turned_off_in_the_config(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[zookeeper]\nhosts = "127.0.0.1:2181"\npersistent_watches = false\n')
    settings = config.load(config_file=str(path), state_dir=str(tmp_path))
    assert [t.persistent_watches for t in settings.zookeeper] == [False]
    path.write_text('[zookeeper]\nhosts = "127.0.0.1:2181"\n')
    assert [
        t.persistent_watches for t in config.load(config_file=str(path), state_dir=str(tmp_path)).zookeeper
    ] == [True]
    path.write_text('[zookeeper]\nhosts = "127.0.0.1:2181"\npersistent_watches = "no"\n')
    with pytest.raises(ConfigError, match="persistent_watches"):
        config.load(config_file=str(path), state_dir=str(tmp_path))
