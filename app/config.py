"""Where coordscope looks: flags, then environment, then the config file, then the local cluster.

Naming any server (Redis, ZooKeeper or PostgreSQL) in one of the first three means
watching those servers, not the local cluster; each kind is then taken from the
first of flags, environment and file that names it.

Environment
    ``COORDSCOPE_STATE``   the state folder (default ``$XDG_STATE_HOME/coordscope``)
    ``COORDSCOPE_CONFIG``  the config file (default ``./coordscope.toml``, then
                           ``$XDG_CONFIG_HOME/coordscope/config.toml``)
    ``COORDSCOPE_REDIS``   comma-separated Redis URLs to watch
    ``COORDSCOPE_ZK``      a ZooKeeper connect string
    ``COORDSCOPE_PG``      comma-separated PostgreSQL DSNs to watch (``postgresql://``
                           URLs or ``key=value`` conninfo strings)

Config file (TOML)::

    [redis]
    urls = ["redis://10.0.0.5:6379", "redis://10.0.0.6:6379"]   # masters
    replicas = ["redis://10.0.0.9:6379"]                        # watched, never written to
    cluster = false              # true: the URLs are seeds of a Redis Cluster; follow its nodes live
    enable_notifications = false # may we CONFIG SET notify-keyspace-events when it is off?
    scan_interval_s = 2.0        # the fallback when notifications are off
    raw_keys = 1000              # unrecognised keys listed one by one per node; the rest by prefix
    family_keys = 20000          # keys of one family (sessions, marks...) listed per node; the rest by prefix
    prefixes = 500               # prefix summaries per node (further prefixes count as "(other)")
    scan_rate = 25000            # keys read per second by a scan, per node
    scan_count = 500             # SCAN's COUNT hint
    census_interval_s = 300      # how often a summarised keyspace is rescanned to recount it
    sub_buffer_mib = 8           # our output buffer on the server past which we scan instead

    [zookeeper]
    hosts = "10.0.0.7:2181,10.0.0.8:2181"
    roots = ["/"]
    budget = 5000
    persistent_watches = true    # false: one-shot watches even on ZooKeeper 3.6+ (addWatch)

    [postgres]                   # business databases: prepared transactions, who waits on them
    dsns = ["postgresql://watcher@10.0.0.11:5432/payments", "host=10.0.0.12 dbname=ledger user=watcher"]

    [layouts]
    lock_patterns = ["*lock*", "mutex:*"]
    session_patterns = ["sess:*", "myapp:session:*"]
    mark_patterns = ["payments:idem:*"]   # idempotency records, whatever their value
    zk_lock_patterns = ['^worker-(?P<seq>\\d{10})$']
    token_heuristics = true

    [web]
    host = "127.0.0.1"
    port = 8765
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.cluster import ClusterError, ClusterInfo, LocalCluster
from collectors.layouts import LayoutConfig
from collectors.limits import MIB, Limits
from collectors.redis_cluster import parse_nodes
from collectors.targets import PostgresTarget, RedisTarget, TargetError, ZkTarget


class ConfigError(ValueError):
    """A flag, variable or config entry that cannot be used (one line, names the culprit)."""


def default_state_dir() -> Path:
    if os.environ.get("COORDSCOPE_STATE"):
        return Path(os.environ["COORDSCOPE_STATE"])
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "coordscope"


def _config_path(explicit: str | None) -> Path | None:
    if explicit:
        path = Path(explicit)
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist")
        return path
    if os.environ.get("COORDSCOPE_CONFIG"):
        path = Path(os.environ["COORDSCOPE_CONFIG"])
        if not path.exists():
            raise ConfigError(f"COORDSCOPE_CONFIG names {path}, which does not exist")
        return path
    for candidate in (
        Path("coordscope.toml"),
        Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "coordscope" / "config.toml",
    ):
        if candidate.exists():
            return candidate
    return None


@dataclass(frozen=True)
class Settings:
    state_dir: Path
    redis: tuple[RedisTarget, ...]
    zookeeper: tuple[ZkTarget, ...]
    postgres: tuple[PostgresTarget, ...] = ()
    layouts: LayoutConfig = field(default_factory=LayoutConfig)
    local: ClusterInfo | None = None
    """The embedded cluster, when that is what we watch."""
    allow_writes: bool = False
    replicas: tuple[str, ...] = ()
    """Ids of watched nodes that are replicas (scenarios never write to them)."""
    limits: Limits = field(default_factory=Limits)
    """What a watch may cost: scan pacing, raw-key budget, subscriber buffer."""
    web_host: str = "127.0.0.1"
    web_port: int = 8765

    @property
    def writable(self) -> bool:
        return self.local is not None or self.allow_writes

    @property
    def masters(self) -> tuple[str, ...]:
        if self.local is not None:
            return tuple(m.name for m in self.local.masters)
        return tuple(t.id for t in self.redis if t.id not in self.replicas)


def _section(data: dict[str, Any], name: str) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{name}] in the config file must be a table")
    return value


def _strings(section: dict[str, Any], key: str, where: str) -> tuple[str, ...] | None:
    if key not in section:
        return None
    value = section[key]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}.{key} must be a list of strings")
    return tuple(value)


def load(
    *,
    redis_urls: list[str] | None = None,
    zk_hosts: str | None = None,
    pg_dsns: list[str] | None = None,
    state_dir: str | None = None,
    config_file: str | None = None,
    enable_notifications: bool = False,
    allow_writes: bool = False,
    redis_cluster: bool | None = None,
    need_cluster: bool = True,
) -> Settings:
    """Resolve what to watch. ``need_cluster``: fail when nothing is configured and no
    local cluster runs (commands that only manage the cluster pass False)."""
    path = _config_path(config_file)
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, OSError) as exc:
            raise ConfigError(f"{path}: {exc}") from None
    redis_cfg = _section(data, "redis")
    zk_cfg = _section(data, "zookeeper")
    pg_cfg = _section(data, "postgres")
    layouts_cfg = _section(data, "layouts")
    web_cfg = _section(data, "web")
    state = Path(state_dir) if state_dir else default_state_dir()

    urls: tuple[str, ...] | None = tuple(redis_urls) if redis_urls else None
    if urls is None and os.environ.get("COORDSCOPE_REDIS"):
        urls = tuple(u.strip() for u in os.environ["COORDSCOPE_REDIS"].split(",") if u.strip())
    if urls is None:
        urls = _strings(redis_cfg, "urls", "redis")
    zk = zk_hosts or os.environ.get("COORDSCOPE_ZK") or zk_cfg.get("hosts")
    dsns: tuple[str, ...] | None = tuple(pg_dsns) if pg_dsns else None
    if dsns is None and os.environ.get("COORDSCOPE_PG"):
        dsns = tuple(d.strip() for d in os.environ["COORDSCOPE_PG"].split(",") if d.strip())
    if dsns is None:
        dsns = _strings(pg_cfg, "dsns", "postgres")
    notify = enable_notifications or bool(redis_cfg.get("enable_notifications", False))
    cluster_mode = redis_cluster if redis_cluster is not None else bool(redis_cfg.get("cluster"))
    roots = _strings(zk_cfg, "roots", "zookeeper") or ("/",)
    budget = zk_cfg.get("budget", 5000)
    if not isinstance(budget, int) or budget < 1:
        raise ConfigError("zookeeper.budget must be a positive whole number")
    persistent = zk_cfg.get("persistent_watches", True)
    if not isinstance(persistent, bool):
        raise ConfigError("zookeeper.persistent_watches must be true or false")
    zk_more: dict[str, Any] = dict(roots=roots, budget=budget, persistent_watches=persistent)

    layouts = _layouts(layouts_cfg)
    common: dict[str, Any] = dict(
        state_dir=state,
        layouts=layouts,
        allow_writes=allow_writes,
        limits=_limits(redis_cfg),
        web_host=str(web_cfg.get("host", "127.0.0.1")),
        web_port=int(_number(web_cfg, "port", 8765, "web", 1, 65535)),
    )
    try:
        if urls or zk or dsns:
            replica_urls = _strings(redis_cfg, "replicas", "redis") or ()
            replica_targets = _redis_targets(replica_urls, notify, False)
            redis_targets = _redis_targets(urls or (), notify, cluster_mode) + replica_targets
            common["replicas"] = tuple(t.id for t in replica_targets)
            zk_targets: tuple[ZkTarget, ...] = (
                (ZkTarget(id="zookeeper", hosts=str(zk), **zk_more),) if zk else ()
            )
            return Settings(
                redis=redis_targets, zookeeper=zk_targets, postgres=_pg_targets(dsns or ()), **common
            )
    except TargetError as exc:
        raise ConfigError(str(exc)) from None

    try:
        info = LocalCluster(state).running()
    except ClusterError as exc:
        raise ConfigError(str(exc)) from None
    if info is None:
        if need_cluster:
            raise ConfigError(
                f"nothing to watch: no local cluster runs in {state} (start one "
                "with `coordscope up`) and no --redis/--zk/--pg, COORDSCOPE_REDIS/"
                "COORDSCOPE_ZK/COORDSCOPE_PG or config file names a server"
            )
        return Settings(redis=(), zookeeper=(), **common)
    zk_targets = tuple(ZkTarget(id=t.id, hosts=t.hosts, **zk_more) for t in info.zk_targets())
    return Settings(
        redis=tuple(info.redis_targets()),
        zookeeper=zk_targets,
        postgres=tuple(info.pg_targets()),
        local=info,
        **common,
    )


def _number(section: dict[str, Any], key: str, default: float, where: str, low: float, high: float) -> float:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ConfigError(f"{where}.{key} must be a number from {low:g} to {high:g} (got {value!r})")
    return float(value)


def _limits(cfg: dict[str, Any]) -> Limits:
    d = Limits()

    def whole(key: str, default: int, low: int, high: int) -> int:
        value = cfg.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError(f"redis.{key} must be a whole number from {low:,} to {high:,} (got {value!r})")
        return value

    return Limits(
        scan_interval_s=_number(cfg, "scan_interval_s", d.scan_interval_s, "redis", 0.1, 3600),
        raw_keys=whole("raw_keys", d.raw_keys, 0, 1_000_000),
        family_keys=whole("family_keys", d.family_keys, 1, 10_000_000),
        prefixes=whole("prefixes", d.prefixes, 1, 100_000),
        scan_rate=whole("scan_rate", d.scan_rate, 100, 10_000_000),
        scan_count=whole("scan_count", d.scan_count, 10, 100_000),
        census_interval_s=_number(cfg, "census_interval_s", d.census_interval_s, "redis", 1, 86400),
        sub_buffer_bytes=whole("sub_buffer_mib", d.sub_buffer_bytes // MIB, 1, 1024) * MIB,
    )


def _layouts(cfg: dict[str, Any]) -> LayoutConfig:
    defaults = LayoutConfig()
    zk_patterns = _strings(cfg, "zk_lock_patterns", "layouts") or ()
    for pattern in zk_patterns:
        try:
            compiled = re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"layouts.zk_lock_patterns: {pattern!r} is not a regex ({exc})") from None
        if "seq" not in compiled.groupindex:
            raise ConfigError(f"layouts.zk_lock_patterns: {pattern!r} needs a (?P<seq>...) group")
    return LayoutConfig(
        lock_patterns=_strings(cfg, "lock_patterns", "layouts") or defaults.lock_patterns,
        token_heuristics=bool(cfg.get("token_heuristics", True)),
        session_patterns=_strings(cfg, "session_patterns", "layouts") or defaults.session_patterns,
        mark_patterns=_strings(cfg, "mark_patterns", "layouts") or defaults.mark_patterns,
        queue_patterns=_strings(cfg, "queue_patterns", "layouts") or defaults.queue_patterns,
        zk_lock_patterns=zk_patterns,
    )


def _redis_targets(urls: tuple[str, ...], notify: bool, cluster: bool) -> tuple[RedisTarget, ...]:
    targets = [RedisTarget.from_url(u, allow_config=notify) for u in urls]
    if cluster:
        targets = discover_cluster(targets)
    ids = [t.id for t in targets]
    if len(set(ids)) != len(ids):
        raise ConfigError("the same Redis node is named twice")
    return tuple(targets)


def _pg_targets(dsns: tuple[str, ...]) -> tuple[PostgresTarget, ...]:
    targets = tuple(PostgresTarget.from_dsn(d) for d in dsns)
    ids = [t.id for t in targets]
    if len(set(ids)) != len(ids):
        raise ConfigError("the same PostgreSQL database is named twice")
    return targets


def discover_cluster(seeds: list[RedisTarget]) -> list[RedisTarget]:
    """Every primary and replica of a Redis Cluster, from ``CLUSTER NODES`` of a seed, as
    members of one cluster named by the first seed (the collectors follow its nodes from
    there on: :mod:`collectors.redis_cluster`)."""
    import redis

    last: Exception | None = None
    for seed in seeds:
        try:
            client = redis.Redis(
                host=seed.host,
                port=seed.port,
                username=seed.username,
                password=seed.password,
                ssl=seed.tls,
                socket_timeout=3.0,
                decode_responses=True,
            )
            # two words: redis-py parses "CLUSTER NODES" into a dict, and we want its text
            nodes = client.execute_command("CLUSTER", "NODES")  # type: ignore[no-untyped-call]
            client.close()
        except redis.RedisError as exc:
            last = exc
            continue
        found = [
            RedisTarget(
                id=node.address,
                host=node.address.rpartition(":")[0] or seed.host,
                port=int(node.address.rpartition(":")[2]),
                username=seed.username,
                password=seed.password,
                tls=seed.tls,
                allow_config=seed.allow_config,
                cluster=seeds[0].address,
            )
            for node in parse_nodes(nodes if isinstance(nodes, str) else "")
        ]  # a failed node stays: it is shown down until the cluster forgets it
        if not found:
            raise ConfigError(f"{seed.address} is not a node of a Redis Cluster (CLUSTER NODES lists none)")
        return found
    raise ConfigError(f"cannot read the Redis Cluster topology from {seeds[0].address}: {last}")
