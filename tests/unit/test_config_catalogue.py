"""Bad input gets one clear message: config, targets, scenario parameters, TUI text."""

from __future__ import annotations

from pathlib import Path

import pytest

from app import config
from app.config import ConfigError
from app.tui.text import printable, safe
from collectors.targets import RedisTarget, TargetError, ZkTarget
from scenarios.kit.catalogue import ScenarioError, parse_assignments
from scenarios.runner import spec_of


def test_flags_beat_environment_beat_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[redis]\nurls = ["redis://10.0.0.1:7000"]\n[zookeeper]\nhosts = "10.0.0.2:2181"\n'
        '[layouts]\nlock_patterns = ["mutex:*"]\n'
    )
    s = config.load(config_file=str(cfg), state_dir=str(tmp_path))
    assert [t.address for t in s.redis] == ["10.0.0.1:7000"]
    assert s.zookeeper[0].hosts == "10.0.0.2:2181"
    assert s.layouts.lock_patterns == ("mutex:*",)
    assert not s.writable  # an external cluster is read-only unless told otherwise
    monkeypatch.setenv("COORDSCOPE_REDIS", "redis://10.0.0.3:7001,10.0.0.4")
    s = config.load(config_file=str(cfg), state_dir=str(tmp_path))
    assert [t.address for t in s.redis] == ["10.0.0.3:7001", "10.0.0.4:6379"]
    s = config.load(
        redis_urls=["redis://10.0.0.5:7002"], config_file=str(cfg), state_dir=str(tmp_path), allow_writes=True
    )
    assert [t.address for t in s.redis] == ["10.0.0.5:7002"] and s.writable


def test_replicas_from_the_config_are_watched_but_never_written(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[redis]\nurls = ["redis://127.0.0.1:6381"]\nreplicas = ["redis://127.0.0.1:6384"]\n')
    s = config.load(config_file=str(cfg), state_dir=str(tmp_path))
    assert [t.id for t in s.redis] == ["127.0.0.1:6381", "127.0.0.1:6384"]
    assert s.masters == ("127.0.0.1:6381",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[redis\n", "c.toml"),
        ('[redis]\nurls = "redis://x"\n', "redis.urls must be a list of strings"),
        ('[zookeeper]\nhosts = "x"\nbudget = 0\n', "zookeeper.budget"),
        ('[layouts]\nzk_lock_patterns = ["(unclosed"]\n', "is not a regex"),
        ('[layouts]\nzk_lock_patterns = ["lock-\\\\d+"]\n', "needs a (?P<seq>...) group"),
        ('[redis]\nurls = ["http://x"]\n', "redis:// or rediss://"),
        ('[zookeeper]\nhosts = "nohostport"\n', "host:port"),
        ('[web]\nport = "eighty"\n', "web.port must be a number from 1 to 65535"),
        ("[redis]\nscan_interval_s = 0\n", "redis.scan_interval_s must be a number"),
        ("[redis]\nraw_keys = -1\n", "redis.raw_keys must be a whole number from 0 to 1,000,000"),
        ('[redis]\nscan_rate = "fast"\n', "redis.scan_rate must be a whole number"),
    ],
)
def test_bad_config_says_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    with pytest.raises(
        ConfigError,
        match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?").replace(".", r"\."),
    ):
        config.load(config_file=str(cfg), state_dir=str(tmp_path))


def test_limits_come_from_the_redis_section(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[redis]\nurls = ["redis://127.0.0.1:6381"]\nraw_keys = 50\nscan_rate = 900\nsub_buffer_mib = 2\n'
    )
    limits = config.load(config_file=str(cfg), state_dir=str(tmp_path)).limits
    assert (limits.raw_keys, limits.scan_rate, limits.sub_buffer_bytes) == (50, 900, 2 * 1024 * 1024)


def test_nothing_to_watch_is_explained(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="coordscope up"):
        config.load(state_dir=str(tmp_path / "empty"))


def test_targets_parse_urls() -> None:
    t = RedisTarget.from_url("rediss://user:pw@example:7000/3")
    assert (t.host, t.port, t.db, t.username, t.password, t.tls) == ("example", 7000, 3, "user", "pw", True)
    with pytest.raises(TargetError):
        RedisTarget.from_url("redis://host:notaport")
    with pytest.raises(TargetError):
        ZkTarget(id="z", hosts="h:1", roots=("relative",))


def test_scenario_parameters_are_checked_with_clear_messages() -> None:
    spec = spec_of("lock-redis")
    assert spec.resolve({"fencing": "off", "clients": "6"})["clients"] == 6
    for given, message in [
        ({"fencing": "maybe"}, "fencing must be one of on, off"),
        ({"clients": "many"}, "clients must be a whole number"),
        ({"clients": "1"}, "clients must be at least 2"),
        ({"clients": "99"}, "clients must be at most 16"),
        ({"colour": "red"}, "has no parameter 'colour'"),
    ]:
        with pytest.raises(ScenarioError, match=message):
            spec.resolve(given)
    with pytest.raises(ScenarioError, match="has no fault 'boom'"):
        spec.fault("boom")
    with pytest.raises(ScenarioError, match="unknown scenario 'nope'"):
        spec_of("nope")
    with pytest.raises(ScenarioError, match="NAME=VALUE"):
        parse_assignments(["fencing"])
    catalogue = spec.to_json()
    assert catalogue["variants"] == {
        "release": ["lua", "del"],
        "fencing": ["on", "off"],
        "waiting": ["poll", "signal"],
        "keep": ["off", "on"],
    }
    assert [f["name"] for f in catalogue["faults"]] == ["pause-holder", "kill-holder", "kill-node"]


def test_terminal_text_never_carries_markup_or_escapes() -> None:
    hostile = "[bold red]x[/] \x1b[31mred\x1b[0m \u202eevil"
    text = safe(hostile)
    assert text.plain == "[bold red]x[/] \\x1b[31mred\\x1b[0m \\u202eevil"
    assert not text.spans  # nothing was parsed as markup
    assert printable("a\nb", 0) == "a\\x0ab"
    assert printable("x" * 50, 10) == "x" * 9 + "…"
